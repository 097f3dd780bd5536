use super::*;

/// The client challenge C of spec §6.2's verified vectors (AuthEngineSuite, appId "appId").
pub(crate) const SPEC_C: &str = "fb00000005617070496400000010890b6e960f48e998777267a7e4e623220000003c48ad7dc7ec9466da93bda9f11488dc9404050e02c661d87d67c782444944c6e369b27e0a416c30845a2d9e64271511ca98b41d65f8c426e18ff380f6";

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn the_spec_challenge_decodes_and_re_encodes_to_the_same_bytes() {
    let golden = unhex(SPEC_C);
    let m = AuthMessage::decode(&mut &golden[..]).unwrap();
    assert_eq!(m.app_id, "appId");
    assert_eq!(&m.salt[..], &unhex("890b6e960f48e998777267a7e4e62322")[..]);
    assert_eq!(m.ciphertext.len(), 60);
    assert_eq!(m.encoded_len(), golden.len());
    assert_eq!(m.to_bytes(), golden);
    assert_eq!(Handshake::decode(&mut &golden[..]).unwrap(), Handshake::Auth(m));
}

#[test]
fn a_sasl_message_has_golden_bytes_and_round_trips() {
    let m = SaslMessage { app_id: "app".into(), token: Bytes::from_static(b"xy") };
    let mut out = Vec::new();
    m.encode(&mut out);
    assert_eq!(out, b"\xea\x00\x00\x00\x03app\x00\x00\x00\x02xy");
    assert_eq!(Handshake::decode(&mut &out[..]).unwrap(), Handshake::Sasl(m));
}

#[test]
fn the_first_sasl_token_may_be_empty() {
    let out = b"\xea\x00\x00\x00\x03app\x00\x00\x00\x00";
    let m = SaslMessage::decode(&mut &out[..]).unwrap();
    assert!(m.token.is_empty());
}

#[test]
fn every_truncation_of_the_spec_challenge_is_an_error() {
    let golden = unhex(SPEC_C);
    for cut in 0..golden.len() {
        let r = AuthMessage::decode(&mut &golden[..cut]);
        assert!(matches!(r, Err(AuthError::Malformed(WireError::Truncated { .. }))), "cut {cut}: {r:?}");
    }
}

#[test]
fn an_oversized_length_is_refused_before_reading_further() {
    // appId announces 2 GiB, and only 3 bytes follow: refused on the limit, not the truncation.
    let buf = b"\xfb\x7f\xff\xff\xffabc";
    assert!(matches!(
        AuthMessage::decode(&mut &buf[..]),
        Err(AuthError::TooLong { field: "appId", len: 0x7fff_ffff, .. })
    ));
    let mut buf = b"\xfb\x00\x00\x00\x01a".to_vec();
    buf.extend_from_slice(&(MAX_SALT as i32 + 1).to_be_bytes());
    assert!(matches!(AuthMessage::decode(&mut &buf[..]), Err(AuthError::TooLong { field: "salt", .. })));
}

#[test]
fn a_negative_length_is_refused() {
    let buf = b"\xfb\xff\xff\xff\xff";
    assert!(matches!(AuthMessage::decode(&mut &buf[..]), Err(AuthError::Malformed(WireError::NegativeLength(-1)))));
}

#[test]
fn an_oversized_sasl_token_is_refused() {
    let mut buf = b"\xea\x00\x00\x00\x01a\x00\x00\x00\x00".to_vec();
    buf.resize(buf.len() + MAX_SASL_TOKEN + 1, b'x');
    assert!(matches!(SaslMessage::decode(&mut &buf[..]), Err(AuthError::TooLong { .. })));
}

#[test]
fn other_tags_and_empty_bodies_are_refused() {
    // 0x03 is RegisterExecutor's type id: a client with auth off (auth.md §3).
    assert!(matches!(Handshake::decode(&mut &b"\x03abc"[..]), Err(AuthError::UnknownTag(3))));
    assert!(matches!(Handshake::decode(&mut &b""[..]), Err(AuthError::Malformed(_))));
    assert!(matches!(SaslMessage::decode(&mut &b"\xfb"[..]), Err(AuthError::UnknownTag(0xfb))));
}

#[test]
fn a_message_split_across_two_buffers_at_any_byte_decodes_the_same() {
    // RpcRequest bodies may be non-contiguous (a Buf chain), so nothing may assume one chunk.
    let golden = unhex(SPEC_C);
    let whole = Handshake::decode(&mut &golden[..]).unwrap();
    let mut sasl = Vec::new();
    SaslMessage { app_id: "app".into(), token: Bytes::from_static(b"token") }.encode(&mut sasl);
    let sasl_whole = Handshake::decode(&mut &sasl[..]).unwrap();
    for (bytes, expected) in [(&golden, &whole), (&sasl, &sasl_whole)] {
        for cut in 0..=bytes.len() {
            let mut chained = (&bytes[..cut]).chain(&bytes[cut..]);
            assert_eq!(&Handshake::decode(&mut chained).unwrap(), expected, "cut {cut}");
        }
    }
}
