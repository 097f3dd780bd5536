//! The AES/GCM/NoPadding session cipher (spec §6.2, Spark's GcmTransportCipher, SPARK-47172
//! and SPARK-56227): each message on the wire is its own Tink `AesGcmHkdfStreaming` stream,
//! keyed with the AuthEngine session key, the same key in both directions.
//!
//! One message on the wire, as Spark 4.3 writes and reads it:
//!
//! ```text
//! u64 BE total      bytes of the whole message, these 8 included; also the stream's AAD
//! u8  header_len    1 + key_len + 7 (24 for AES-128, 40 for AES-256)
//! salt              key_len random bytes
//! nonce_prefix      7 random bytes
//! segments          AES-GCM ciphertext of 32752 plaintext bytes + 16-byte tag each; the last
//!                   one shorter (never empty unless the whole message is); none at all for an
//!                   empty message, which therefore carries no tag
//! ```
//!
//! Every segment is keyed with `HKDF-SHA256(ikm = session key, salt, info = the 8 length bytes,
//! key_len)`, and its 12-byte nonce is `nonce_prefix ‖ u32 BE segment number ‖ last ? 1 : 0`,
//! with no GCM AAD (the length is bound through the key). Unlike Tink's own streams, Spark puts
//! no plaintext in the header's segment: the first segment is as large as the others.
//!
//! Where a message starts and ends carries no meaning to the receiver: Spark's decryptor hands
//! the plaintext of consecutive messages to its frame decoder as one byte stream. Spark writes
//! one message per Netty write (a frame); [`GcmDecryptor`] takes any split of any sequence of
//! messages, and [`GcmEncryptor`] seals whatever the caller calls one message.
//!
//! What it must not do: touch a socket or a file, or hold more than one segment per direction.
//! Randomness (salt, nonce prefix) comes from the system unless a test injects it.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use bytes::BytesMut;

use super::ctr::SessionKey;

/// The length prefix of every message.
pub const LENGTH_BYTES: usize = 8;
/// One segment on the wire: ciphertext and tag (Spark's CIPHERTEXT_BUFFER_SIZE).
pub const CIPHER_SEGMENT: usize = 32 * 1024;
/// The GCM tag after each segment.
pub const TAG_BYTES: usize = 16;
/// Plaintext per full segment.
pub const PLAIN_SEGMENT: usize = CIPHER_SEGMENT - TAG_BYTES;
/// Tink's random per-stream nonce prefix.
const NONCE_PREFIX: usize = 7;
/// The longest prefix of a message before its segments: length and an AES-256 Tink header.
pub const MAX_PREFIX: usize = LENGTH_BYTES + 1 + 32 + NONCE_PREFIX;

/// Why a GCM message could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum GcmError {
    /// The length prefix cannot be that of a message Spark writes (shorter than its header,
    /// a last segment too short for a tag, or more segments than a 32-bit counter numbers).
    #[error("invalid GCM message length {0}")]
    BadLength(u64),
    /// The Tink header's first byte is not the header length for this key size.
    #[error("GCM stream header length byte {found}, expected {expected}")]
    BadHeader {
        /// The byte received.
        found: u8,
        /// 1 + key length + 7.
        expected: u8,
    },
    /// A segment's tag did not verify: wrong key, or bytes changed, cut or reordered on the way.
    #[error("GCM segment {0} failed authentication")]
    BadTag(u32),
    /// The caller gave a segment of another size than the message needs next (a bug, never input).
    #[error("segment of {got} bytes where {want} were due")]
    SegmentSize {
        /// The plaintext length given.
        got: usize,
        /// What [`SealedMessage::next_segment_len`] said.
        want: usize,
    },
    /// The system random number generator failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

fn header_len(key: &SessionKey) -> usize {
    1 + key.as_bytes().len() + NONCE_PREFIX
}

/// Bytes on the wire for a message of `plain_len` plaintext bytes (length prefix included):
/// GcmTransportCipher's `encryptedCount` as SPARK-56227 computes it.
pub fn sealed_len(key: &SessionKey, plain_len: u64) -> u64 {
    let (full, part) = (plain_len / PLAIN_SEGMENT as u64, plain_len % PLAIN_SEGMENT as u64);
    let last = if part > 0 { part + TAG_BYTES as u64 } else { 0 };
    (LENGTH_BYTES + header_len(key)) as u64 + full * CIPHER_SEGMENT as u64 + last
}

