//! The real binary's Kubernetes wiring: `--kubeconfig`, Kubernetes off outside a cluster, the
//! API server being unreachable never keeping the agent from serving, and the `agent.k8s.*`
//! keys of the config file reaching the watchers (against the SIMULATED API server).

use crate::common::binary::{agent_command as agent, Logs};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn unreachable_kubeconfig(dir: &Path) -> std::path::PathBuf {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

#[test]
fn unreachable_api_server_does_not_keep_the_agent_from_serving() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = unreachable_kubeconfig(tmp.path());
    let mut logs =
        Logs::start(agent(tmp.path(), &["--kubeconfig", config.to_str().expect("utf-8"), "--node-name", "node-a"]));
    let listening = logs.wait_for("\"message\":\"listening\"");
    let line: serde_json::Value = serde_json::from_str(&listening).expect("a JSON log line");
    let addr = line["addr"].as_str().expect("addr field");
    TcpStream::connect(addr).expect("the shuffle port accepts connections");
    logs.wait_for("watching the Kubernetes API");
    let retry = logs.wait_for("watch interrupted; retrying");
    assert!(retry.contains("WARN"), "{retry}");
}

#[test]
fn kubernetes_is_off_outside_a_cluster_without_a_kubeconfig() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut logs = Logs::start(agent(tmp.path(), &[]));
    logs.wait_for("Kubernetes off");
    logs.wait_for("\"message\":\"listening\"");
    assert!(!logs.seen.iter().any(|l| l.contains("watching the Kubernetes API")));
}

#[test]
fn a_kubeconfig_that_cannot_be_read_is_a_usage_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such-kubeconfig");
    let output = agent(tmp.path(), &["--kubeconfig", missing.to_str().expect("utf-8")]).output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-kubeconfig"), "{stderr}");
}

#[test]
fn a_zero_reconcile_interval_in_the_config_file_is_a_usage_error_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("agent.conf");
    std::fs::write(&conf, "agent.k8s.reconcile.interval 0s\n").expect("write conf");
    let output = agent(tmp.path(), &["--config", conf.to_str().expect("utf-8")]).output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim(), "error: invalid value \"0\" for agent.k8s.reconcile.interval: must be positive");
}

/// `/metrics` of the agent at `addr`, over plain HTTP/1.1.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn simulated_api_the_reconcile_interval_of_the_config_file_paces_the_binarys_passes() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime for the simulated API server");
    let sim = runtime.block_on(crate::k8s_support::SimApi::start());
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = crate::k8s_support::kubeconfig(tmp.path(), &sim.url());
    let conf = tmp.path().join("agent.conf");
    // The default (30 s) would give at most one more pass within the wait.
    std::fs::write(&conf, "agent.k8s.reconcile.interval 100ms\n").expect("write conf");
    let args = ["--kubeconfig", kubeconfig.to_str().expect("utf-8"), "--config", conf.to_str().expect("utf-8")];
    let mut logs = Logs::start(agent(tmp.path(), &args));
    let line: serde_json::Value =
        serde_json::from_str(&logs.wait_for("\"message\":\"metrics listening\"")).expect("a JSON log line");
    let addr = line["addr"].as_str().expect("addr field").to_string();
    logs.wait_for("pods listed; watching for changes");
    let reconciles = || sample(&scrape(&addr), "spark_shuffle_agent_k8s_reconciles_total").unwrap_or(0.0);
    let first = reconciles();
    let deadline = Instant::now() + WAIT;
    while reconciles() < first + 3.0 {
        assert!(Instant::now() < deadline, "fewer than 3 reconcile passes in {WAIT:?} after the first {first}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(sim);
}
