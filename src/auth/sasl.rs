//! The SASL DIGEST-MD5 server (RFC 2831) that Spark's SaslRpcHandler runs through the JDK
//! (spec §6.1, auth.md §2-3): realm `default`, qop `auth`, user `c3BhcmtTYXNsVXNlcg==`
//! (Base64 of "sparkSaslUser"), password Base64(UTF-8 secret). Two round trips: an empty token
//! gets the digest-challenge; the digest-response gets `rspauth=…` and completes the exchange.
//! Pure: the nonce is injected, nothing here does I/O.
//!
//! **qop=auth-conf is refused.** It is the obsolete DIGEST-MD5 RC4/3DES confidentiality layer
//! (`spark.authenticate.enableSaslEncryption=true`, deprecated in Spark's docs). We offer only
//! `qop="auth"`, so a client that demands auth-conf fails in its own JDK before sending a
//! response, with the JDK's clear "DIGEST-MD5: No common protection layer between client and
//! server"; one that sends `qop=auth-conf` anyway is told the same.
//!
//! Stricter than Spark on one point: Spark authorises any user name whose digest verifies
//! (its password does not depend on the name); we also require the fixed Spark user name, which
//! every Spark client sends.

use base64::Engine as _;
use md5::{Digest, Md5};
use zeroize::Zeroizing;

use super::engine::hex;
use super::error::AuthError;
use super::secret::Secret;

/// Base64(UTF-8 "sparkSaslUser"): SparkSaslServer.encodeIdentifier of the fixed user.
pub const SASL_USER: &str = "c3BhcmtTYXNsVXNlcg==";
const REALM: &str = "default";
/// SparkSaslClient passes no protocol and server name "default", so the JDK client writes this.
const DIGEST_URI: &str = "null/default";
/// The JDK server refuses digest-responses of this size or more.
const MAX_RESPONSE: usize = 4096;
/// Bytes of randomness in the nonce: the JDK's DigestMD5Base draws 30 and Base64-encodes them.
pub const NONCE_BYTES: usize = 30;

const VIOLATION: &str = "DIGEST-MD5: digest response format violation.";

/// What to send back for one client token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this token; the exchange continues.
    Continue(Vec<u8>),
    /// Send this token (`rspauth=…`); the client is authenticated for the server's app id.
    Done(Vec<u8>),
}

enum State {
    Start,
    ChallengeSent,
    Done,
    Failed,
}

/// One connection's SASL exchange, pinned to the app id of its first SaslMessage (4.3's
/// SaslRpcHandler `claimedAppId`).
pub struct SaslServer {
    app_id: String,
    password: Zeroizing<String>,
    nonce: String,
    state: State,
}

impl std::fmt::Debug for SaslServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslServer").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

impl SaslServer {
    /// A server for `app_id`, with a nonce from the OS CSPRNG.
    pub fn new(app_id: impl Into<String>, secret: &Secret) -> Result<SaslServer, AuthError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce).map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(Self::with_nonce(app_id, secret, &nonce))
    }

    /// A server with a given nonce, for deterministic tests.
    pub fn with_nonce(app_id: impl Into<String>, secret: &Secret, nonce: &[u8; NONCE_BYTES]) -> SaslServer {
        SaslServer {
            app_id: app_id.into(),
            password: secret.sasl_password(),
            nonce: base64::engine::general_purpose::STANDARD.encode(nonce),
            state: State::Start,
        }
    }

    /// The app id this exchange authenticates.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Takes the client's next token. After an error the exchange is dead: the JDK server
    /// also refuses further steps.
    pub fn step(&mut self, token: &[u8]) -> Result<SaslStep, AuthError> {
        let result = match self.state {
            State::Start if token.is_empty() => {
                self.state = State::ChallengeSent;
                return Ok(SaslStep::Continue(self.challenge().into_bytes()));
            }
            State::Start => Err(sasl_err("DIGEST-MD5 must not have an initial response")),
            State::ChallengeSent => self.verify(token),
            State::Done => Err(sasl_err("DIGEST-MD5 authentication already complete")),
            State::Failed => Err(sasl_err("DIGEST-MD5 authentication failed earlier")),
        };
        self.state = if result.is_ok() { State::Done } else { State::Failed };
        result.map(SaslStep::Done)
    }

    fn challenge(&self) -> String {
        format!("realm=\"{REALM}\",nonce=\"{}\",qop=\"auth\",charset=utf-8,algorithm=md5-sess", self.nonce)
    }

    fn verify(&self, token: &[u8]) -> Result<Vec<u8>, AuthError> {
        if token.len() >= MAX_RESPONSE {
            return Err(sasl_err(format!(
                "DIGEST-MD5: Invalid digest response length. Got:  {} Expected < {MAX_RESPONSE}",
                token.len()
            )));
        }
        let text = std::str::from_utf8(token).map_err(|_| violation("Invalid encoding."))?;
        let d = Directives::parse(text)?;
        let username = d.require("username")?;
        if d.get("nonce") != Some(self.nonce.as_str()) {
            return Err(violation("Mismatched nonce."));
        }
        let nc = d.require("nc")?;
        if nc != "00000001" {
            return Err(violation(format_args!("Nonce count does not match: {nc}")));
        }
        let cnonce = d.require("cnonce")?;
        let realm = d.get("realm").unwrap_or("");
        if !realm.is_empty() && realm != REALM {
            return Err(violation(format_args!("Nonexistent realm: {realm}")));
        }
        let qop = d.get("qop").unwrap_or("auth");
        if qop != "auth" {
            // We only offered auth (module doc); auth-conf is not implemented.
            return Err(sasl_err("DIGEST-MD5: No common protection layer between client and server"));
        }
        let uri = d.require("digest-uri")?;
        if !uri.eq_ignore_ascii_case(DIGEST_URI) {
            return Err(violation(format_args!("Mismatched URI: {uri}; expecting: {DIGEST_URI}")));
        }
        let authzid = d.get("authzid");
        let ha1 = ha1(username, realm, &self.password, &self.nonce, cnonce, authzid);
        let expected = kd(&ha1, &self.nonce, nc, cnonce, &format!("AUTHENTICATE:{uri}"));
        let got = d.require("response")?;
        if !constant_time_eq(expected.as_bytes(), got.as_bytes()) {
            return Err(AuthError::SaslWrongDigest(format!("{VIOLATION} Mismatched response.")));
        }
        // SparkSaslServer authorises only authcid == authzid; we also pin the user (module doc).
        if username != SASL_USER || authzid.is_some_and(|z| z != username) {
            return Err(sasl_err(format!(
                "DIGEST-MD5: {username} is not authorized to act as {}",
                authzid.unwrap_or(username)
            )));
        }
        let rspauth = kd(&ha1, &self.nonce, nc, cnonce, &format!(":{uri}"));
        Ok(format!("rspauth={rspauth}").into_bytes())
    }
}

