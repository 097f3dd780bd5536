//! The authentication phase of a connection (auth.md §3, spec §6): with `spark.authenticate`
//! on, every RpcRequest is a handshake message until one succeeds, and nothing else is served.
//! What follows is whom the connection acts for ([`Peer`]), which every message carrying an
//! app id is checked against (Spark's `checkAuth`).
//!
//! The order of Spark 4.3's AuthServerBootstrap: with `spark.network.crypto.enabled`, the
//! first message must be an AuthMessage, or (with `saslFallback`) the connection goes to SASL
//! for good; without crypto, only SASL. The AuthEngine reply leaves in plaintext and the session
//! cipher covers every byte after it, both ways; that switch is the connection's (it owns the
//! bytes), this module only says when.

use std::time::Instant;

use bytes::Bytes;

use crate::auth::{self, Access, AuthError, ConnectionCipher, Handshake, Policy, Refusal, SaslServer, SaslStep};
use crate::protocol::{java_error, JavaError};

/// Whom a connection acts for.
#[derive(Debug)]
pub(super) enum Peer {
    /// Authentication is off: like the JVM service's null client id, any app.
    Anyone,
    /// Authentication is on and has not succeeded yet; `sasl` once a SASL exchange started.
    Handshaking { sasl: Option<SaslServer>, started: Option<Instant> },
    /// Authenticated for this app id.
    App(String),
}

/// What the connection does with one handshake message.
pub(super) enum Step {
    /// Send this RpcResponse body; the handshake goes on.
    Reply(Bytes),
    /// Send this RpcResponse body, then (for the AuthEngine) switch to `ciphers`: the peer is
    /// authenticated for `app_id`.
    Authenticated { reply: Bytes, app_id: String, ciphers: Option<ConnectionCipher> },
    /// Send this RpcFailure; with `close`, close the connection after it (as Spark does after
    /// a failed AuthEngine exchange).
    Fail { error: JavaError, close: bool, outcome: Outcome },
}

/// How a handshake ended, for `handshakes_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The client's proof did not match the secret (AuthEngine unwrap or SASL digest).
    WrongSecret,
    /// The server has no secret for the app id.
    UnknownApp,
    /// Not a handshake message where one was required, or a malformed one.
    Unauthenticated,
    /// An authenticated connection sent a message for another app.
    AppMismatch,
    /// The app is refused because its pods disagreed on its secret or namespace.
    ConflictingSecret,
    /// A plaintext connection acted for an app whose pods use TLS.
    PlaintextForTlsApp,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::WrongSecret,
        Outcome::UnknownApp,
        Outcome::Unauthenticated,
        Outcome::AppMismatch,
        Outcome::ConflictingSecret,
        Outcome::PlaintextForTlsApp,
    ];

    /// How a refusal by the [`Access`] rules is counted.
    pub fn of(refusal: &Refusal) -> Outcome {
        match refusal {
            Refusal::UnknownApp | Refusal::Unsupported => Outcome::UnknownApp,
            Refusal::Conflicted => Outcome::ConflictingSecret,
            Refusal::NeedsAuthentication => Outcome::Unauthenticated,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::WrongSecret => "wrong_secret",
            Outcome::UnknownApp => "unknown_app",
            Outcome::Unauthenticated => "unauthenticated_request",
            Outcome::AppMismatch => "app_mismatch",
            Outcome::ConflictingSecret => "conflicting_secret",
            Outcome::PlaintextForTlsApp => "plaintext_for_tls_app",
        }
    }
}

impl Peer {
    /// The state a new connection starts in.
    pub(super) fn new(access: &Access) -> Peer {
        match access.must_authenticate() {
            false => Peer::Anyone,
            true => Peer::Handshaking { sasl: None, started: None },
        }
    }

    pub(super) fn is_authenticated(&self) -> bool {
        !matches!(self, Peer::Handshaking { .. })
    }

    /// Spark's `checkAuth`: a connection authenticated for one app may not act for another.
    pub(super) fn check_app(&self, app_id: &str) -> Result<(), JavaError> {
        match self {
            Peer::Anyone => Ok(()),
            Peer::App(own) if own == app_id => Ok(()),
            Peer::App(own) => {
                Err(java_error::security(format_args!("Client for {own} not authorized for application {app_id}.")))
            }
            // Never reached through the connection (nothing but handshakes is served before
            // authentication); an empty identity must never pass a check.
            Peer::Handshaking { .. } => Err(unauthenticated("receive")),
        }
    }

