//! Spark's RPC TLS keys (`spark.ssl.rpc.*`, falling back to `spark.ssl.*` as Spark's
//! `SSLOptions.parse` does; spec auth.md §4), as the agent reads them from its config file.
//!
//! `enabled` is the one field that does not fall back: Spark forces `spark.ssl.rpc.enabled`'s
//! default to false whatever `spark.ssl.enabled` says. Passwords may also come from the
//! environment variables Spark reads (`_SPARK_SSL_RPC_*_PASSWORD`).

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Every field `SSLOptions.parse` reads; a `spark.ssl.rpc.<field>` or `spark.ssl.<field>` key
/// naming another is unknown.
const FIELDS: &[&str] = &[
    "enabled",
    "keyStore",
    "keyStorePassword",
    "keyStoreType",
    "keyPassword",
    "privateKey",
    "privateKeyPassword",
    "certChain",
    "trustStore",
    "trustStorePassword",
    "trustStoreType",
    "trustStoreReloadingEnabled",
    "trustStoreReloadIntervalMs",
    "openSslEnabled",
    "protocol",
    "enabledAlgorithms",
    "needClientAuth",
];

/// Whether a TLS-enabled port also serves plaintext clients (`agent.tls.plaintext`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// Both on one port, told apart by the first byte (a TLS record starts with 0x16, a Spark
    /// frame with 0x00): what Spark's service cannot do.
    Allow,
    /// TLS only, as Spark's service: a plaintext client is closed on.
    Refuse,
}

/// The `spark.ssl.*` keys as written, resolved field by field. Two are equal when they
/// resolve alike (`spark.ssl.rpc.enabled false` written out equals it unset).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    rpc: BTreeMap<&'static str, String>,
    base: BTreeMap<&'static str, String>,
    pub plaintext: Plaintext,
    /// `agent.tls.reload.interval`: how often the key files are looked at for a change.
    pub reload_interval: std::time::Duration,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            rpc: BTreeMap::new(),
            base: BTreeMap::new(),
            plaintext: Plaintext::Allow,
            reload_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// What the key files and options resolve to, before anything is read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub keys: KeySource,
    /// `protocol`: None = TLS 1.3 and 1.2 (Spark's default list).
    pub protocol: Option<String>,
    /// `enabledAlgorithms`: None = the default suites.
    pub algorithms: Option<Vec<String>>,
}

/// Where the server's key and certificate chain come from: Spark's two paths (auth.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `certChain` and `privateKey`, PEM: what Spark uses when both are set.
    Pem {
        /// The server's certificate first.
        cert_chain: PathBuf,
        /// PKCS#8, PKCS#1 or SEC1; or PKCS#8 encrypted with `password` (`privateKeyPassword`).
        private_key: PathBuf,
        password: Option<Password>,
    },
    /// `keyStore`: a PKCS12 file (the JDK's default keystore type) with one private key and its
    /// chain, opened with `keyStorePassword`; `keyPassword` for the key, when it differs.
    Keystore { path: PathBuf, password: Option<Password>, key_password: Option<Password> },
}

impl KeySource {
    /// The files whose change means "read the keys again".
    pub fn paths(&self) -> Vec<&std::path::Path> {
        match self {
            KeySource::Pem { cert_chain, private_key, .. } => vec![cert_chain, private_key],
            KeySource::Keystore { path, .. } => vec![path],
        }
    }

    /// What the logs name: the chain or the keystore.
    pub fn name(&self) -> &std::path::Path {
        match self {
            KeySource::Pem { cert_chain, .. } => cert_chain,
            KeySource::Keystore { path, .. } => path,
        }
    }
}

/// A key or keystore password: zeroed when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(zeroize::Zeroizing<String>);

impl Password {
    pub fn new(password: String) -> Password {
        Password(zeroize::Zeroizing::new(password))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl PartialEq for TlsSettings {
    fn eq(&self, other: &TlsSettings) -> bool {
        self.enabled() == other.enabled()
            && self.plaintext == other.plaintext
            && self.reload_interval == other.reload_interval
            && FIELDS.iter().filter(|f| **f != "enabled").all(|f| self.get(f) == other.get(f))
    }
}

impl TlsSettings {
    /// Takes a `spark.ssl.rpc.*` or `spark.ssl.*` key. Ok(false) for a key that is neither.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        if key == "agent.tls.plaintext" {
            self.plaintext = match value.trim() {
                "allow" => Plaintext::Allow,
                "refuse" => Plaintext::Refuse,
                _ => return Err("allow or refuse".into()),
            };
            return Ok(true);
        }
        let (map, field) = if let Some(field) = key.strip_prefix("spark.ssl.rpc.") {
            (&mut self.rpc, field)
        } else if let Some(field) = key.strip_prefix("spark.ssl.") {
            (&mut self.base, field)
        } else {
            return Ok(false);
        };
        let Some(field) = FIELDS.iter().find(|f| **f == field) else { return Ok(false) };
        if *field == "enabled" || *field == "openSslEnabled" {
            parse_bool(value)?;
        }
        map.insert(field, value.trim().to_string());
        Ok(true)
    }

    /// A field's value: `spark.ssl.rpc.<field>`, else `spark.ssl.<field>` (not for `enabled`).
    fn get(&self, field: &str) -> Option<&str> {
        let own = self.rpc.get(field).map(String::as_str);
        let inherited = || (field != "enabled").then(|| self.base.get(field).map(String::as_str)).flatten();
        own.or_else(inherited).filter(|v| !v.is_empty())
    }

    /// `spark.ssl.rpc.enabled`.
    pub fn enabled(&self) -> bool {
        self.get("enabled").is_some_and(|v| parse_bool(v).unwrap_or(false))
    }

