//! Per-application secrets (`agent.auth.secrets=pods`): what each app's executor pods say about
//! its authentication, vouched for by its driver pod, kept for the app's life.
//!
//! Who writes: the Kubernetes side (k8s/app_secrets.rs) offers a [`Claim`] once an executor pod
//! and the driver pod that owns it agree on the app id and namespace. Who reads: every
//! connection's handshake, by the app id the client claims ([`Keyring::lookup`],
//! [`Keyring::wait`]).
//!
//! The rules against poisoning (auth.md §8.3): first writer wins; the same claim again is
//! nothing; a different secret, namespace or driver for an app that has one refuses the app
//! from then on (a pod could carry any `spark-app-selector` and any `_SPARK_AUTH_SECRET`; which
//! of the two is genuine cannot be told, so neither is served) until the first claim's driver
//! ends. A secret is dropped, and its bytes zeroed, when its app's driver ends; never when an
//! executor pod goes, since the files outlive the executors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::Policy;

/// How an application authenticates, as its pods say.
#[derive(Debug, Clone)]
pub enum AppAccess {
    /// `spark.authenticate=true`: handshakes with this policy (the app's secret and crypto keys).
    Authenticated(Arc<Policy>),
    /// `spark.authenticate` off: an unauthenticated connection may act for it (when allowed).
    Unauthenticated,
    /// Its settings cannot be served (a secret file the agent may not read, a cipher it does
    /// not speak); the reason is logged and the app refused.
    Unsupported(String),
}

impl AppAccess {
    fn same_as(&self, other: &AppAccess) -> bool {
        match (self, other) {
            (AppAccess::Authenticated(a), AppAccess::Authenticated(b)) => a.same_as(b),
            (AppAccess::Unauthenticated, AppAccess::Unauthenticated) => true,
            (AppAccess::Unsupported(a), AppAccess::Unsupported(b)) => a == b,
            _ => false,
        }
    }
}

/// What one executor pod, owned by a driver pod of the same app and namespace, says.
#[derive(Debug, Clone)]
pub struct Claim {
    pub namespace: String,
    /// The uid of the driver pod that owns the executor pod: the app's life is that pod's.
    pub driver_uid: String,
    pub access: AppAccess,
    /// `spark.ssl.rpc.enabled` in its pods: the app talks TLS, and is never served in plaintext.
    pub tls: bool,
}

/// What [`Keyring::offer`] did with a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The first claim for the app: it is now known.
    New,
    /// The same as the one kept.
    Same,
    /// It disagrees with the one kept: the app is refused from now on (logged and counted by
    /// the caller, once per app).
    Conflict,
    /// The app was refused already.
    StillRefused,
}

/// What a handshake learns about an app id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Known(AppAccess),
    /// Two claims disagreed: nobody acts for this app.
    Conflicted,
    /// No claim yet.
    Unknown,
}

#[derive(Debug)]
enum Entry {
    Claimed(Claim),
    /// The first claim's driver, which ends the refusal when it ends.
    Conflicted {
        driver_uid: String,
    },
}

impl Entry {
    fn driver_uid(&self) -> &str {
        match self {
            Entry::Claimed(claim) => &claim.driver_uid,
            Entry::Conflicted { driver_uid } => driver_uid,
        }
    }
}

/// How many app ids a miss may queue for a lookup at the API server before more are dropped
/// (each is retried on the client's next connection).
const WANTED_QUEUE: usize = 64;

/// Every app's claim, shared by the watchers and all connections.
#[derive(Debug)]
pub struct Keyring {
    apps: Mutex<HashMap<String, Entry>>,
    changed: Notify,
    wanted: mpsc::Sender<String>,
    wanted_rx: Mutex<Option<mpsc::Receiver<String>>>,
    conflicts: AtomicU64,
}

impl Default for Keyring {
    fn default() -> Self {
        Keyring::new()
    }
}

impl Keyring {
    pub fn new() -> Keyring {
        let (wanted, rx) = mpsc::channel(WANTED_QUEUE);
        Keyring {
            apps: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            wanted,
            wanted_rx: Mutex::new(Some(rx)),
            conflicts: AtomicU64::new(0),
        }
    }

