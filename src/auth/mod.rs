//! Spark's connection authentication, pure (spec §6, auth.md): the handshake messages, the
//! AuthEngine server, the AES-CTR session ciphers it installs, and the SASL DIGEST-MD5 server
//! for clients with `spark.network.crypto.enabled=false`. Nothing here touches a socket, a file
//! or a clock; randomness is injected, so every exchange is replayed deterministically in tests.
//!
//! How a connection drives it (the server's transport owns the bytes):
//! 1. Until authenticated, each RpcRequest body goes to [`Handshake::decode`].
//! 2. [`Handshake::Auth`]: look up the secret by `app_id`, call [`respond`], send
//!    `response.to_bytes()` as the RpcResponse body **in plaintext**, then switch the connection
//!    to [`SessionKeys::server_ciphers`]: every later byte in, from the next one read, goes
//!    through `inbound.apply`, and every byte out through `outbound.apply`.
//! 3. [`Handshake::Sasl`]: keep one [`SaslServer`] per connection, pinned to the first message's
//!    app id; feed each token to [`SaslServer::step`] and send back what it returns. When it
//!    reports done, the connection is authenticated for that app id (no cipher: qop=auth).
//! 4. On any [`AuthError`], send `RpcFailure(err.client_text())`; after an AuthEngine failure
//!    close the connection, as Spark does.

mod ctr;
mod engine;
mod error;
mod message;
mod sasl;
mod secret;

#[cfg(test)]
mod java_peer;

pub use ctr::{CtrCipher, SessionCiphers, SessionKey};
pub use engine::{respond, EngineRandom, EngineVersion, OsRandom, ServerResponse, SessionKeys};
pub use error::AuthError;
pub use message::{AuthMessage, Handshake, SaslMessage, AUTH_TAG, SASL_TAG};
pub use sasl::{SaslServer, SaslStep};
pub use secret::Secret;
