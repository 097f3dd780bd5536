//! The server half of Spark's AuthEngine (spec §6.2; AuthEngine.java `response` and
//! `generateTransportCipher`): unwrap the client's ephemeral X25519 key with the app secret,
//! wrap our own, and derive the session key and the two CTR IVs.
//!
//! Pure: the caller looks the secret up, and randomness comes through [`EngineRandom`] so that
//! tests can replay the spec's vectors byte for byte. No socket, file or clock.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use bytes::Bytes;
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::ctr::{CtrCipher, SessionCiphers, SessionKey};
use super::error::AuthError;
use super::gcm::{GcmCiphers, GcmDecryptor, GcmEncryptor};
use super::message::AuthMessage;
use super::secret::Secret;
use super::settings::SessionCipher;

/// `spark.network.crypto.authEngineVersion`. Not negotiated: server and clients must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineVersion {
    /// The default: the session key is the raw X25519 shared secret, so AES-256
    /// (AuthEngine "UNSAFE_SKIP_HKDF_VERSION").
    #[default]
    V1,
    /// The session key is HKDF(shared, transcript, "derivedKey"), 16 bytes, so AES-128.
    V2,
}

/// Where the server's per-handshake randomness comes from. Production uses [`OsRandom`];
/// tests inject fixed values.
pub trait EngineRandom {
    /// The server's ephemeral X25519 private key.
    fn private_key(&mut self) -> Result<Zeroizing<[u8; 32]>, AuthError>;
    /// The non-secret salt of the server's AuthMessage.
    fn salt(&mut self) -> Result<[u8; 16], AuthError>;
    /// The AES-GCM IV of the key wrap (Tink AesGcmJce draws it per message).
    fn gcm_iv(&mut self) -> Result<[u8; 12], AuthError>;
}

/// The operating system's CSPRNG (getrandom(2)).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

fn os_fill(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::getrandom(buf).map_err(|e| AuthError::Random(e.to_string()))
}

impl EngineRandom for OsRandom {
    fn private_key(&mut self) -> Result<Zeroizing<[u8; 32]>, AuthError> {
        let mut k = Zeroizing::new([0u8; 32]);
        os_fill(&mut k[..])?;
        Ok(k)
    }
    fn salt(&mut self) -> Result<[u8; 16], AuthError> {
        let mut s = [0u8; 16];
        os_fill(&mut s)?;
        Ok(s)
    }
    fn gcm_iv(&mut self) -> Result<[u8; 12], AuthError> {
        let mut s = [0u8; 12];
        os_fill(&mut s)?;
        Ok(s)
    }
}

/// What a successful challenge gives the server: the AuthMessage to send back (in plaintext),
/// and the keys for every byte after it.
#[derive(Debug)]
pub struct ServerResponse {
    pub response: AuthMessage,
    pub keys: SessionKeys,
}

/// A connection's session cipher after an AuthEngine handshake, both directions.
#[derive(Debug)]
pub enum ConnectionCipher {
    /// AES/CTR/NoPadding: one keystream per direction, applied in place.
    Ctr(SessionCiphers),
    /// AES/GCM/NoPadding: one Tink stream per message, with a length prefix and tags.
    Gcm(Box<GcmCiphers>),
}

/// The session key and IVs (AuthEngine.generateTransportCipher). Debug shows only the key id.
pub struct SessionKeys {
    key: SessionKey,
    /// HKDF info "inputIv": the IV of the client's inbound stream, so our outbound one.
    input_iv: [u8; 16],
    /// HKDF info "outputIv": the client's outbound stream, so our inbound one.
    output_iv: [u8; 16],
}

impl SessionKeys {
    /// The server's two CTR streams: inbound starts at "outputIv", outbound at "inputIv"
    /// (the client builds CtrTransportCipher(inIv = inputIv, outIv = outputIv); we mirror it).
    pub fn server_ciphers(&self) -> SessionCiphers {
        SessionCiphers {
            inbound: CtrCipher::new(&self.key, &self.output_iv),
            outbound: CtrCipher::new(&self.key, &self.input_iv),
        }
    }

    /// The session cipher the server installs after its response: `cipher` is not negotiated,
    /// it is the server's `spark.network.crypto.cipher` (clients must be configured alike).
    pub fn server_session(&self, cipher: SessionCipher) -> ConnectionCipher {
        match cipher {
            SessionCipher::Ctr => ConnectionCipher::Ctr(self.server_ciphers()),
            SessionCipher::Gcm => ConnectionCipher::Gcm(Box::new(self.server_gcm())),
        }
    }

    /// The server's GCM ciphers (GcmTransportCipher): the session key itself in both
    /// directions, no IVs (each message carries its own salt and nonce prefix).
    pub fn server_gcm(&self) -> GcmCiphers {
        GcmCiphers { inbound: GcmDecryptor::new(self.key.clone()), outbound: GcmEncryptor::new(self.key.clone()) }
    }

    /// Spark's `TransportCipher.getKeyId`: HKDF(key, no salt, "keyID", 32) as hex. One-way, so
    /// safe to log to match a session with the client's debug log.
    pub fn key_id(&self) -> String {
        hex(&hkdf::<32>(self.key.as_bytes(), &[], b"keyID"))
    }

    pub fn key_len(&self) -> usize {
        self.key.as_bytes().len()
    }