/// The AES-GCM key of one message, derived from the session key.
enum SegmentKey {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl SegmentKey {
    /// Tink AesGcmHkdfStreaming.deriveKeySpec: HKDF-SHA256(session key, salt, info = AAD).
    fn derive(session: &SessionKey, salt: &[u8], aad: &[u8; LENGTH_BYTES]) -> SegmentKey {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), session.as_bytes());
        let mut okm = zeroize::Zeroizing::new([0u8; 32]);
        let okm = &mut okm[..session.as_bytes().len()];
        // expand fails only past 255 * 32 bytes; this is 16 or 32.
        let _ = hk.expand(aad, okm);
        match session {
            SessionKey::Aes128(_) => {
                SegmentKey::Aes128(Box::new(Aes128Gcm::new(aes_gcm::Key::<Aes128Gcm>::from_slice(okm))))
            }
            SessionKey::Aes256(_) => {
                SegmentKey::Aes256(Box::new(Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(okm))))
            }
        }
    }

    fn seal(&self, nonce: &[u8; 12], buf: &mut [u8]) -> Tag {
        let nonce = Nonce::from_slice(nonce);
        let sealed = match self {
            SegmentKey::Aes128(k) => k.encrypt_in_place_detached(nonce, &[], buf),
            SegmentKey::Aes256(k) => k.encrypt_in_place_detached(nonce, &[], buf),
        };
        // aes-gcm refuses only plaintexts over 64 GiB; a segment is 32752 bytes at most.
        sealed.unwrap_or_default()
    }

    fn open(&self, nonce: &[u8; 12], buf: &mut [u8], tag: &[u8]) -> bool {
        let (nonce, tag) = (Nonce::from_slice(nonce), Tag::from_slice(tag));
        match self {
            SegmentKey::Aes128(k) => k.decrypt_in_place_detached(nonce, &[], buf, tag).is_ok(),
            SegmentKey::Aes256(k) => k.decrypt_in_place_detached(nonce, &[], buf, tag).is_ok(),
        }
    }
}

/// Tink's segment nonce: prefix, segment number, last-segment flag.
fn nonce(prefix: &[u8; NONCE_PREFIX], segment: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..NONCE_PREFIX].copy_from_slice(prefix);
    n[NONCE_PREFIX..11].copy_from_slice(&segment.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// The outbound direction: seals each message the caller starts.
pub struct GcmEncryptor {
    key: SessionKey,
    random: fn(&mut [u8]) -> Result<(), GcmError>,
}

fn os_random(buf: &mut [u8]) -> Result<(), GcmError> {
    getrandom::getrandom(buf).map_err(|e| GcmError::Random(e.to_string()))
}

impl GcmEncryptor {
    pub fn new(key: SessionKey) -> GcmEncryptor {
        GcmEncryptor { key, random: os_random }
    }

    /// With another source of salts and nonce prefixes: deterministic output for tests.
    pub fn with_random(key: SessionKey, random: fn(&mut [u8]) -> Result<(), GcmError>) -> GcmEncryptor {
        GcmEncryptor { key, random }
    }

    /// Bytes on the wire for a message of `plain_len` bytes with this key.
    pub fn sealed_len(&self, plain_len: u64) -> u64 {
        sealed_len(&self.key, plain_len)
    }

    /// Starts a message of exactly `plain_len` plaintext bytes (the length goes first).
    pub fn begin(&mut self, plain_len: u64) -> Result<SealedMessage, GcmError> {
        let total = self.sealed_len(plain_len);
        if plain_len.div_ceil(PLAIN_SEGMENT as u64) > u64::from(u32::MAX) {
            return Err(GcmError::BadLength(total));
        }
        let hlen = header_len(&self.key);
        let mut prefix = [0u8; MAX_PREFIX];
        prefix[..LENGTH_BYTES].copy_from_slice(&total.to_be_bytes());
        prefix[LENGTH_BYTES] = hlen as u8;
        (self.random)(&mut prefix[LENGTH_BYTES + 1..LENGTH_BYTES + hlen])?;
        let salt_end = LENGTH_BYTES + 1 + self.key.as_bytes().len();
        let mut nonce_prefix = [0u8; NONCE_PREFIX];
        nonce_prefix.copy_from_slice(&prefix[salt_end..salt_end + NONCE_PREFIX]);
        let key = SegmentKey::derive(&self.key, &prefix[LENGTH_BYTES + 1..salt_end], &total.to_be_bytes());
        Ok(SealedMessage { key, nonce_prefix, segment: 0, left: plain_len, prefix, prefix_len: LENGTH_BYTES + hlen })
    }

    /// One whole message at once (small messages, tests).
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, GcmError> {
        let mut msg = self.begin(plain.len() as u64)?;
        let mut out = Vec::with_capacity(usize::try_from(msg.wire_len()).unwrap_or(0));
        out.extend_from_slice(msg.prefix());
        let mut rest = plain;
        while !msg.is_done() {
            let (segment, tail) = rest.split_at(msg.next_segment_len());
            let start = out.len();
            out.extend_from_slice(segment);
            let tag = msg.seal_segment(&mut out[start..])?;
            out.extend_from_slice(&tag);
            rest = tail;
        }
        Ok(out)
    }
}

impl std::fmt::Debug for GcmEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GcmEncryptor({:?})", self.key)
    }
}

