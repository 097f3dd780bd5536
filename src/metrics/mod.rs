//! Operator observability: the agent's Prometheus metrics, its health, and the small HTTP server
//! that serves them (`/metrics`, `/healthz`, `/readyz`, `/status`) on its own port and its own
//! thread, so that a saturated data path cannot starve it.
//!
//! [`Metrics`] owns its own [`prometheus::Registry`] (no global): one per agent, created in main
//! and shared through [`crate::server::Shared`]. It gets its numbers three ways:
//!
//! * histograms (register and open-block latency, fetch latency) are observed where the event
//!   happens: lock-free atomics, no allocation;
//! * counters that other layers already keep as plain atomics ([`crate::server::Counters`],
//!   [`crate::lifecycle::LifecycleCounters`], the registry and its journal, the index cache,
//!   [`crate::k8s::K8sHealth`]) are read at scrape time, so their writers pay nothing extra;
//! * disk use is measured by a background thread ([`disk::DiskWatcher`]) and only read at scrape.
//!
//! This module must not put locks or allocation on the data path, and must not do disk walks or
//! other slow work while a scrape waits.

pub mod disk;
mod families;
mod health;
pub mod http;
mod report;
pub mod status;

pub use disk::{AppDisk, AppUsage, DiskSettings, DiskWatcher, RootSpace};
pub use health::{Health, Phase, STALL};
pub use http::MetricsServer;
pub use report::{
    AppStatus, Cleanups, DiskStatus, JournalStatus, KubernetesStatus, StatusReport, Traffic, WatchStatus,
};

use crate::sync::lock;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus::{Encoder, Histogram, IntCounter};

use self::families::{K8sFamilies, Mirror};
use crate::k8s::K8sHealth;
use crate::lifecycle::{Lifecycle, LifecycleCounters};
use crate::server::{Counters, Shared};

/// Per-app disk series are kept for this many apps (largest first); the rest are summed into
/// one series labelled [`OTHER_APPS`], so the label's cardinality stays bounded on busy nodes.
pub const TOP_APPS: usize = 20;

/// The `app` label value of the apps beyond [`TOP_APPS`]. Parentheses cannot clash with a
/// Spark application id.
pub const OTHER_APPS: &str = "(other)";

/// Why a connection or a request failed: the fixed values of the `kind` label of
/// `spark_shuffle_agent_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A frame that does not decode; the connection is closed without a reply.
    BadFrame,
    /// A connection closed after `spark.shuffle.io.connectionTimeout` without traffic.
    IdleTimeout,
    /// A socket read or write failed (reset by peer, broken pipe, write timeout).
    Io,
    /// A request that closes the connection (UploadStream: push-based shuffle is unsupported).
    Refused,
    /// A connection closed for exceeding `spark.shuffle.maxChunksBeingTransferred`.
    ChunkLimit,
    /// A connection closed because its large frame found no room in
    /// `agent.max.pending.frame.bytes` within the idle timeout.
    FrameBudget,
    /// A ChunkFetchFailure or StreamFailure sent (missing file, unregistered executor, ...).
    ChunkFailure,
    /// An RpcFailure sent (refused registration, bad request, unsupported message, ...).
    RpcFailure,
    /// accept(2) failed (out of file descriptors, ...).
    Accept,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::BadFrame,
        ErrorKind::IdleTimeout,
        ErrorKind::Io,
        ErrorKind::Refused,
        ErrorKind::ChunkLimit,
        ErrorKind::FrameBudget,
        ErrorKind::ChunkFailure,
        ErrorKind::RpcFailure,
        ErrorKind::Accept,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadFrame => "bad_frame",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Io => "io",
            ErrorKind::Refused => "refused",
            ErrorKind::ChunkLimit => "chunk_limit",
            ErrorKind::FrameBudget => "frame_budget",
            ErrorKind::ChunkFailure => "chunk_failure",
            ErrorKind::RpcFailure => "rpc_failure",
            ErrorKind::Accept => "accept",
        }
    }

    /// The data-path counter of this kind: the server adds to it, `/metrics` reads it.
    pub(crate) fn counter(self, c: &Counters) -> &AtomicU64 {
        match self {
            ErrorKind::BadFrame => &c.bad_frames,
            ErrorKind::IdleTimeout => &c.idle_timeouts,
            ErrorKind::Io => &c.io_errors,
            ErrorKind::Refused => &c.refused,
            ErrorKind::ChunkLimit => &c.chunk_limit_closes,
            ErrorKind::FrameBudget => &c.frame_budget_closes,
            ErrorKind::ChunkFailure => &c.chunk_failures,
            ErrorKind::RpcFailure => &c.rpc_failures,
            ErrorKind::Accept => &c.accept_errors,
        }
    }
}

