//! The server's numbers: how connections and requests failed ([`ErrorKind`]), the latency
//! histograms observed on the data path ([`Latency`]), and the [`Source`] that exports them with
//! the plain counters of [`super::Counters`]. The series names and help texts live here, next to
//! what they count; `docs/metrics.md` describes each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge};

use super::handshake::Outcome;
use super::{Counters, Shared};
use crate::metrics::{gauge_value, histogram, sync, Series, Source};

/// Why a connection or a request failed: the fixed values of the `kind` label of
/// `spark_shuffle_agent_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A frame that does not decode (or, with the GCM cipher, bytes that fail authentication);
    /// the connection is closed without a reply.
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
    /// A TLS failure: a handshake the agent or the client refused, a bad record, or a
    /// plaintext client on a port that refuses plaintext.
    Tls,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::BadFrame,
        ErrorKind::IdleTimeout,
        ErrorKind::Io,
        ErrorKind::Refused,
        ErrorKind::ChunkLimit,
        ErrorKind::FrameBudget,
        ErrorKind::ChunkFailure,
        ErrorKind::RpcFailure,
        ErrorKind::Accept,
        ErrorKind::Tls,
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
            ErrorKind::Tls => "tls",
        }
    }

    /// The data-path counter of this kind: the server adds to it, its source exports it.
    pub fn counter(self, c: &Counters) -> &AtomicU64 {
        match self {
            ErrorKind::BadFrame => &c.bad_frames,
            ErrorKind::Tls => &c.tls_failures,
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

/// Buckets (seconds) of the handshake latency: one AuthEngine round trip or two SASL ones,
/// including the client's think time between them.
const HANDSHAKE_BUCKETS: &[f64] =
    &[0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0];

/// The latency histograms the data path observes (lock-free atomics, no allocation).
#[derive(Debug, Clone)]
pub struct Latency {
    pub open_blocks: Histogram,
    pub register: Histogram,
    pub fetch: Histogram,
    pub handshake: Histogram,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            open_blocks: histogram(
                "spark_shuffle_agent_open_block_request_latency_seconds",
                "Time to handle OpenBlocks, FetchShuffleBlocks and FetchShuffleBlockChunks (opening the stream, \
                 not sending it), failures included.",
                OPEN_BLOCK_BUCKETS,
            ),
            register: histogram(
                "spark_shuffle_agent_register_executor_request_latency_seconds",
                "Time to handle RegisterExecutor, including making it durable in the journal, failures included.",
                REGISTER_BUCKETS,
            ),
            fetch: histogram(
                "spark_shuffle_agent_fetch_latency_seconds",
                "Time from a chunk or stream request being handled to the last byte of its response being \
                 written to the socket. Includes waiting behind earlier responses and for a slow reader.",
                FETCH_BUCKETS,
            ),
            handshake: histogram(
                "spark_shuffle_agent_handshake_latency_seconds",
                "Time from a connection's first handshake message to its authentication (AuthEngine or SASL), \
                 successful handshakes only.",
                HANDSHAKE_BUCKETS,
            ),
        }
    }

    /// Records the handling time of an OpenBlocks / FetchShuffleBlocks / FetchShuffleBlockChunks.
    pub fn observe_open_blocks(&self, elapsed: Duration) {
        self.open_blocks.observe(elapsed.as_secs_f64());
    }

    /// Records the handling time of a RegisterExecutor.
    pub fn observe_register(&self, elapsed: Duration) {
        self.register.observe(elapsed.as_secs_f64());
    }

    /// Records the time from a chunk request being handled to its last byte being written.
    pub fn observe_fetch(&self, elapsed: Duration) {
        self.fetch.observe(elapsed.as_secs_f64());
    }
}

/// The server's series, refreshed from [`Shared`] at each scrape.
pub struct ServerSource {
    shared: Arc<Shared>,
    series: Series,
    connections_total: IntCounter,
    active_connections: IntGauge,
    bytes_written: IntCounter,
    bytes_copied: IntCounter,
    blocking_reads: IntCounter,
    chunks: IntCounter,
    blocks: IntCounter,
    block_bytes: IntCounter,
    errors: Vec<(ErrorKind, IntCounter)>,
    handshakes: Vec<(Outcome, IntCounter)>,
    /// Per-app mode only: apps by access, and conflicts.
    auth_apps: [IntGauge; 3],
    secret_conflicts: IntCounter,
    streams_open: IntGauge,
    chunks_in_flight: IntGauge,
    pending_frame_bytes: IntGauge,
    pending_frame_waits: IntCounter,
}

