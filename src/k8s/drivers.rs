//! The driver-pod watch: one watch on `spark-role=driver` pods in all namespaces, kept as a
//! small [`DriverView`] (pod → app id, finished or not; nothing else of the pod is kept), and
//! the applications it ends.
//!
//! An application registered here ends when its driver pods are all finished (phase Succeeded
//! or Failed) or gone: a DELETED event, or a pod seen before that a later complete LIST no
//! longer holds (a deletion missed while the watch was down). Apps with no driver pod in the
//! view at all are not judged here; the reconciler asks the API about them directly.

use crate::sync::lock;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::app_secrets::SecretSource;
use super::{next_event, pods, Targets};

/// What the view says about one application's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverState {
    /// At least one driver pod of the app may still be running (any phase but Succeeded or
    /// Failed, Unknown included).
    Running,
    /// Driver pods of the app are in the view, and every one has finished.
    Finished,
    /// No driver pod of the app in the view. Not an answer by itself: it may be a client-mode
    /// app (its driver is no labelled pod), or the view may be behind.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DriverPod {
    app_id: String,
    finished: bool,
}

/// Driver pods of the whole cluster, reduced to what deciding an app's end needs. Pure: fed
/// watcher events, answers questions; no I/O.
#[derive(Debug, Default)]
pub struct DriverView {
    pods: HashMap<String, DriverPod>,
    /// App id → keys of its driver pods in `pods`, so judging an app does not scan the cluster.
    by_app: HashMap<String, HashSet<String>>,
    /// Pods of a LIST in progress (between Init and InitDone).
    relisting: Option<HashMap<String, DriverPod>>,
    synced: bool,
}

impl DriverView {
    /// Applies one watcher event. Returns the apps this event shows to have ended: every
    /// driver pod of theirs finished or deleted. (Not filtered to apps registered here.)
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> Vec<String> {
        let mut touched = BTreeSet::new();
        match event {
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let Some((key, driver)) = entry(&pod) {
                    self.relisting.get_or_insert_with(HashMap::new).insert(key, driver);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                // Seen before, missing from a complete LIST: deleted while we were not looking.
                touched
                    .extend(self.pods.iter().filter(|(k, _)| !listed.contains_key(*k)).map(|(_, d)| d.app_id.clone()));
                touched.extend(listed.values().filter(|d| d.finished).map(|d| d.app_id.clone()));
                self.pods.clear();
                self.by_app.clear();
                for (key, driver) in listed {
                    self.insert(key, driver);
                }
                self.synced = true;
            }
            watcher::Event::Apply(pod) => {
                if let Some((key, driver)) = entry(&pod) {
                    if driver.finished {
                        touched.insert(driver.app_id.clone());
                    }
                    self.insert(key, driver);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(driver) = self.remove(&pods::key(&pod)) {
                    touched.insert(driver.app_id);
                } else if let Some(app) = pods::app_id(&pod) {
                    touched.insert(app.to_string());
                }
            }
        }
        touched.into_iter().filter(|app| self.state(app) != DriverState::Running).collect()
    }

    fn insert(&mut self, key: String, driver: DriverPod) {
        self.by_app.entry(driver.app_id.clone()).or_default().insert(key.clone());
        if let Some(old) = self.pods.insert(key.clone(), driver) {
            // The same pod name now carries another app (a resubmission reusing the name).
            if self.pods.get(&key).is_some_and(|new| new.app_id != old.app_id) {
                self.unindex(&old.app_id, &key);
            }
        }
    }

    fn remove(&mut self, key: &str) -> Option<DriverPod> {
        let driver = self.pods.remove(key)?;
        self.unindex(&driver.app_id, key);
        Some(driver)
    }

    fn unindex(&mut self, app_id: &str, key: &str) {
        if let Some(keys) = self.by_app.get_mut(app_id) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_app.remove(app_id);
            }
        }
    }

    /// The state of an app's driver as far as this view knows.
    pub fn state(&self, app_id: &str) -> DriverState {
        let Some(keys) = self.by_app.get(app_id) else { return DriverState::Absent };
        if keys.iter().filter_map(|k| self.pods.get(k)).all(|d| d.finished) {
            DriverState::Finished
        } else {
            DriverState::Running
        }
    }

    /// A complete LIST has been applied at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Driver pods in the view.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

fn entry(pod: &Pod) -> Option<(String, DriverPod)> {
    let app_id = pods::app_id(pod)?;
    Some((pods::key(pod), DriverPod { app_id: app_id.to_string(), finished: pods::is_finished(pod) }))
}

