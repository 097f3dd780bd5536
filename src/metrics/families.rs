//! Every series the agent exports, defined in one place: name, help text, type, labels and
//! histogram buckets. [`build`] creates them in a fresh registry; [`super::Metrics`] keeps the
//! handles and updates them. Names are full literals (`spark_shuffle_agent_...`), so a grep for a
//! name seen on a dashboard lands here.

use prometheus::core::Collector;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::ErrorKind;

/// Buckets (seconds) of the open-block latency: in-memory work, microseconds to milliseconds.
const OPEN_BLOCK_BUCKETS: &[f64] =
    &[0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0];
/// Buckets (seconds) of the register latency: includes the journal's fsync.
const REGISTER_BUCKETS: &[f64] =
    &[0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Buckets (seconds) of the fetch latency: from a cached small block to a large one sent to a
/// slow reader.
const FETCH_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Series whose values are read from elsewhere at scrape time.
#[derive(Debug)]
pub(super) struct Mirror {
    pub(super) connections_total: IntCounter,
    pub(super) active_connections: IntGauge,
    pub(super) bytes_written: IntCounter,
    pub(super) chunks: IntCounter,
    pub(super) blocks: IntCounter,
    pub(super) block_bytes: IntCounter,
    pub(super) errors: Vec<(ErrorKind, IntCounter)>,
    pub(super) streams_open: IntGauge,
    pub(super) chunks_in_flight: IntGauge,
    pub(super) pending_frame_bytes: IntGauge,
    pub(super) pending_frame_waits: IntCounter,
    pub(super) registered_apps: IntGauge,
    pub(super) registered_executors: IntGauge,
    pub(super) journal_bytes: IntGauge,
    pub(super) journal_live_records: IntGauge,
    pub(super) journal_snapshot_bytes: IntGauge,
    pub(super) journal_appends: IntCounter,
    pub(super) journal_append_failures: IntCounter,
    pub(super) journal_fsyncs: IntCounter,
    pub(super) journal_compactions: IntCounter,
    pub(super) journal_queued: IntGauge,
    pub(super) journal_repair_pending: IntGauge,
    pub(super) index_cache_bytes: IntGauge,
    pub(super) index_cache_entries: IntGauge,
    pub(super) index_cache_hits: IntCounter,
    pub(super) index_cache_misses: IntCounter,
    pub(super) executor_cleanups: IntCounter,
    pub(super) app_cleanups: IntCounter,
    pub(super) cleanups_deferred: IntCounter,
    pub(super) cleanups_pending: IntGauge,
    pub(super) cleanup_files: IntCounter,
    pub(super) cleanup_bytes: IntCounter,
    pub(super) cleanup_errors: IntCounter,
    pub(super) app_disk_bytes: IntGaugeVec,
    pub(super) app_disk_files: IntGaugeVec,
    pub(super) disk_scan_seconds: Gauge,
    pub(super) disk_scan_timestamp: IntGauge,
    pub(super) root_free_bytes: IntGaugeVec,
    pub(super) root_size_bytes: IntGaugeVec,
    pub(super) root_free_inodes: IntGaugeVec,
    pub(super) ready: IntGauge,
}

/// The Kubernetes side's series. All are vecs, so none exists until [`Metrics::attach_k8s`]
/// brings an enabled [`K8sHealth`]: an agent not watching Kubernetes exports no `k8s_*` series
/// (rather than a watch that looks down).
#[derive(Debug)]
pub(super) struct K8sFamilies {
    pub(super) watch_up: IntGaugeVec,
    pub(super) watch_restarts: IntCounterVec,
    pub(super) watch_relists: IntCounterVec,
    pub(super) watch_errors: IntCounterVec,
    pub(super) watch_last_sync: IntGaugeVec,
    pub(super) api_errors: IntCounterVec,
    pub(super) apps_removed: IntCounterVec,
    pub(super) executors_removed: IntCounterVec,
    pub(super) removals_deferred: IntCounterVec,
    pub(super) reconciles: IntCounterVec,
    pub(super) last_reconcile: IntGaugeVec,
}

/// What [`build`] creates.
pub(super) struct Built {
    pub(super) registry: prometheus::Registry,
    /// Every series name this registry can export (histograms with their suffixes).
    pub(super) names: Vec<String>,
    pub(super) m: Mirror,
    pub(super) k8s: K8sFamilies,
    pub(super) open_block_latency: Histogram,
    pub(super) register_latency: Histogram,
    pub(super) fetch_latency: Histogram,
}

/// A fresh registry holding every series of the agent (and the process collector).
pub(super) fn build() -> Built {
    let mut f = Families::default();
    let m = Mirror {
        connections_total: f.counter("spark_shuffle_agent_connections_total", "Shuffle connections accepted."),
        active_connections: f.gauge("spark_shuffle_agent_active_connections", "Shuffle connections open now."),
        bytes_written: f.counter(
            "spark_shuffle_agent_bytes_written_total",
            "Bytes written to shuffle connections: block data plus every response header and RPC reply.",
        ),
        chunks: f.counter(
            "spark_shuffle_agent_chunks_transferred_total",
            "Chunks (ChunkFetchSuccess and StreamResponse) queued for sending; one per fetched chunk.",
        ),
        blocks: f.counter(
            "spark_shuffle_agent_blocks_transferred_total",
            "Shuffle blocks served; a batch-fetch chunk of reduce range [start, end) counts end - start.",
        ),
        block_bytes: f.counter(
            "spark_shuffle_agent_block_bytes_transferred_total",
            "Bytes of block data served (segment sizes of the chunks transferred).",
        ),
        errors: {
            let vec = f.counter_vec(
                "spark_shuffle_agent_errors_total",
                "Errors by kind: connection-ending (bad_frame, idle_timeout, io, refused, chunk_limit, \
                 frame_budget, accept) and failure replies (chunk_failure, rpc_failure).",
                &["kind"],
            );
            ErrorKind::ALL.iter().map(|k| (*k, vec.with_label_values(&[k.as_str()]))).collect()
        },
        streams_open: f.gauge(
            "spark_shuffle_agent_streams_open",
            "Streams opened by OpenBlocks/FetchShuffleBlocks and not yet closed with their connection.",
        ),
        chunks_in_flight: f.gauge(
            "spark_shuffle_agent_chunks_in_flight",
            "Chunks queued or being written, server-wide (what spark.shuffle.maxChunksBeingTransferred caps).",
        ),
        pending_frame_bytes: f.gauge(
            "spark_shuffle_agent_pending_frame_bytes",
            "Memory granted to large request frames (over 64 KiB) being received, node-wide \
             (what agent.max.pending.frame.bytes caps).",
        ),
        pending_frame_waits: f.counter(
            "spark_shuffle_agent_pending_frame_waits_total",
            "Times a connection stopped reading because agent.max.pending.frame.bytes was used up.",
        ),
        registered_apps: f
            .gauge("spark_shuffle_agent_registered_apps", "Applications with at least one registered executor."),
        registered_executors: f
            .gauge("spark_shuffle_agent_registered_executors", "Registered (application, executor) pairs."),
        journal_bytes: f.gauge(
            "spark_shuffle_agent_journal_bytes",
            "Size of the registration journal file up to its last durable record.",
        ),
        journal_live_records: f.gauge(
            "spark_shuffle_agent_journal_live_records",
            "Facts in force in the journal: registrations, drivers and pending cleanups.",
        ),
        journal_snapshot_bytes: f.gauge(
            "spark_shuffle_agent_journal_snapshot_bytes",
            "Bytes a compacted journal would take (the live state, encoded).",
        ),
        journal_appends: f
            .counter("spark_shuffle_agent_journal_appends_total", "Journal records made durable and acknowledged."),
        journal_append_failures: f.counter(
            "spark_shuffle_agent_journal_append_failures_total",
            "Journal records answered with an error (the registration or removal was not acknowledged).",
        ),
        journal_fsyncs: f.counter(
            "spark_shuffle_agent_journal_fsyncs_total",
            "Journal group commits: one write and one fdatasync each.",
        ),
        journal_compactions: f.counter("spark_shuffle_agent_journal_compactions_total", "Journal compactions."),
        journal_queued: f.gauge("spark_shuffle_agent_journal_queued", "Journal records waiting for the writer thread."),
        journal_repair_pending: f.gauge(
            "spark_shuffle_agent_journal_repair_pending",
            "1 while journal appends fail until the writer recovers from an earlier failure (see the log).",
        ),
        index_cache_bytes: f
            .gauge("spark_shuffle_agent_index_cache_bytes", "Weight of the parsed index files in the cache."),
        index_cache_entries: f.gauge("spark_shuffle_agent_index_cache_entries", "Index files in the cache."),
        index_cache_hits: f.counter("spark_shuffle_agent_index_cache_hits_total", "Index cache hits."),
        index_cache_misses: f.counter(
            "spark_shuffle_agent_index_cache_misses_total",
            "Index cache misses (the index file was read from disk).",
        ),
        executor_cleanups: f.counter(
            "spark_shuffle_agent_executor_cleanups_total",
            "Executors whose unserved files (spill, broadcast, temp) were deleted after they went away.",
        ),
        app_cleanups: f
            .counter("spark_shuffle_agent_app_cleanups_total", "Removed applications whose directories were deleted."),
        cleanups_deferred: f.counter(
            "spark_shuffle_agent_cleanups_deferred_total",
            "Cleanup requests not done when asked (queue full or journal write failed); they are retried or \
             folded into the app's removal.",
        ),
        cleanups_pending: f.gauge(
            "spark_shuffle_agent_cleanups_pending",
            "Removed applications whose directories are still to be deleted.",
        ),
        cleanup_files: f.counter("spark_shuffle_agent_cleanup_deleted_files_total", "Files deleted by cleanups."),
        cleanup_bytes: f
            .counter("spark_shuffle_agent_cleanup_deleted_bytes_total", "Bytes of the files deleted by cleanups."),
        cleanup_errors: f
            .counter("spark_shuffle_agent_cleanup_errors_total", "Files or directories a cleanup could not delete."),
        app_disk_bytes: f.gauge_vec(
            "spark_shuffle_agent_app_disk_bytes",
            "Bytes of files under the application's executor dirs, from the last background walk. The 20 \
             largest apps have their own series, the rest are summed under app=\"(other)\".",
            &["app"],
        ),
        app_disk_files: f.gauge_vec(
            "spark_shuffle_agent_app_disk_files",
            "Files under the application's executor dirs, from the last background walk (same apps as \
             spark_shuffle_agent_app_disk_bytes).",
            &["app"],
        ),
        disk_scan_seconds: f.fgauge(
            "spark_shuffle_agent_disk_scan_duration_seconds",
            "How long the last walk of the application dirs took.",
        ),
        disk_scan_timestamp: f.gauge(
            "spark_shuffle_agent_disk_scan_timestamp_seconds",
            "When the last walk of the application dirs finished (Unix time; 0 = none yet).",
        ),
        root_free_bytes: f.gauge_vec(
            "spark_shuffle_agent_root_free_bytes",
            "Bytes executors can still write on the root's filesystem (statvfs f_bavail).",
            &["root"],
        ),
        root_size_bytes: f.gauge_vec(
            "spark_shuffle_agent_root_size_bytes",
            "Size of the root's filesystem (statvfs f_blocks).",
            &["root"],
        ),
        root_free_inodes: f.gauge_vec(
            "spark_shuffle_agent_root_free_inodes",
            "Inodes executors can still create on the root's filesystem (statvfs f_favail).",
            &["root"],
        ),
        ready: f.gauge(
            "spark_shuffle_agent_ready",
            "1 when /readyz answers 200: registrations recovered, shuffle port bound, not draining.",
        ),
    };
    let open_block_latency = f.histogram(
        "spark_shuffle_agent_open_block_request_latency_seconds",
        "Time to handle OpenBlocks, FetchShuffleBlocks and FetchShuffleBlockChunks (opening the stream, \
         not sending it), failures included.",
        OPEN_BLOCK_BUCKETS,
    );
    let register_latency = f.histogram(
        "spark_shuffle_agent_register_executor_request_latency_seconds",
        "Time to handle RegisterExecutor, including making it durable in the journal, failures included.",
        REGISTER_BUCKETS,
    );
    let fetch_latency = f.histogram(
        "spark_shuffle_agent_fetch_latency_seconds",
        "Time from a chunk or stream request being handled to the last byte of its response being written \
         to the socket. Includes waiting behind earlier responses and for a slow reader.",
        FETCH_BUCKETS,
    );
    let none: &[&str] = &[];
    let watch: &[&str] = &["watch"];
    let k8s = K8sFamilies {
        watch_up: f.gauge_vec(
            "spark_shuffle_agent_k8s_watch_up",
            "1 while the Kubernetes watch has a complete list and an accepted watch request, else 0.",
            watch,
        ),
        watch_restarts: f.counter_vec(
            "spark_shuffle_agent_k8s_watch_restarts_total",
            "Watch requests after the first: resumes after the API server ended the watch (routine, every \
             few minutes) or restarts after an error. A high rate means trouble.",
            watch,
        ),
        watch_relists: f.counter_vec(
            "spark_shuffle_agent_k8s_watch_relists_total",
            "Complete LISTs after the first: the watch expired (410 Gone) or failed in a way that needs one.",
            watch,
        ),
        watch_errors: f.counter_vec(
            "spark_shuffle_agent_k8s_watch_errors_total",
            "Errors the watch reported (failed list/watch requests, cut streams, ERROR events); each is \
             retried with backoff.",
            watch,
        ),
        watch_last_sync: f.gauge_vec(
            "spark_shuffle_agent_k8s_watch_last_sync_timestamp_seconds",
            "When the watch last completed a LIST (Unix time; 0 = never).",
            watch,
        ),
        api_errors: f.counter_vec(
            "spark_shuffle_agent_k8s_api_errors_total",
            "Failed requests to the Kubernetes API server (no connection, timeout, non-2xx), from any caller.",
            none,
        ),
        apps_removed: f.counter_vec(
            "spark_shuffle_agent_k8s_apps_removed_total",
            "Applications removed because Kubernetes said their driver pod finished or is gone.",
            none,
        ),
        executors_removed: f.counter_vec(
            "spark_shuffle_agent_k8s_executors_removed_total",
            "Executors whose pod was deleted or finished, handed to the cleanup engine.",
            none,
        ),
        removals_deferred: f.counter_vec(
            "spark_shuffle_agent_k8s_removals_deferred_total",
            "Times an application's end could not be confirmed (the API did not answer), so its files were kept.",
            none,
        ),
        reconciles: f.counter_vec(
            "spark_shuffle_agent_k8s_reconciles_total",
            "Reconcile passes completed (each checks every application known here against Kubernetes).",
            none,
        ),
        last_reconcile: f.gauge_vec(
            "spark_shuffle_agent_k8s_last_reconcile_timestamp_seconds",
            "When the last reconcile pass that could judge applications ended (Unix time; 0 = never).",
            none,
        ),
    };
    let build =
        f.gauge_vec("spark_shuffle_agent_build_info", "Always 1; the labels say which build runs.", &["version"]);
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    #[cfg(target_os = "linux")]
    f.register(prometheus::process_collector::ProcessCollector::for_self(), &[]);
    Built { registry: f.registry, names: f.names, m, k8s, open_block_latency, register_latency, fetch_latency }
}

/// Creates and registers the families, recording the series names each can export.
#[derive(Default)]
struct Families {
    registry: prometheus::Registry,
    names: Vec<String>,
}

impl Families {
    /// Registers `c`. The names are literals of this file, unique by construction (a unit test
    /// builds the whole set), so registration cannot fail at run time.
    fn register(&mut self, c: impl Collector + 'static, suffixes: &[&str]) {
        for desc in c.desc() {
            if suffixes.is_empty() {
                self.names.push(desc.fq_name.clone());
            }
            self.names.extend(suffixes.iter().map(|s| format!("{}{s}", desc.fq_name)));
        }
        if let Err(e) = self.registry.register(Box::new(c)) {
            tracing::error!(error = %e, "a metric could not be registered");
        }
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric name");
        self.register(c.clone(), &[]);
        c
    }

    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric name");
        self.register(g.clone(), &[]);
        g
    }

    fn fgauge(&mut self, name: &str, help: &str) -> Gauge {
        let g = Gauge::with_opts(Opts::new(name, help)).expect("valid metric name");
        self.register(g.clone(), &[]);
        g
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.register(c.clone(), &[]);
        c
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.register(g.clone(), &[]);
        g
    }

    fn histogram(&mut self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid buckets");
        self.register(h.clone(), &["_bucket", "_sum", "_count"]);
        h
    }
}
