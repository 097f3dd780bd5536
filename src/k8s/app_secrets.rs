//! Per-application secrets from pods (`agent.auth.secrets=pods`, auth.md §8): Spark on
//! Kubernetes gives every app a fresh secret and hands it to executors as the literal env value
//! `_SPARK_AUTH_SECRET` of their pods; the app's auth settings travel as `SPARK_JAVA_OPT_*`
//! `-Dkey=value` entries. No `get secrets` is needed: the executor watch already reads pods.
//!
//! What is believed, and why (anyone who may create a pod can label it with any app id and set
//! any env): an executor pod's claim counts only when its controller owner is a driver pod
//! (`spark-role=driver`) of the same app id in the same namespace, the owner Spark sets on every
//! executor it creates. The [`Keyring`] keeps the first claim per app and refuses the app when a
//! later one disagrees. A secret lives as long as that driver pod: it is dropped (and zeroed)
//! when the driver finishes or is deleted, not when executors go.
//!
//! Both watches feed one [`SecretSource`]: executor pods (this node's), driver pods (the
//! cluster's). Their events arrive in no particular order, so a claim waits for its driver and a
//! driver's arrival completes the claims waiting for it.
//!
//! After a restart the executor watch brings back the secrets of apps with an executor pod on
//! this node. For an app whose executors here are all gone (its files are still served), the
//! first handshake that misses asks [`lookups`] to LIST that app's executor pods cluster-wide:
//! the executor fetching is itself one of them. Secrets are never written to disk (the risk
//! SPARK-43179 removed from Spark's YARN service); the pod object already holds them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pods;
use crate::auth::{AppAccess, AuthSettings, Claim, Keyring, Offered, SECRET_ENV};
use crate::registry::Registry;
use crate::sync::lock;

/// The env entry Spark's executors must carry, equal to the app label.
const APP_ID_ENV: &str = "SPARK_APPLICATION_ID";
/// Spark's prefix for the executor's `-D` options (`BasicExecutorFeatureStep`).
const JAVA_OPT_ENV: &str = "SPARK_JAVA_OPT_";

/// What one executor pod claims about its app.
#[derive(Debug, Clone)]
pub struct PodClaim {
    pub app_id: String,
    pub namespace: String,
    /// Its controller owner's uid: the driver pod it must be.
    pub owner_uid: String,
    pub access: AppAccess,
}

