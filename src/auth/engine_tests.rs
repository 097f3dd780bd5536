//! The AuthEngine against spec §6.2's verified vectors (AuthEngineSuite, appId "appId", secret
//! "secret"). The vectors fix the client side; the client's computation is redone here with its
//! given private key, and the server is checked against it.

use super::*;
use crate::auth::message::tests::{unhex, SPEC_C};

const SPEC_S: &str = "fb00000005617070496400000010708451c9dd2792c97c1ca66e6df449ef0000003c64fe899ecdaf458d4e25e9d5c5a380b8e6d1a184692fac065ed84f8592c18e9629f9c636809dca2ffc041f20346eb53db7873808ecad08b46b5ee3ff";
const CLIENT_PRIVATE: &str = "efe6b68b3fce92158e3637f6ef9d937e75558928dd4b401de04b43d300a73186";
const CLIENT_PUBLIC: &str = "fa987505e4a338d08229328dd22750491bc11de6da05d00a654c513f1c191355";
const SHARED: &str = "31963f15a320d5c90333f7ecf5cf3a31c7eaf151de07fef8494663a9f47cfd31";
const V2_KEY: &str = "2d6e7a9048c8265c33a8f3747bfcc84c";
const V2_KEY_ID: &str = "de04fd52d71040ed9d260579dacfdf4f5695f991ce8ddb1dde05a7335880906e";
const INPUT_IV: &str = "fc6a5dc8b90a9dad8f54f08b51a59ed2";
const OUTPUT_IV: &str = "a72709baf00785cad6329ce09f631f71";

/// Randomness from fixed values, to replay a recorded exchange.
pub(crate) struct Fixed {
    pub private_key: [u8; 32],
    pub salt: [u8; 16],
    pub iv: [u8; 12],
}

impl EngineRandom for Fixed {
    fn private_key(&mut self) -> Result<Zeroizing<[u8; 32]>, AuthError> {
        Ok(Zeroizing::new(self.private_key))
    }
    fn salt(&mut self) -> Result<[u8; 16], AuthError> {
        Ok(self.salt)
    }
    fn gcm_iv(&mut self) -> Result<[u8; 12], AuthError> {
        Ok(self.iv)
    }
}

fn arr<const N: usize>(hex: &str) -> [u8; N] {
    unhex(hex).try_into().unwrap()
}

fn secret() -> Secret {
    Secret::new("secret")
}

fn spec_c() -> AuthMessage {
    AuthMessage::decode(&mut &unhex(SPEC_C)[..]).unwrap()
}

fn fixed() -> Fixed {
    Fixed { private_key: [0x42; 32], salt: [0x5a; 16], iv: [0x17; 12] }
}

#[test]
fn the_client_challenge_of_the_spec_is_reproduced_byte_for_byte() {
    let c = spec_c();
    let client_private = StaticSecret::from(arr::<32>(CLIENT_PRIVATE));
    let client_public = PublicKey::from(&client_private);
    assert_eq!(hex(client_public.as_bytes()), CLIENT_PUBLIC);
    // The random parts of C are its salt and its GCM IV (the first 12 ciphertext bytes).
    let mut rng = Fixed { private_key: [0; 32], salt: arr(&hex(&c.salt)), iv: arr(&hex(&c.ciphertext[..12])) };
    let rebuilt = wrap_public_key("appId", &secret(), client_public.as_bytes(), &[], &mut rng).unwrap();
    assert_eq!(hex(&rebuilt.to_bytes()), SPEC_C);
}

#[test]
fn the_spec_session_keys_and_ivs_are_reproduced_from_the_spec_response() {
    // The client's side of the exchange: unwrap S with the transcript C, then derive.
    let c_bytes = unhex(SPEC_C);
    let s = AuthMessage::decode(&mut &unhex(SPEC_S)[..]).unwrap();
    let server_public = unwrap_public_key("appId", &secret(), &s, &c_bytes).unwrap();
    let shared = StaticSecret::from(arr::<32>(CLIENT_PRIVATE)).diffie_hellman(&PublicKey::from(server_public));
    assert_eq!(hex(shared.as_bytes()), SHARED);
    let transcript = [c_bytes, unhex(SPEC_S)].concat();

    let v1 = derive_keys(shared.as_bytes(), &transcript, EngineVersion::V1);
    let (key, input_iv, output_iv) = v1.parts();
    assert_eq!(hex(key), SHARED);
    assert_eq!(hex(&input_iv), INPUT_IV);
    assert_eq!(hex(&output_iv), OUTPUT_IV);

    let v2 = derive_keys(shared.as_bytes(), &transcript, EngineVersion::V2);
    assert_eq!(hex(v2.parts().0), V2_KEY);
    assert_eq!(v2.key_id(), V2_KEY_ID);
    assert_eq!(v2.key_len(), 16);
    // The IVs do not depend on the version.
    assert_eq!((v2.parts().1, v2.parts().2), (input_iv, output_iv));
}

