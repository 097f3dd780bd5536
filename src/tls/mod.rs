//! TLS on the shuffle port, for Spark 4's `spark.ssl.rpc.enabled` (issue 14, spec auth.md §4).
//!
//! Spark starts TLS at once on the port (no STARTTLS), TLS 1.3 and 1.2, no client
//! certificates; `spark.authenticate` then runs inside TLS. The agent can also serve plaintext
//! clients on the same port, told apart by the first byte ([`Plaintext`]).
//!
//! * [`settings`]: the `spark.ssl.rpc.*` keys with Spark's fallbacks;
//! * [`keys`]: the rustls server configuration from PEM files;
//! * [`session`]: one connection's TLS state between the socket and the frame codec, driven by
//!   the connection's transport (src/server/transport.rs), never by a stream wrapper, so the
//!   socket stays the transport's to read, write and hand between runtimes.

pub mod keys;
pub mod session;
pub mod settings;

use std::sync::{Arc, RwLock};

pub use keys::KeyError;
pub use session::{Fed, TlsSession};
pub use settings::{Plaintext, TlsFiles, TlsSettings};

use crate::sync::{read, write};

/// What every new connection of a TLS port starts from: the current server configuration
/// (replaced whole when the key files are reloaded) and whether plaintext is served too.
#[derive(Debug)]
pub struct TlsAcceptor {
    files: TlsFiles,
    config: RwLock<Arc<rustls::ServerConfig>>,
    pub plaintext: Plaintext,
}

impl TlsAcceptor {
    /// Reads the key files; an error is a configuration error at start-up.
    pub fn new(files: TlsFiles, plaintext: Plaintext) -> Result<TlsAcceptor, KeyError> {
        let config = keys::server_config(&files)?;
        Ok(TlsAcceptor { files, config: RwLock::new(config), plaintext })
    }

    /// A server session for one new connection, on the configuration in force now.
    pub fn session(&self) -> Result<TlsSession, rustls::Error> {
        TlsSession::new(Arc::clone(&read(&self.config)))
    }

    /// Reads the key files again; connections opened from now on use them (open ones keep
    /// theirs). On an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), KeyError> {
        let config = keys::server_config(&self.files)?;
        *write(&self.config) = config;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}