/// The agent's metrics. See the module doc and docs/metrics.md for every series.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus::Registry,
    /// Every series name this registry can export (histograms with their suffixes).
    names: Vec<String>,
    health: Health,
    started: Instant,
    open_block_latency: Histogram,
    register_latency: Histogram,
    fetch_latency: Histogram,
    m: Mirror,
    k8s: K8sFamilies,
    sources: Mutex<Sources>,
    disk: Mutex<DiskState>,
    /// Serializes refresh + gather, so two scrapes never interleave their updates.
    scrape: Mutex<()>,
}

/// What the metrics read from at scrape time, attached by main once each exists.
#[derive(Debug, Default, Clone)]
struct Sources {
    /// Weak: `Shared` holds this `Metrics`, a strong reference back would be a cycle.
    server: Option<Weak<Shared>>,
    lifecycle: Option<Lifecycle>,
    k8s: Option<Arc<K8sHealth>>,
    shuffle_addr: Option<SocketAddr>,
}

#[derive(Debug, Default)]
struct DiskState {
    apps: Arc<AppUsage>,
    roots: Arc<Vec<RootSpace>>,
    /// The per-app series reflect `apps` (set false when a new walk arrives).
    applied: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every series of the agent, with a [`Health`] of its own.
    pub fn new() -> Metrics {
        Metrics::with_health(Health::new())
    }

