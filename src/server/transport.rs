//! One connection's bytes: the socket and its input buffer (with the frame budget a large
//! incoming frame holds). It is the one value that moves when a connection is handed from the
//! control runtime to the data runtime, and the seat of anything that transforms bytes between
//! the socket and the frame codec (a session cipher, TLS), so the protocol code above never
//! sees which one is in use. Replies are assembled in the connection's outbox and written to
//! [`Transport::stream`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::connection::ConnectionEnd;
use super::input::Input;
use super::outbox::{Sealing, Sink};
use crate::auth::{ConnectionCipher, GcmError};
use crate::tls::{Fed, Plaintext, TlsAcceptor, TlsSession};

/// The first byte of a TLS record carrying a handshake (a ClientHello); a Spark frame starts
/// with the high byte of its 8-byte length, 0x00.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The most ciphertext one read takes on a TLS connection (a little over one record).
const TLS_READ: usize = 17 << 10;

/// Where a connection stands with TLS.
#[derive(Debug)]
enum Tls {
    /// A port without TLS, or a client that spoke plaintext first.
    Off,
    /// A TLS port, before the client's first byte tells which it speaks.
    Undecided(Arc<TlsAcceptor>),
    /// TLS: every byte on the socket is a TLS record.
    On(TlsSession),
}

/// The most ciphertext one read takes on a GCM connection: its plaintext, at most this plus
/// one segment, joins the input buffer, so the buffer grows by a bounded step per read.
const GCM_READ: usize = 32 << 10;

/// A connection's socket and what has been read from it but not yet decoded.
#[derive(Debug)]
pub(super) struct Transport {
    pub(super) stream: TcpStream,
    /// Plaintext: with a session cipher, bytes are decrypted as they are read.
    pub(super) input: Input,
    /// The AuthEngine session cipher, once the handshake installed it.
    cipher: Option<ConnectionCipher>,
    /// GCM only: what one read takes off the socket before it is decrypted into `input`.
    sealed_in: Vec<u8>,
    /// TLS between the socket and everything above (the session cipher included).
    tls: Tls,
}

/// A [`Transport`] between runtimes: the socket out of every reactor, the input, the session
/// cipher and the TLS session along with it.
#[derive(Debug)]
pub(super) struct Detached {
    stream: std::net::TcpStream,
    input: Input,
    cipher: Option<ConnectionCipher>,
    sealed_in: Vec<u8>,
    tls: Tls,
}

impl Transport {
    /// Whether the client speaks TLS (decided by its first byte on a TLS port).
    pub(super) fn is_tls(&self) -> bool {
        matches!(self.tls, Tls::On(_))
    }

    /// A new connection; with `tls`, the client's first byte decides whether it speaks TLS.
    pub(super) fn new(stream: TcpStream, tls: Option<Arc<TlsAcceptor>>) -> Transport {
        // Small replies must leave at once; batching happens in the outbox, not in the kernel.
        let _ = stream.set_nodelay(true);
        let tls = tls.map_or(Tls::Off, Tls::Undecided);
        Transport { stream, input: Input::new(), cipher: None, sealed_in: Vec::new(), tls }
    }

    /// Switches to the session cipher: every byte after the frame just handled is encrypted,
    /// both ways. What was read past that frame is ciphertext already: decrypted here.
    pub(super) fn install(&mut self, mut cipher: ConnectionCipher) -> Result<(), GcmError> {
        if matches!(self.tls, Tls::On(_)) {
            // Under TLS the session cipher goes between TLS and the socket (Spark's pipeline
            // order): it takes effect on the next bytes read, which the client sends only after
            // the reply that ends the handshake.
            self.cipher = Some(cipher);
            return Ok(());
        }
        match &mut cipher {
            ConnectionCipher::Ctr(ctr) => ctr.inbound.apply(&mut self.input.buf[..]),
            ConnectionCipher::Gcm(gcm) => {
                let sealed = self.input.buf.split();
                gcm.inbound.feed(&sealed, &mut self.input.buf)?;
                self.sealed_in = vec![0; GCM_READ];
            }
        }
        self.cipher = Some(cipher);
        Ok(())
    }

