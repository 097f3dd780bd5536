//! Who may act for an application on this server: the one decision every connection asks
//! about, in the three modes the agent runs in (docs/security.md).
//!
//! * [`Access::Open`]: `spark.authenticate` off and no per-app source: every connection acts for
//!   every app, as the JVM service does by default.
//! * [`Access::Shared`]: one shared secret (the JVM service with `spark.authenticate`): every
//!   connection authenticates first, with any app id.
//! * [`Access::PerApp`]: each app's own secret and settings, from its pods ([`Keyring`]). An
//!   authenticated connection acts for the app it proved; an unauthenticated one only for apps
//!   whose pods say they do not use authentication, and for none with `require` on. An app the
//!   keyring does not know (yet) is waited for, up to `wait`.

use std::sync::Arc;
use std::time::Duration;

use super::{AppAccess, Keyring, Lookup, Policy};

#[derive(Debug, Clone)]
pub enum Access {
    Open,
    Shared(Arc<Policy>),
    PerApp { keyring: Arc<Keyring>, require: bool, wait: Duration },
}

/// Why nobody may act for an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No secret for it: no pod of it known here (after the wait), or it does not use
    /// authentication and a handshake came anyway.
    UnknownApp,
    /// Two claims for it disagreed (auth.md §8.3).
    Conflicted,
    /// Its pods ask for something the agent does not serve (the reason is in the log).
    Unsupported,
    /// It uses authentication (or authentication is required) and the connection did not
    /// authenticate.
    NeedsAuthentication,
}

impl Access {
    /// Whether a new connection must authenticate before anything is served.
    pub fn must_authenticate(&self) -> bool {
        match self {
            Access::Open => false,
            Access::Shared(_) => true,
            Access::PerApp { .. } => true,
        }
    }

    /// Whether an unauthenticated connection may send requests at all (for apps without
    /// authentication); false means only handshakes are served before authentication.
    pub fn serves_unauthenticated(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Shared(_) => false,
            Access::PerApp { require, .. } => !require,
        }
    }

    /// The policy the handshake of a connection claiming `app_id` is held to.
    pub async fn policy_for(&self, app_id: &str) -> Result<Arc<Policy>, Refusal> {
        match self {
            Access::Open => Err(Refusal::UnknownApp),
            Access::Shared(policy) => Ok(Arc::clone(policy)),
            Access::PerApp { keyring, wait, .. } => match keyring.wait(app_id, *wait).await {
                Lookup::Known(AppAccess::Authenticated(policy)) => Ok(policy),
                Lookup::Known(AppAccess::Unauthenticated) | Lookup::Unknown => Err(Refusal::UnknownApp),
                Lookup::Known(AppAccess::Unsupported(_)) => Err(Refusal::Unsupported),
                Lookup::Conflicted => Err(Refusal::Conflicted),
            },
        }
    }

    /// Whether a connection that has not authenticated may act for `app_id`.
    pub async fn unauthenticated_may_act(&self, app_id: &str) -> Result<(), Refusal> {
        match self {
            Access::Open => Ok(()),
            Access::Shared(_) => Err(Refusal::NeedsAuthentication),
            Access::PerApp { require: true, .. } => Err(Refusal::NeedsAuthentication),
            Access::PerApp { keyring, wait, .. } => match keyring.wait(app_id, *wait).await {
                Lookup::Known(AppAccess::Unauthenticated) => Ok(()),
                Lookup::Known(AppAccess::Authenticated(_)) => Err(Refusal::NeedsAuthentication),
                Lookup::Known(AppAccess::Unsupported(_)) => Err(Refusal::Unsupported),
                Lookup::Conflicted => Err(Refusal::Conflicted),
                Lookup::Unknown => Err(Refusal::UnknownApp),
            },
        }
    }

    /// Whether `app_id` is known, from its pods, to use TLS (`spark.ssl.rpc.enabled`), so that a
    /// plaintext connection may not act for it. Only the per-app mode knows apps' settings.
    pub fn requires_tls(&self, app_id: &str) -> bool {
        self.keyring().is_some_and(|k| k.requires_tls(app_id))
    }

    /// The keyring, in the per-app mode.
    pub fn keyring(&self) -> Option<&Arc<Keyring>> {
        match self {
            Access::PerApp { keyring, .. } => Some(keyring),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Claim, Secret};

    fn per_app(require: bool) -> (Access, Arc<Keyring>) {
        let keyring = Arc::new(Keyring::new());
        let access = Access::PerApp { keyring: Arc::clone(&keyring), require, wait: Duration::from_millis(20) };
        (access, keyring)
    }

    fn claim(access: AppAccess) -> Claim {
        Claim { namespace: "jobs".into(), driver_uid: "d1".into(), access, tls: false }
    }

    #[tokio::test]
    async fn an_unauthenticated_connection_acts_only_for_apps_known_not_to_use_authentication() {
        let (access, keyring) = per_app(false);
        keyring.offer("open-app", claim(AppAccess::Unauthenticated));
        keyring.offer("auth-app", claim(AppAccess::Authenticated(Arc::new(Policy::shared(Secret::new("s"), false)))));
        assert_eq!(access.unauthenticated_may_act("open-app").await, Ok(()));
        assert_eq!(access.unauthenticated_may_act("auth-app").await, Err(Refusal::NeedsAuthentication));
        assert_eq!(access.unauthenticated_may_act("nobody").await, Err(Refusal::UnknownApp));
        assert_eq!(access.unauthenticated_may_act("").await, Err(Refusal::UnknownApp), "an empty id never passes");
        assert!(access.policy_for("auth-app").await.is_ok());
        assert_eq!(access.policy_for("open-app").await.err(), Some(Refusal::UnknownApp));
    }

    #[tokio::test]
    async fn with_authentication_required_no_app_is_served_unauthenticated() {
        let (access, keyring) = per_app(true);
        keyring.offer("open-app", claim(AppAccess::Unauthenticated));
        assert!(!access.serves_unauthenticated());
        assert_eq!(access.unauthenticated_may_act("open-app").await, Err(Refusal::NeedsAuthentication));
    }

    #[tokio::test]
    async fn the_jvm_services_modes_are_unchanged() {
        assert!(!Access::Open.must_authenticate());
        assert_eq!(Access::Open.unauthenticated_may_act("any").await, Ok(()));
        let shared = Access::Shared(Arc::new(Policy::shared(Secret::new("s"), false)));
        assert!(shared.must_authenticate() && !shared.serves_unauthenticated());
        assert!(shared.policy_for("any").await.is_ok());
    }
}