    /// A fresh registry reporting readiness and liveness from `health`.
    pub fn with_health(health: Health) -> Metrics {
        let families::Built { registry, names, m, k8s, open_block_latency, register_latency, fetch_latency } =
            families::build();
        Metrics {
            registry,
            names,
            health,
            started: Instant::now(),
            open_block_latency,
            register_latency,
            fetch_latency,
            m,
            k8s,
            sources: Mutex::default(),
            disk: Mutex::default(),
            scrape: Mutex::default(),
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Time since these metrics were created (the agent's start).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reads the data-path counters, registry and index cache of `shared` at every scrape.
    pub fn attach_server(&self, shared: &Arc<Shared>) {
        lock(&self.sources).server = Some(Arc::downgrade(shared));
    }

    /// Reads the cleanup counters of `lifecycle` at every scrape.
    pub fn attach_lifecycle(&self, lifecycle: &Lifecycle) {
        lock(&self.sources).lifecycle = Some(lifecycle.clone());
    }

    /// The shuffle port's address, for /status.
    pub fn set_shuffle_addr(&self, addr: SocketAddr) {
        lock(&self.sources).shuffle_addr = Some(addr);
    }

    /// Reads the Kubernetes watches' health at every scrape. Until this is called with an
    /// enabled [`K8sHealth`], no `k8s_*` series is exported.
    pub fn attach_k8s(&self, health: &Arc<K8sHealth>) {
        lock(&self.sources).k8s = Some(Arc::clone(health));
    }

    /// Records the handling time of an OpenBlocks / FetchShuffleBlocks / FetchShuffleBlockChunks.
    pub fn observe_open_blocks(&self, elapsed: Duration) {
        self.open_block_latency.observe(elapsed.as_secs_f64());
    }

    /// Records the handling time of a RegisterExecutor.
    pub fn observe_register(&self, elapsed: Duration) {
        self.register_latency.observe(elapsed.as_secs_f64());
    }

    /// Records the time from a chunk request being handled to its last byte being written.
    pub fn observe_fetch(&self, elapsed: Duration) {
        self.fetch_latency.observe(elapsed.as_secs_f64());
    }

    /// Stores the result of a walk of the application dirs (from [`DiskWatcher`], or a test).
    pub fn set_app_usage(&self, usage: AppUsage) {
        let mut disk = lock(&self.disk);
        disk.apps = Arc::new(usage);
        disk.applied = false;
    }

    /// Stores the free space of the roots (from [`DiskWatcher`], or a test).
    pub fn set_root_space(&self, roots: Vec<RootSpace>) {
        lock(&self.disk).roots = Arc::new(roots);
    }

    /// The last walk of the application dirs.
    pub fn app_usage(&self) -> Arc<AppUsage> {
        Arc::clone(&lock(&self.disk).apps)
    }

    /// The last statvfs of the roots.
    pub fn root_space(&self) -> Arc<Vec<RootSpace>> {
        Arc::clone(&lock(&self.disk).roots)
    }

    /// Every metric in the Prometheus text format (version 0.0.4), as `/metrics` serves it.
    pub fn render(&self) -> String {
        let _scrape = lock(&self.scrape);
        self.refresh();
        let mut out = Vec::with_capacity(16 << 10);
        // Encoding into a Vec only fails on a malformed family, which this registry cannot hold.
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The node's state as `/status` serves it (and `spark-shuffle-agent status` prints it).
    pub fn status(&self) -> StatusReport {
        let _scrape = lock(&self.scrape);
        self.refresh();
        report::collect(self)
    }

    /// The name of every series this agent can export (histograms as `_bucket`, `_sum`,
    /// `_count`), whether or not it has a value yet. The dashboard test checks against these.
    pub fn exported_names(&self) -> &[String] {
        &self.names
    }

    /// Brings the mirrored series up to date with their sources.
    fn refresh(&self) {
        let sources = lock(&self.sources).clone();
        let m = &self.m;
        if let Some(shared) = sources.server.as_ref().and_then(Weak::upgrade) {
            let c = &shared.counters;
            sync(&m.connections_total, c.connections_opened.load(Ordering::Relaxed));
            m.active_connections.set(gauge_value(c.connections_active.load(Ordering::Relaxed)));
            sync(&m.bytes_written, c.bytes_sent.load(Ordering::Relaxed));
            sync(&m.chunks, c.chunks_served.load(Ordering::Relaxed));
            sync(&m.blocks, c.blocks_served.load(Ordering::Relaxed));
            sync(&m.block_bytes, c.chunk_bytes_served.load(Ordering::Relaxed));
            for (kind, counter) in &m.errors {
                sync(counter, kind.counter(c).load(Ordering::Relaxed));
            }
            m.streams_open.set(gauge_value(shared.streams.len() as u64));
            m.chunks_in_flight.set(gauge_value(shared.chunks_in_flight.load(Ordering::Relaxed)));
            m.pending_frame_bytes.set(gauge_value(shared.frame_budget.in_use_bytes()));
            sync(&m.pending_frame_waits, shared.frame_budget.waits());
            m.registered_apps.set(gauge_value(shared.registry.app_count() as u64));
            m.registered_executors.set(gauge_value(shared.registry.executor_count() as u64));
            m.cleanups_pending.set(gauge_value(shared.registry.pending_cleanups().len() as u64));
            if let Some(journal) = shared.registry.journal_stats() {
                m.journal_bytes.set(gauge_value(journal.file_bytes));
                m.journal_live_records.set(gauge_value(journal.live_records));
                m.journal_snapshot_bytes.set(gauge_value(journal.snapshot_bytes));
                sync(&m.journal_appends, journal.appended);
                sync(&m.journal_append_failures, journal.failed_appends);
                sync(&m.journal_fsyncs, journal.fsyncs);
                sync(&m.journal_compactions, journal.compactions);
                m.journal_queued.set(gauge_value(journal.queued));
                m.journal_repair_pending.set(i64::from(journal.repair_pending));
            }
            let cache = shared.store.index_cache().stats();
            m.index_cache_bytes.set(gauge_value(cache.weight_bytes));
            m.index_cache_entries.set(gauge_value(cache.entries as u64));
            sync(&m.index_cache_hits, cache.hits);
            sync(&m.index_cache_misses, cache.misses);
        }
        if let Some(lifecycle) = &sources.lifecycle {
            self.refresh_lifecycle(lifecycle.counters());
        }
        if let Some(k8s) = &sources.k8s {
            self.refresh_k8s(k8s);
        }
        m.ready.set(i64::from(self.health.is_ready()));
        self.refresh_disk();
    }

    fn refresh_lifecycle(&self, c: &LifecycleCounters) {
        let m = &self.m;
        sync(&m.executor_cleanups, c.executors_cleaned.load(Ordering::Relaxed));
        sync(&m.app_cleanups, c.apps_cleaned.load(Ordering::Relaxed));
        sync(&m.cleanups_deferred, c.deferred.load(Ordering::Relaxed));
        sync(&m.cleanup_files, c.files_deleted.load(Ordering::Relaxed));
        sync(&m.cleanup_bytes, c.bytes_deleted.load(Ordering::Relaxed));
        sync(&m.cleanup_errors, c.errors.load(Ordering::Relaxed));
    }

    fn refresh_k8s(&self, health: &K8sHealth) {
        let snapshot = health.snapshot();
        if !snapshot.enabled {
            return;
        }
        let k = &self.k8s;
        for (name, w) in [("executors", &snapshot.executors), ("drivers", &snapshot.drivers)] {
            let label = [name];
            k.watch_up.with_label_values(&label).set(i64::from(w.up));
            sync(&k.watch_restarts.with_label_values(&label), w.watch_starts.saturating_sub(1));
            sync(&k.watch_relists.with_label_values(&label), w.lists.saturating_sub(1));
            sync(&k.watch_errors.with_label_values(&label), w.errors);
            k.watch_last_sync.with_label_values(&label).set(gauge_value(w.last_sync_unix_secs));
        }
        let none: [&str; 0] = [];
        sync(&k.api_errors.with_label_values(&none), snapshot.api_errors);
        sync(&k.apps_removed.with_label_values(&none), snapshot.apps_removed);
        sync(&k.executors_removed.with_label_values(&none), snapshot.executors_removed);
        sync(&k.removals_deferred.with_label_values(&none), snapshot.removals_deferred);
        sync(&k.reconciles.with_label_values(&none), snapshot.reconciles);
        k.last_reconcile.with_label_values(&none).set(gauge_value(snapshot.last_reconcile_unix_secs));
    }

    fn refresh_disk(&self) {
        let m = &self.m;
        let mut disk = lock(&self.disk);
        m.root_free_bytes.reset();
        m.root_size_bytes.reset();
        m.root_free_inodes.reset();
        for space in disk.roots.iter().filter(|s| s.error.is_none()) {
            let root = [space.root.to_string_lossy()];
            let root = [root[0].as_ref()];
            m.root_free_bytes.with_label_values(&root).set(gauge_value(space.free_bytes));
            m.root_size_bytes.with_label_values(&root).set(gauge_value(space.size_bytes));
            m.root_free_inodes.with_label_values(&root).set(gauge_value(space.free_inodes));
        }
        if disk.applied {
            return;
        }
        disk.applied = true;
        m.app_disk_bytes.reset();
        m.app_disk_files.reset();
        let usage = &disk.apps;
        if usage.scanned_at_unix == 0 {
            return;
        }
        for app in usage.apps.iter().take(TOP_APPS) {
            m.app_disk_bytes.with_label_values(&[app.app_id.as_str()]).set(gauge_value(app.bytes));
            m.app_disk_files.with_label_values(&[app.app_id.as_str()]).set(gauge_value(app.files));
        }
        if usage.apps.len() > TOP_APPS {
            let rest = &usage.apps[TOP_APPS..];
            let bytes = rest.iter().map(|a| a.bytes).sum::<u64>();
            let files = rest.iter().map(|a| a.files).sum::<u64>();
            m.app_disk_bytes.with_label_values(&[OTHER_APPS]).set(gauge_value(bytes));
            m.app_disk_files.with_label_values(&[OTHER_APPS]).set(gauge_value(files));
        }
        m.disk_scan_seconds.set(usage.scan_seconds);
        m.disk_scan_timestamp.set(gauge_value(usage.scanned_at_unix));
    }
}

/// Advances a mirrored counter to `value`. Only `refresh` (under the scrape lock) writes these
/// counters, so the difference is exact.
fn sync(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_registers_and_renders() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for line in [
            "# TYPE spark_shuffle_agent_open_block_request_latency_seconds histogram",
            "# TYPE spark_shuffle_agent_errors_total counter",
            "spark_shuffle_agent_errors_total{kind=\"bad_frame\"} 0",
            "spark_shuffle_agent_ready 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let names = metrics.exported_names();
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "a series name is registered twice");
        assert!(names.iter().any(|n| n == "spark_shuffle_agent_fetch_latency_seconds_bucket"));
        assert!(names.iter().any(|n| n == "spark_shuffle_agent_k8s_watch_up"));
    }

    #[test]
    fn every_error_kind_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for kind in ErrorKind::ALL {
            assert!(text.contains(&format!("spark_shuffle_agent_errors_total{{kind=\"{}\"}} 0", kind.as_str())));
        }
    }

    #[test]
    fn kubernetes_series_appear_only_when_the_agent_watches() {
        let metrics = Metrics::new();
        let k8s = Arc::new(K8sHealth::default());
        metrics.attach_k8s(&k8s);
        assert!(!metrics.render().contains("spark_shuffle_agent_k8s_"), "disabled: no k8s series");
        k8s.enabled.store(true, Ordering::Relaxed);
        k8s.executors.up.store(true, Ordering::Relaxed);
        k8s.executors.watch_starts.store(3, Ordering::Relaxed);
        k8s.executors.errors.store(2, Ordering::Relaxed);
        k8s.api_errors.store(4, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("spark_shuffle_agent_k8s_watch_up{watch=\"executors\"} 1"), "{text}");
        assert!(text.contains("spark_shuffle_agent_k8s_watch_up{watch=\"drivers\"} 0"));
        assert!(
            text.contains("spark_shuffle_agent_k8s_watch_restarts_total{watch=\"executors\"} 2"),
            "the first start is no restart"
        );
        assert!(text.contains("spark_shuffle_agent_k8s_watch_errors_total{watch=\"executors\"} 2"));
        assert!(text.contains("spark_shuffle_agent_k8s_api_errors_total 4"));
        k8s.executors.up.store(false, Ordering::Relaxed);
        assert!(metrics.render().contains("spark_shuffle_agent_k8s_watch_up{watch=\"executors\"} 0"));
        let report = metrics.status();
        let kube = report.kubernetes.expect("watching");
        assert!(!kube.executors.up);
        assert_eq!(kube.api_errors, 4);
    }

    #[test]
    fn disk_series_keep_the_top_apps_and_sum_the_rest() {
        let metrics = Metrics::new();
        let apps = (0..TOP_APPS as u64 + 3)
            .map(|i| AppDisk { app_id: format!("app-{i:02}"), bytes: 1000 - i, files: 1, removed: false })
            .collect();
        metrics.set_app_usage(AppUsage { apps, scanned_at_unix: 1_700_000_000, scan_seconds: 0.5 });
        let text = metrics.render();
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"app-00\"} 1000"));
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"app-19\"} 981"));
        assert!(!text.contains("app=\"app-20\""), "app-20 is beyond the top {TOP_APPS}");
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"(other)\"} 2937"), "{text}");
        assert!(text.contains("spark_shuffle_agent_app_disk_files{app=\"(other)\"} 3"));
        assert!(text.contains("spark_shuffle_agent_disk_scan_timestamp_seconds 1700000000"));
        metrics.set_app_usage(AppUsage {
            apps: vec![AppDisk { app_id: "app-new".into(), bytes: 5, files: 1, removed: false }],
            scanned_at_unix: 1_700_000_060,
            scan_seconds: 0.1,
        });
        let text = metrics.render();
        assert!(!text.contains("app=\"app-00\""), "apps gone from the walk lose their series");
        assert!(!text.contains("{app=\"(other)\"}"), "no other bucket when all apps fit");
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"app-new\"} 5"));
    }

    #[test]
    fn a_mirrored_counter_moves_to_the_source_value() {
        let c = IntCounter::new("x_total", "x").unwrap();
        sync(&c, 5);
        sync(&c, 5);
        assert_eq!(c.get(), 5);
        sync(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
