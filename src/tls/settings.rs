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
    /// PEM certificate chain, the server's certificate first.
    pub cert_chain: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub private_key: PathBuf,
    /// `protocol`: None = TLS 1.3 and 1.2 (Spark's default list).
    pub protocol: Option<String>,
    /// `enabledAlgorithms`: None = the default suites.
    pub algorithms: Option<Vec<String>>,
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

    /// The files and options of an enabled TLS port, or the key that is missing or not served
    /// and why (a config error at start-up).
    pub fn files(&self) -> Result<TlsFiles, (String, String)> {
        let key = |field: &str| format!("spark.ssl.rpc.{field}");
        if let Some(store) = self.get("keyStore").filter(|_| self.get("certChain").is_none()) {
            return Err((
                key("keyStore"),
                format!(
                    "{store}: keystores (PKCS12, JKS) are not read by this agent yet; give the same key and chain as \
                     PEM files in spark.ssl.rpc.certChain and spark.ssl.rpc.privateKey"
                ),
            ));
        }
        let (Some(chain), Some(private_key)) = (self.get("certChain"), self.get("privateKey")) else {
            // Spark's TransportContext: "RPC SSL encryption enabled but keys not found!"
            return Err((
                key("certChain"),
                "RPC SSL encryption enabled but keys not found: set spark.ssl.rpc.certChain and spark.ssl.rpc.privateKey"
                    .into(),
            ));
        };
        let password = self.get("privateKeyPassword").map(str::to_string).or_else(|| env_password("PRIVATE_KEY"));
        if password.is_some() {
            return Err((
                key("privateKeyPassword"),
                "encrypted private keys are not read by this agent yet; give it the key unencrypted (a Kubernetes \
                 Secret, as cert-manager writes it)"
                    .into(),
            ));
        }
        Ok(TlsFiles {
            cert_chain: PathBuf::from(chain),
            private_key: PathBuf::from(private_key),
            protocol: self.get("protocol").map(str::to_string),
            algorithms: self
                .get("enabledAlgorithms")
                .map(|list| list.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect()),
        })
    }
}

/// `_SPARK_SSL_RPC_<WHAT>_PASSWORD`, which Spark reads when the key is not set.
fn env_password(what: &str) -> Option<String> {
    std::env::var(format!("_SPARK_SSL_RPC_{what}_PASSWORD")).ok().filter(|p| !p.is_empty())
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
        let files = s.files().expect("files");
        assert_eq!((files.cert_chain, files.private_key), (PathBuf::from("/c.pem"), PathBuf::from("/rpc-k.pem")));
    }

    #[test]
    fn missing_keys_keystores_and_encrypted_keys_are_config_errors_naming_the_key() {
        let (key, why) = settings(&[("spark.ssl.rpc.enabled", "true")]).files().expect_err("no keys");
        assert_eq!(key, "spark.ssl.rpc.certChain");
        assert!(why.starts_with("RPC SSL encryption enabled but keys not found"), "{why}");
        let (key, _) = settings(&[("spark.ssl.rpc.keyStore", "/ks.p12")]).files().expect_err("a keystore");
        assert_eq!(key, "spark.ssl.rpc.keyStore");
        let encrypted = settings(&[
            ("spark.ssl.rpc.certChain", "/c"),
            ("spark.ssl.rpc.privateKey", "/k"),
            ("spark.ssl.rpc.privateKeyPassword", "pw"),
        ]);
        assert_eq!(encrypted.files().expect_err("encrypted").0, "spark.ssl.rpc.privateKeyPassword");
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