    /// Takes one handshake message of a connection that is not authenticated yet, decoded
    /// (`parsed`), with the policy the app it claims is held to (`policy`, from [`Access`]).
    pub(super) fn handshake(
        &mut self,
        parsed: Result<Handshake, AuthError>,
        policy: Result<std::sync::Arc<Policy>, Refusal>,
    ) -> Step {
        let Peer::Handshaking { sasl, started } = self else {
            return Step::Fail { error: unauthenticated("receive"), close: false, outcome: Outcome::Unauthenticated };
        };
        started.get_or_insert_with(Instant::now);
        let policy = match policy {
            Ok(policy) => policy,
            Err(refusal) => return refused(&parsed, &refusal),
        };
        if sasl.is_none() && policy.crypto_enabled {
            match parsed {
                Ok(Handshake::Auth(challenge)) => return auth_engine(&policy, &challenge),
                // AuthRpcHandler: anything else goes to SASL when allowed, or is the end.
                _ if !policy.sasl_fallback => {
                    return Step::Fail {
                        error: java_error::illegal_argument("Unknown challenge message."),
                        close: true,
                        outcome: Outcome::Unauthenticated,
                    }
                }
                _ => {}
            }
        }
        let message = match parsed {
            Ok(Handshake::Sasl(message)) => message,
            _ => return not_sasl(),
        };
        if sasl.is_none() {
            let Some(secret) = policy.secret_for(&message.app_id) else {
                return no_secret(&message.app_id, Outcome::UnknownApp);
            };
            match SaslServer::new(message.app_id.clone(), secret) {
                Ok(server) => *sasl = Some(server),
                Err(e) => return sasl_failure(e, Outcome::WrongSecret),
            }
        }
        let Some(server) = sasl.as_mut() else {
            return sasl_failure(AuthError::Sasl("no exchange".into()), Outcome::Unauthenticated);
        };
        match server.step(&message.token) {
            Ok(SaslStep::Continue(token)) => Step::Reply(Bytes::from(token)),
            Ok(SaslStep::Done(token)) => {
                let app_id = server.app_id().to_string();
                Step::Authenticated { reply: Bytes::from(token), app_id, ciphers: None }
            }
            Err(e @ AuthError::SaslWrongDigest(_)) => sasl_failure(e, Outcome::WrongSecret),
            Err(e) => sasl_failure(e, Outcome::Unauthenticated),
        }
    }

    /// When the handshake started, for the latency histogram.
    pub(super) fn started(&self) -> Option<Instant> {
        match self {
            Peer::Handshaking { started, .. } => *started,
            _ => None,
        }
    }
}

/// AuthRpcHandler.doAuthChallenge: every failure is "Authentication failed." and the end.
fn auth_engine(policy: &Policy, challenge: &auth::AuthMessage) -> Step {
    let fail =
        |outcome| Step::Fail { error: java_error::illegal_argument("Authentication failed."), close: true, outcome };
    let Some(secret) = policy.secret_for(&challenge.app_id) else {
        return fail(Outcome::UnknownApp);
    };
    match auth::respond(&challenge.app_id, secret, challenge, policy.engine_version, &mut auth::OsRandom) {
        Ok(response) => Step::Authenticated {
            reply: Bytes::from(response.response.to_bytes()),
            app_id: challenge.app_id.clone(),
            ciphers: Some(response.keys.server_session(policy.cipher)),
        },
        Err(AuthError::BadClientKey) => fail(Outcome::WrongSecret),
        Err(_) => fail(Outcome::Unauthenticated),
    }
}

/// A handshake for an app nobody may act for: as an AuthEngine failure ("Authentication
/// failed." and the end), or as a SASL one (the connection stays open).
fn refused(parsed: &Result<Handshake, AuthError>, refusal: &Refusal) -> Step {
    let outcome = Outcome::of(refusal);
    match parsed {
        Ok(Handshake::Auth(_)) => {
            Step::Fail { error: java_error::illegal_argument("Authentication failed."), close: true, outcome }
        }
        Ok(Handshake::Sasl(message)) => no_secret(&message.app_id, outcome),
        Err(_) => not_sasl(),
    }
}

/// SaslMessage.decode's text, which tells the user their client has auth off.
fn not_sasl() -> Step {
    Step::Fail {
        error: java_error::illegal_state(
            "Expected SaslMessage, received something else (maybe your client does not have SASL enabled?)",
        ),
        close: false,
        outcome: Outcome::Unauthenticated,
    }
}

fn no_secret(app_id: &str, outcome: Outcome) -> Step {
    sasl_failure(AuthError::Sasl(format!("no secret for application {app_id}")), outcome)
}

/// A failed SASL step: Spark answers with the JDK's text and leaves the connection open.
fn sasl_failure(error: AuthError, outcome: Outcome) -> Step {
    Step::Fail { error: error.client_error(), close: false, outcome }
}

/// AbstractAuthRpcHandler's refusal of anything but a handshake before authentication.
pub(super) fn unauthenticated(call: &str) -> JavaError {
    java_error::security(format_args!("Unauthenticated call to {call}()."))
}
