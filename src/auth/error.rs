//! Why a handshake failed, and the text a Spark client is sent for it. The variants say what went
//! wrong for our logs; [`AuthError::client_error`] says only what Spark's JVM service would say,
//! which never includes a secret, a key or which check failed (auth.md §3).

use crate::protocol::wire::WireError;
use crate::protocol::{java_error, JavaError};

/// A failed authentication handshake. No variant carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The handshake payload did not decode as the message it claimed to be.
    #[error("malformed handshake message: {0}")]
    Malformed(#[from] WireError),
    /// A length field was larger than any legitimate handshake needs.
    #[error("{field} of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// The field that was too long.
        field: &'static str,
        /// Its announced length.
        len: usize,
        /// The largest we accept.
        limit: usize,
    },
    /// The first payload byte was neither 0xFB (AuthMessage) nor 0xEA (SaslMessage).
    #[error("unknown handshake tag 0x{0:02x}")]
    UnknownTag(u8),
    /// The app id in the message is not the one the secret was looked up for.
    #[error("appId is different")]
    AppIdMismatch,
    /// AES-GCM refused the client's wrapped key: wrong secret, wrong app id or tampered bytes.
    #[error("the client's key could not be unwrapped (wrong secret or tampered message)")]
    BadClientKey,
    /// The unwrapped client key is not a 32-byte X25519 public key.
    #[error("the client's public key is {0} bytes, not 32")]
    BadPublicKeyLength(usize),
    /// The X25519 exchange gave the all-zero secret (a low-order client key).
    #[error("the client's public key is of low order")]
    WeakPublicKey,
    /// The system random number generator failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The SASL exchange failed; the text is the JDK's SaslException message.
    #[error("SASL: {0}")]
    Sasl(String),
    /// A well-formed DIGEST-MD5 response whose digest is not the one the app's secret gives:
    /// the one SASL failure that means a wrong secret (the others are malformed exchanges).
    #[error("SASL: {0}")]
    SaslWrongDigest(String),
}

impl AuthError {
    /// The error for the RpcFailure, as Spark's JVM service reports it.
    ///
    /// AuthRpcHandler turns every AuthEngine failure into one IllegalArgumentException
    /// ("Authentication failed.") so a prober learns nothing about which check failed; SASL
    /// failures surface as the JDK's SaslException wrapped in a RuntimeException (auth.md §3).
    pub fn client_error(&self) -> JavaError {
        match self {
            AuthError::Sasl(msg) | AuthError::SaslWrongDigest(msg) => {
                java_error::runtime(format_args!("javax.security.sasl.SaslException: {msg}"))
            }
            _ => java_error::illegal_argument("Authentication failed."),
        }
    }
}
