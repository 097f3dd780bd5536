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

use crate::auth::{self, AuthError, Handshake, Policy, SaslServer, SaslStep, SessionCiphers};
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
    Authenticated { reply: Bytes, app_id: String, ciphers: Option<SessionCiphers> },
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
}

impl Outcome {
    pub const ALL: [Outcome; 5] =
        [Outcome::Ok, Outcome::WrongSecret, Outcome::UnknownApp, Outcome::Unauthenticated, Outcome::AppMismatch];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::WrongSecret => "wrong_secret",
            Outcome::UnknownApp => "unknown_app",
            Outcome::Unauthenticated => "unauthenticated_request",
            Outcome::AppMismatch => "app_mismatch",
        }
    }
}

impl Peer {
    /// The state a new connection starts in.
    pub(super) fn new(policy: Option<&Policy>) -> Peer {
        match policy {
            None => Peer::Anyone,
            Some(_) => Peer::Handshaking { sasl: None, started: None },
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

    /// Takes one RpcRequest body of a connection that is not authenticated yet.
    pub(super) fn handshake(&mut self, policy: &Policy, body: &[u8]) -> Step {
        let Peer::Handshaking { sasl, started } = self else {
            return Step::Fail { error: unauthenticated("receive"), close: false, outcome: Outcome::Unauthenticated };
        };
        started.get_or_insert_with(Instant::now);
        let parsed = Handshake::decode(&mut &body[..]);
        if sasl.is_none() && policy.crypto_enabled {
            match parsed {
                Ok(Handshake::Auth(challenge)) => return auth_engine(policy, &challenge),
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
        let message =
            match parsed {
                Ok(Handshake::Sasl(message)) => message,
                // SaslMessage.decode's text, which tells the user their client has auth off.
                _ => return Step::Fail {
                    error: java_error::illegal_state(
                        "Expected SaslMessage, received something else (maybe your client does not have SASL enabled?)",
                    ),
                    close: false,
                    outcome: Outcome::Unauthenticated,
                },
            };
        if sasl.is_none() {
            let Some(secret) = policy.secret_for(&message.app_id) else {
                return sasl_failure(
                    AuthError::Sasl(format!("no secret for application {}", message.app_id)),
                    Outcome::UnknownApp,
                );
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
            Err(e) => sasl_failure(e, Outcome::WrongSecret),
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
            ciphers: Some(response.keys.server_ciphers()),
        },
        Err(AuthError::BadClientKey) => fail(Outcome::WrongSecret),
        Err(_) => fail(Outcome::Unauthenticated),
    }
}

/// A failed SASL step: Spark answers with the JDK's text and leaves the connection open.
fn sasl_failure(error: AuthError, outcome: Outcome) -> Step {
    Step::Fail { error: error.client_error(), close: false, outcome }
}

/// AbstractAuthRpcHandler's refusal of anything but a handshake before authentication.
pub(super) fn unauthenticated(call: &str) -> JavaError {
    java_error::security(format_args!("Unauthenticated call to {call}()."))
}