    fn apps(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.apps.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a claim for `app_id`; first writer wins.
    pub fn offer(&self, app_id: &str, claim: Claim) -> Offered {
        let offered = {
            let mut apps = self.apps();
            match apps.get(app_id) {
                None => {
                    apps.insert(app_id.to_string(), Entry::Claimed(claim));
                    Offered::New
                }
                Some(Entry::Conflicted { .. }) => Offered::StillRefused,
                Some(Entry::Claimed(kept))
                    if kept.namespace == claim.namespace
                        && kept.driver_uid == claim.driver_uid
                        && kept.tls == claim.tls
                        && kept.access.same_as(&claim.access) =>
                {
                    Offered::Same
                }
                Some(Entry::Claimed(kept)) => {
                    let driver_uid = kept.driver_uid.clone();
                    // Dropping the kept claim zeroes its secret: nobody uses it any more.
                    apps.insert(app_id.to_string(), Entry::Conflicted { driver_uid });
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    Offered::Conflict
                }
            }
        };
        if offered != Offered::Same {
            self.changed.notify_waiters();
        }
        offered
    }

    /// The app's driver pod `driver_uid` ended: forget the app (its secret is zeroed as the
    /// claim drops), or its refusal. A driver that is not the one the app was claimed with
    /// changes nothing. Returns whether something was forgotten.
    pub fn forget(&self, app_id: &str, driver_uid: &str) -> bool {
        let mut apps = self.apps();
        if apps.get(app_id).is_some_and(|e| e.driver_uid() == driver_uid) {
            apps.remove(app_id);
            return true;
        }
        false
    }

    pub fn lookup(&self, app_id: &str) -> Lookup {
        match self.apps().get(app_id) {
            Some(Entry::Claimed(claim)) => Lookup::Known(claim.access.clone()),
            Some(Entry::Conflicted { .. }) => Lookup::Conflicted,
            None => Lookup::Unknown,
        }
    }

    /// Whether the app's pods say it uses TLS (`spark.ssl.rpc.enabled`). An app refused for a
    /// conflict is served to nobody anyway; an unknown one has said nothing.
    pub fn requires_tls(&self, app_id: &str) -> bool {
        matches!(self.apps().get(app_id), Some(Entry::Claimed(Claim { tls: true, .. })))
    }

    /// Like [`Keyring::lookup`], but an unknown app is waited for, up to `wait`: an executor's
    /// first handshake can arrive before the watch delivers its pod. The first miss also asks
    /// the Kubernetes side to look the app up ([`Keyring::take_wanted`]).
    pub async fn wait(&self, app_id: &str, wait: Duration) -> Lookup {
        let deadline = tokio::time::Instant::now() + wait;
        let mut asked = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the lookup, so a claim landing in between is not missed.
            notified.as_mut().enable();
            let found = self.lookup(app_id);
            if !matches!(found, Lookup::Unknown) {
                return found;
            }
            if !asked {
                // Full queue: this miss is dropped; the client's retry asks again.
                let _ = self.wanted.try_send(app_id.to_string());
                asked = true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.lookup(app_id),
            }
        }
    }

