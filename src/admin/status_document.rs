//! One node at a glance: the `/status` JSON document. The agent serializes it and the `status`
//! command deserializes it with the same types, so the two cannot drift apart. Its numbers are
//! read from the components' own counters, the same ones their metric sources export.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::readiness::{Health, Phase};
use crate::disk_usage::{AppDisk, DiskUsage, RootSpace};
use crate::k8s::{K8sHealth, WatchSnapshot};
use crate::lifecycle::Lifecycle;
use crate::podnet::{PodListener, PodnetStats};
use crate::server::{ErrorKind, Shared};

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
    /// None unless `agent.network.mode` is pod or both.
    #[serde(default)]
    pub pod_network: Option<PodNetworkStatus>,
}

/// Pod network mode: each adopted executor pod's listener, and the redirects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkStatus {
    /// Executor pods of this node served by a listener inside their network namespace.
    pub pods: Vec<PodListener>,
    /// Local pods with an IP whose namespace is still being looked for.
    pub pods_pending: u64,
    /// Dead executor IPs redirected (cluster-wide map).
    pub redirects: u64,
    pub adoption_failures: u64,
    pub nft_failures: u64,
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// The running agent's components, once registrations are recovered and the port is bound.
#[derive(Debug, Clone)]
pub struct Node {
    pub shared: Arc<Shared>,
    pub lifecycle: Lifecycle,
    pub k8s: Arc<K8sHealth>,
    pub disk: Arc<DiskUsage>,
    pub shuffle_addr: SocketAddr,
    /// In pod network mode: what its controller publishes.
    pub podnet: Option<Arc<PodnetStats>>,
}

/// Builds the report. Before the node is up (`None`: registrations being recovered), only the
/// health fields say anything.
pub fn collect(health: &Health, started: Instant, node: Option<&Node>) -> StatusReport {
    let mut report = StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: started.elapsed().as_secs(),
        phase: health.phase(),
        ready: health.is_ready(),
        live: health.is_live(),
        shuffle_addr: None,
        registered_apps: 0,
        registered_executors: 0,
        apps: Vec::new(),
        disk: DiskStatus { scanned_at_unix: 0, scan_seconds: 0.0, roots: Vec::new() },
        traffic: Traffic::default(),
        errors: ErrorKind::ALL.iter().map(|k| (k.as_str().to_string(), 0)).collect(),
        cleanups: Cleanups::default(),
        journal: None,
        kubernetes: None,
        pod_network: None,
    };
    if let Some(node) = node {
        fill(&mut report, node);
    }
    report
}

fn fill(report: &mut StatusReport, node: &Node) {
    let shared = &node.shared;
    let registry = &shared.registry;
    let c = &shared.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let usage = node.disk.app_usage();
    report.shuffle_addr = Some(node.shuffle_addr.to_string());
    report.registered_apps = registry.app_count() as u64;
    report.registered_executors = registry.executor_count() as u64;
    report.apps = apps(shared, &usage.apps);
    report.disk = DiskStatus {
        scanned_at_unix: usage.scanned_at_unix,
        scan_seconds: usage.scan_seconds,
        roots: node.disk.root_space().as_ref().clone(),
    };
    let fetch = &shared.latency.fetch;
    let fetches = fetch.get_sample_count();
    report.traffic = Traffic {
        active_connections: get(&c.connections_active),
        connections_total: get(&c.connections_opened),
        streams_open: shared.streams.len() as u64,
        chunks_in_flight: get(&shared.chunks_in_flight),
        chunks_total: get(&c.chunks_served),
        blocks_total: get(&c.blocks_served),
        block_bytes_total: get(&c.chunk_bytes_served),
        bytes_written_total: get(&c.bytes_sent),
        fetches_timed: fetches,
        fetch_latency_mean_seconds: (fetches > 0).then(|| fetch.get_sample_sum() / fetches as f64),
    };
    report.errors = ErrorKind::ALL.iter().map(|k| (k.as_str().to_string(), get(k.counter(c)))).collect();
    let lc = node.lifecycle.counters();
    report.cleanups = Cleanups {
        executors_cleaned: get(&lc.executors_cleaned),
        apps_cleaned: get(&lc.apps_cleaned),
        deferred: get(&lc.deferred),
        pending: registry.pending_cleanups().len() as u64,
        files_deleted: get(&lc.files_deleted),
        bytes_deleted: get(&lc.bytes_deleted),
        errors: get(&lc.errors),
    };
    report.journal = registry.journal_stats().map(|j| JournalStatus {
        bytes: j.file_bytes,
        live_records: j.live_records,
        appended: j.appended,
        failed_appends: j.failed_appends,
        repair_pending: j.repair_pending,
    });
    report.kubernetes = Some(node.k8s.snapshot()).filter(|k| k.enabled).map(|k| KubernetesStatus {
        executors: WatchStatus::from(&k.executors),
        drivers: WatchStatus::from(&k.drivers),
        api_errors: k.api_errors,
        apps_removed: k.apps_removed,
        executors_removed: k.executors_removed,
        removals_deferred: k.removals_deferred,
        last_reconcile_unix: k.last_reconcile_unix_secs,
    });
    report.pod_network = node.podnet.as_ref().map(|p| PodNetworkStatus {
        pods: crate::sync::lock(&p.pods).clone(),
        pods_pending: get(&p.pods_pending),
        redirects: get(&p.redirects),
        adoption_failures: get(&p.adoption_failures),
        nft_failures: get(&p.nft_failures),
    });
}

/// Every app registered here or still on disk, largest first.
fn apps(shared: &Shared, on_disk: &[AppDisk]) -> Vec<AppStatus> {
    let now = crate::clock::unix_secs();
    let mut apps: BTreeMap<String, AppStatus> = BTreeMap::new();
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
    for AppDisk { app_id, bytes, files, removed } in on_disk {
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
    apps
}
