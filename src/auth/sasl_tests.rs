use super::*;

const NONCE: [u8; NONCE_BYTES] = [7; NONCE_BYTES];

/// A digest-response built the way the JDK client builds it, from the challenge's nonce.
fn client_response(nonce: &str, password: &str, cnonce: &str) -> String {
    let h = ha1(SASL_USER, REALM, password, nonce, cnonce, None);
    let response = kd(&h, nonce, "00000001", cnonce, &format!("AUTHENTICATE:{DIGEST_URI}"));
    format!(
        "charset=utf-8,username=\"{SASL_USER}\",realm=\"default\",nonce=\"{nonce}\",nc=00000001,\
         cnonce=\"{cnonce}\",digest-uri=\"{DIGEST_URI}\",maxbuf=65536,response={response},qop=auth"
    )
}

fn started(secret: &str) -> (SaslServer, String) {
    let mut s = SaslServer::with_nonce("app-1", &Secret::new(secret), &NONCE);
    let SaslStep::Continue(challenge) = s.step(b"").unwrap() else { panic!("no challenge") };
    let challenge = String::from_utf8(challenge).unwrap();
    let nonce = Directives::parse(&challenge).unwrap().get("nonce").unwrap().to_string();
    (s, nonce)
}

#[test]
fn the_rfc_2831_example_digest_and_rspauth_are_reproduced() {
    // RFC 2831 §4: chris / elwood.innosoft.com / secret, qop=auth, md5-sess.
    let h = ha1("chris", "elwood.innosoft.com", "secret", "OA6MG9tEQGm2hh", "OA6MHXh6VqTrRk", None);
    let uri = "imap/elwood.innosoft.com";
    let resp = kd(&h, "OA6MG9tEQGm2hh", "00000001", "OA6MHXh6VqTrRk", &format!("AUTHENTICATE:{uri}"));
    assert_eq!(resp, "d388dad90d4bbd760a152321f2143af7");
    let rspauth = kd(&h, "OA6MG9tEQGm2hh", "00000001", "OA6MHXh6VqTrRk", &format!(":{uri}"));
    assert_eq!(rspauth, "ea40f60335c427b5527b84dbabcdfffd");
}

#[test]
fn the_challenge_offers_realm_default_qop_auth_and_md5_sess() {
    let mut s = SaslServer::with_nonce("app-1", &Secret::new("s"), &NONCE);
    let SaslStep::Continue(c) = s.step(b"").unwrap() else { panic!() };
    let c = String::from_utf8(c).unwrap();
    let nonce = base64::engine::general_purpose::STANDARD.encode(NONCE);
    assert_eq!(c, format!("realm=\"default\",nonce=\"{nonce}\",qop=\"auth\",charset=utf-8,algorithm=md5-sess"));
    assert!(!s.is_complete());
}

#[test]
fn the_right_password_completes_with_rspauth() {
    let (mut s, nonce) = started("secret");
    let pw = Secret::new("secret").sasl_password();
    let SaslStep::Done(rsp) = s.step(client_response(&nonce, &pw, "abc").as_bytes()).unwrap() else { panic!() };
    assert!(rsp.starts_with(b"rspauth="));
    assert!(s.is_complete());
    assert_eq!(s.app_id(), "app-1");
}

#[test]
fn a_wrong_password_fails_with_the_jdk_text() {
    let (mut s, nonce) = started("secret");
    let wrong = Secret::new("not-the-secret").sasl_password();
    let err = s.step(client_response(&nonce, &wrong, "abc").as_bytes()).unwrap_err();
    assert_eq!(
        err.client_error().to_string(),
        "java.lang.RuntimeException: javax.security.sasl.SaslException: \
         DIGEST-MD5: digest response format violation. Mismatched response."
    );
    assert!(!err.client_error().to_string().contains("secret"));
    assert!(matches!(err, AuthError::SaslWrongDigest(_)), "counted as wrong_secret: {err:?}");
    assert!(!s.is_complete());
    // The exchange is dead after a failure, even with the right response.
    let pw = Secret::new("secret").sasl_password();
    assert!(s.step(client_response(&nonce, &pw, "abc").as_bytes()).is_err());
}

#[test]
fn a_replayed_response_for_another_nonce_fails() {
    let (mut s, _) = started("secret");
    let pw = Secret::new("secret").sasl_password();
    let err = s.step(client_response("other-nonce", &pw, "abc").as_bytes()).unwrap_err();
    assert!(err.to_string().contains("Mismatched nonce"), "{err}");
    assert!(matches!(err, AuthError::Sasl(_)), "a malformed exchange, not a wrong secret: {err:?}");
}

#[test]
fn auth_conf_is_refused_with_the_no_common_layer_text() {
    let (mut s, nonce) = started("secret");
    let pw = Secret::new("secret").sasl_password();
    let r = client_response(&nonce, &pw, "abc").replace("qop=auth", "qop=auth-conf");
    let err = s.step(r.as_bytes()).unwrap_err();
    assert!(err.client_error().to_string().ends_with("No common protection layer between client and server"), "{err}");
}

#[test]
fn an_initial_response_and_oversized_or_malformed_tokens_fail_without_panicking() {
    let mut s = SaslServer::with_nonce("a", &Secret::new("s"), &NONCE);
    assert!(s.step(b"x").is_err());
    let (mut s, _) = started("s");
    assert!(s.step(&vec![b'a'; MAX_RESPONSE]).unwrap_err().to_string().contains("Invalid digest response length"));
    for bad in ["", "username", "username=\"unterminated", "\u{0}=\u{0}", "nonce=a,nonce=b", "=,=,="] {
        let (mut s, _) = started("s");
        assert!(s.step(bad.as_bytes()).is_err(), "{bad:?}");
    }
    let (mut s, _) = started("s");
    assert!(s.step(&[0xff, 0xfe]).is_err());
}

#[test]
fn quoted_values_unescape_backslashes() {
    let d = Directives::parse(r#"a="x\"y\\z", b = tok ,c="""#).unwrap();
    assert_eq!(d.get("a"), Some(r#"x"y\z"#));
    assert_eq!(d.get("B"), Some("tok"));
    assert_eq!(d.get("c"), Some(""));
}
