//! The server's key and chain from a PKCS12 keystore (`spark.ssl.rpc.keyStore`), Spark's JDK
//! path: the JDK opens it as `KeyStore.getDefaultType()`, PKCS12 since JDK 9. Read with the
//! p12-keystore crate (MAC check, PBES2 and the older PBES1 suites); what is refused says how to
//! fix it, since the agent stops at start-up or keeps its old keys on a reload.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::keys::{key_error, KeyError};
use super::settings::Password;

/// A JKS keystore's first four bytes (`0xFEEDFEED`): the JDK's compatibility mode reads these
/// too, this agent does not.
const JKS_MAGIC: [u8; 4] = [0xfe, 0xed, 0xfe, 0xed];

/// The chain (the key's certificate first) and the private key (PKCS#8) of the one private key
/// entry in the keystore at `path`.
pub(super) fn read(
    path: &Path,
    password: Option<&Password>,
    key_password: Option<&Password>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
    let what = || path.display().to_string();
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| key_error(what(), e))?);
    if bytes.starts_with(&JKS_MAGIC) {
        return Err(key_error(
            what(),
            "is a JKS keystore; this agent reads PKCS12 (the JDK's default type): convert it with \
             `keytool -importkeystore -srckeystore <it> -destkeystore <new>.p12 -deststoretype pkcs12`",
        ));
    }
    let password = password.map(Password::expose).unwrap_or_default();
    // PKCS12 has one password for the store and its keys (keytool refuses a different key
    // password for PKCS12), so a keyPassword that differs cannot open the key.
    if key_password.map(Password::expose).is_some_and(|k| k != password) {
        return Err(key_error(
            "spark.ssl.rpc.keyPassword",
            format!(
                "differs from spark.ssl.rpc.keyStorePassword; a PKCS12 keystore ({}) has one password for the store \
                 and its keys",
                what()
            ),
        ));
    }
    let store = p12_keystore::KeyStore::from_pkcs12(&bytes, password).map_err(|e| key_error(what(), why(&e)))?;
    let mut keys = store.entries().filter_map(|(alias, entry)| match entry {
        p12_keystore::KeyStoreEntry::PrivateKeyChain(chain) => Some((alias, chain)),
        _ => None,
    });
    let Some((alias, entry)) = keys.next() else {
        return Err(key_error(what(), "holds no private key entry (only certificates: a truststore?)"));
    };
    if let Some((other, _)) = keys.next() {
        return Err(key_error(
            what(),
            format!(
                "holds more than one private key ({alias}, {other}, ...); the agent serves one: keep one entry \
                 in the keystore"
            ),
        ));
    }
    let chain: Vec<CertificateDer<'static>> =
        entry.chain().iter().map(|c| CertificateDer::from(c.as_der().to_vec())).collect();
    if chain.is_empty() {
        return Err(key_error(what(), format!("the private key {alias} has no certificate")));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(entry.key().to_vec()));
    Ok((chain, key))
}

/// What the crate's error means for an operator.
fn why(e: &p12_keystore::error::Error) -> String {
    use p12_keystore::error::Error as E;
    match e {
        E::MacError(_) => "cannot be opened: wrong spark.ssl.rpc.keyStorePassword (or a damaged file: its MAC does \
                           not match)"
            .into(),
        E::DerError(_) | E::InvalidVersion | E::UnsupportedContentType => {
            format!("is not a PKCS12 keystore ({e})")
        }
        E::UnpadError | E::InvalidData => {
            "cannot be decrypted: wrong spark.ssl.rpc.keyStorePassword (or a damaged file)".into()
        }
        other => format!("cannot be read: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(bytes: &[u8], password: Option<&str>, key_password: Option<&str>) -> KeyError {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.p12");
        std::fs::write(&path, bytes).expect("write");
        let pw = |p: Option<&str>| p.map(|p| Password::new(p.to_string()));
        read(&path, pw(password).as_ref(), pw(key_password).as_ref()).expect_err("refused")
    }

    #[test]
    fn jks_files_and_garbage_are_refused_with_what_to_do() {
        let jks = refused(&[0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2], Some("changeit"), None);
        assert!(jks.why.contains("JKS") && jks.why.contains("-deststoretype pkcs12"), "{jks}");
        let garbage = refused(b"not a keystore", Some("changeit"), None);
        assert!(garbage.why.starts_with("is not a PKCS12 keystore"), "{garbage}");
    }

    #[test]
    fn a_key_password_other_than_the_store_password_is_refused_before_reading() {
        let e = refused(b"", Some("store"), Some("other"));
        assert_eq!(e.what, "spark.ssl.rpc.keyPassword");
        assert!(e.why.contains("one password"), "{e}");
    }
}