/// Follows driver pods until `shutdown`, removing each app registered here whose driver ends.
/// `synced` is notified after every complete LIST, so the reconciler judges every app against
/// a fresh view (at start, and after each re-list).
pub async fn watch(
    client: kube::Client,
    targets: Targets,
    view: Arc<Mutex<DriverView>>,
    secrets: Arc<Mutex<SecretSource>>,
    synced: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let health = &targets.health.drivers;
    let config = watcher::Config::default().labels(pods::DRIVER_SELECTOR);
    loop {
        let mut stream = pin!(watcher(Api::<Pod>::all(client.clone()), config.clone()).default_backoff());
        while let Some(event) = next_event(&mut stream, health, "driver pods", &shutdown).await {
            let relisted = matches!(event, watcher::Event::InitDone);
            targets.secrets(&secrets, |source, keyring| source.driver_event(&event, keyring));
            let ended = lock(&view).apply(event);
            for app in ended {
                // Every ended app, registered here or not: this node may redirect its dead IPs.
                targets.pod_network_app_ended(&app);
                if targets.knows(&app) {
                    targets.remove_app(&app, "its driver pod finished or was deleted").await;
                } else {
                    debug!(app = %app, "driver ended; the app has no registrations here");
                }
            }
            if relisted {
                synced.notify_one();
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        // next_event said the stream ended (it never should): start a new one, gently.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn driver(name: &str, app: &str, phase: &str) -> Pod {
        pods::test_pod(name, Some(phase), &[(pods::ROLE_LABEL, "driver"), (pods::APP_LABEL, app)])
    }

    fn listed(view: &mut DriverView, pods: Vec<Pod>) -> Vec<String> {
        view.apply(Event::Init);
        for pod in pods {
            assert!(view.apply(Event::InitApply(pod)).is_empty(), "nothing is decided before the list is complete");
        }
        view.apply(Event::InitDone)
    }

    #[test]
    fn a_driver_that_finishes_ends_its_app_and_a_running_one_does_not() {
        let mut view = DriverView::default();
        assert!(!view.is_synced());
        assert!(listed(&mut view, vec![driver("a", "app-a", "Running")]).is_empty());
        assert!(view.is_synced());
        assert_eq!(view.state("app-a"), DriverState::Running);
        assert!(view.apply(Event::Apply(driver("a", "app-a", "Running"))).is_empty());
        assert_eq!(view.apply(Event::Apply(driver("a", "app-a", "Succeeded"))), vec!["app-a"]);
        assert_eq!(view.state("app-a"), DriverState::Finished);
    }

    #[test]
    fn a_deleted_driver_ends_its_app_unless_another_driver_of_it_runs() {
        let mut view = DriverView::default();
        listed(&mut view, vec![driver("a1", "app-a", "Running"), driver("a2", "app-a", "Running")]);
        assert!(view.apply(Event::Delete(driver("a1", "app-a", "Running"))).is_empty());
        assert_eq!(view.apply(Event::Delete(driver("a2", "app-a", "Running"))), vec!["app-a"]);
        assert_eq!(view.state("app-a"), DriverState::Absent);
    }

    #[test]
    fn phase_unknown_keeps_the_app() {
        let mut view = DriverView::default();
        listed(&mut view, vec![driver("a", "app-a", "Running")]);
        assert!(view.apply(Event::Apply(driver("a", "app-a", "Unknown"))).is_empty());
        assert_eq!(view.state("app-a"), DriverState::Running);
    }

    #[test]
    fn a_relist_ends_apps_whose_driver_vanished_or_finished_while_the_watch_was_down() {
        let mut view = DriverView::default();
        listed(
            &mut view,
            vec![driver("a", "app-a", "Running"), driver("b", "app-b", "Running"), driver("c", "app-c", "Running")],
        );
        let ended = listed(&mut view, vec![driver("b", "app-b", "Failed"), driver("c", "app-c", "Running")]);
        assert_eq!(ended, vec!["app-a", "app-b"]);
        assert_eq!(view.len(), 2);
    }

    #[test]
    fn an_app_never_seen_is_absent_not_ended() {
        let mut view = DriverView::default();
        assert!(listed(&mut view, vec![]).is_empty());
        assert_eq!(view.state("app-x"), DriverState::Absent);
    }

    #[test]
    fn a_pod_name_reused_by_another_app_moves_to_that_app() {
        let mut view = DriverView::default();
        listed(&mut view, vec![driver("job-driver", "app-1", "Running")]);
        assert!(view.apply(Event::Apply(driver("job-driver", "app-2", "Running"))).is_empty());
        assert_eq!(view.state("app-1"), DriverState::Absent);
        assert_eq!(view.state("app-2"), DriverState::Running);
    }

    #[test]
    fn pods_without_an_app_label_are_ignored() {
        let mut view = DriverView::default();
        let mut pod = driver("a", "app-a", "Failed");
        pod.metadata.labels.as_mut().map(|l| l.remove(pods::APP_LABEL));
        assert!(listed(&mut view, vec![pod]).is_empty());
        assert!(view.is_empty());
    }
}
