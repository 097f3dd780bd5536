//! The application secret: held only here, zeroed when dropped, never printed. Everything that
//! needs the bytes (the AuthEngine key derivation, the SASL password) borrows them from a
//! [`Secret`]; nothing else in the crate keeps a copy.

use base64::Engine as _;
use zeroize::Zeroizing;

/// An application's shared secret (`_SPARK_AUTH_SECRET`, `spark.authenticate.secret`), as the
/// UTF-8 string Spark's SecurityManager hands out.
///
/// Debug is redacted so a `{:?}` of a struct holding one cannot leak it into a log line, and the
/// bytes are overwritten on drop so they do not linger in freed memory.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(Zeroizing::new(secret.into()))
    }

    /// The AuthEngine pre-shared key: the UTF-8 bytes of the secret (spec §6.2, `psk`).
    pub(crate) fn psk(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The SASL DIGEST-MD5 password: Base64 of the UTF-8 secret
    /// (SparkSaslServer.encodePassword), zeroed when the caller drops it.
    pub(crate) fn sasl_password(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.psk()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let s = Secret::new("hunter2-very-secret");
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn the_sasl_password_is_base64_of_the_utf8_secret() {
        // SparkSaslServer.encodePassword: Base64(UTF-8 bytes), as chars.
        assert_eq!(&*Secret::new("secret").sasl_password(), "c2VjcmV0");
        assert_eq!(&*Secret::new("é").sasl_password(), "w6k=");
    }
}
