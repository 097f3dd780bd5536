//! One node at a glance: the `/status` JSON document. The agent serializes it and the `status`
//! command deserializes it with the same types, so the two cannot drift apart. Its numbers come
//! from the same refresh as `/metrics`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AppDisk, Metrics, Phase, RootSpace};
use crate::k8s::WatchSnapshot;

/// What `/status` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub uptime_seconds: u64,
    pub phase: Phase,
    /// What `/readyz` answers.
    pub ready: bool,
    /// What `/healthz` answers.
    pub live: bool,
    /// The shuffle port's address, once bound.
    pub shuffle_addr: Option<String>,
    pub registered_apps: u64,
    pub registered_executors: u64,
    /// Every app known here (registered, or removed with files still on disk), largest first.
    pub apps: Vec<AppStatus>,
    pub disk: DiskStatus,
    pub traffic: Traffic,
    /// `spark_shuffle_agent_errors_total` by kind.
    pub errors: BTreeMap<String, u64>,
    pub cleanups: Cleanups,
    /// None when registrations are not persisted.
    pub journal: Option<JournalStatus>,
    /// None when the agent does not watch Kubernetes.
    pub kubernetes: Option<KubernetesStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app_id: String,
    pub executors: u64,
    /// From the last disk walk; None when the app registered after it.
    pub disk_bytes: Option<u64>,
    pub disk_files: Option<u64>,
    /// Removed, files waiting for deletion.
    pub removed: bool,
    /// Seconds since an executor of the app last registered or was fetched from.
    pub idle_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskStatus {
    /// When the per-app walk finished (Unix seconds; 0 = none yet).
    pub scanned_at_unix: u64,
    pub scan_seconds: f64,
    pub roots: Vec<RootSpace>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub active_connections: u64,
    pub connections_total: u64,
    pub streams_open: u64,
    pub chunks_in_flight: u64,
    pub chunks_total: u64,
    pub blocks_total: u64,
    pub block_bytes_total: u64,
    pub bytes_written_total: u64,
    pub fetches_timed: u64,
    /// Mean of `spark_shuffle_agent_fetch_latency_seconds` since start; None before any fetch.
    pub fetch_latency_mean_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanups {
    pub executors_cleaned: u64,
    pub apps_cleaned: u64,
    pub deferred: u64,
    pub pending: u64,
    pub files_deleted: u64,
    pub bytes_deleted: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStatus {
    pub bytes: u64,
    pub live_records: u64,
    pub appended: u64,
    pub failed_appends: u64,
    pub repair_pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesStatus {
    /// Executor pods on this node.
    pub executors: WatchStatus,
    /// Driver pods, cluster-wide.
    pub drivers: WatchStatus,
    pub api_errors: u64,
    pub apps_removed: u64,
    pub executors_removed: u64,
    pub removals_deferred: u64,
    /// Unix seconds of the last reconcile pass that could judge applications; 0 = never.
    pub last_reconcile_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    pub up: bool,
    /// Watch requests after the first (routine resumes included).
    pub restarts: u64,
    pub errors: u64,
    /// Unix seconds of the last complete LIST; 0 = never.
    pub last_sync_unix: u64,
}

impl From<&WatchSnapshot> for WatchStatus {
    fn from(w: &WatchSnapshot) -> Self {
        WatchStatus {
            up: w.up,
            restarts: w.watch_starts.saturating_sub(1),
            errors: w.errors,
            last_sync_unix: w.last_sync_unix_secs,
        }
    }
}

/// Builds the report from freshly refreshed metrics (the caller holds the scrape lock).
pub(super) fn collect(metrics: &Metrics) -> StatusReport {
    let m = &metrics.m;
    let sources = crate::sync::lock(&metrics.sources).clone();
    let shared = sources.server.as_ref().and_then(std::sync::Weak::upgrade);
    let usage = metrics.app_usage();
    let now = crate::clock::unix_secs();
    let mut apps: BTreeMap<String, AppStatus> = BTreeMap::new();
    if let Some(shared) = &shared {
        for app_id in shared.registry.app_ids() {
            let executors = shared.registry.executors_of(&app_id);
            let last_used = executors.iter().map(|e| e.last_used_secs()).max();
            apps.insert(
                app_id.clone(),
                AppStatus {
                    app_id,
                    executors: executors.len() as u64,
                    disk_bytes: None,
                    disk_files: None,
                    removed: false,
                    idle_seconds: last_used.map(|t| now.saturating_sub(t)),
                },
            );
        }
    }
    for AppDisk { app_id, bytes, files, removed } in &usage.apps {
        let entry = apps.entry(app_id.clone()).or_insert_with(|| AppStatus {
            app_id: app_id.clone(),
            executors: 0,
            disk_bytes: None,
            disk_files: None,
            removed: *removed,
            idle_seconds: None,
        });
        entry.disk_bytes = Some(*bytes);
        entry.disk_files = Some(*files);
    }
    let mut apps: Vec<AppStatus> = apps.into_values().collect();
    apps.sort_by(|a, b| b.disk_bytes.cmp(&a.disk_bytes).then_with(|| a.app_id.cmp(&b.app_id)));
    let count = |g: &prometheus::IntGauge| u64::try_from(g.get()).unwrap_or(0);
    let fetches = metrics.fetch_latency.get_sample_count();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: metrics.uptime().as_secs(),
        phase: metrics.health.phase(),
        ready: metrics.health.is_ready(),
        live: metrics.health.is_live(),
        shuffle_addr: sources.shuffle_addr.map(|a| a.to_string()),
        registered_apps: count(&m.registered_apps),
        registered_executors: count(&m.registered_executors),
        apps,
        disk: DiskStatus {
            scanned_at_unix: usage.scanned_at_unix,
            scan_seconds: usage.scan_seconds,
            roots: metrics.root_space().as_ref().clone(),
        },
        traffic: Traffic {
            active_connections: count(&m.active_connections),
            connections_total: m.connections_total.get(),
            streams_open: count(&m.streams_open),
            chunks_in_flight: count(&m.chunks_in_flight),
            chunks_total: m.chunks.get(),
            blocks_total: m.blocks.get(),
            block_bytes_total: m.block_bytes.get(),
            bytes_written_total: m.bytes_written.get(),
            fetches_timed: fetches,
            fetch_latency_mean_seconds: (fetches > 0).then(|| metrics.fetch_latency.get_sample_sum() / fetches as f64),
        },
        errors: m.errors.iter().map(|(k, c)| (k.as_str().to_string(), c.get())).collect(),
        cleanups: Cleanups {
            executors_cleaned: m.executor_cleanups.get(),
            apps_cleaned: m.app_cleanups.get(),
            deferred: m.cleanups_deferred.get(),
            pending: count(&m.cleanups_pending),
            files_deleted: m.cleanup_files.get(),
            bytes_deleted: m.cleanup_bytes.get(),
            errors: m.cleanup_errors.get(),
        },
        journal: shared.as_ref().and_then(|s| s.registry.journal_stats()).map(|j| JournalStatus {
            bytes: j.file_bytes,
            live_records: j.live_records,
            appended: j.appended,
            failed_appends: j.failed_appends,
            repair_pending: j.repair_pending,
        }),
        kubernetes: sources.k8s.as_ref().map(|k| k.snapshot()).filter(|k| k.enabled).map(|k| KubernetesStatus {
            executors: WatchStatus::from(&k.executors),
            drivers: WatchStatus::from(&k.drivers),
            api_errors: k.api_errors,
            apps_removed: k.apps_removed,
            executors_removed: k.executors_removed,
            removals_deferred: k.removals_deferred,
            last_reconcile_unix: k.last_reconcile_unix_secs,
        }),
    }
}