    /// The files and options of an enabled TLS port, or the key that is missing and why (a
    /// config error at start-up). PEM files win when both are set, as in Spark's `SSLFactory`.
    pub fn files(&self) -> Result<TlsFiles, (String, String)> {
        let keys = match (self.get("certChain"), self.get("privateKey"), self.get("keyStore")) {
            (Some(chain), Some(private_key), _) => KeySource::Pem {
                cert_chain: PathBuf::from(chain),
                private_key: PathBuf::from(private_key),
                password: self.password("privateKeyPassword", "PRIVATE_KEY"),
            },
            (_, _, Some(store)) => KeySource::Keystore {
                path: PathBuf::from(store),
                password: self.password("keyStorePassword", "KEY_STORE"),
                key_password: self.password("keyPassword", "KEY"),
            },
            // Spark's TransportContext: "RPC SSL encryption enabled but keys not found!"
            _ => {
                return Err((
                    "spark.ssl.rpc.certChain".into(),
                    "RPC SSL encryption enabled but keys not found: set spark.ssl.rpc.certChain and \
                     spark.ssl.rpc.privateKey (PEM), or spark.ssl.rpc.keyStore (PKCS12)"
                        .into(),
                ))
            }
        };
        Ok(TlsFiles {
            keys,
            protocol: self.get("protocol").map(str::to_string),
            algorithms: self
                .get("enabledAlgorithms")
                .map(|list| list.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect()),
        })
    }

    /// A password field, else `_SPARK_SSL_RPC_<env>_PASSWORD`, which Spark reads when the key is
    /// not set (SSLOptions.parse).
    fn password(&self, field: &str, env: &str) -> Option<Password> {
        let value = self
            .get(field)
            .map(str::to_string)
            .or_else(|| std::env::var(format!("_SPARK_SSL_RPC_{env}_PASSWORD")).ok().filter(|p| !p.is_empty()));
        value.map(Password::new)
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> TlsSettings {
        let mut s = TlsSettings::default();
        for (k, v) in pairs {
            assert!(s.set(k, v).expect("valid"), "{k} is a TLS key");
        }
        s
    }

    #[test]
    fn rpc_fields_fall_back_to_spark_ssl_but_enabled_does_not() {
        let s = settings(&[
            ("spark.ssl.enabled", "true"),
            ("spark.ssl.certChain", "/c.pem"),
            ("spark.ssl.privateKey", "/k.pem"),
        ]);
        assert!(!s.enabled(), "spark.ssl.enabled does not turn RPC TLS on");
        let s = settings(&[
            ("spark.ssl.rpc.enabled", "true"),
            ("spark.ssl.certChain", "/c.pem"),
            ("spark.ssl.privateKey", "/k.pem"),
            ("spark.ssl.rpc.privateKey", "/rpc-k.pem"),
        ]);
        assert!(s.enabled());
        let KeySource::Pem { cert_chain, private_key, password } = s.files().expect("files").keys else {
            panic!("PEM files")
        };
        assert_eq!((cert_chain, private_key), (PathBuf::from("/c.pem"), PathBuf::from("/rpc-k.pem")));
        assert_eq!(password, None);
    }

    #[test]
    fn missing_keys_are_a_config_error_naming_the_key() {
        let (key, why) = settings(&[("spark.ssl.rpc.enabled", "true")]).files().expect_err("no keys");
        assert_eq!(key, "spark.ssl.rpc.certChain");
        assert!(why.starts_with("RPC SSL encryption enabled but keys not found"), "{why}");
        let (key, _) = settings(&[("spark.ssl.rpc.certChain", "/c")]).files().expect_err("a chain without a key");
        assert_eq!(key, "spark.ssl.rpc.certChain");
    }

    #[test]
    fn pem_files_win_over_a_keystore_and_passwords_fall_back_like_the_paths() {
        let both = settings(&[
            ("spark.ssl.rpc.keyStore", "/ks.p12"),
            ("spark.ssl.rpc.certChain", "/c"),
            ("spark.ssl.rpc.privateKey", "/k"),
            ("spark.ssl.privateKeyPassword", "pem-pw"),
        ]);
        let KeySource::Pem { password, .. } = both.files().expect("pem").keys else { panic!("PEM wins") };
        assert_eq!(password.as_ref().map(Password::expose), Some("pem-pw"));
        let store = settings(&[
            ("spark.ssl.keyStore", "/ks.p12"),
            ("spark.ssl.rpc.keyStorePassword", "store-pw"),
            ("spark.ssl.keyPassword", "key-pw"),
        ]);
        let KeySource::Keystore { path, password, key_password } = store.files().expect("keystore").keys else {
            panic!("a keystore")
        };
        assert_eq!(path, PathBuf::from("/ks.p12"));
        assert_eq!(password.as_ref().map(Password::expose), Some("store-pw"));
        assert_eq!(key_password.as_ref().map(Password::expose), Some("key-pw"));
        assert_eq!(format!("{password:?}"), "Some(Password(..))", "never printed");
    }

    #[test]
    fn unknown_fields_and_other_keys_are_not_taken_and_booleans_are_checked() {
        let mut s = TlsSettings::default();
        assert_eq!(s.set("spark.ssl.rpc.noSuchField", "x"), Ok(false));
        assert_eq!(s.set("spark.authenticate", "true"), Ok(false));
        assert!(s.set("spark.ssl.rpc.enabled", "yes").is_err());
        assert!(s.set("agent.tls.plaintext", "maybe").is_err());
        assert_eq!(s.set("agent.tls.plaintext", "refuse"), Ok(true));
        assert_eq!(s.plaintext, Plaintext::Refuse);
        let s = settings(&[("spark.ssl.rpc.enabledAlgorithms", "TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384")]);
        assert_eq!(s.get("enabledAlgorithms"), Some("TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384"));
    }
}