    /// The app ids handshakes missed, for the Kubernetes side to look up (taken once).
    pub fn take_wanted(&self) -> Option<mpsc::Receiver<String>> {
        self.wanted_rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    /// Apps refused because two claims disagreed, since start.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// (apps with a secret, apps without authentication, apps refused), for `/status`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let apps = self.apps();
        let mut counts = (0, 0, 0);
        for entry in apps.values() {
            match entry {
                Entry::Claimed(Claim { access: AppAccess::Authenticated(_), .. }) => counts.0 += 1,
                Entry::Claimed(Claim { access: AppAccess::Unauthenticated, .. }) => counts.1 += 1,
                _ => counts.2 += 1,
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn claim(ns: &str, driver: &str, secret: &str) -> Claim {
        Claim {
            namespace: ns.into(),
            driver_uid: driver.into(),
            access: AppAccess::Authenticated(Arc::new(Policy::shared(Secret::new(secret), true))),
            tls: false,
        }
    }

    fn secret_of(keyring: &Keyring, app: &str) -> Option<Vec<u8>> {
        match keyring.lookup(app) {
            Lookup::Known(AppAccess::Authenticated(p)) => p.secret_for(app).map(|s| s.psk().to_vec()),
            _ => None,
        }
    }

    #[test]
    fn the_first_claim_wins_and_the_same_claim_again_changes_nothing() {
        let k = Keyring::new();
        assert_eq!(k.offer("app-1", claim("jobs", "d1", "s1")), Offered::New);
        assert_eq!(k.offer("app-1", claim("jobs", "d1", "s1")), Offered::Same);
        assert_eq!(secret_of(&k, "app-1").as_deref(), Some(&b"s1"[..]));
        assert!(matches!(k.lookup("app-2"), Lookup::Unknown));
        assert_eq!(k.conflicts(), 0);
    }

    #[test]
    fn a_different_secret_namespace_or_driver_refuses_the_app_until_its_driver_ends() {
        for other in [claim("jobs", "d1", "s2"), claim("other", "d1", "s1"), claim("jobs", "d2", "s1")] {
            let k = Keyring::new();
            k.offer("app-1", claim("jobs", "d1", "s1"));
            assert_eq!(k.offer("app-1", other), Offered::Conflict);
            assert!(matches!(k.lookup("app-1"), Lookup::Conflicted));
            assert_eq!(k.offer("app-1", claim("jobs", "d1", "s1")), Offered::StillRefused, "not even the first");
            assert_eq!(k.conflicts(), 1);
            assert!(!k.forget("app-1", "d2"), "another driver does not lift the refusal");
            assert!(k.forget("app-1", "d1"));
            assert_eq!(k.offer("app-1", claim("jobs", "d3", "s3")), Offered::New, "a reused id starts afresh");
        }
    }

    #[test]
    fn a_secret_is_forgotten_only_with_the_driver_it_was_claimed_with() {
        let k = Keyring::new();
        k.offer("app-1", claim("jobs", "d1", "s1"));
        assert!(!k.forget("app-1", "d9"));
        assert!(secret_of(&k, "app-1").is_some());
        assert!(k.forget("app-1", "d1"));
        assert!(matches!(k.lookup("app-1"), Lookup::Unknown));
    }

    #[test]
    fn an_app_without_authentication_is_not_the_same_claim_as_one_with() {
        let k = Keyring::new();
        let open =
            Claim { namespace: "jobs".into(), driver_uid: "d1".into(), access: AppAccess::Unauthenticated, tls: false };
        assert_eq!(k.offer("app-1", open), Offered::New);
        assert_eq!(k.offer("app-1", claim("jobs", "d1", "s1")), Offered::Conflict);
        assert_eq!(k.counts(), (0, 0, 1));
    }

    #[test]
    fn an_app_requires_tls_when_its_claim_says_so_and_a_claim_without_tls_conflicts() {
        let k = Keyring::new();
        assert!(!k.requires_tls("app-1"), "an unknown app said nothing");
        assert_eq!(k.offer("app-1", Claim { tls: true, ..claim("jobs", "d1", "s1") }), Offered::New);
        assert!(k.requires_tls("app-1"));
        assert_eq!(k.offer("app-1", Claim { tls: true, ..claim("jobs", "d1", "s1") }), Offered::Same);
        assert_eq!(k.offer("app-1", claim("jobs", "d1", "s1")), Offered::Conflict, "a pod without TLS disagrees");
        assert!(!k.requires_tls("app-1"), "refused for everyone, whatever the transport");
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_claim_lands_and_asks_for_a_lookup_once() {
        let k = Arc::new(Keyring::new());
        let mut wanted = k.take_wanted().expect("the receiver");
        let waiter = tokio::spawn({
            let k = Arc::clone(&k);
            async move { k.wait("app-1", Duration::from_secs(30)).await }
        });
        assert_eq!(wanted.recv().await.as_deref(), Some("app-1"));
        k.offer("app-1", claim("jobs", "d1", "s1"));
        assert!(matches!(waiter.await.unwrap(), Lookup::Known(AppAccess::Authenticated(_))));
        assert!(wanted.try_recv().is_err(), "asked once");
    }

    #[tokio::test]
    async fn a_wait_for_an_app_nobody_claims_ends_unknown_at_its_bound() {
        let k = Keyring::new();
        assert!(matches!(k.wait("app-1", Duration::from_millis(50)).await, Lookup::Unknown));
    }
}
