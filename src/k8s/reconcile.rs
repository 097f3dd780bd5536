//! The reconciler: every app registered here, judged against the driver view, at start (after
//! the first complete LIST of driver pods), after every re-list, and every
//! `reconcile_interval` (`agent.k8s.reconcile.interval`, 30 s by default; which also picks up
//! apps registered since).
//!
//! * driver pods all finished → the app is removed (also catches an app whose driver ended
//!   before the app registered here, and retries a removal the journal could not record);
//! * a driver pod may be running → nothing;
//! * no driver pod in the view → asked directly, because absence in a view is not an answer:
//!   a LIST of the app's driver pods (any namespace), then of its executor pods. Both lists
//!   succeeded, no driver pod and no running executor pod → the app is removed (its driver was
//!   deleted while the agent was down, or the deletion event was missed). Executors running but
//!   no driver pod → a client-mode app, whose driver is not a labelled pod: kept, and asked
//!   about again after `absent_recheck`. Any error → kept, counted, retried next pass. These
//!   LISTs are only sent while the driver watch is up: an API server that cannot keep a watch
//!   up is not sent more work.
//!
//! The LISTs are sent after the app was registered here, and Spark creates the driver pod
//! before any executor registers, so a LIST that succeeds without it is definite.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::drivers::{DriverState, DriverView};
use super::{pods, K8sSettings, Targets};
use crate::clock::unix_secs;
use crate::sync::lock;

/// Runs a pass on every tick and after every complete LIST of driver pods, until `shutdown`.
pub async fn run(
    client: kube::Client,
    targets: Targets,
    view: Arc<Mutex<DriverView>>,
    synced: Arc<Notify>,
    settings: K8sSettings,
    shutdown: CancellationToken,
) {
    // No pass at once: the first comes with the first complete LIST (`synced`), or a tick later
    // if the API server does not answer (which is then logged).
    // Config validation refuses 0 (tokio's interval panics on it); settings built by hand too.
    let period = settings.reconcile_interval.max(std::time::Duration::from_millis(1));
    let first = tokio::time::Instant::now() + period;
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconciler = Reconciler { client, targets, view, settings, recheck_at: HashMap::new(), waiting: false };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = synced.notified() => {}
        }
        reconciler.pass(&shutdown).await;
    }
}

struct Reconciler {
    client: kube::Client,
    targets: Targets,
    view: Arc<Mutex<DriverView>>,
    settings: K8sSettings,
    /// Apps with no driver pod but running executors (or an id no pod can carry): when to ask
    /// about them again.
    recheck_at: HashMap<String, Instant>,
    /// Logged that the driver pods are not listed yet (log once, not every pass).
    waiting: bool,
}

/// What the API said about an app that has no driver pod in the view.
enum Answer {
    /// A driver pod of the app may be running after all (the view was behind).
    Running,
    /// The app's driver pods all finished, or it has neither a driver pod nor a running executor.
    Ended(&'static str),
    /// No driver pod, but executor pods run: a client-mode app.
    NoDriverPod { executors: usize },
}

impl Reconciler {
    async fn pass(&mut self, shutdown: &CancellationToken) {
        if !lock(&self.view).is_synced() {
            if !self.waiting {
                info!("driver pods not listed yet (API server unreachable?); no application is judged until they are");
                self.waiting = true;
            }
            return;
        }
        self.waiting = false;
        let apps = self.targets.registry.app_ids();
        let known: HashSet<&String> = apps.iter().collect();
        self.recheck_at.retain(|app, _| known.contains(app));
        for app in &apps {
            if shutdown.is_cancelled() {
                return;
            }
            let state = lock(&self.view).state(app);
            match state {
                DriverState::Running => {
                    self.recheck_at.remove(app);
                }
                DriverState::Finished => self.targets.remove_app(app, "its driver pod finished").await,
                DriverState::Absent => {
                    if self.recheck_at.get(app).is_some_and(|at| *at > Instant::now()) {
                        continue;
                    }
                    if !self.targets.health.drivers.up.load(Ordering::Relaxed) {
                        // The API server is not keeping the watch up: do not pile per-app
                        // LISTs on it. Kept; judged once the watch is back.
                        debug!(app = %app, "no driver pod in the view, and the driver watch is down; not asking now");
                        continue;
                    }
                    self.judge_absent(app).await;
                }
            }
        }
        self.targets.health.reconciles.fetch_add(1, Ordering::Relaxed);
        self.targets.health.last_reconcile_unix_secs.store(unix_secs(), Ordering::Relaxed);
    }

    async fn judge_absent(&mut self, app: &str) {
        if !pods::is_label_value(app) {
            // No pod can carry this id as a label, so the API can say nothing about it.
            debug!(app = %app, "application id is not a label value; left to the retention sweep");
            self.recheck_at.insert(app.to_string(), Instant::now() + self.settings.absent_recheck);
            return;
        }
        match self.ask(app).await {
            Ok(Answer::Running) => {
                self.recheck_at.remove(app);
            }
            Ok(Answer::Ended(reason)) => self.targets.remove_app(app, reason).await,
            Ok(Answer::NoDriverPod { executors }) => {
                if !self.recheck_at.contains_key(app) {
                    info!(
                        app = %app,
                        executors,
                        "no driver pod, but executor pods run (a client-mode application?); its files stay while they do"
                    );
                }
                self.recheck_at.insert(app.to_string(), Instant::now() + self.settings.absent_recheck);
            }
            Err(e) => {
                self.targets.health.removals_deferred.fetch_add(1, Ordering::Relaxed);
                warn!(app = %app, error = %e, "cannot confirm whether the application ended; keeping its files, will ask again");
            }
        }
    }

    async fn ask(&self, app: &str) -> Result<Answer, kube::Error> {
        let api = Api::<Pod>::all(self.client.clone());
        let selector = |role: &str| ListParams::default().labels(&format!("{role},{}={app}", pods::APP_LABEL));
        let drivers = api.list(&selector(pods::DRIVER_SELECTOR)).await?.items;
        if drivers.iter().any(|p| !pods::is_finished(p)) {
            return Ok(Answer::Running);
        }
        if !drivers.is_empty() {
            return Ok(Answer::Ended("its driver pod finished"));
        }
        let executors = api.list(&selector(pods::EXECUTOR_SELECTOR)).await?.items;
        match executors.iter().filter(|p| pods::is_live(p)).count() {
            0 => Ok(Answer::Ended("it has no driver pod and no running executor pod")),
            n => Ok(Answer::NoDriverPod { executors: n }),
        }
    }
}
