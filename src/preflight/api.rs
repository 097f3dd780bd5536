//! The network checks of the preflight: the shuffle port, and the Kubernetes API server with the
//! RBAC the agent's watchers need (list pods in all namespaces; see deploy/base/rbac.yaml).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::Finding;

/// How long the API server and a running agent's /healthz get to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The shuffle port must be free, or held by a running agent (its metrics port answers /healthz
/// with 200): run in the agent's pod, the port is the agent's own.
pub fn check_port(bind: IpAddr, port: u16, metrics_port: u16) -> Finding {
    let subject = format!("port {bind}:{port}");
    match TcpListener::bind((bind, port)) {
        Ok(_) => Finding::ok(subject, "free"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if agent_answers(bind, metrics_port) {
                Finding::ok(subject, format!("held by a running agent (/healthz on port {metrics_port} answers 200)"))
            } else {
                Finding::fail(
                    subject,
                    "in use by another process (another shuffle service? Spark's JVM service?); the agent could not bind it",
                )
            }
        }
        Err(e) => Finding::fail(subject, format!("cannot be bound: {e}")),
    }
}

fn agent_answers(bind: IpAddr, metrics_port: u16) -> bool {
    let host = if bind.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { bind };
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(host, metrics_port), ANSWER_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// With a kubeconfig, or in a pod: the API server answers, and this account may list pods in all
/// namespaces (the driver watch; the executor watch is the same verb with a field selector).
/// Without either, Kubernetes is off for the agent too, which is not a failure.
pub fn check_kubernetes(kubeconfig: Option<&Path>) -> Finding {
    let subject = "Kubernetes API";
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Finding::fail(subject, format!("cannot start a runtime: {e}")),
    };
    runtime.block_on(async {
        let config = match crate::k8s::client_config(kubeconfig).await {
            Ok(Some(c)) => c,
            Ok(None) => return Finding::ok(subject, "off (not in a pod, no --kubeconfig): nothing will be cleaned on Kubernetes' account"),
            Err(e) => return Finding::fail(subject, e.to_string()),
        };
        let url = config.cluster_url.to_string();
        let client = match kube::Client::try_from(config) {
            Ok(c) => c,
            Err(e) => return Finding::fail(subject, format!("cannot build a client for {url}: {e}")),
        };
        let pods: Api<Pod> = Api::all(client);
        match tokio::time::timeout(ANSWER_TIMEOUT, pods.list_metadata(&ListParams::default().limit(1))).await {
            Err(_) => Finding::fail(subject, format!("{url} did not answer within {ANSWER_TIMEOUT:?}")),
            Ok(Ok(_)) => Finding::ok(subject, format!("{url} answers; pods can be listed in all namespaces")),
            Ok(Err(kube::Error::Api(status))) if status.code == 401 || status.code == 403 => Finding::fail(
                subject,
                format!("{url}: RBAC: this account may not list pods in all namespaces ({}: {}); apply deploy/base/rbac.yaml", status.code, status.message),
            ),
            Ok(Err(e)) => Finding::fail(subject, format!("{url} unreachable or failing: {e}")),
        }
    })
}
