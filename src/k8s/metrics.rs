//! The Kubernetes side's series. All are vecs, so none exists until the agent follows an API
//! server ([`K8sHealth::enabled`]): an agent not watching Kubernetes exports no `k8s_*` series
//! (rather than a watch that looks down).

use std::sync::Arc;

use prometheus::{IntCounterVec, IntGaugeVec};

use super::K8sHealth;
use crate::metrics::{gauge_value, sync, Series, Source};

/// Exports the watches' and the reconciler's health at each scrape.
pub struct K8sSource {
    health: Arc<K8sHealth>,
    series: Series,
    watch_up: IntGaugeVec,
    watch_restarts: IntCounterVec,
    watch_relists: IntCounterVec,
    watch_errors: IntCounterVec,
    watch_last_sync: IntGaugeVec,
    api_errors: IntCounterVec,
    apps_removed: IntCounterVec,
    executors_removed: IntCounterVec,
    removals_deferred: IntCounterVec,
    reconciles: IntCounterVec,
    last_reconcile: IntGaugeVec,
}

impl K8sSource {
    pub fn new(health: Arc<K8sHealth>) -> K8sSource {
        let mut s = Series::new();
        let none: &[&str] = &[];
        let watch: &[&str] = &["watch"];
        K8sSource {
            health,
            watch_up: s.gauge_vec(
                "spark_shuffle_agent_k8s_watch_up",
                "1 while the Kubernetes watch has a complete list and an accepted watch request, else 0.",
                watch,
            ),
            watch_restarts: s.counter_vec(
                "spark_shuffle_agent_k8s_watch_restarts_total",
                "Watch requests after the first: resumes after the API server ended the watch (routine, every \
                 few minutes) or restarts after an error. A high rate means trouble.",
                watch,
            ),
            watch_relists: s.counter_vec(
                "spark_shuffle_agent_k8s_watch_relists_total",
                "Complete LISTs after the first: the watch expired (410 Gone) or failed in a way that needs one.",
                watch,
            ),
            watch_errors: s.counter_vec(
                "spark_shuffle_agent_k8s_watch_errors_total",
                "Errors the watch reported (failed list/watch requests, cut streams, ERROR events); each is \
                 retried with backoff.",
                watch,
            ),
            watch_last_sync: s.gauge_vec(
                "spark_shuffle_agent_k8s_watch_last_sync_timestamp_seconds",
                "When the watch last completed a LIST (Unix time; 0 = never).",
                watch,
            ),
            api_errors: s.counter_vec(
                "spark_shuffle_agent_k8s_api_errors_total",
                "Failed requests to the Kubernetes API server (no connection, timeout, non-2xx), from any caller.",
                none,
            ),
            apps_removed: s.counter_vec(
                "spark_shuffle_agent_k8s_apps_removed_total",
                "Applications removed because Kubernetes said their driver pod finished or is gone.",
                none,
            ),
            executors_removed: s.counter_vec(
                "spark_shuffle_agent_k8s_executors_removed_total",
                "Executors whose pod was deleted or finished, handed to the cleanup engine.",
                none,
            ),
            removals_deferred: s.counter_vec(
                "spark_shuffle_agent_k8s_removals_deferred_total",
                "Times an application's end could not be confirmed (the API did not answer), so its files were kept.",
                none,
            ),
            reconciles: s.counter_vec(
                "spark_shuffle_agent_k8s_reconciles_total",
                "Reconcile passes completed (each checks every application known here against Kubernetes).",
                none,
            ),
            last_reconcile: s.gauge_vec(
                "spark_shuffle_agent_k8s_last_reconcile_timestamp_seconds",
                "When the last reconcile pass that could judge applications ended (Unix time; 0 = never).",
                none,
            ),
            series: s,
        }
    }
}

impl Source for K8sSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        let snapshot = self.health.snapshot();
        if !snapshot.enabled {
            return;
        }
        let watches = [("executors", Some(&snapshot.executors)), ("drivers", Some(&snapshot.drivers))];
        let pod_network = [("executor_ips", snapshot.executor_ips.as_ref())];
        for (name, w) in watches.into_iter().chain(pod_network).filter_map(|(n, w)| Some((n, w?))) {
            let label = [name];
            self.watch_up.with_label_values(&label).set(i64::from(w.up));
            sync(&self.watch_restarts.with_label_values(&label), w.watch_starts.saturating_sub(1));
            sync(&self.watch_relists.with_label_values(&label), w.lists.saturating_sub(1));
            sync(&self.watch_errors.with_label_values(&label), w.errors);
            self.watch_last_sync.with_label_values(&label).set(gauge_value(w.last_sync_unix_secs));
        }
        let none: [&str; 0] = [];
        sync(&self.api_errors.with_label_values(&none), snapshot.api_errors);
        sync(&self.apps_removed.with_label_values(&none), snapshot.apps_removed);
        sync(&self.executors_removed.with_label_values(&none), snapshot.executors_removed);
        sync(&self.removals_deferred.with_label_values(&none), snapshot.removals_deferred);
        sync(&self.reconciles.with_label_values(&none), snapshot.reconciles);
        self.last_reconcile.with_label_values(&none).set(gauge_value(snapshot.last_reconcile_unix_secs));
    }
}
