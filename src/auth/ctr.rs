//! The AES/CTR/NoPadding session cipher (spec §6.2, Spark's CtrTransportCipher over
//! commons-crypto): one continuous keystream per direction for the connection's life, a 128-bit
//! big-endian counter starting at the IV, no tag. Applied in place, to pieces of any size: a
//! piece boundary never resets or skips keystream, so the transport can encrypt whatever slice
//! of bytes it is about to write (a frame header, a sendfile-sized chunk) as it goes.
//!
//! What it must not do: buffer, frame or reorder bytes. It is a pure byte transform that the
//! connection's byte owner applies below the frame codec.

use aes::{Aes128, Aes256};
use ctr::cipher::{KeyIvInit, StreamCipher};
use zeroize::Zeroizing;

type Ctr128Aes128 = ctr::Ctr128BE<Aes128>;
type Ctr128Aes256 = ctr::Ctr128BE<Aes256>;

/// A session key: 16 bytes (authEngineVersion 2) or 32 (version 1, the raw X25519 secret).
/// The two sizes are two variants so no other length can reach the cipher. Zeroed on drop.
#[derive(Clone)]
pub enum SessionKey {
    Aes128(Zeroizing<[u8; 16]>),
    Aes256(Zeroizing<[u8; 32]>),
}

impl SessionKey {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            SessionKey::Aes128(k) => &k[..],
            SessionKey::Aes256(k) => &k[..],
        }
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey(AES-{}, <redacted>)", self.as_bytes().len() * 8)
    }
}

/// One direction's keystream.
pub struct CtrCipher(Inner);

enum Inner {
    Aes128(Box<Ctr128Aes128>),
    Aes256(Box<Ctr128Aes256>),
}

/// Both directions of a server connection. Inbound decrypts what the client sent; outbound
/// encrypts what we send. (CTR is symmetric: both are the same XOR, on different streams.)
#[derive(Debug)]
pub struct SessionCiphers {
    pub inbound: CtrCipher,
    pub outbound: CtrCipher,
}

impl CtrCipher {
    /// A keystream whose first block is AES(key, iv), then iv+1, ... (128-bit big-endian).
    pub fn new(key: &SessionKey, iv: &[u8; 16]) -> CtrCipher {
        CtrCipher(match key {
            SessionKey::Aes128(k) => Inner::Aes128(Box::new(Ctr128Aes128::new((&**k).into(), iv.into()))),
            SessionKey::Aes256(k) => Inner::Aes256(Box::new(Ctr128Aes256::new((&**k).into(), iv.into()))),
        })
    }

    /// Encrypts (or decrypts) `data` in place, continuing the keystream where the last call
    /// stopped.
    pub fn apply(&mut self, data: &mut [u8]) {
        // A 128-bit counter cannot run out (2^132 bytes), so the fallible variant is not needed:
        // the RustCrypto Ctr128 flavour reports no limit and never panics here.
        match &mut self.0 {
            Inner::Aes128(c) => c.apply_keystream(data),
            Inner::Aes256(c) => c.apply_keystream(data),
        }
    }

    /// AES key size in bits, for logs.
    pub fn key_bits(&self) -> u32 {
        match self.0 {
            Inner::Aes128(_) => 128,
            Inner::Aes256(_) => 256,
        }
    }
}

impl std::fmt::Debug for CtrCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CtrCipher(AES-{}, <keystream redacted>)", self.key_bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect()
    }

    fn k128(b: u8) -> SessionKey {
        SessionKey::Aes128(Zeroizing::new([b; 16]))
    }

    fn k256(b: u8) -> SessionKey {
        SessionKey::Aes256(Zeroizing::new([b; 32]))
    }

    fn whole(key: &SessionKey, iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        CtrCipher::new(key, iv).apply(&mut out);
        out
    }

    #[test]
    fn a_stream_split_at_any_byte_gives_the_same_output() {
        // IV low bytes near the wrap so the counter carries inside the 100 bytes.
        let iv = [0xffu8; 16];
        for key in [&k128(7), &k256(9)] {
            let data = pattern(100);
            let expected = whole(key, &iv, &data);
            for a in 0..=data.len() {
                for b in a..=data.len() {
                    let mut out = data.clone();
                    let mut c = CtrCipher::new(key, &iv);
                    let (x, rest) = out.split_at_mut(a);
                    let (y, z) = rest.split_at_mut(b - a);
                    c.apply(x);
                    c.apply(y);
                    c.apply(z);
                    assert_eq!(out, expected, "split at {a},{b}");
                }
            }
        }
    }

    #[test]
    fn applying_twice_restores_the_plaintext_and_the_key_size_follows_the_key() {
        let data = pattern(1000);
        let mut c = CtrCipher::new(&k256(1), &[2u8; 16]);
        assert_eq!(c.key_bits(), 256);
        assert_eq!(CtrCipher::new(&k128(1), &[2u8; 16]).key_bits(), 128);
        let enc = whole(&k256(1), &[2u8; 16], &data);
        assert_ne!(enc, data);
        let mut dec = enc.clone();
        c.apply(&mut dec);
        assert_eq!(dec, data);
    }
}
