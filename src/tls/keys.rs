//! The server's TLS configuration: certificate chain and private key (PEM files, or a PKCS12
//! keystore: [`super::keystore`]), protocol versions and cipher suites, as Spark's `SSLFactory`
//! chooses them (spec auth.md §4). No client certificates (Spark hard-codes
//! `setNeedClientAuth(false)`), no ALPN.
//!
//! Crypto provider: rustls with *ring*, already in the build for the Kubernetes client (kube's
//! rustls feature): AES-GCM and ChaCha20 with hardware AES, and no second provider (aws-lc-rs
//! would add a large C and assembly build for the same suites).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, SupportedProtocolVersion};

use super::settings::{KeySource, Password, TlsFiles};

/// Why a TLS configuration could not be built: the file or option, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct KeyError {
    pub what: String,
    pub why: String,
}

pub(super) fn key_error(what: impl std::fmt::Display, why: impl std::fmt::Display) -> KeyError {
    KeyError { what: what.to_string(), why: why.to_string() }
}

/// Reads the files and builds the configuration every new TLS connection takes, with the
/// serving certificate's notAfter (Unix seconds) when it can be read.
pub fn server_config(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Option<i64>), KeyError> {
    let (chain, key) = match &files.keys {
        KeySource::Pem { cert_chain, private_key, password } => {
            (read_chain(cert_chain)?, read_key(private_key, password.as_ref())?)
        }
        KeySource::Keystore { path, password, key_password } => {
            super::keystore::read(path, password.as_ref(), key_password.as_ref())?
        }
    };
    let not_after = chain.first().and_then(|leaf| super::expiry::not_after_unix_secs(leaf));
    let provider = provider(files.algorithms.as_deref())?;
    let versions = versions(files.protocol.as_deref())?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| key_error("spark.ssl.rpc.protocol", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            key_error(files.keys.name().display(), format!("the key does not fit the certificate chain: {e}"))
        })?;
    // The server's order (provider()), as a JDK server chooses: Spark's JDK client lists
    // ChaCha20 first, which costs several times AES-GCM's CPU on hosts with AES-NI.
    config.ignore_client_order = true;
    Ok((Arc::new(config), not_after))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| key_error(path.display(), e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| key_error(path.display(), e))?;
    if certs.is_empty() {
        return Err(key_error(path.display(), "holds no PEM certificate"));
    }
    Ok(certs)
}

/// An unencrypted PEM key (PKCS#8, PKCS#1 or SEC1), or a PKCS#8 `ENCRYPTED PRIVATE KEY`
/// opened with `password` (PBES2, what `openssl pkcs8 -topk8` writes and Netty reads).
fn read_key(path: &Path, password: Option<&Password>) -> Result<PrivateKeyDer<'static>, KeyError> {
    let what = || path.display().to_string();
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| key_error(what(), e))?);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(key_error(
            what(),
            "is encrypted the traditional OpenSSL way, which Spark does not read either: convert it with \
             `openssl pkcs8 -topk8 -v2 aes-256-cbc -in <it> -out <new>` (or leave it unencrypted)",
        ));
    }
    const BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
    if let Some(start) = text.find(BEGIN) {
        let Some(password) = password else {
            return Err(key_error(
                what(),
                "is encrypted: set spark.ssl.rpc.privateKeyPassword (or env _SPARK_SSL_RPC_PRIVATE_KEY_PASSWORD)",
            ));
        };
        let (_, document) =
            pkcs8::Document::from_pem(&text[start..]).map_err(|e| key_error(what(), format!("bad PEM: {e}")))?;
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
            .map_err(|e| key_error(what(), format!("not a PKCS#8 encrypted key: {e}")))?;
        let plain = info.decrypt(password.expose()).map_err(|e| {
            key_error(what(), format!("cannot be decrypted with spark.ssl.rpc.privateKeyPassword: {e}"))
        })?;
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec())));
    }
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            key_error(what(), "holds no PEM private key (PKCS#8, encrypted PKCS#8, PKCS#1 or SEC1)")
        }
        e => key_error(what(), e),
    })
}

