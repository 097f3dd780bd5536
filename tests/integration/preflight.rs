//! `spark-shuffle-agent check`, the real binary: one test per finding it reports, each showing the
//! failing line and a non-zero exit, and a clean node passing with 0. The API server here is the
//! SIMULATED one (tests/integration/k8s_support/), answering 403 the way RBAC does.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::binary::{agent_command, Logs};
use crate::k8s_support::SimApi;

/// `check` on `dir/local` (mode 0777, any executor may write) and `dir/state`, on a free port,
/// with no minimum free space and Kubernetes off, each unless `extra` gives that flag itself.
fn check(dir: &Path, extra: &[&str]) -> Command {
    for sub in ["local", "state"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::set_permissions(dir.join("local"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let local = dir.join("local").display().to_string();
    let state = dir.join("state").display().to_string();
    let port = free_port().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-agent"));
    cmd.args(["check", "--bind", "127.0.0.1"]);
    for (flag, default) in [("--root", &local), ("--state-dir", &state), ("--port", &port), ("--min-free", &"0".into())]
    {
        if !extra.contains(&flag) {
            cmd.args([flag, default.as_str()]);
        }
    }
    cmd.args(extra).env_remove("KUBERNETES_SERVICE_HOST");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs it; returns the exit code and stdout.
fn run(mut cmd: Command) -> (i32, String) {
    let out = cmd.output().expect("run check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text + &String::from_utf8_lossy(&out.stderr))
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

#[test]
fn a_node_where_everything_is_in_order_passes_with_exit_code_0() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run(check(tmp.path(), &[]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("all 5 checks passed"), "{out}");
    assert!(line(&out, "ok   root ").contains("executors (185:185) can create their dirs"), "{out}");
    assert!(line(&out, "ok   Kubernetes API").contains("off"), "{out}");
}

#[test]
fn a_missing_root_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run(check(tmp.path(), &["--root", "/nonexistent/spark/local"]));
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL root /nonexistent/spark/local").contains("does not exist"), "{out}");
}

#[test]
fn a_root_the_executors_uid_cannot_write_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root-owned");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The executors' uid is neither the owner nor in the group of a 0755 directory.
    let (code, out) = run(check(tmp.path(), &["--root", root.to_str().unwrap(), "--executor", "4242:4243"]));
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL root ");
    assert!(fail.contains("0755") && fail.contains("executors (4242:4243) cannot create dirs"), "{out}");
}

#[test]
fn less_free_space_than_asked_fails_per_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run(check(tmp.path(), &["--min-free", "1000000t"]));
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL root ").contains("space: ") && out.contains("below the"), "{out}");
}

#[test]
fn a_port_held_by_another_process_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, out) = run(check(tmp.path(), &["--port", &port, "--metrics-port", &free_port().to_string()]));
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL port 127.0.0.1:").contains("in use by another process"), "{out}");
}

#[test]
fn a_port_held_by_a_running_agent_is_not_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = Logs::start(agent_command(&tmp.path().join("agent"), &[]));
    let addr = |line: String| -> String {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["addr"].as_str().unwrap().rsplit(':').next().unwrap().to_string()
    };
    let shuffle = addr(agent.wait_for("\"message\":\"listening\""));
    let metrics = addr(agent.wait_for("\"message\":\"metrics listening\""));
    let (code, out) = run(check(tmp.path(), &["--port", &shuffle, "--metrics-port", &metrics]));
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "ok   port ").contains("held by a running agent"), "{out}");
}

#[test]
fn a_state_dir_this_uid_cannot_write_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = check(tmp.path(), &[]);
    let state = tmp.path().join("state");
    if rustix::process::geteuid().is_root() {
        // Root writes anywhere: run the check as nobody, as the agent's pod runs it as 185.
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let (code, out) = run(cmd);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL state dir ").contains("not writable"), "{out}");
}

#[test]
fn a_state_dir_that_cannot_be_created_fails() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a-file"), b"").unwrap();
    let state = tmp.path().join("a-file/state");
    let (code, out) = run(check(tmp.path(), &["--state-dir", state.to_str().unwrap()]));
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL state dir ").contains("is not a directory"), "{out}");
}

#[test]
fn an_unreachable_api_server_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = crate::k8s_support::unreachable_kubeconfig(tmp.path());
    let (code, out) = run(check(tmp.path(), &["--kubeconfig", kubeconfig.to_str().unwrap()]));
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL Kubernetes API").contains("unreachable"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_rbac_on_the_simulated_api_server_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let api = SimApi::start().await;
    api.forbid_requests_containing("/api/v1/pods");
    let kubeconfig = crate::k8s_support::kubeconfig(tmp.path(), &api.url());
    let cmd = check(tmp.path(), &["--kubeconfig", kubeconfig.to_str().unwrap()]);
    let (code, out) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL Kubernetes API");
    assert!(fail.contains("RBAC") && fail.contains("403") && fail.contains("cannot list resource"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_api_server_that_lets_pods_be_listed_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let api = SimApi::start().await;
    let kubeconfig = crate::k8s_support::kubeconfig(tmp.path(), &api.url());
    let cmd = check(tmp.path(), &["--kubeconfig", kubeconfig.to_str().unwrap()]);
    let (code, out) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "ok   Kubernetes API").contains("pods can be listed in all namespaces"), "{out}");
    assert!(api.count_requests(&["/api/v1/pods", "limit=1"]) >= 1, "{:?}", api.requests());
}
