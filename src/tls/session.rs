//! One connection's TLS state, driven by hand (rustls's sans-I/O `ServerConnection`): the
//! transport feeds it what it read off the socket and takes plaintext out; the outbox pushes
//! plaintext in and writes the records it makes to the socket. Both buffers inside rustls are
//! bounded: received plaintext is taken out after every record batch, and outgoing records are
//! capped at [`OUTGOING_LIMIT`] before they must be written.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::{ServerConfig, ServerConnection};

/// The most TLS record bytes a session holds before the writer must hand them to the socket.
pub const OUTGOING_LIMIT: usize = 64 << 10;

/// What feeding a session told.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Records processed; any plaintext was appended.
    Open,
    /// The peer sent close_notify: no more plaintext will come.
    Closed,
}

/// One TLS server session.
pub struct TlsSession {
    // Boxed: a connection's state is over a kilobyte and the transport moves between runtimes.
    conn: Box<ServerConnection>,
    /// Plaintext bytes rustls copied into its records (then encrypted in place there), and
    /// record bytes copied out for a session cipher, since the last [`TlsSession::take_copied`].
    copied: u64,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession").field("handshaking", &self.conn.is_handshaking()).finish()
    }
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(OUTGOING_LIMIT));
        Ok(TlsSession { conn: Box::new(conn), copied: 0 })
    }

    /// Processes `ciphertext` read off the socket, appending the plaintext it carries to
    /// `plain`. An error is a TLS failure (bad record, failed handshake): rustls has queued the
    /// alert to send, and the connection ends after it.
    pub fn feed(&mut self, mut ciphertext: &[u8], plain: &mut BytesMut) -> Result<Fed, rustls::Error> {
        let mut closed = false;
        while !ciphertext.is_empty() {
            // Reads at most what its record buffer has room for; the rest on the next turn.
            match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            let state = self.conn.process_new_packets()?;
            closed |= state.peer_has_closed();
            self.take_plaintext(state.plaintext_bytes_to_read(), plain);
        }
        Ok(if closed { Fed::Closed } else { Fed::Open })
    }

    fn take_plaintext(&mut self, mut available: usize, plain: &mut BytesMut) {
        while available > 0 {
            let start = plain.len();
            plain.resize(start + available, 0);
            match self.conn.reader().read(&mut plain[start..]) {
                Ok(n) if n > 0 => {
                    plain.truncate(start + n);
                    available = available.saturating_sub(n);
                }
                // Ok(0): close_notify seen; an error: nothing more to take now.
                Ok(_) | Err(_) => {
                    plain.truncate(start);
                    return;
                }
            }
        }
    }

    /// Whether records (handshake messages, alerts, data) wait to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes waiting records to `out` (a non-blocking socket writer): the bytes written, or
    /// its error (WouldBlock included).
    pub fn write_tls(&mut self, out: &mut dyn Write) -> io::Result<usize> {
        self.conn.write_tls(out)
    }

    /// Encrypts as much of `plain` as fits under [`OUTGOING_LIMIT`]; returns how much. Zero
    /// means: write the records out first.
    pub fn encrypt(&mut self, plain: &[u8]) -> io::Result<usize> {
        // rustls has no encrypt-in-the-caller's-buffer API for application data: each byte is
        // copied once into a record, which is then sealed in place.
        let taken = self.conn.writer().write(plain)?;
        self.copied += taken as u64;
        Ok(taken)
    }

    /// Counts `n` more bytes copied on this session's account (records taken out whole).
    pub fn note_copied(&mut self, n: u64) {
        self.copied += n;
    }

    /// The bytes copied since the last call.
    pub fn take_copied(&mut self) -> u64 {
        std::mem::take(&mut self.copied)
    }

    /// Queues close_notify (the end of an orderly close).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}