/// One outbound message being sealed, a segment at a time, so a large body never has to be
/// held whole: write [`SealedMessage::prefix`], then for each segment its ciphertext (sealed
/// in place) and the tag [`SealedMessage::seal_segment`] returns.
pub struct SealedMessage {
    key: SegmentKey,
    nonce_prefix: [u8; NONCE_PREFIX],
    segment: u32,
    /// Plaintext bytes not sealed yet.
    left: u64,
    prefix: [u8; MAX_PREFIX],
    prefix_len: usize,
}

impl SealedMessage {
    /// The length prefix and the Tink header: the first bytes of the message on the wire.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..self.prefix_len]
    }

    /// Bytes of the whole message on the wire.
    pub fn wire_len(&self) -> u64 {
        let mut len = [0u8; LENGTH_BYTES];
        len.copy_from_slice(&self.prefix[..LENGTH_BYTES]);
        u64::from_be_bytes(len)
    }

    /// The plaintext length of the next segment; 0 once the message is sealed.
    pub fn next_segment_len(&self) -> usize {
        usize::try_from(self.left).unwrap_or(usize::MAX).min(PLAIN_SEGMENT)
    }

    pub fn is_done(&self) -> bool {
        self.left == 0
    }

    /// Encrypts the next segment in place; its tag follows it on the wire. `plain` must be
    /// exactly [`SealedMessage::next_segment_len`] bytes.
    pub fn seal_segment(&mut self, plain: &mut [u8]) -> Result<[u8; TAG_BYTES], GcmError> {
        let want = self.next_segment_len();
        if plain.len() != want || want == 0 {
            return Err(GcmError::SegmentSize { got: plain.len(), want });
        }
        self.left -= want as u64;
        let tag = self.key.seal(&nonce(&self.nonce_prefix, self.segment, self.left == 0), plain);
        self.segment = self.segment.wrapping_add(1);
        Ok(tag.into())
    }
}

/// The inbound direction: takes the client's bytes in pieces of any size and gives back the
/// plaintext of every segment they complete. Holds at most one segment.
pub struct GcmDecryptor {
    key: SessionKey,
    state: Reading,
    /// The segment being received (ciphertext and tag); decrypted in place when complete.
    segment: Vec<u8>,
}

enum Reading {
    /// The length prefix, `have` bytes of it so far.
    Length { bytes: [u8; LENGTH_BYTES], have: usize },
    /// The Tink header of a message of `total` bytes.
    Header { total: u64, bytes: [u8; MAX_PREFIX], have: usize },
    /// Segments: `left` bytes of the message still to come.
    Segments { key: SegmentKey, nonce_prefix: [u8; NONCE_PREFIX], number: u32, left: u64 },
}

impl GcmDecryptor {
    pub fn new(key: SessionKey) -> GcmDecryptor {
        GcmDecryptor { key, state: Reading::Length { bytes: [0; LENGTH_BYTES], have: 0 }, segment: Vec::new() }
    }