    #[cfg(test)]
    pub(crate) fn parts(&self) -> (&[u8], [u8; 16], [u8; 16]) {
        (self.key.as_bytes(), self.input_iv, self.output_iv)
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

/// AuthEngine.response: answers the client's challenge for `app_id`, whose secret the caller
/// looked up by `challenge.app_id`.
pub fn respond(
    app_id: &str,
    secret: &Secret,
    challenge: &AuthMessage,
    version: EngineVersion,
    rng: &mut impl EngineRandom,
) -> Result<ServerResponse, AuthError> {
    if challenge.app_id != app_id {
        return Err(AuthError::AppIdMismatch);
    }
    let client_public = unwrap_public_key(app_id, secret, challenge, &[])?;
    let server_private = StaticSecret::from(*rng.private_key()?);
    let challenge_bytes = challenge.to_bytes();
    let response = wrap_public_key(app_id, secret, PublicKey::from(&server_private).as_bytes(), &challenge_bytes, rng)?;
    let shared = server_private.diffie_hellman(&PublicKey::from(client_public));
    // Tink's X25519 refuses a low-order peer key (the result would be all zeros); so do we.
    if !shared.was_contributory() {
        return Err(AuthError::WeakPublicKey);
    }
    let mut transcript = challenge_bytes;
    response.encode(&mut transcript);
    let keys = derive_keys(shared.as_bytes(), &transcript, version);
    Ok(ServerResponse { response, keys })
}

/// The key derivation both sides run over `shared` and `transcript` = encode(C) ‖ encode(S).
pub(crate) fn derive_keys(shared: &[u8; 32], transcript: &[u8], version: EngineVersion) -> SessionKeys {
    let key = match version {
        EngineVersion::V1 => SessionKey::Aes256(Zeroizing::new(*shared)),
        EngineVersion::V2 => SessionKey::Aes128(Zeroizing::new(hkdf(shared, transcript, b"derivedKey"))),
    };
    let iv = |info: &[u8]| hkdf::<16>(shared, transcript, info);
    SessionKeys { key, input_iv: iv(b"inputIv"), output_iv: iv(b"outputIv") }
}

/// AuthEngine.encryptEphemeralPublicKey: AuthMessage(appId, salt, AES-GCM(kek, key, aad)) with
/// aad = appId ‖ salt ‖ transcript and kek = HKDF(psk, salt, aad, 16).
pub(crate) fn wrap_public_key(
    app_id: &str,
    secret: &Secret,
    public_key: &[u8; 32],
    transcript: &[u8],
    rng: &mut impl EngineRandom,
) -> Result<AuthMessage, AuthError> {
    let salt = rng.salt()?;
    let aad = aad(app_id, &salt, transcript);
    let iv = rng.gcm_iv()?;
    let sealed = kek_cipher(secret, &salt, &aad)
        .encrypt(Nonce::from_slice(&iv), Payload { msg: public_key, aad: &aad })
        // Encryption only fails for inputs of gigabytes; a 32-byte key cannot hit that.
        .map_err(|_| AuthError::BadClientKey)?;
    // Tink AesGcmJce output: IV ‖ ciphertext ‖ tag.
    let mut ciphertext = Vec::with_capacity(iv.len() + sealed.len());
    ciphertext.extend_from_slice(&iv);
    ciphertext.extend_from_slice(&sealed);
    Ok(AuthMessage { app_id: app_id.to_string(), salt: Bytes::copy_from_slice(&salt), ciphertext: ciphertext.into() })
}

/// AuthEngine.decryptEphemeralPublicKey. Any GCM failure means a wrong secret, a different app
/// id or tampering, and is reported as one error so the client learns nothing more.
pub(crate) fn unwrap_public_key(
    app_id: &str,
    secret: &Secret,
    msg: &AuthMessage,
    transcript: &[u8],
) -> Result<[u8; 32], AuthError> {
    let aad = aad(app_id, &msg.salt, transcript);
    if msg.ciphertext.len() < 12 {
        return Err(AuthError::BadClientKey);
    }
    let (iv, sealed) = msg.ciphertext.split_at(12);
    let plain = kek_cipher(secret, &msg.salt, &aad)
        .decrypt(Nonce::from_slice(iv), Payload { msg: sealed, aad: &aad })
        .map_err(|_| AuthError::BadClientKey)?;
    <[u8; 32]>::try_from(&plain[..]).map_err(|_| AuthError::BadPublicKeyLength(plain.len()))
}

fn aad(app_id: &str, salt: &[u8], transcript: &[u8]) -> Vec<u8> {
    [app_id.as_bytes(), salt, transcript].concat()
}

fn kek_cipher(secret: &Secret, salt: &[u8], aad: &[u8]) -> Aes128Gcm {
    let kek = Zeroizing::new(hkdf::<16>(secret.psk(), salt, aad));
    Aes128Gcm::new(aes_gcm::Key::<Aes128Gcm>::from_slice(&kek[..]))
}

/// Tink `Hkdf.computeHkdf("HMACSHA256", ikm, salt, info, N)`; an empty salt is HMAC's
/// all-zero key, as in Tink.
pub(crate) fn hkdf<const N: usize>(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let salt = (!salt.is_empty()).then_some(salt);
    // expand fails only for N > 255 * 32; every caller passes 16 or 32.
    let _ = Hkdf::<Sha256>::new(salt, ikm).expand(info, &mut out);
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
