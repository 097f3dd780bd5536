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

    /// The SASL DIGEST-MD5 password: Base64 of the UTF-8 secret as SparkSaslServer.encodePassword
    /// makes it, zeroed when the caller drops it. That is Netty's `Base64.encode`, which breaks
    /// lines: a `\n` after every 76 characters except at the end. Spark's generated secrets (64
    /// hex characters, 88 in Base64) have one; found against the real client, which refused a
    /// plain Base64 password for every secret longer than 57 bytes.
    pub(crate) fn sasl_password(&self) -> Zeroizing<String> {
        let plain = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.psk()));
        let mut wrapped = Zeroizing::new(String::with_capacity(plain.len() + plain.len() / NETTY_LINE));
        for (i, line) in plain.as_bytes().chunks(NETTY_LINE).enumerate() {
            if i > 0 {
                wrapped.push('\n');
            }
            // Base64 output is ASCII, so every chunk is valid UTF-8.
            wrapped.push_str(std::str::from_utf8(line).unwrap_or_default());
        }
        wrapped
    }
}

/// Netty's Base64 line length (`Base64.MAX_LINE_LENGTH`).
const NETTY_LINE: usize = 76;

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

    #[test]
    fn a_long_sasl_password_breaks_lines_as_nettys_base64_does() {
        // 57 bytes make exactly 76 characters: no break (Netty drops a trailing newline).
        let exact = Secret::new("a".repeat(57)).sasl_password();
        assert_eq!(exact.len(), 76);
        assert!(!exact.contains('\n'));
        // A Spark-generated secret: 64 hex characters, 88 in Base64, one break after 76.
        let spark = Secret::new("0123456789abcdef".repeat(4)).sasl_password();
        let lines: Vec<&str> = spark.split('\n').collect();
        assert_eq!(lines.iter().map(|l| l.len()).collect::<Vec<_>>(), [76, 12]);
        let joined: String = lines.concat();
        let decoded = base64::engine::general_purpose::STANDARD.decode(joined).unwrap();
        assert_eq!(decoded, "0123456789abcdef".repeat(4).as_bytes());
    }
}