    /// True between messages: nothing of a started message is pending.
    pub fn at_message_boundary(&self) -> bool {
        matches!(self.state, Reading::Length { have: 0, .. })
    }

    /// Takes the next ciphertext bytes and appends to `out` the plaintext of every segment they
    /// complete. After an error the connection must end: the stream cannot be resynchronised.
    pub fn feed(&mut self, mut data: &[u8], out: &mut BytesMut) -> Result<(), GcmError> {
        while !data.is_empty() {
            match &mut self.state {
                Reading::Length { bytes, have } => {
                    let n = take(&mut data, &mut bytes[*have..]);
                    *have += n;
                    if *have == LENGTH_BYTES {
                        let total = u64::from_be_bytes(*bytes);
                        self.check_length(total)?;
                        self.state = Reading::Header { total, bytes: [0; MAX_PREFIX], have: 0 };
                    }
                }
                Reading::Header { total, bytes, have } => {
                    let hlen = header_len(&self.key);
                    *have += take(&mut data, &mut bytes[*have..hlen]);
                    if *have == hlen {
                        if bytes[0] as usize != hlen {
                            return Err(GcmError::BadHeader { found: bytes[0], expected: hlen as u8 });
                        }
                        let salt_end = 1 + self.key.as_bytes().len();
                        let mut nonce_prefix = [0u8; NONCE_PREFIX];
                        nonce_prefix.copy_from_slice(&bytes[salt_end..hlen]);
                        let key = SegmentKey::derive(&self.key, &bytes[1..salt_end], &total.to_be_bytes());
                        let left = *total - (LENGTH_BYTES + hlen) as u64;
                        self.state = if left == 0 {
                            // An empty message: Spark writes no segment for it, so no tag either.
                            Reading::Length { bytes: [0; LENGTH_BYTES], have: 0 }
                        } else {
                            Reading::Segments { key, nonce_prefix, number: 0, left }
                        };
                    }
                }
                Reading::Segments { key, nonce_prefix, number, left } => {
                    if self.segment.capacity() == 0 {
                        self.segment.reserve_exact(CIPHER_SEGMENT);
                    }
                    let room = (CIPHER_SEGMENT - self.segment.len()).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = room.min(data.len());
                    self.segment.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    *left -= n as u64;
                    if self.segment.len() == CIPHER_SEGMENT || *left == 0 {
                        let last = *left == 0;
                        let body = self.segment.len() - TAG_BYTES;
                        let (plain, tag) = self.segment.split_at_mut(body);
                        if !key.open(&nonce(nonce_prefix, *number, last), plain, tag) {
                            return Err(GcmError::BadTag(*number));
                        }
                        out.extend_from_slice(plain);
                        self.segment.clear();
                        *number = number.wrapping_add(1);
                        if last {
                            self.state = Reading::Length { bytes: [0; LENGTH_BYTES], have: 0 };
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A length Spark's encryptor can write: at least the prefix, no last segment too short
    /// for its tag, no more segments than the 32-bit segment number counts.
    fn check_length(&self, total: u64) -> Result<(), GcmError> {
        let body =
            total.checked_sub((LENGTH_BYTES + header_len(&self.key)) as u64).ok_or(GcmError::BadLength(total))?;
        let part = body % CIPHER_SEGMENT as u64;
        if (part > 0 && part < TAG_BYTES as u64) || body.div_ceil(CIPHER_SEGMENT as u64) > u64::from(u32::MAX) {
            return Err(GcmError::BadLength(total));
        }
        Ok(())
    }
}

impl std::fmt::Debug for GcmDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GcmDecryptor({:?})", self.key)
    }
}

/// Moves up to `dst.len()` bytes from the front of `data` into `dst`.
fn take(data: &mut &[u8], dst: &mut [u8]) -> usize {
    let n = dst.len().min(data.len());
    dst[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    n
}

/// Both directions of a server connection with the GCM cipher: one session key, a fresh salt
/// and nonce prefix per message in each direction.
#[derive(Debug)]
pub struct GcmCiphers {
    pub inbound: GcmDecryptor,
    pub outbound: GcmEncryptor,
}

#[cfg(test)]
#[path = "gcm_tests.rs"]
mod tests;
