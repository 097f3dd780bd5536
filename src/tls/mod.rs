//! TLS on the shuffle port, for Spark 4's `spark.ssl.rpc.enabled` (issue 14, spec auth.md §4).
//!
//! Spark starts TLS at once on the port (no STARTTLS), TLS 1.3 and 1.2, no client
//! certificates; `spark.authenticate` then runs inside TLS. The agent can also serve plaintext
//! clients on the same port, told apart by the first byte ([`Plaintext`]).
//!
//! * [`settings`]: the `spark.ssl.rpc.*` keys with Spark's fallbacks;
//! * [`keys`]: the rustls server configuration from PEM files or a PKCS12 keystore;
//! * [`session`]: one connection's TLS state between the socket and the frame codec, driven by
//!   the connection's transport (src/server/transport.rs), never by a stream wrapper, so the
//!   socket stays the transport's to read, write and hand between runtimes.

pub mod expiry;
pub mod keys;
mod keystore;
pub mod metrics;
pub mod session;
pub mod settings;

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use keys::KeyError;
pub use session::{Fed, TlsSession};
pub use settings::{KeySource, Plaintext, TlsFiles, TlsSettings};

use crate::sync::{read, write};

/// What every new connection of a TLS port starts from: the current server configuration
/// (replaced whole when the key files change) and whether plaintext is served too.
#[derive(Debug)]
pub struct TlsAcceptor {
    files: TlsFiles,
    loaded: RwLock<Loaded>,
    pub plaintext: Plaintext,
    pub stats: TlsStats,
}

/// The configuration in force and the files it was read from.
#[derive(Debug)]
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// The files as last read or tried: a change to either means "read them again".
    seen: FileIds,
}

/// (device, inode, modification time in ns, length) of each key file (the chain and the key,
/// or the keystore). A Kubernetes Secret volume swaps a symlink to a new directory, so a
/// rotation changes the inode.
type FileIds = Vec<Option<(u64, u64, i64, u64)>>;

/// What the metrics show of TLS.
#[derive(Debug, Default)]
pub struct TlsStats {
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// The serving certificate's notAfter (Unix seconds; 0 = unknown).
    pub not_after_unix_secs: AtomicI64,
}

impl TlsAcceptor {
    /// Reads the key files; an error is a configuration error at start-up.
    pub fn new(files: TlsFiles, plaintext: Plaintext) -> Result<TlsAcceptor, KeyError> {
        let seen = file_ids(&files);
        let (config, not_after) = keys::server_config(&files)?;
        let stats = TlsStats::default();
        stats.not_after_unix_secs.store(not_after.unwrap_or(0), Ordering::Relaxed);
        Ok(TlsAcceptor { files, loaded: RwLock::new(Loaded { config, seen }), plaintext, stats })
    }

    /// A server session for one new connection, on the configuration in force now.
    pub fn session(&self) -> Result<TlsSession, rustls::Error> {
        TlsSession::new(Arc::clone(&read(&self.loaded).config))
    }

    /// Reads the key files again if either changed since last read or tried. Connections opened
    /// from then on use them; open ones keep theirs. On an error the configuration in force
    /// stays, and the same files are not tried again. Ok(true): reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, KeyError> {
        let now = file_ids(&self.files);
        if read(&self.loaded).seen == now {
            return Ok(false);
        }
        let built = keys::server_config(&self.files);
        let mut loaded = write(&self.loaded);
        loaded.seen = now;
        match built {
            Ok((config, not_after)) => {
                loaded.config = config;
                self.stats.not_after_unix_secs.store(not_after.unwrap_or(0), Ordering::Relaxed);
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

fn file_ids(files: &TlsFiles) -> FileIds {
    let id = |path: &std::path::Path| {
        let m = std::fs::metadata(path).ok()?;
        Some((m.dev(), m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.len()))
    };
    files.keys.paths().into_iter().map(id).collect()
}

/// Looks at the key files every `interval` until `shutdown`, reloading them when they change
/// (cert-manager rotating a Secret's certificate).
pub async fn watch_key_files(acceptor: Arc<TlsAcceptor>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match acceptor.reload_if_changed() {
            Ok(true) => {
                info!(keys = %acceptor.files.keys.name().display(), "TLS keys reloaded; new connections use them")
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "TLS keys changed but cannot be used; the ones in force stay"),
        }
    }
}