/// Reads an executor pod's claim, or says why it makes none.
pub fn executor_claim(pod: &Pod) -> Result<PodClaim, &'static str> {
    let app_id = pods::app_id(pod).ok_or("no spark-app-selector label")?;
    let namespace = pod.metadata.namespace.clone().filter(|n| !n.is_empty()).ok_or("no namespace")?;
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .ok_or("no controller owner (Spark makes the driver pod every executor's owner)")?;
    if owner.kind != "Pod" {
        return Err("its controller owner is not a pod");
    }
    let env: HashMap<&str, Option<&str>> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.env.iter().flatten())
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    if env.get(APP_ID_ENV).copied().flatten() != Some(app_id) {
        return Err("env SPARK_APPLICATION_ID differs from its spark-app-selector label");
    }
    let mut settings = AuthSettings::new();
    for (name, value) in &env {
        let Some(option) = value.filter(|_| name.starts_with(JAVA_OPT_ENV)).and_then(|v| v.strip_prefix("-D")) else {
            continue;
        };
        if let Some((key, value)) = option.split_once('=') {
            // A value Spark would not start with is the app's problem; it is not ours to judge.
            let _ = settings.set(key, value);
        }
    }
    let secret = env.get(SECRET_ENV).copied().flatten();
    Ok(PodClaim {
        app_id: app_id.to_string(),
        namespace,
        owner_uid: owner.uid.clone(),
        access: settings.app_access(secret),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DriverRef {
    namespace: String,
    app_id: String,
}

/// Executor claims waiting for their driver, and the live driver pods, by uid. Fed by both
/// watches; hands matched claims to the keyring.
#[derive(Debug, Default)]
pub struct SecretSource {
    /// Pod key → claim, for executor pods whose driver is not (yet) known to be theirs.
    waiting: HashMap<String, PodClaim>,
    drivers: HashMap<String, DriverRef>,
    /// Driver uids of a LIST in progress.
    relisting: Option<HashSet<String>>,
}

impl SecretSource {
    /// One executor-watch event.
    pub fn executor_event(&mut self, event: &watcher::Event<Pod>, keyring: &Keyring) {
        match event {
            watcher::Event::Init => self.waiting.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.executor(pod, keyring),
            watcher::Event::Delete(pod) => {
                self.waiting.remove(&pods::key(pod));
            }
            watcher::Event::InitDone => {}
        }
    }

    /// An executor pod seen (watched here, or listed for an app a handshake asked about).
    pub fn executor(&mut self, pod: &Pod, keyring: &Keyring) {
        let key = pods::key(pod);
        match executor_claim(pod) {
            Ok(claim) => match self.drivers.get(&claim.owner_uid) {
                Some(_) => {
                    self.waiting.remove(&key);
                    self.settle(&key, claim, keyring);
                }
                None => {
                    debug!(pod = %key, app = %claim.app_id, "executor pod's owner is not a known driver pod yet");
                    self.waiting.insert(key, claim);
                }
            },
            Err(why) => debug!(pod = %key, why, "executor pod makes no secret claim"),
        }
    }

    /// One driver-watch event.
    pub fn driver_event(&mut self, event: &watcher::Event<Pod>, keyring: &Keyring) {
        match event {
            watcher::Event::Init => self.relisting = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(uid) = pod.metadata.uid.as_ref() {
                    self.relisting.get_or_insert_with(HashSet::new).insert(uid.clone());
                }
                self.driver(pod, keyring);
            }
            watcher::Event::Apply(pod) => self.driver(pod, keyring),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.driver_ended(uid, keyring);
                }
            }
            watcher::Event::InitDone => {
                // Seen before, missing from a complete LIST: deleted while the watch was down.
                let listed = self.relisting.take().unwrap_or_default();
                let gone: Vec<String> = self.drivers.keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
                for uid in gone {
                    self.driver_ended(&uid, keyring);
                }
            }
        }
    }

    fn driver(&mut self, pod: &Pod, keyring: &Keyring) {
        let (Some(uid), Some(app_id), Some(namespace)) =
            (pod.metadata.uid.as_deref(), pods::app_id(pod), pod.metadata.namespace.as_deref())
        else {
            return;
        };
        if pods::is_finished(pod) {
            self.driver_ended(uid, keyring);
            return;
        }
        self.drivers
            .insert(uid.to_string(), DriverRef { namespace: namespace.to_string(), app_id: app_id.to_string() });
        let ready: Vec<String> =
            self.waiting.iter().filter(|(_, c)| c.owner_uid == uid).map(|(key, _)| key.clone()).collect();
        for key in ready {
            if let Some(claim) = self.waiting.remove(&key) {
                self.settle(&key, claim, keyring);
            }
        }
    }

    fn driver_ended(&mut self, uid: &str, keyring: &Keyring) {
        self.waiting.retain(|_, c| c.owner_uid != uid);
        if let Some(driver) = self.drivers.remove(uid) {
            if keyring.forget(&driver.app_id, uid) {
                info!(app = %driver.app_id, "driver pod ended; the app's secret is dropped");
            }
        }
    }

    /// A claim whose owner is a known live driver pod: believed only if that driver is of the
    /// same app and namespace.
    fn settle(&self, pod: &str, claim: PodClaim, keyring: &Keyring) {
        let Some(driver) = self.drivers.get(&claim.owner_uid) else { return };
        if driver.app_id != claim.app_id || driver.namespace != claim.namespace {
            warn!(
                pod,
                app = %claim.app_id,
                owner_app = %driver.app_id,
                "executor pod's owner is a driver pod of another app or namespace; its secret is not used"
            );
            return;
        }
        if let AppAccess::Unsupported(why) = &claim.access {
            warn!(pod, app = %claim.app_id, why = %why, "the app cannot be served");
        }
        let app_id = claim.app_id.clone();
        let offered = keyring
            .offer(&app_id, Claim { namespace: claim.namespace, driver_uid: claim.owner_uid, access: claim.access });
        match offered {
            Offered::New => info!(app = %app_id, pod, "application's authentication settings learned from its pods"),
            Offered::Same | Offered::StillRefused => {}
            Offered::Conflict => warn!(
                app = %app_id,
                pod,
                "pods disagree on the application's secret, namespace or driver; the app is refused until its first driver ends"
            ),
        }
    }
}

/// Per app, how soon another lookup may be made: a client retrying every few seconds must not
/// turn into as many LISTs.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(30);
/// Executor pods read per lookup: one that is owned by the driver is enough.
const LOOKUP_LIMIT: u32 = 20;

/// Answers the keyring's misses for apps registered here: LISTs the app's executor pods in
/// every namespace and feeds them to the source. Apps not registered here are not looked up
/// (their executors register on this node, so the node's watch brings their pods), which keeps
/// the API calls to apps whose files are here.
pub async fn lookups(
    client: kube::Client,
    keyring: std::sync::Arc<Keyring>,
    source: std::sync::Arc<std::sync::Mutex<SecretSource>>,
    registry: std::sync::Arc<Registry>,
    shutdown: CancellationToken,
) {
    let Some(mut wanted) = keyring.take_wanted() else { return };
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        let app = tokio::select! {
            _ = shutdown.cancelled() => return,
            app = wanted.recv() => match app { Some(app) => app, None => return },
        };
        let registered = registry.driver(&app).is_some() || !registry.executors_of(&app).is_empty();
        if !registered || !pods::is_label_value(&app) {
            continue;
        }
        let now = Instant::now();
        last.retain(|_, at| now.duration_since(*at) < LOOKUP_INTERVAL);
        if last.contains_key(&app) {
            continue;
        }
        last.insert(app.clone(), now);
        let selector = format!("{},{}={app}", pods::EXECUTOR_SELECTOR, pods::APP_LABEL);
        let params = ListParams::default().labels(&selector).limit(LOOKUP_LIMIT);
        match Api::<Pod>::all(client.clone()).list(&params).await {
            Ok(list) => {
                debug!(app = %app, pods = list.items.len(), "looked up an app's executor pods for its secret");
                let mut source = lock(&source);
                for pod in &list.items {
                    source.executor(pod, &keyring);
                    // Pods of other nodes send no deletion here: do not keep them waiting.
                    source.waiting.remove(&pods::key(pod));
                }
            }
            Err(e) => {
                warn!(app = %app, error = %e, "looking up an app's executor pods failed; its handshakes are refused until a retry")
            }
        }
    }
}

#[cfg(test)]
#[path = "app_secrets_tests.rs"]
mod tests;
