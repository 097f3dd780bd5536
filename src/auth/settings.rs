//! The server's authentication settings, under Spark's own keys and with their meaning in
//! Spark's JVM shuffle service (auth.md §3), and the [`Policy`] a running server applies.
//!
//! Secrets: Spark's standalone service looks the one shared secret up as env
//! `_SPARK_AUTH_SECRET`, then `spark.authenticate.secret`; `spark.authenticate.secret.file` is
//! read as Spark reads it on Kubernetes (`SecurityManager.secretKeyFromFile`): the secret is
//! the Base64 encoding of the file's bytes, so the agent and apps that mount the same
//! Kubernetes Secret agree on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;

use super::{AppAccess, EngineVersion, Secret};

/// The environment variable Spark's SecurityManager reads the secret from.
pub const SECRET_ENV: &str = "_SPARK_AUTH_SECRET";

/// The session cipher after an AuthEngine handshake (`spark.network.crypto.cipher`). Not
/// negotiated: clients and server must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionCipher {
    /// `AES/CTR/NoPadding`, Spark's default.
    #[default]
    Ctr,
    /// `AES/GCM/NoPadding` (SPARK-47172).
    Gcm,
}

/// What the configuration says about authentication. Secrets stay unresolved until
/// [`AuthSettings::policy`], so the file is read once, at start.
#[derive(Clone, PartialEq, Default)]
pub struct AuthSettings {
    /// `spark.authenticate`.
    pub enabled: bool,
    /// `spark.authenticate.secret`.
    pub secret: Option<String>,
    /// `spark.authenticate.secret.file`.
    pub secret_file: Option<PathBuf>,
    /// `spark.network.crypto.enabled`: AuthEngine first (else SASL only).
    pub crypto_enabled: bool,
    /// `spark.network.crypto.saslFallback`: a client that is not speaking AuthEngine may use SASL.
    pub sasl_fallback: bool,
    /// `spark.network.crypto.authEngineVersion`.
    pub engine_version: EngineVersion,
    /// `spark.network.crypto.cipher`.
    pub cipher: SessionCipher,
    /// `spark.network.sasl.serverAlwaysEncrypt`: only SASL auth-conf clients.
    pub sasl_always_encrypt: bool,
    /// `spark.authenticate.secret.executor.file` (an app's setting, read off its pods).
    pub executor_secret_file: Option<PathBuf>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("crypto_enabled", &self.crypto_enabled)
            .field("sasl_fallback", &self.sasl_fallback)
            .field("engine_version", &self.engine_version)
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl AuthSettings {
    /// Spark's defaults: authentication off; when on, SASL unless crypto is enabled.
    pub fn new() -> AuthSettings {
        AuthSettings { sasl_fallback: true, ..AuthSettings::default() }
    }

    /// Sets one key if it is an authentication key: Ok(false) when it is not one of them.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "spark.authenticate" => self.enabled = parse_bool(value)?,
            "spark.authenticate.secret" => self.secret = Some(value.to_string()).filter(|s| !s.is_empty()),
            "spark.authenticate.secret.file" => {
                self.secret_file = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
            }
            "spark.network.crypto.enabled" => self.crypto_enabled = parse_bool(value)?,
            "spark.network.crypto.saslFallback" => self.sasl_fallback = parse_bool(value)?,
            "spark.network.crypto.authEngineVersion" => {
                self.engine_version = match value.trim() {
                    "1" => EngineVersion::V1,
                    "2" => EngineVersion::V2,
                    _ => return Err("must be 1 or 2".into()),
                }
            }
            "spark.network.crypto.cipher" => {
                // AuthEngine.sessionCipher compares with equalsIgnoreCase.
                let v = value.trim();
                self.cipher = if v.eq_ignore_ascii_case("AES/CTR/NoPadding") {
                    SessionCipher::Ctr
                } else if v.eq_ignore_ascii_case("AES/GCM/NoPadding") {
                    SessionCipher::Gcm
                } else {
                    return Err("must be AES/CTR/NoPadding or AES/GCM/NoPadding (any case)".into());
                }
            }
            "spark.network.sasl.serverAlwaysEncrypt" => self.sasl_always_encrypt = parse_bool(value)?,
            "spark.authenticate.secret.executor.file" => {
                self.executor_secret_file = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The policy a server applies, or None with authentication off. Reads the secret (env,
    /// then key, then file, as Spark's SecurityManager orders them). Errors name the key.
    pub fn policy(&self, env_secret: Option<String>) -> Result<Option<Arc<Policy>>, (&'static str, String)> {
        if !self.enabled {
            return Ok(None);
        }
        if self.sasl_always_encrypt {
            return Err((
                "spark.network.sasl.serverAlwaysEncrypt",
                "SASL auth-conf is not supported; use spark.network.crypto.enabled=true for encryption".into(),
            ));
        }
        let secret = match (env_secret.filter(|s| !s.is_empty()), &self.secret, &self.secret_file) {
            (Some(env), _, _) => Secret::new(env),
            (None, Some(value), _) => Secret::new(value.clone()),
            (None, None, Some(path)) => secret_from_file(path).map_err(|e| ("spark.authenticate.secret.file", e))?,
            (None, None, None) => {
                return Err((
                    "spark.authenticate",
                    format!("a secret must be set with spark.authenticate.secret, spark.authenticate.secret.file or ${SECRET_ENV}"),
                ))
            }
        };
        Ok(Some(Arc::new(self.policy_with(secret))))
    }

    fn policy_with(&self, secret: Secret) -> Policy {
        Policy {
            crypto_enabled: self.crypto_enabled,
            sasl_fallback: self.sasl_fallback,
            engine_version: self.engine_version,
            cipher: self.cipher,
            secret,
        }
    }

    /// How an application with these settings (its executors' `-D` options) and the secret of
    /// its executor pods' environment authenticates to us.
    pub fn app_access(&self, pod_secret: Option<&str>) -> AppAccess {
        if !self.enabled {
            return AppAccess::Unauthenticated;
        }
        if self.executor_file().is_some() {
            return AppAccess::Unsupported(
                "its executors read the secret from a file (spark.authenticate.secret.executor.file or \
                 spark.authenticate.secret.file); reading the Kubernetes Secret behind it is off \
                 (agent.auth.pods.secretFiles refuse)"
                    .into(),
            );
        }
        match pod_secret.filter(|s| !s.is_empty()) {
            Some(secret) => AppAccess::Authenticated(Arc::new(self.policy_with(Secret::new(secret)))),
            None => {
                AppAccess::Unsupported(format!("spark.authenticate is on but its executor pods have no ${SECRET_ENV}"))
            }
        }
    }

    /// The file an app's executors read their secret from: `spark.authenticate.secret.executor.file`,
    /// which falls back to `spark.authenticate.secret.file` in Spark (a `fallbackConf`, auth.md
    /// §1). None when neither is set.
    pub fn executor_file(&self) -> Option<&Path> {
        self.executor_secret_file.as_deref().or(self.secret_file.as_deref())
    }

    /// How an app whose executors read [`AuthSettings::executor_file`] authenticates, given that
    /// file's bytes (read from the Kubernetes Secret it is mounted from): the secret is what
    /// Spark's `secretKeyFromFile` makes of them. Empty bytes are refused, as Spark refuses them.
    pub fn app_access_from_file(&self, bytes: &[u8]) -> AppAccess {
        match secret_from_bytes(bytes) {
            Some(secret) => AppAccess::Authenticated(Arc::new(self.policy_with(secret))),
            None => AppAccess::Unsupported("its secret file is empty (Spark refuses an empty secret file)".into()),
        }
    }
}

/// `SecurityManager.secretKeyFromFile`: Base64 (standard alphabet, padded:
/// `java.util.Base64.getEncoder()`) of the file's raw bytes. None for no bytes.
fn secret_from_bytes(bytes: &[u8]) -> Option<Secret> {
    (!bytes.is_empty()).then(|| Secret::new(base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// [`secret_from_bytes`] of a file of the agent's own (`spark.authenticate.secret.file`).
fn secret_from_file(path: &Path) -> Result<Secret, String> {
    let bytes =
        zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?);
    secret_from_bytes(&bytes).ok_or_else(|| format!("{} is empty", path.display()))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// How a server with authentication on treats connections: which handshakes it accepts and
/// the secret of each app.
#[derive(Debug)]
pub struct Policy {
    /// AuthEngine first; SASL only as a fallback (if allowed).
    pub crypto_enabled: bool,
    /// With crypto on, a handshake that is not an AuthMessage goes to SASL.
    pub sasl_fallback: bool,
    /// The AuthEngine key derivation.
    pub engine_version: EngineVersion,
    /// The session cipher after an AuthEngine handshake.
    pub cipher: SessionCipher,
    /// The secret: the one of every app (Spark's standalone service ignores the app id), or
    /// one app's own (`agent.auth.secrets=pods`, one policy per app).
    secret: Secret,
}

impl Policy {
    /// The secret `app_id` authenticates with; None for an app this server has no secret for.
    pub fn secret_for(&self, _app_id: &str) -> Option<&Secret> {
        Some(&self.secret)
    }

    /// A policy with one shared secret, for tests and benches.
    pub fn shared(secret: Secret, crypto_enabled: bool) -> Policy {
        Policy {
            crypto_enabled,
            sasl_fallback: true,
            engine_version: EngineVersion::V1,
            cipher: SessionCipher::Ctr,
            secret,
        }
    }

    /// Whether two policies accept exactly the same handshakes (same secret and keys).
    pub fn same_as(&self, other: &Policy) -> bool {
        self.crypto_enabled == other.crypto_enabled
            && self.sasl_fallback == other.sasl_fallback
            && self.engine_version == other.engine_version
            && self.cipher == other.cipher
            && self.secret.psk() == other.secret.psk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> AuthSettings {
        let mut s = AuthSettings::new();
        s.set("spark.authenticate", "true").unwrap();
        s
    }

    #[test]
    fn authentication_is_off_by_default_and_then_needs_no_secret() {
        assert!(AuthSettings::new().policy(None).unwrap().is_none());
    }

    #[test]
    fn with_authentication_on_a_missing_secret_is_refused_naming_the_keys() {
        let (key, why) = on().policy(None).unwrap_err();
        assert_eq!(key, "spark.authenticate");
        assert!(why.contains("spark.authenticate.secret") && why.contains(SECRET_ENV), "{why}");
    }

    #[test]
    fn the_environment_wins_over_the_key_as_in_spark() {
        let mut s = on();
        s.set("spark.authenticate.secret", "from-key").unwrap();
        let policy = s.policy(Some("from-env".into())).unwrap().unwrap();
        assert_eq!(policy.secret_for("app").unwrap().psk(), b"from-env");
        let policy = s.policy(None).unwrap().unwrap();
        assert_eq!(policy.secret_for("app").unwrap().psk(), b"from-key");
    }

    #[test]
    fn a_secret_file_means_base64_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, [0xff, 0x00, b'a']).unwrap();
        let mut s = on();
        s.set("spark.authenticate.secret.file", path.to_str().unwrap()).unwrap();
        let policy = s.policy(None).unwrap().unwrap();
        assert_eq!(policy.secret_for("app").unwrap().psk(), b"/wBh");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(s.policy(None).unwrap_err().0, "spark.authenticate.secret.file");
    }

    #[test]
    fn crypto_keys_parse_as_spark_spells_them() {
        let mut s = on();
        assert!(s.set("spark.network.crypto.enabled", "true").unwrap());
        assert!(s.set("spark.network.crypto.authEngineVersion", "2").unwrap());
        assert!(s.set("spark.network.crypto.saslFallback", "false").unwrap());
        assert_eq!(s.engine_version, EngineVersion::V2);
        assert!(!s.sasl_fallback);
        assert!(s.set("spark.network.crypto.authEngineVersion", "3").is_err());
        assert!(!s.set("spark.shuffle.service.port", "1").unwrap());
    }

    #[test]
    fn the_cipher_key_takes_both_of_spark_s_ciphers_and_the_policy_carries_it() {
        let mut s = on();
        s.set("spark.authenticate.secret", "x").unwrap();
        s.set("spark.network.crypto.enabled", "true").unwrap();
        assert_eq!(s.policy(None).unwrap().unwrap().cipher, SessionCipher::Ctr, "Spark's default");
        assert!(s.set("spark.network.crypto.cipher", "AES/GCM/NoPadding").unwrap());
        assert_eq!(s.policy(None).unwrap().unwrap().cipher, SessionCipher::Gcm);
        assert!(s.set("spark.network.crypto.cipher", "aes/ctr/nopadding").unwrap());
        assert_eq!(s.policy(None).unwrap().unwrap().cipher, SessionCipher::Ctr, "Spark ignores the case");
        assert!(s.set("spark.network.crypto.cipher", "AES/CBC/PKCS5Padding").is_err());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let mut s = on();
        s.set("spark.authenticate.secret", "hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