    /// Where replies go (the socket, or the TLS session in front of it), and how to encrypt
    /// them when a session cipher is on (no sendfile under either).
    pub(super) fn writer(&mut self) -> (Sink<'_>, Option<Sealing<'_>>) {
        let sealing = self.cipher.as_mut().map(|c| match c {
            ConnectionCipher::Ctr(ctr) => Sealing::Ctr(&mut ctr.outbound),
            ConnectionCipher::Gcm(gcm) => Sealing::Gcm(&mut gcm.outbound),
        });
        match &mut self.tls {
            Tls::On(session) => (Sink::Tls { stream: &self.stream, session, outer: sealing }, None),
            Tls::Off | Tls::Undecided(_) => (Sink::Socket(&self.stream), sealing),
        }
    }

    /// Bytes the TLS session copied since the last call (0 without TLS).
    pub(super) fn take_copied(&mut self) -> u64 {
        match &mut self.tls {
            Tls::On(session) => session.take_copied(),
            Tls::Off | Tls::Undecided(_) => 0,
        }
    }

    /// Ends a TLS connection in order (close_notify), best effort: the connection is ending.
    pub(super) async fn close(&mut self, idle: Duration) {
        let (mut sink, _) = self.writer();
        if let Sink::Tls { session, .. } = &mut sink {
            session.close();
            let _ = sink.drain(idle).await;
        }
    }

