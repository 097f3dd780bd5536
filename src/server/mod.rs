//! The network side: the accept loop, one task per connection, in-order dispatch of requests,
//! and zero-copy writes. Protocol decisions live in [`crate::protocol`], file access in
//! [`crate::store`], registrations in [`crate::registry`]; this module only wires them to sockets.

mod connection;
mod disk_reads;
mod dispatch;
mod handshake;
mod input;
pub mod limits;
pub mod metrics;
mod outbox;
mod placement;
mod streams;
mod transport;
mod warn_throttle;

pub use connection::ConnectionEnd;
use connection::Session;
pub use input::{FrameBudget, SMALL_FRAME};
pub use metrics::{ErrorKind, Latency, ServerSource};
pub use streams::StreamOwners;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::registry::Registry;
use crate::store::Store;
use warn_throttle::{ConnectionWarnings, Verdict};

/// The knobs of the data path, taken from the agent's configuration (`Config::server_settings`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Close a connection after this long without reads or writes (`spark.shuffle.io.connectionTimeout`).
    pub idle_timeout: Duration,
    /// Largest request frame accepted; larger ones close the connection before any allocation.
    pub max_frame_bytes: usize,
    /// Node-wide budget for request frames larger than [`SMALL_FRAME`] being received; should
    /// be at least `max_frame_bytes` (a frame larger than the budget closes its connection).
    pub max_pending_frame_bytes: usize,
    /// Chunk bodies below this size are copied next to their header; larger ones use sendfile.
    pub coalesce_max_bytes: u64,
    /// Server-wide limit of chunks queued or being written (`spark.shuffle.maxChunksBeingTransferred`).
    pub max_chunks_being_transferred: u64,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Streams one connection may hold open; past it, a fetch RPC fails.
    pub max_streams_per_connection: usize,
}

/// Plain counters of the data path (one relaxed atomic add each), exported by
/// [`ServerSource`] at scrape time.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_opened: AtomicU64,
    pub connections_active: AtomicU64,
    pub bad_frames: AtomicU64,
    /// TLS failures (handshakes, records, plaintext on a TLS-only port).
    pub tls_failures: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Bytes copied in user space on their way out (`Outbox::take_copied`, TLS records).
    pub bytes_copied: AtomicU64,
    pub chunks_served: AtomicU64,
    pub chunk_bytes_served: AtomicU64,
    pub blocks_served: AtomicU64,
    pub chunk_failures: AtomicU64,
    pub rpc_failures: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Connections ended by a socket error.
    pub io_errors: AtomicU64,
    /// Connections closed after a request that cannot be answered in-stream (UploadStream).
    pub refused: AtomicU64,
    /// Connections closed over `spark.shuffle.maxChunksBeingTransferred`.
    pub chunk_limit_closes: AtomicU64,
    /// Connections closed because a large frame found no room in `agent.max.pending.frame.bytes`.
    pub frame_budget_closes: AtomicU64,
    /// Failed accept(2) calls.
    pub accept_errors: AtomicU64,
    /// Handshake outcomes, indexed by [`handshake::Outcome`].
    pub handshakes: [AtomicU64; handshake::Outcome::ALL.len()],
}

