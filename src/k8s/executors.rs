//! The executor-pod watch: executor pods on this node only (`spark-role=executor`,
//! `spec.nodeName=<node>`), and the executors it ends.
//!
//! An executor ends when its pod is deleted or finishes (phase Succeeded or Failed), or when a
//! pod seen before is missing from a later complete LIST (deleted while the watch was down).
//! The lifecycle engine then deletes that executor's unserved files (spill, broadcast, temp)
//! and keeps its shuffle files, which other executors still fetch.
//!
//! With per-app secrets, the same events feed the app secrets ([`SecretSource`]) and the
//! pods' mounts that new registrations are checked against ([`MountFeed`]).
//!
//! Deliberately not done: ending an executor that is registered here but whose pod this agent
//! has never seen (e.g. deleted while the agent was down). Its pod might just not be listed yet,
//! and deleting a live executor's spill files fails its tasks; those files go when the
//! application ends instead.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::app_secrets::SecretSource;
use super::{next_event, pods, Targets};
use crate::registry::ExecutorMounts;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ExecutorPod {
    app_id: String,
    exec_id: String,
    /// Reported as ended already (it finished), so its deletion later is not a second end.
    ended: bool,
}

/// Executor pods on this node, reduced to (app, executor, ended). Pure: fed watcher events,
/// says which executors ended; no I/O.
#[derive(Debug, Default)]
pub struct ExecutorView {
    pods: HashMap<String, ExecutorPod>,
    relisting: Option<HashMap<String, ExecutorPod>>,
}

impl ExecutorView {
    /// Applies one watcher event; returns the (app id, executor id) pairs that ended with it,
    /// each once.
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> Vec<(String, String)> {
        let mut ended = Vec::new();
        match event {
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let Some((key, executor)) = entry(&pod) {
                    self.relisting.get_or_insert_with(HashMap::new).insert(key, executor);
                }
            }
            watcher::Event::InitDone => {
                let mut listed = self.relisting.take().unwrap_or_default();
                for (key, executor) in &mut listed {
                    let reported = self.pods.get(key).is_some_and(|old| old.ended);
                    if executor.ended && !reported {
                        ended.push((executor.app_id.clone(), executor.exec_id.clone()));
                    }
                    executor.ended |= reported;
                }
                for (key, old) in &self.pods {
                    if !old.ended && !listed.contains_key(key) {
                        ended.push((old.app_id.clone(), old.exec_id.clone()));
                    }
                }
                self.pods = listed;
            }
            watcher::Event::Apply(pod) => {
                if let Some((key, mut executor)) = entry(&pod) {
                    let reported = self.pods.get(&key).is_some_and(|old| old.ended);
                    if executor.ended && !reported {
                        ended.push((executor.app_id.clone(), executor.exec_id.clone()));
                    }
                    executor.ended |= reported;
                    self.pods.insert(key, executor);
                }
            }
            watcher::Event::Delete(pod) => match self.pods.remove(&pods::key(&pod)) {
                Some(old) if old.ended => {}
                Some(old) => ended.push((old.app_id, old.exec_id)),
                None => {
                    if let Some((_, executor)) = entry(&pod) {
                        ended.push((executor.app_id, executor.exec_id));
                    }
                }
            },
        }
        ended
    }

    /// Executor pods in the view.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

fn entry(pod: &Pod) -> Option<(String, ExecutorPod)> {
    let executor = ExecutorPod {
        app_id: pods::app_id(pod)?.to_string(),
        exec_id: pods::exec_id(pod)?.to_string(),
        ended: pods::is_finished(pod),
    };
    Some((pods::key(pod), executor))
}

/// Feeds this node's executor pods' mounts to the registration check (`agent.auth.secrets=pods`):
/// a live pod's mounts are kept, a deleted or finished pod's dropped, and a complete LIST
/// drops the pods it no longer holds.
#[derive(Debug, Default)]
pub struct MountFeed {
    relisting: Option<HashSet<String>>,
}

impl MountFeed {
    pub fn apply(&mut self, event: &watcher::Event<Pod>, table: &ExecutorMounts) {
        match event {
            watcher::Event::Init => self.relisting = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                self.relisting.get_or_insert_with(HashSet::new).insert(pods::key(pod));
                // Kept at once, not at InitDone: a registration may be waiting for this pod.
                Self::pod(pod, table);
            }
            watcher::Event::Apply(pod) => Self::pod(pod, table),
            watcher::Event::Delete(pod) => table.remove(&pods::key(pod)),
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    table.retain(&listed);
                }
            }
        }
    }

    fn pod(pod: &Pod, table: &ExecutorMounts) {
        match pods::executor_mounts(pod) {
            Some(mounts) if !pods::is_finished(pod) => table.upsert(mounts),
            _ => table.remove(&pods::key(pod)),
        }
    }
}