#[test]
fn the_server_accepts_the_spec_challenge_and_the_client_derives_the_same_keys() {
    let c = spec_c();
    for version in [EngineVersion::V1, EngineVersion::V2] {
        let out = respond("appId", &secret(), &c, version, &mut fixed()).unwrap();
        assert_eq!(out.response.app_id, "appId");
        assert_eq!(&out.response.salt[..], &[0x5a; 16]);
        assert_eq!(out.response.ciphertext.len(), 60);
        assert_eq!(&out.response.ciphertext[..12], &[0x17; 12]);
        // What the spec's client does with our response:
        let c_bytes = c.to_bytes();
        let server_public = unwrap_public_key("appId", &secret(), &out.response, &c_bytes).unwrap();
        assert_eq!(server_public, *PublicKey::from(&StaticSecret::from([0x42; 32])).as_bytes());
        let shared = StaticSecret::from(arr::<32>(CLIENT_PRIVATE)).diffie_hellman(&PublicKey::from(server_public));
        let transcript = [c_bytes, out.response.to_bytes()].concat();
        let client = derive_keys(shared.as_bytes(), &transcript, version);
        assert_eq!(client.parts(), out.keys.parts());
        assert_eq!(out.keys.key_len(), if version == EngineVersion::V1 { 32 } else { 16 });
    }
}

#[test]
fn a_wrong_secret_or_app_id_fails_with_spark_s_one_text() {
    let c = spec_c();
    let err = respond("appId", &Secret::new("secreT"), &c, EngineVersion::V1, &mut fixed()).unwrap_err();
    assert!(matches!(err, AuthError::BadClientKey), "{err:?}");
    assert_eq!(err.client_error().to_string(), "java.lang.IllegalArgumentException: Authentication failed.");
    let err = respond("otherApp", &secret(), &c, EngineVersion::V1, &mut fixed()).unwrap_err();
    assert!(matches!(err, AuthError::AppIdMismatch), "{err:?}");
    assert_eq!(err.client_error().to_string(), "java.lang.IllegalArgumentException: Authentication failed.");
    // The same ciphertext relabelled with another app id (whose secret happens to be the same):
    let relabelled = AuthMessage { app_id: "appIe".into(), ..c };
    let err = respond("appIe", &secret(), &relabelled, EngineVersion::V1, &mut fixed()).unwrap_err();
    assert!(matches!(err, AuthError::BadClientKey), "{err:?}");
}

#[test]
fn flipping_any_bit_of_the_challenge_makes_it_fail() {
    let golden = unhex(SPEC_C);
    for i in 0..golden.len() {
        for bit in 0..8 {
            let mut bytes = golden.clone();
            bytes[i] ^= 1 << bit;
            let Ok(m) = AuthMessage::decode(&mut &bytes[..]) else { continue };
            // Look the secret up by the (possibly tampered) claimed id, as a server would.
            let r = respond(&m.app_id.clone(), &secret(), &m, EngineVersion::V1, &mut fixed());
            assert!(r.is_err(), "byte {i} bit {bit} accepted");
        }
    }
}

#[test]
fn a_low_order_client_key_is_refused() {
    // A correctly wrapped all-zero public key: the shared secret would be all zeros.
    let mut rng = fixed();
    let c = wrap_public_key("appId", &secret(), &[0u8; 32], &[], &mut rng).unwrap();
    let err = respond("appId", &secret(), &c, EngineVersion::V1, &mut fixed()).unwrap_err();
    assert!(matches!(err, AuthError::WeakPublicKey), "{err:?}");
}

#[test]
fn debug_output_shows_no_key_material() {
    let out = respond("appId", &secret(), &spec_c(), EngineVersion::V1, &mut fixed()).unwrap();
    let shown = format!("{out:?} {:?}", out.keys.server_ciphers());
    let (key, input_iv, output_iv) = out.keys.parts();
    for material in [hex(key), hex(&input_iv), hex(&output_iv)] {
        assert!(!shown.contains(&material), "{shown}");
    }
    assert!(shown.contains(&out.keys.key_id()));
}