impl ServerSource {
    pub fn new(shared: Arc<Shared>) -> ServerSource {
        let mut s = Series::new();
        let errors = s.counter_vec(
            "spark_shuffle_agent_errors_total",
            "Errors by kind: connection-ending (bad_frame, idle_timeout, io, refused, chunk_limit, \
             frame_budget, accept) and failure replies (chunk_failure, rpc_failure).",
            &["kind"],
        );
        let handshakes = s.counter_vec(
            "spark_shuffle_agent_handshakes_total",
            "Authentication outcomes (spark.authenticate): ok, wrong_secret, unknown_app (no secret for its \
             app id), unauthenticated_request (not a handshake before authentication, or a malformed one), \
             app_mismatch (a request for another app than the connection authenticated for), \
             conflicting_secret (an app refused because its pods disagree on its secret or namespace), \
             plaintext_for_tls_app (a plaintext connection acting for an app whose pods use TLS).",
            &["outcome"],
        );
        let apps = s.gauge_vec(
            "spark_shuffle_agent_auth_apps",
            "Applications whose authentication settings were learned from their pods (agent.auth.secrets=pods), \
             by how they are served: secret (authenticated), open (without authentication), refused.",
            &["access"],
        );
        let source = ServerSource {
            handshakes: Outcome::ALL.iter().map(|o| (*o, handshakes.with_label_values(&[o.label()]))).collect(),
            auth_apps: ["secret", "open", "refused"].map(|a| apps.with_label_values(&[a])),
            secret_conflicts: s.counter(
                "spark_shuffle_agent_app_secret_conflicts_total",
                "Applications refused because a pod claimed a secret, namespace or driver other than the one \
                 first learned for them (agent.auth.secrets=pods). Each is also a WARN line.",
            ),
            connections_total: s.counter("spark_shuffle_agent_connections_total", "Shuffle connections accepted."),
            active_connections: s.gauge("spark_shuffle_agent_active_connections", "Shuffle connections open now."),
            bytes_written: s.counter(
                "spark_shuffle_agent_bytes_written_total",
                "Bytes written to shuffle connections: block data plus every response header and RPC reply.",
            ),
            bytes_copied: s.counter(
                "spark_shuffle_agent_bytes_copied_total",
                "Bytes copied in user space on their way out: file reads into the agent's buffers (pread), \
                 moves between its buffers, and into TLS records. Over bytes_written_total: copies per byte \
                 served (0 for bodies sent with sendfile).",
            ),
            blocking_reads: s.counter(
                "spark_shuffle_agent_blocking_disk_reads_total",
                "Reads of block, index and data files that missed the page cache and ran on the \
                 blocking pool (off the event loop): a block body, a sendfile call, an index read \
                 with the data file's open.",
            ),
            chunks: s.counter(
                "spark_shuffle_agent_chunks_transferred_total",
                "Chunks (ChunkFetchSuccess and StreamResponse) queued for sending; one per fetched chunk.",
            ),
            blocks: s.counter(
                "spark_shuffle_agent_blocks_transferred_total",
                "Shuffle blocks served; a batch-fetch chunk of reduce range [start, end) counts end - start.",
            ),
            block_bytes: s.counter(
                "spark_shuffle_agent_block_bytes_transferred_total",
                "Bytes of block data served (segment sizes of the chunks transferred).",
            ),
            errors: ErrorKind::ALL.iter().map(|k| (*k, errors.with_label_values(&[k.as_str()]))).collect(),
            streams_open: s.gauge(
                "spark_shuffle_agent_streams_open",
                "Streams opened by OpenBlocks/FetchShuffleBlocks and not yet closed with their connection.",
            ),
            chunks_in_flight: s.gauge(
                "spark_shuffle_agent_chunks_in_flight",
                "Chunks queued or being written, server-wide (what spark.shuffle.maxChunksBeingTransferred caps).",
            ),
            pending_frame_bytes: s.gauge(
                "spark_shuffle_agent_pending_frame_bytes",
                "Memory granted to large request frames (over 64 KiB) being received, node-wide \
                 (what agent.max.pending.frame.bytes caps).",
            ),
            pending_frame_waits: s.counter(
                "spark_shuffle_agent_pending_frame_waits_total",
                "Times a connection stopped reading because agent.max.pending.frame.bytes was used up.",
            ),
            series: Series::new(),
            shared,
        };
        let latency = source.shared.latency.clone();
        for h in [latency.open_blocks, latency.register, latency.fetch, latency.handshake] {
            s.include_histogram(h);
        }
        ServerSource { series: s, ..source }
    }
}

impl Source for ServerSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        let shared = &self.shared;
        let c = &shared.counters;
        sync(&self.connections_total, c.connections_opened.load(Ordering::Relaxed));
        self.active_connections.set(gauge_value(c.connections_active.load(Ordering::Relaxed)));
        sync(&self.bytes_written, c.bytes_sent.load(Ordering::Relaxed));
        sync(&self.bytes_copied, c.bytes_copied.load(Ordering::Relaxed));
        sync(&self.blocking_reads, shared.disk.blocking.load(Ordering::Relaxed));
        sync(&self.chunks, c.chunks_served.load(Ordering::Relaxed));
        sync(&self.blocks, c.blocks_served.load(Ordering::Relaxed));
        sync(&self.block_bytes, c.chunk_bytes_served.load(Ordering::Relaxed));
        for (kind, counter) in &self.errors {
            sync(counter, kind.counter(c).load(Ordering::Relaxed));
        }
        for (outcome, counter) in &self.handshakes {
            sync(counter, c.handshakes[*outcome as usize].load(Ordering::Relaxed));
        }
        if let Some(keyring) = shared.access.keyring() {
            let (secret, open, refused) = keyring.counts();
            for (gauge, n) in self.auth_apps.iter().zip([secret, open, refused]) {
                gauge.set(gauge_value(n as u64));
            }
            sync(&self.secret_conflicts, keyring.conflicts());
        }
        self.streams_open.set(gauge_value(shared.streams.len() as u64));
        self.chunks_in_flight.set(gauge_value(shared.chunks_in_flight.load(Ordering::Relaxed)));
        self.pending_frame_bytes.set(gauge_value(shared.frame_budget.in_use_bytes()));
        sync(&self.pending_frame_waits, shared.frame_budget.waits());
    }
}