impl Counters {
    /// Counts a handshake outcome, for `spark_shuffle_agent_handshakes_total`.
    fn handshake(&self, outcome: handshake::Outcome) {
        self.handshakes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts how a connection ended, for `spark_shuffle_agent_errors_total`.
    fn count_end(&self, end: &ConnectionEnd) {
        if let Some(kind) = end.error_kind() {
            kind.counter(self).fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Everything connections share.
#[derive(Debug)]
pub struct Shared {
    pub settings: Settings,
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    pub streams: Arc<StreamOwners>,
    /// Chunks queued or being written, server-wide.
    pub chunks_in_flight: AtomicU64,
    /// Memory for large request frames being received, node-wide (`agent.max.pending.frame.bytes`).
    pub frame_budget: FrameBudget,
    pub counters: Counters,
    /// The latency histograms the data path observes.
    pub latency: Latency,
    /// Who may act for which app: nobody checked, one shared secret, or each app's own.
    pub access: crate::auth::Access,
    /// `spark.ssl.rpc.enabled`: TLS on the port (and plaintext too, unless refused).
    pub tls: Option<Arc<crate::tls::TlsAcceptor>>,
    /// Where reads that must wait for the disk run, off the event loop.
    pub disk: disk_reads::DiskReads,
}

impl Shared {
    pub fn new(settings: Settings, registry: Arc<Registry>, store: Arc<Store>) -> Shared {
        Shared {
            frame_budget: FrameBudget::new(settings.max_pending_frame_bytes),
            settings,
            registry,
            store,
            streams: Arc::new(StreamOwners::new(random_stream_base())),
            chunks_in_flight: AtomicU64::new(0),
            counters: Counters::default(),
            latency: Latency::new(),
            access: crate::auth::Access::Open,
            tls: None,
            disk: Default::default(),
        }
    }

    /// Serves TLS clients on the port with `acceptor`.
    pub fn with_tls(self, acceptor: Option<Arc<crate::tls::TlsAcceptor>>) -> Shared {
        Shared { tls: acceptor, ..self }
    }

    /// Requires every connection to authenticate under `policy` (None: nobody has to).
    pub fn with_access(self, access: crate::auth::Access) -> Shared {
        Shared { access, ..self }
    }
}

/// A random non-negative start for stream ids, as Spark 4.3 does (NOTES D1): ids of a restarted
/// agent do not collide with ids a client may still hold from before.
fn random_stream_base() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    (h.finish() >> 1) as i64
}

/// Serves connections until `shutdown`, then gives open connections up to `grace` to finish.
/// Connections start on the runtime this runs on (the control runtime) and move to `data` at
/// their first data request; pass `None` to serve everything where this runs.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    grace: Duration,
    data: Option<tokio::runtime::Handle>,
) {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(shared.settings.max_connections.max(1)));
    let warnings = Arc::new(ConnectionWarnings::new(warn_throttle::WINDOW, warn_throttle::PER_WINDOW));
    let summaries = tokio::spawn(summarise_warnings(Arc::clone(&warnings), shutdown.clone()));
    let mut next_conn_id = 0u64;
    while let Some((permit, socket, peer)) = accept(&listener, &permits, &shared, &shutdown).await {
        next_conn_id += 1;
        let session = Session { conn_id: next_conn_id, shutdown: shutdown.clone() };
        let placement = match &data {
            Some(handle) => placement::Placement::Control { data: handle.clone() },
            None => placement::Placement::Data,
        };
        let (shared, warnings) = (Arc::clone(&shared), Arc::clone(&warnings));
        tracker.spawn(async move {
            let counters = &shared.counters;
            counters.connections_opened.fetch_add(1, Ordering::Relaxed);
            counters.connections_active.fetch_add(1, Ordering::Relaxed);
            let conn_id = session.conn_id;
            let end = placement::serve(Arc::clone(&shared), socket, session, placement).await;
            counters.connections_active.fetch_sub(1, Ordering::Relaxed);
            counters.count_end(&end);
            log_end(&warnings, peer, conn_id, &end);
            drop(permit);
        });
    }
    drop(listener);
    drain(tracker, grace).await;
    summaries.abort();
    warnings.flush(Instant::now(), true);
}

/// The next connection, with its permit; None at shutdown. A permit is taken *before* accept:
/// at the limit, new clients wait in the backlog instead of being accepted and starved.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<(tokio::sync::OwnedSemaphorePermit, tokio::net::TcpStream, std::net::SocketAddr)> {
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return None,
        permit = Arc::clone(permits).acquire_owned() => permit.ok()?,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => return Some((permit, socket, peer)),
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    shared.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Waits up to `grace` for the open connections to finish, then gives up on them.
async fn drain(tracker: TaskTracker, grace: Duration) {
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        info!(open, grace_secs = grace.as_secs(), "draining connections");
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(open = tracker.len(), "grace period over; dropping the remaining connections");
    }
}

/// Logs how a connection ended. Routine ends at debug (executors come and go, pools close idle
/// connections); a socket error or a refused request at info; garbage or overload at warn;
/// all but the routine ones rate-limited per kind (a flood of bad connections would otherwise
/// flood the log).
fn log_end(warnings: &ConnectionWarnings, peer: std::net::SocketAddr, conn_id: u64, end: &ConnectionEnd) {
    let kind = match end.error_kind() {
        None | Some(ErrorKind::IdleTimeout) => {
            debug!(%peer, conn_id, %end, "connection ended");
            return;
        }
        Some(kind) => kind,
    };
    match warnings.admit(kind, Instant::now()) {
        Verdict::Log if warn_throttle::is_warning(kind) => warn!(%peer, conn_id, %end, "connection closed"),
        Verdict::Log => info!(%peer, conn_id, %end, "connection closed"),
        Verdict::Suppress => debug!(%peer, conn_id, %end, "connection closed (rate-limited)"),
    }
}

/// Logs the summary of each warning window that suppressed something, soon after it is over,
/// so a flood that stopped is reported without waiting for the next warning.
async fn summarise_warnings(warnings: Arc<ConnectionWarnings>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(warn_throttle::WINDOW / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => warnings.flush(Instant::now(), false),
        }
    }
}
