//! One connection's bytes: the socket and its input buffer (with the frame budget a large
//! incoming frame holds). It is the one value that moves when a connection is handed from the
//! control runtime to the data runtime, and the seat of anything that transforms bytes between
//! the socket and the frame codec (a session cipher, TLS), so the protocol code above never
//! sees which one is in use. Replies are assembled in the connection's outbox and written to
//! [`Transport::stream`].

use std::io;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::connection::ConnectionEnd;
use super::input::Input;
use super::outbox::Sealing;
use crate::auth::{ConnectionCipher, GcmError};

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
}

/// A [`Transport`] between runtimes: the socket out of every reactor, the input and the
/// session cipher along with it.
#[derive(Debug)]
pub(super) struct Detached {
    stream: std::net::TcpStream,
    input: Input,
    cipher: Option<ConnectionCipher>,
    sealed_in: Vec<u8>,
}

impl Transport {
    pub(super) fn new(stream: TcpStream) -> Transport {
        // Small replies must leave at once; batching happens in the outbox, not in the kernel.
        let _ = stream.set_nodelay(true);
        Transport { stream, input: Input::new(), cipher: None, sealed_in: Vec::new() }
    }

    /// Switches to the session cipher: every byte after the frame just handled is encrypted,
    /// both ways. What was read past that frame is ciphertext already: decrypted here.
    pub(super) fn install(&mut self, mut cipher: ConnectionCipher) -> Result<(), GcmError> {
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

    /// The socket to write to, and how to encrypt what goes out when the connection is
    /// encrypted (no sendfile then).
    pub(super) fn writer(&mut self) -> (&TcpStream, Option<Sealing<'_>>) {
        let sealing = self.cipher.as_mut().map(|c| match c {
            ConnectionCipher::Ctr(ctr) => Sealing::Ctr(&mut ctr.outbound),
            ConnectionCipher::Gcm(gcm) => Sealing::Gcm(&mut gcm.outbound),
        });
        (&self.stream, sealing)
    }

    /// Reads what the socket has into the input buffer. Ends the connection on EOF, an error,
    /// `idle` without a byte, or shutdown.
    pub(super) async fn read_more(
        &mut self,
        idle: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionEnd> {
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
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Err(ConnectionEnd::Shutdown),
            read = tokio::time::timeout(idle, self.stream.read_buf(&mut self.input.buf)) => read,
        };
        match read {
            Err(_) => Err(ConnectionEnd::Idle(idle)),
            Ok(Ok(0)) => Err(ConnectionEnd::PeerClosed),
            Ok(Ok(_)) => {
                if let Some(ConnectionCipher::Ctr(ctr)) = &mut self.cipher {
                    ctr.inbound.apply(&mut self.input.buf[before..]);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(ConnectionEnd::Io(e)),
        }
    }

    /// Takes the socket out of this runtime's reactor. Nothing is buffered on the way out (the
    /// outbox was flushed); the input, and the frame budget it holds, travel along.
    pub(super) fn detach(self) -> io::Result<Detached> {
        Ok(Detached {
            stream: self.stream.into_std()?,
            input: self.input,
            cipher: self.cipher,
            sealed_in: self.sealed_in,
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
        })
    }
}
