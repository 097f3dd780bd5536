//! Spark's connection authentication, pure (spec §6, auth.md): the handshake messages, the
//! AuthEngine server, the session cipher it installs (AES-CTR, or AES-GCM in [`gcm`]), and the
//! SASL DIGEST-MD5 server
//! for clients with `spark.network.crypto.enabled=false`. Nothing here touches a socket, a file
//! or a clock; randomness is injected, so every exchange is replayed deterministically in tests.
//!
//! How a connection drives it (the server's transport owns the bytes):
//! 1. Until authenticated, each RpcRequest body goes to [`Handshake::decode`].
//! 2. [`Handshake::Auth`]: look up the secret by `app_id`, call [`respond`], send
//!    `response.to_bytes()` as the RpcResponse body **in plaintext**, then switch the connection
//!    to [`SessionKeys::server_session`] for the configured cipher: every inbound byte after the
//!    frame that carried the challenge (including any already sitting in the read buffer) goes
//!    through the inbound side before the frame decoder (CTR `apply`, GCM `feed`), and every
//!    byte out after the response frame through the outbound side (CTR `apply`; GCM one sealed
//!    message per write batch), file segments included (so no plain sendfile for them).
//! 3. [`Handshake::Sasl`]: keep one [`SaslServer`] per connection, created for the first
//!    message's app id (Spark 4.3 pins `claimedAppId` the same way; refusing a later message
//!    with another id is the caller's choice, auth.md §3 does not say Spark does). Feed each
//!    token to [`SaslServer::step`] and send back what it returns as the RpcResponse body. On
//!    [`SaslStep::Done`] the connection is authenticated for that app id; no cipher (qop=auth).
//! 4. On any [`AuthError`], send `RpcFailure(err.client_error().to_string())`; after an AuthEngine failure
//!    close the connection, as Spark does (a failed SASL step leaves it open in Spark).
//!
//! Which of 2 and 3 a server allows follows spec §6: with `spark.network.crypto.enabled` an
//! AuthMessage is expected and a SaslMessage is the SASL fallback; without it only SASL is
//! accepted. That policy, the secret lookup and the RPC framing belong to the caller.
//! Not here: SASL auth-conf (refused with the JDK's own text, see sasl.rs). The GCM cipher
//! works with Spark 4.3 clients (SPARK-56227); 3.5.x and 4.0.x before that fix drop every GCM
//! message after the first on a channel, so they cannot use it with any server.

mod access;
mod ctr;
mod engine;
mod error;
pub mod gcm;
mod keyring;
mod message;
mod sasl;
mod secret;
mod settings;

#[cfg(test)]
mod java_peer;

pub use access::{Access, Refusal};
pub use ctr::{CtrCipher, SessionCiphers, SessionKey};
pub use engine::{respond, ConnectionCipher, EngineRandom, EngineVersion, OsRandom, ServerResponse, SessionKeys};
pub use error::AuthError;
pub use gcm::{GcmCiphers, GcmDecryptor, GcmEncryptor, GcmError, SealedMessage};
pub use keyring::{AppAccess, Claim, Keyring, Lookup, Offered};
pub use message::{AuthMessage, Handshake, SaslMessage, AUTH_TAG, SASL_TAG};
pub use sasl::{SaslServer, SaslStep};
pub use secret::Secret;
pub use settings::{AuthSettings, Policy, SessionCipher, SECRET_ENV};
