//! The two handshake payloads carried in RpcRequest bodies before a connection is authenticated
//! (spec §6): AuthMessage (`0xFB`, the AuthEngine) and SaslMessage (`0xEA`, DIGEST-MD5), and the
//! dispatch on the first byte. Pure decode/encode; no crypto here.
//!
//! Spark's decoders trust their lengths; ours check every length against a limit far above what
//! a real client sends (16-byte salt, 60-byte ciphertext, SASL tokens of a few hundred bytes)
//! *before* allocating, because these bytes arrive before the peer has proved anything.

use bytes::{Buf, BufMut, Bytes};

use super::error::AuthError;
use crate::protocol::wire::{self, WireError};

/// First byte of an AuthMessage (AuthMessage.TAG_BYTE).
pub const AUTH_TAG: u8 = 0xFB;
/// First byte of a SaslMessage (SaslMessage.TAG_BYTE).
pub const SASL_TAG: u8 = 0xEA;

/// Longest app id we accept. Spark's are ~40 bytes (`spark-<32 hex>`, `app-…`,
/// `application_…`); the operator caps its own at 46.
pub const MAX_APP_ID: usize = 1024;
/// Longest AuthMessage salt; Spark sends 16 bytes.
pub const MAX_SALT: usize = 64;
/// Longest AuthMessage ciphertext; Spark sends 60 (12 IV + 32 key + 16 tag).
pub const MAX_CIPHERTEXT: usize = 1024;
/// Longest SASL token. The JDK's DIGEST-MD5 server refuses responses of 4096 bytes or more,
/// so nothing legitimate is near this.
pub const MAX_SASL_TOKEN: usize = 64 * 1024;

/// `u8 0xFB, Str appId, Bytes salt, Bytes ciphertext`: the client's challenge and the server's
/// response have this one shape (spec §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthMessage {
    pub app_id: String,
    pub salt: Bytes,
    pub ciphertext: Bytes,
}

/// `u8 0xEA, Str appId, i32 length, token` (spec §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslMessage {
    pub app_id: String,
    pub token: Bytes,
}

/// The first handshake payload on a connection, by its tag byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    Auth(AuthMessage),
    Sasl(SaslMessage),
}

impl Handshake {
    /// Whether an RpcRequest body is a handshake message by its first byte (no BlockTransferMessage
    /// type is 0xEA or 0xFB).
    pub fn is_tagged(body: &[u8]) -> bool {
        matches!(body.first(), Some(&AUTH_TAG) | Some(&SASL_TAG))
    }

    /// The app id the client claims.
    pub fn app_id(&self) -> &str {
        match self {
            Handshake::Auth(m) => &m.app_id,
            Handshake::Sasl(m) => &m.app_id,
        }
    }

    /// Decodes an RpcRequest body received before authentication.
    pub fn decode<B: Buf>(buf: &mut B) -> Result<Handshake, AuthError> {
        match buf.chunk().first().copied() {
            Some(AUTH_TAG) => AuthMessage::decode(buf).map(Handshake::Auth),
            Some(SASL_TAG) => SaslMessage::decode(buf).map(Handshake::Sasl),
            Some(tag) => Err(AuthError::UnknownTag(tag)),
            None => Err(WireError::Truncated { needed: 1, left: 0 }.into()),
        }
    }
}

impl AuthMessage {
    pub fn decode<B: Buf>(buf: &mut B) -> Result<AuthMessage, AuthError> {
        expect_tag(buf, AUTH_TAG)?;
        let app_id = get_app_id(buf)?;
        let salt = get_limited(buf, "salt", MAX_SALT)?;
        let ciphertext = get_limited(buf, "ciphertext", MAX_CIPHERTEXT)?;
        // Trailing bytes are ignored, as AuthMessage.decodeMessage ignores them.
        Ok(AuthMessage { app_id, salt, ciphertext })
    }

    pub fn encoded_len(&self) -> usize {
        1 + wire::string_len(&self.app_id) + 4 + self.salt.len() + 4 + self.ciphertext.len()
    }

    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(AUTH_TAG);
        wire::put_string(buf, &self.app_id);
        wire::put_bytes(buf, &self.salt);
        wire::put_bytes(buf, &self.ciphertext);
    }

    /// The encoded bytes: what goes in the RpcResponse body, and what the key derivation hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }
}

impl SaslMessage {
    pub fn decode<B: Buf>(buf: &mut B) -> Result<SaslMessage, AuthError> {
        expect_tag(buf, SASL_TAG)?;
        let app_id = get_app_id(buf)?;
        // SaslMessage.decode reads and ignores this length and takes the rest of the body as the
        // token (the frame already bounds it); we do the same, so a client Java accepts is
        // accepted here, but only up to our limit.
        let _announced = wire::get_i32(buf)?;
        let len = buf.remaining();
        if len > MAX_SASL_TOKEN {
            return Err(AuthError::TooLong { field: "SASL token", len, limit: MAX_SASL_TOKEN });
        }
        Ok(SaslMessage { app_id, token: buf.copy_to_bytes(len) })
    }

    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(SASL_TAG);
        wire::put_string(buf, &self.app_id);
        wire::put_bytes(buf, &self.token);
    }
}

fn expect_tag<B: Buf>(buf: &mut B, tag: u8) -> Result<(), AuthError> {
    match wire::get_u8(buf)? {
        t if t == tag => Ok(()),
        t => Err(AuthError::UnknownTag(t)),
    }
}

/// A `Bytes` field whose length is checked against `limit` and the bytes left before the copy.
fn get_limited<B: Buf>(buf: &mut B, field: &'static str, limit: usize) -> Result<Bytes, AuthError> {
    let n = wire::get_i32(buf)?;
    let len = usize::try_from(n).map_err(|_| WireError::NegativeLength(n))?;
    if len > limit {
        return Err(AuthError::TooLong { field, len, limit });
    }
    if buf.remaining() < len {
        return Err(WireError::Truncated { needed: len, left: buf.remaining() }.into());
    }
    Ok(buf.copy_to_bytes(len))
}

fn get_app_id<B: Buf>(buf: &mut B) -> Result<String, AuthError> {
    let raw = get_limited(buf, "appId", MAX_APP_ID)?;
    String::from_utf8(raw.to_vec()).map_err(|_| WireError::BadUtf8.into())
}

#[cfg(test)]
#[path = "message_tests.rs"]
pub(crate) mod tests;