    /// Reads what the socket has into the input buffer. Ends the connection on EOF, an error,
    /// `idle` without a byte, or shutdown.
    pub(super) async fn read_more(
        &mut self,
        idle: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionEnd> {
        if matches!(self.tls, Tls::On(_)) {
            return Box::pin(self.read_tls(idle, shutdown)).await;
        }
        if let Some(ConnectionCipher::Gcm(gcm)) = &mut self.cipher {
            let read = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(ConnectionEnd::Shutdown),
                read = tokio::time::timeout(idle, self.stream.read(&mut self.sealed_in)) => read,
            };
            return match read {
                Err(_) => Err(ConnectionEnd::Idle(idle)),
                Ok(Ok(0)) => Err(ConnectionEnd::PeerClosed),
                Ok(Ok(n)) => Ok(gcm.inbound.feed(&self.sealed_in[..n], &mut self.input.buf)?),
                Ok(Err(e)) => Err(ConnectionEnd::Io(e)),
            };
        }
        let before = self.input.buf.len();
        // What the client already sent is read at once; otherwise the connection waits
        // without its read buffer (most of 10,000 connections idle most of the time).
        self.input.reserve_for_read();
        let mut read = self.stream.try_read_buf(&mut self.input.buf);
        if matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.input.shed();
            let ready = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(ConnectionEnd::Shutdown),
                ready = tokio::time::timeout(idle, self.stream.readable()) => ready,
            };
            read = match ready {
                Err(_) => return Err(ConnectionEnd::Idle(idle)),
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => {
                    self.input.reserve_for_read();
                    self.stream.try_read_buf(&mut self.input.buf)
                }
            };
        }
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(ConnectionEnd::Io(e)),
            Ok(0) => Err(ConnectionEnd::PeerClosed),
            Ok(_) => {
                if let Tls::Undecided(acceptor) = &self.tls {
                    let acceptor = Arc::clone(acceptor);
                    return Box::pin(self.decide(&acceptor, idle)).await;
                }
                if let Some(ConnectionCipher::Ctr(ctr)) = &mut self.cipher {
                    ctr.inbound.apply(&mut self.input.buf[before..]);
                }
                Ok(())
            }
        }
    }

    /// The first bytes of a connection on a TLS port: a TLS record starts the session (what
    /// was read is its first ciphertext); anything else is a plaintext client, served or
    /// refused by `agent.tls.plaintext`.
    async fn decide(&mut self, acceptor: &TlsAcceptor, idle: Duration) -> Result<(), ConnectionEnd> {
        if self.input.buf.first() != Some(&TLS_HANDSHAKE_RECORD) {
            return match acceptor.plaintext {
                Plaintext::Allow => {
                    self.tls = Tls::Off;
                    Ok(())
                }
                Plaintext::Refuse => {
                    Err(ConnectionEnd::Tls("a plaintext client on a TLS-only port (agent.tls.plaintext refuse)".into()))
                }
            };
        }
        let session = acceptor.session().map_err(|e| ConnectionEnd::Tls(e.to_string()))?;
        self.tls = Tls::On(session);
        let first = self.input.buf.split();
        self.take_tls(&first, idle).await
    }

    /// Reads TLS records off the socket and takes the plaintext they carry (then, if a session
    /// cipher runs inside TLS, decrypts it as on a plain socket).
    async fn read_tls(&mut self, idle: Duration, shutdown: &CancellationToken) -> Result<(), ConnectionEnd> {
        let ready = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Err(ConnectionEnd::Shutdown),
            ready = tokio::time::timeout(idle, self.stream.readable()) => ready,
        };
        match ready {
            Err(_) => return Err(ConnectionEnd::Idle(idle)),
            Ok(Err(e)) => return Err(ConnectionEnd::Io(e)),
            Ok(Ok(())) => {}
        }
        // Allocated once readable, not while waiting: an idle TLS connection holds no buffer.
        let mut records = vec![0u8; TLS_READ];
        match self.stream.try_read(&mut records) {
            Ok(0) => Err(ConnectionEnd::PeerClosed),
            Ok(n) => self.take_tls(&records[..n], idle).await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(ConnectionEnd::Io(e)),
        }
    }

    /// Bytes read off a TLS connection: through the session cipher if one is on (it is outside
    /// TLS), then to the TLS session, whose plaintext joins the input; then whatever the
    /// session answers (handshake messages, alerts) is sent.
    async fn take_tls(&mut self, raw: &[u8], idle: Duration) -> Result<(), ConnectionEnd> {
        // Copied only when a session cipher has to decrypt them first.
        let records: std::borrow::Cow<'_, [u8]> = match &mut self.cipher {
            None => raw.into(),
            Some(ConnectionCipher::Ctr(ctr)) => {
                let mut records = raw.to_vec();
                ctr.inbound.apply(&mut records);
                records.into()
            }
            Some(ConnectionCipher::Gcm(gcm)) => {
                let mut records = BytesMut::new();
                gcm.inbound.feed(raw, &mut records)?;
                Vec::from(records).into()
            }
        };
        let Tls::On(session) = &mut self.tls else { return Ok(()) };
        let before = self.input.buf.len();
        let fed = session.feed(&records, &mut self.input.buf);
        // Handshake replies, or the alert that says why the session failed.
        let drained = self.writer().0.drain(idle).await;
        let fed = fed.map_err(|e| ConnectionEnd::Tls(e.to_string()))?;
        drained?;
        if fed == Fed::Closed && self.input.buf.len() == before {
            return Err(ConnectionEnd::PeerClosed);
        }
        Ok(())
    }

    /// Takes the socket out of this runtime's reactor. Nothing is buffered on the way out (the
    /// outbox was flushed); the input, and the frame budget it holds, travel along.
    pub(super) fn detach(self) -> io::Result<Detached> {
        Ok(Detached {
            stream: self.stream.into_std()?,
            input: self.input,
            cipher: self.cipher,
            sealed_in: self.sealed_in,
            tls: self.tls,
        })
    }
}

impl Detached {
    /// Registers the socket with the reactor of the runtime this is called on.
    pub(super) fn attach(self) -> io::Result<Transport> {
        Ok(Transport {
            stream: TcpStream::from_std(self.stream)?,
            input: self.input,
            cipher: self.cipher,
            sealed_in: self.sealed_in,
            tls: self.tls,
        })
    }
}
