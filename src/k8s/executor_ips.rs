//! Pod network mode's view of executor pods, cluster-wide: which executors have a pod IP and
//! run, and which ended, with the pod IP and the node IP captured *while the pod was alive*
//! (a deleted pod's last object may have lost them, kubernetes#125370; spec/pod-network.md
//! §2.1). Pure: fed watcher events, it says what changed; the pod network controller
//! (src/podnet/controller.rs) acts on it.
//!
//! hostNetwork executors are left out: the node's own listener serves them, and their "pod IP"
//! is the node's, which must never become a dead-IP redirect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::mpsc::Sender;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::{next_event, pods, K8sHealth};
use crate::podnet::PodChange;

/// What is kept of a live executor pod on the pod network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    app_id: String,
    ip: IpAddr,
    host_ip: IpAddr,
    local: bool,
}

/// Executor pods with a pod IP, by `namespace/name`.
#[derive(Debug)]
pub struct ExecutorIpView {
    node: String,
    live: HashMap<String, Seen>,
    relisting: Option<HashMap<String, Pod>>,
}

impl ExecutorIpView {
    /// A view for the agent on node `node` (pods with that `spec.nodeName` are local).
    pub fn new(node: impl Into<String>) -> ExecutorIpView {
        ExecutorIpView { node: node.into(), live: HashMap::new(), relisting: None }
    }

    /// Applies one watcher event; returns what changed, in order.
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> Vec<PodChange> {
        let mut changes = Vec::new();
        match event {
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                self.relisting.get_or_insert_with(HashMap::new).insert(pods::key(&pod), pod);
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                // Pods that went while the watch was down ended then; their IPs were captured.
                let gone: Vec<String> = self.live.keys().filter(|k| !listed.contains_key(*k)).cloned().collect();
                for key in gone {
                    self.ended(&key, &mut changes);
                }
                for (key, pod) in listed {
                    self.pod(key, &pod, &mut changes);
                }
                changes.push(PodChange::Listed { pods: self.live.keys().cloned().collect() });
            }
            watcher::Event::Apply(pod) => self.pod(pods::key(&pod), &pod, &mut changes),
            watcher::Event::Delete(pod) => self.ended(&pods::key(&pod), &mut changes),
        }
        changes
    }

    /// Executor pods on the pod network known to run.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn pod(&mut self, key: String, pod: &Pod, changes: &mut Vec<PodChange>) {
        if !pods::is_live(pod) {
            self.ended(&key, changes);
            return;
        }
        let Some(seen) = self.seen(pod) else { return };
        if self.live.get(&key) == Some(&seen) {
            return;
        }
        changes.push(PodChange::Live {
            pod: key.clone(),
            app_id: seen.app_id.clone(),
            ip: seen.ip,
            host_ip: seen.host_ip,
            local: seen.local,
        });
        self.live.insert(key, seen);
    }

    fn ended(&mut self, key: &str, changes: &mut Vec<PodChange>) {
        if let Some(seen) = self.live.remove(key) {
            changes.push(PodChange::Died {
                pod: key.to_string(),
                app_id: seen.app_id,
                ip: seen.ip,
                host_ip: seen.host_ip,
                local: seen.local,
            });
        }
    }

    fn seen(&self, pod: &Pod) -> Option<Seen> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        let ip = status.pod_ip.as_deref()?.parse().ok()?;
        let host_ip = status.host_ip.as_deref()?.parse().ok()?;
        Some(Seen {
            app_id: pods::app_id(pod)?.to_string(),
            ip,
            host_ip,
            local: spec.node_name.as_deref() == Some(self.node.as_str()),
        })
    }
}