/// Follows this node's executor pods until `shutdown`, handing each ended executor to the
/// lifecycle engine.
pub async fn watch(
    client: kube::Client,
    node: String,
    targets: Targets,
    secrets: Arc<Mutex<SecretSource>>,
    shutdown: CancellationToken,
) {
    let health = &targets.health.executors;
    let config = watcher::Config::default().labels(pods::EXECUTOR_SELECTOR).fields(&format!("spec.nodeName={node}"));
    let mut view = ExecutorView::default();
    let mut mounts = MountFeed::default();
    loop {
        let mut stream = pin!(watcher(Api::<Pod>::all(client.clone()), config.clone()).default_backoff());
        while let Some(event) = next_event(&mut stream, health, "executor pods", &shutdown).await {
            targets.secrets(&secrets, |source, keyring| source.executor_event(&event, keyring));
            if let Some(table) = &targets.executor_mounts {
                mounts.apply(&event, table);
            }
            for (app, exec) in view.apply(event) {
                if targets.lifecycle.executor_removed(&app, &exec) {
                    targets.health.executors_removed.fetch_add(1, Ordering::Relaxed);
                    info!(app = %app, exec = %exec, "executor pod gone; deleting its unserved files");
                } else {
                    debug!(app = %app, exec = %exec, "executor pod gone; nothing to clean here");
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
    use watcher::Event;

    fn executor(name: &str, exec: &str, phase: &str) -> Pod {
        pods::test_pod(
            name,
            Some(phase),
            &[(pods::ROLE_LABEL, "executor"), (pods::APP_LABEL, "app-1"), (pods::EXEC_LABEL, exec)],
        )
    }

    fn listed(view: &mut ExecutorView, pods: Vec<Pod>) -> Vec<(String, String)> {
        view.apply(Event::Init);
        for pod in pods {
            assert!(view.apply(Event::InitApply(pod)).is_empty());
        }
        view.apply(Event::InitDone)
    }

    fn ended(exec: &str) -> Vec<(String, String)> {
        vec![("app-1".to_string(), exec.to_string())]
    }

    #[test]
    fn a_deleted_executor_pod_ends_its_executor_once() {
        let mut view = ExecutorView::default();
        assert!(listed(&mut view, vec![executor("e1", "1", "Running")]).is_empty());
        assert_eq!(view.apply(Event::Delete(executor("e1", "1", "Running"))), ended("1"));
        assert!(view.is_empty());
    }

    #[test]
    fn a_finished_executor_ends_when_it_finishes_not_again_when_deleted() {
        let mut view = ExecutorView::default();
        listed(&mut view, vec![executor("e1", "1", "Running")]);
        assert_eq!(view.apply(Event::Apply(executor("e1", "1", "Failed"))), ended("1"));
        assert!(view.apply(Event::Apply(executor("e1", "1", "Failed"))).is_empty());
        assert!(view.apply(Event::Delete(executor("e1", "1", "Failed"))).is_empty());
    }

    #[test]
    fn a_relist_ends_executors_deleted_while_the_watch_was_down() {
        let mut view = ExecutorView::default();
        listed(&mut view, vec![executor("e1", "1", "Running"), executor("e2", "2", "Succeeded")]);
        let mut gone = listed(&mut view, vec![executor("e3", "3", "Running")]);
        gone.sort();
        assert_eq!(gone, ended("1"), "e2 was reported when it finished; e3 is new and running");
        assert_eq!(view.len(), 1);
    }

    #[test]
    fn a_finished_pod_in_the_first_list_ends_its_executor() {
        let mut view = ExecutorView::default();
        assert_eq!(listed(&mut view, vec![executor("e1", "1", "Succeeded")]), ended("1"));
        assert!(listed(&mut view, vec![executor("e1", "1", "Succeeded")]).is_empty(), "not twice");
    }

    #[test]
    fn pods_without_spark_labels_are_ignored() {
        let mut view = ExecutorView::default();
        let mut pod = executor("e1", "1", "Failed");
        pod.metadata.labels.as_mut().map(|l| l.remove(pods::EXEC_LABEL));
        assert!(listed(&mut view, vec![pod.clone()]).is_empty());
        assert!(view.apply(Event::Delete(pod)).is_empty());
    }

    #[test]
    fn the_mount_feed_keeps_live_pods_and_drops_finished_deleted_and_unlisted_ones() {
        let (table, mut feed) = (ExecutorMounts::default(), MountFeed::default());
        feed.apply(&Event::Init, &table);
        for pod in [executor("e1", "1", "Running"), executor("e2", "2", "Running"), executor("e3", "3", "Succeeded")] {
            feed.apply(&Event::InitApply(pod), &table);
        }
        feed.apply(&Event::InitDone, &table);
        assert_eq!(table.len(), 2, "a finished pod registers nothing");
        assert_eq!(table.of("app-1", "1").len(), 1);
        feed.apply(&Event::Apply(executor("e1", "1", "Failed")), &table);
        assert!(table.of("app-1", "1").is_empty());
        feed.apply(&Event::Apply(executor("e4", "4", "Pending")), &table);
        feed.apply(&Event::Delete(executor("e4", "4", "Pending")), &table);
        assert!(table.of("app-1", "4").is_empty());
        // e2 was deleted while the watch was down.
        feed.apply(&Event::Init, &table);
        feed.apply(&Event::InitApply(executor("e5", "5", "Running")), &table);
        assert_eq!(table.len(), 2, "kept until the list is complete");
        feed.apply(&Event::InitDone, &table);
        assert!(table.of("app-1", "2").is_empty());
        assert_eq!(table.of("app-1", "5").len(), 1);
    }
}