/// Spark's `protocol` key: one protocol, or the default TLS 1.3 and 1.2.
fn versions(protocol: Option<&str>) -> Result<Vec<&'static SupportedProtocolVersion>, KeyError> {
    match protocol {
        None | Some("TLS") => Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]),
        Some("TLSv1.3") => Ok(vec![&rustls::version::TLS13]),
        Some("TLSv1.2") => Ok(vec![&rustls::version::TLS12]),
        Some(other) => Err(key_error("spark.ssl.rpc.protocol", format!("{other}: only TLSv1.3, TLSv1.2 or TLS"))),
    }
}

/// *ring*'s suites, cut to `enabledAlgorithms` when given (IANA names, as Spark's list uses;
/// names of suites rustls does not have are skipped, as the JDK skips unsupported ones).
fn provider(algorithms: Option<&[String]>) -> Result<CryptoProvider, KeyError> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first: TLS 1.3's mandatory suite, what Spark's OpenSSL client asks for first,
    // and with AES-NI the cheapest (AES-256 has 14 rounds to its 10). The sort is stable.
    provider.cipher_suites.sort_by_key(|s| {
        let name = iana_name(s);
        (!name.contains("AES_128_GCM"), name.contains("CHACHA20"))
    });
    if let Some(wanted) = algorithms {
        provider.cipher_suites.retain(|s| wanted.iter().any(|w| *w == iana_name(s)));
        if provider.cipher_suites.is_empty() {
            return Err(key_error(
                "spark.ssl.rpc.enabledAlgorithms",
                format!("none of {} is a suite this agent has", wanted.join(", ")),
            ));
        }
    }
    Ok(provider)
}

/// A suite's IANA name (rustls spells TLS 1.3 suites `TLS13_...`).
pub fn iana_name(suite: &rustls::SupportedCipherSuite) -> String {
    let name = format!("{:?}", suite.suite());
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_suites_carry_spark_defaults_iana_names() {
        let names: Vec<String> = provider(None).expect("provider").cipher_suites.iter().map(iana_name).collect();
        for spark_default in [
            "TLS_CHACHA20_POLY1305_SHA256",
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ] {
            assert!(names.iter().any(|n| n == spark_default), "{spark_default} in {names:?}");
        }
    }

    #[test]
    fn aes_128_gcm_comes_first_and_chacha20_after_every_aes_suite() {
        let names: Vec<String> = provider(None).expect("provider").cipher_suites.iter().map(iana_name).collect();
        assert_eq!(names[0], "TLS_AES_128_GCM_SHA256", "{names:?}");
        let last_aes = names.iter().rposition(|n| n.contains("AES")).expect("AES suites");
        let first_chacha = names.iter().position(|n| n.contains("CHACHA20")).expect("ChaCha20 suites");
        assert!(last_aes < first_chacha, "{names:?}");
    }

    #[test]
    fn enabled_algorithms_cut_the_suites_and_an_empty_cut_is_an_error() {
        let one = provider(Some(&["TLS_AES_256_GCM_SHA384".to_string(), "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256".into()]))
            .expect("one suite");
        assert_eq!(one.cipher_suites.iter().map(iana_name).collect::<Vec<_>>(), ["TLS_AES_256_GCM_SHA384"]);
        assert!(provider(Some(&["SSL_RSA_WITH_RC4_128_MD5".to_string()])).is_err());
    }

    #[test]
    fn protocols_are_spark_names_and_others_are_refused() {
        assert_eq!(versions(None).expect("default").len(), 2);
        assert_eq!(versions(Some("TLSv1.2")).expect("1.2"), [&rustls::version::TLS12]);
        assert!(versions(Some("SSLv3")).is_err());
    }

    #[test]
    fn unreadable_or_empty_files_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let files = TlsFiles {
            keys: KeySource::Pem {
                cert_chain: empty.clone(),
                private_key: dir.path().join("missing.pem"),
                password: None,
            },
            protocol: None,
            algorithms: None,
        };
        let err = server_config(&files).expect_err("refused");
        assert!(err.what.ends_with("empty.pem") && err.why.contains("no PEM certificate"), "{err}");
    }
}