/// HEX(H(A1)), md5-sess: A1 = H(user:realm:password) ‖ ":" nonce ":" cnonce [":" authzid].
fn ha1(user: &str, realm: &str, password: &str, nonce: &str, cnonce: &str, authzid: Option<&str>) -> String {
    let inner = Md5::new()
        .chain_update(user)
        .chain_update(":")
        .chain_update(realm)
        .chain_update(":")
        .chain_update(password)
        .finalize();
    let mut a1 = Md5::new().chain_update(inner).chain_update(":").chain_update(nonce);
    a1 = a1.chain_update(":").chain_update(cnonce);
    if let Some(z) = authzid {
        a1 = a1.chain_update(":").chain_update(z);
    }
    hex(&a1.finalize())
}

/// HEX(KD(HEX(H(A1)), nonce:nc:cnonce:qop:HEX(H(A2)))) with KD(k, s) = H(k:s).
fn kd(ha1: &str, nonce: &str, nc: &str, cnonce: &str, a2: &str) -> String {
    let ha2 = hex(&Md5::digest(a2));
    let s = format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}");
    hex(&Md5::digest(s))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sasl_err(msg: impl Into<String>) -> AuthError {
    AuthError::Sasl(msg.into())
}

fn violation(what: impl std::fmt::Display) -> AuthError {
    sasl_err(format!("{VIOLATION} {what}"))
}

/// The `name=value` or `name="quoted value"` list of a digest-response (RFC 2831 §7.1).
struct Directives<'a>(Vec<(&'a str, std::borrow::Cow<'a, str>)>);

impl<'a> Directives<'a> {
    fn parse(mut s: &'a str) -> Result<Self, AuthError> {
        let mut out: Vec<(&'a str, std::borrow::Cow<'a, str>)> = Vec::new();
        loop {
            s = s.trim_start_matches([' ', '\t', ',']);
            if s.is_empty() {
                return Ok(Directives(out));
            }
            let eq = s.find('=').ok_or_else(|| violation("Missing '='."))?;
            let name = s[..eq].trim();
            let (value, rest) = parse_value(&s[eq + 1..])?;
            if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return Err(violation(format_args!("Duplicate directive: {name}")));
            }
            out.push((name, value));
            s = rest;
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref())
    }

    fn require(&self, name: &str) -> Result<&str, AuthError> {
        self.get(name).ok_or_else(|| violation(format_args!("Missing {name}.")))
    }
}

/// One value and the rest of the input after it.
fn parse_value(s: &str) -> Result<(std::borrow::Cow<'_, str>, &str), AuthError> {
    let s = s.trim_start();
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find(',').unwrap_or(s.len());
        return Ok((s[..end].trim().into(), &s[end..]));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value.into(), &quoted[i + 1..])),
            '\\' => value.extend(chars.next().map(|(_, c)| c)),
            c => value.push(c),
        }
    }
    Err(violation("Unterminated quoted string."))
}

#[cfg(test)]
#[path = "sasl_tests.rs"]
mod tests;
