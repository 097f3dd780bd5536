//! Discovery with the 2.2 fork's semantics, against a SIMULATED API server: the library
//! function (`k8s::discovery::discover`) and the `discover` subcommand of the real binary.

use std::process::Command;

use crate::k8s_support::{agent_pod, kubeconfig, SimApi};
use serde_json::json;
use spark_shuffle_agent::k8s::{self, discovery, discovery::DiscoveryError};

const NS: &str = "spark-shuffle-agent";
const LABELS: &str = "app=spark-shuffle-service,spark-version=2.2.0";

async fn discover(sim: &SimApi) -> discovery::AgentMap {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = k8s::discovery_config(Some(&kubeconfig(tmp.path(), &sim.url()))).await.expect("config");
    let client = kube::Client::try_from(config).expect("client");
    discovery::discover(client, NS, LABELS).await.expect("discover")
}

/// Runs the real binary's `discover` and returns (exit code, stdout, stderr).
async fn run_discover(sim: &SimApi, extra: &[&str]) -> (i32, String, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(tmp.path(), &sim.url());
    let mut args: Vec<String> =
        ["discover", "--namespace", NS, "--labels", LABELS, "--kubeconfig"].iter().map(|s| s.to_string()).collect();
    args.push(config.to_string_lossy().into_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_spark-shuffle-agent")).args(&args).output().expect("run the binary")
    })
    .await
    .expect("join");
    drop(tmp);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn simulated_api_discovery_maps_each_node_to_its_one_ready_agent() {
    let sim = SimApi::start().await;
    sim.apply(agent_pod(NS, "agent-a", "node-a", "10.0.0.1", true));
    sim.apply(agent_pod(NS, "agent-b", "node-b", "10.0.0.2", true));
    // Not counted: unready, another namespace, a missing label.
    sim.apply(agent_pod(NS, "agent-c", "node-c", "10.0.0.3", false));
    sim.apply(agent_pod("elsewhere", "agent-d", "node-d", "10.0.0.4", true));
    let mut other_version = agent_pod(NS, "agent-e", "node-e", "10.0.0.5", true);
    other_version["metadata"]["labels"]["spark-version"] = json!("3.0.0");
    sim.apply(other_version);

    let map = discover(&sim).await;
    assert_eq!(map.render().unwrap(), format!("node-a\t10.0.0.1\t{NS}/agent-a\nnode-b\t10.0.0.2\t{NS}/agent-b\n"));
    assert_eq!(map.agent_on("node-b").unwrap().ip, "10.0.0.2");
    assert_eq!(map.agent_on("node-c").unwrap_err().to_string(), "unable to find shuffle pod on node node-c");
    let request = sim.requests().into_iter().find(|r| r.contains("/namespaces/")).expect("a namespaced list");
    assert!(request.starts_with(&format!("/api/v1/namespaces/{NS}/pods?")), "{request}");
    assert!(request.contains(&format!("labelSelector={LABELS}")), "{request}");
}

#[tokio::test]
async fn simulated_api_discovery_with_no_agent_finds_none_and_fails_for_any_node() {
    let sim = SimApi::start().await;
    let map = discover(&sim).await;
    assert_eq!(map.render().unwrap(), "");
    assert!(matches!(map.agent_on("node-a"), Err(DiscoveryError::NotFound(n)) if n == "node-a"));
}

#[tokio::test]
async fn simulated_api_discovery_with_two_ready_agents_on_one_node_is_ambiguous_and_names_both() {
    let sim = SimApi::start().await;
    sim.apply(agent_pod(NS, "agent-a", "node-a", "10.0.0.1", true));
    sim.apply(agent_pod(NS, "agent-a2", "node-a", "10.0.0.9", true));
    sim.apply(agent_pod(NS, "agent-b", "node-b", "10.0.0.2", true));
    let map = discover(&sim).await;
    let err = map.render().unwrap_err().to_string();
    assert!(
        err.contains("node-a") && err.contains(&format!("{NS}/agent-a,")) && err.contains(&format!("{NS}/agent-a2")),
        "{err}"
    );
    assert!(matches!(map.agent_on("node-a"), Err(DiscoveryError::Ambiguous { .. })));
    assert_eq!(map.agent_on("node-b").unwrap().ip, "10.0.0.2", "the other nodes still resolve");
}

#[tokio::test]
async fn simulated_api_discovery_ignores_an_unready_second_agent_on_a_node() {
    let sim = SimApi::start().await;
    sim.apply(agent_pod(NS, "old", "node-a", "10.0.0.1", false));
    sim.apply(agent_pod(NS, "new", "node-a", "10.0.0.7", true));
    let map = discover(&sim).await;
    assert_eq!(map.agent_on("node-a").unwrap().ip, "10.0.0.7");
}

#[tokio::test]
async fn simulated_api_discover_subcommand_prints_the_map_or_one_nodes_ip() {
    let sim = SimApi::start().await;
    sim.apply(agent_pod(NS, "agent-a", "node-a", "10.0.0.1", true));
    sim.apply(agent_pod(NS, "agent-b", "node-b", "10.0.0.2", true));

    let (code, out, err) = run_discover(&sim, &[]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, format!("node-a\t10.0.0.1\t{NS}/agent-a\nnode-b\t10.0.0.2\t{NS}/agent-b\n").as_str()),
        "{err}"
    );

    let (code, out, err) = run_discover(&sim, &["--node", "node-b"]).await;
    assert_eq!((code, out.as_str()), (0, "10.0.0.2\n"), "{err}");

    let (code, out, err) = run_discover(&sim, &["--node", "node-x"]).await;
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.contains("unable to find shuffle pod on node node-x"), "{err}");
}

#[tokio::test]
async fn simulated_api_discover_subcommand_fails_on_an_ambiguous_node() {
    let sim = SimApi::start().await;
    sim.apply(agent_pod(NS, "agent-a", "node-a", "10.0.0.1", true));
    sim.apply(agent_pod(NS, "agent-a2", "node-a", "10.0.0.9", true));
    let (code, out, err) = run_discover(&sim, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.contains("ambiguous") && err.contains("agent-a2"), "{err}");
}

#[tokio::test]
async fn discover_subcommand_rejects_malformed_labels_as_a_usage_error() {
    let sim = SimApi::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(tmp.path(), &sim.url());
    let output = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-agent"))
        .args(["discover", "--namespace", NS, "--labels", "app", "--kubeconfig"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(sim.requests().is_empty(), "nothing is asked with a bad selector");
}