/// Follows every executor pod in the cluster (their IPs, for the dead-IP map; this node's, to
/// adopt), sending what changed to the pod network controller, until `shutdown` or until the
/// controller is gone.
pub async fn watch(
    client: kube::Client,
    node: String,
    health: std::sync::Arc<K8sHealth>,
    changes: Sender<PodChange>,
    shutdown: CancellationToken,
) {
    let config = watcher::Config::default().labels(pods::EXECUTOR_SELECTOR);
    let mut view = ExecutorIpView::new(node);
    loop {
        let mut stream = pin!(watcher(Api::<Pod>::all(client.clone()), config.clone()).default_backoff());
        while let Some(event) = next_event(&mut stream, &health.executor_ips, "executor pod IPs", &shutdown).await {
            for change in view.apply(event) {
                if changes.send(change).is_err() {
                    return;
                }
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use watcher::Event;

    fn executor(name: &str, node: &str, ip: &str, phase: &str) -> Pod {
        let mut pod = pods::test_pod(
            name,
            Some(phase),
            &[(pods::ROLE_LABEL, "executor"), (pods::APP_LABEL, "app-1"), (pods::EXEC_LABEL, "1")],
        );
        pod.spec = Some(PodSpec { node_name: Some(node.into()), ..PodSpec::default() });
        let status = pod.status.as_mut().unwrap();
        status.pod_ip = Some(ip.into());
        status.host_ip = Some(if node == "node-a" { "192.168.0.1" } else { "192.168.0.2" }.into());
        pod
    }

    fn live(name: &str, ip: &str, host: &str, local: bool) -> PodChange {
        PodChange::Live {
            pod: format!("jobs/{name}"),
            app_id: "app-1".into(),
            ip: ip.parse().unwrap(),
            host_ip: host.parse().unwrap(),
            local,
        }
    }

    fn died(name: &str, ip: &str, host: &str, local: bool) -> PodChange {
        match live(name, ip, host, local) {
            PodChange::Live { pod, app_id, ip, host_ip, local } => PodChange::Died { pod, app_id, ip, host_ip, local },
            _ => unreachable!(),
        }
    }

    /// The changes a complete list brings, its closing `Listed` checked and left out.
    fn listed(view: &mut ExecutorIpView, pods: Vec<Pod>) -> Vec<PodChange> {
        assert!(view.apply(Event::Init).is_empty());
        for pod in pods {
            assert!(view.apply(Event::InitApply(pod)).is_empty(), "nothing before the list is complete");
        }
        let mut changes = view.apply(Event::InitDone);
        match changes.pop() {
            Some(PodChange::Listed { pods }) => {
                assert_eq!(pods.len(), view.len(), "every live pod, no other");
            }
            other => panic!("a list ends with Listed, got {other:?}"),
        }
        changes
    }

    #[test]
    fn a_pod_is_live_once_it_has_an_ip_and_dies_with_the_ips_it_had() {
        let mut view = ExecutorIpView::new("node-a");
        let mut pending = executor("e1", "node-a", "10.1.0.5", "Pending");
        pending.status.as_mut().unwrap().pod_ip = None;
        assert!(view.apply(Event::Apply(pending)).is_empty(), "no IP yet");
        assert_eq!(
            view.apply(Event::Apply(executor("e1", "node-a", "10.1.0.5", "Running"))),
            vec![live("e1", "10.1.0.5", "192.168.0.1", true)]
        );
        assert!(view.apply(Event::Apply(executor("e1", "node-a", "10.1.0.5", "Running"))).is_empty(), "once");
        // The deleted object has lost its IPs (kubernetes#125370): the captured ones are used.
        let mut deleted = executor("e1", "node-a", "10.1.0.5", "Running");
        deleted.status = None;
        assert_eq!(view.apply(Event::Delete(deleted)), vec![died("e1", "10.1.0.5", "192.168.0.1", true)]);
        assert!(view.is_empty());
    }

    #[test]
    fn a_finished_or_terminating_pod_dies_once_and_remote_pods_count_too() {
        let mut view = ExecutorIpView::new("node-a");
        let changes = listed(&mut view, vec![executor("r1", "node-b", "10.2.0.7", "Running")]);
        assert_eq!(changes, vec![live("r1", "10.2.0.7", "192.168.0.2", false)]);
        let mut terminating = executor("r1", "node-b", "10.2.0.7", "Running");
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::chrono::Utc::now()));
        assert_eq!(view.apply(Event::Apply(terminating)), vec![died("r1", "10.2.0.7", "192.168.0.2", false)]);
        assert!(view.apply(Event::Apply(executor("r1", "node-b", "10.2.0.7", "Failed"))).is_empty());
        assert!(view.apply(Event::Delete(executor("r1", "node-b", "10.2.0.7", "Failed"))).is_empty());
    }

    #[test]
    fn a_relist_ends_pods_deleted_while_the_watch_was_down() {
        let mut view = ExecutorIpView::new("node-a");
        listed(&mut view, vec![executor("e1", "node-a", "10.1.0.5", "Running")]);
        let changes = listed(&mut view, vec![executor("e2", "node-a", "10.1.0.6", "Running")]);
        assert_eq!(
            changes,
            vec![died("e1", "10.1.0.5", "192.168.0.1", true), live("e2", "10.1.0.6", "192.168.0.1", true)]
        );
    }

    #[test]
    fn host_network_executors_and_pods_without_an_app_are_left_out() {
        let mut view = ExecutorIpView::new("node-a");
        let mut host = executor("h1", "node-a", "192.168.0.1", "Running");
        host.spec.as_mut().unwrap().host_network = Some(true);
        let mut anonymous = executor("x1", "node-a", "10.1.0.9", "Running");
        anonymous.metadata.labels.as_mut().unwrap().remove(pods::APP_LABEL);
        assert!(listed(&mut view, vec![host, anonymous]).is_empty());
        assert!(view.is_empty());
    }
}
