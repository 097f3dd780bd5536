//! Per-application secrets from pods (`agent.auth.secrets=pods`, auth.md §8): Spark on
//! Kubernetes gives every app a fresh secret and hands it to executors as the literal env value
//! `_SPARK_AUTH_SECRET` of their pods; the app's auth settings travel as `SPARK_JAVA_OPT_*`
//! `-Dkey=value` entries. No `get secrets` is needed: the executor watch already reads pods.
//! The exception is an app whose executors read the secret from a file: its pods carry none.
//! Such an app is refused unless `agent.auth.pods.secretFiles read` lets [`secret_files`] GET
//! the Kubernetes Secret mounted at that file (once per app, after the owner check below); the
//! secret derived from it is then offered like an env secret.
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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::pods;
use super::secret_files::{self, ReadError, SecretKeyRef, SecretRead};
use crate::auth::{AppAccess, AuthSettings, Claim, Keyring, Offered, SECRET_ENV};
use crate::registry::Registry;
use crate::sync::lock;

/// The env entry Spark's executors must carry, equal to the app label.
const APP_ID_ENV: &str = "SPARK_APPLICATION_ID";
/// Spark's prefix for the executor's `-D` options (`BasicExecutorFeatureStep`).
const JAVA_OPT_ENV: &str = "SPARK_JAVA_OPT_";
/// The option that puts an app's RPC, and its shuffle fetches, on TLS (Spark 4).
const TLS_OPTION: &str = "spark.ssl.rpc.enabled";

/// What one executor pod claims about its app.
#[derive(Debug, Clone)]
pub struct PodClaim {
    pub app_id: String,
    pub namespace: String,
    /// Its controller owner's uid: the driver pod it must be.
    pub owner_uid: String,
    /// What its pods say; for an app whose executors read a secret file, "unsupported" until the
    /// Secret behind the file is read (only with `agent.auth.pods.secretFiles read`).
    pub access: AppAccess,
    /// Set when its executors read the secret from a file.
    pub secret_file: Option<FileSecret>,
    /// `-Dspark.ssl.rpc.enabled=true` among its options (which does not fall back to
    /// `spark.ssl.enabled`, as in Spark's SSLOptions).
    pub tls: bool,
}

/// Where the secret file of an app's executors comes from, and the settings its secret goes with.
#[derive(Debug, Clone)]
pub struct FileSecret {
    /// The Secret key mounted at the file, or why that cannot be told.
    pub source: Result<SecretKeyRef, String>,
    pub settings: AuthSettings,
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
    // The executor's own container: the one Spark gives the app id (a pod template may add others).
    let app_container = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .find(|c| c.env.iter().flatten().any(|e| e.name == APP_ID_ENV))
        .map(|c| c.name.as_str())
        .unwrap_or_default();
    if env.get(APP_ID_ENV).copied().flatten() != Some(app_id) {
        return Err("env SPARK_APPLICATION_ID differs from its spark-app-selector label");
    }
    let mut settings = AuthSettings::new();
    let mut tls = false;
    for (name, value) in &env {
        let Some(option) = value.filter(|_| name.starts_with(JAVA_OPT_ENV)).and_then(|v| v.strip_prefix("-D")) else {
            continue;
        };
        if let Some((key, value)) = option.split_once('=') {
            if key == TLS_OPTION {
                tls = value.trim().eq_ignore_ascii_case("true");
            }
            // A value Spark would not start with is the app's problem; it is not ours to judge.
            let _ = settings.set(key, value);
        }
    }
    let secret = env.get(SECRET_ENV).copied().flatten();
    let secret_file = settings
        .executor_file()
        .filter(|_| settings.enabled)
        .map(|path| FileSecret { source: secret_files::resolve(pod, path, app_container), settings: settings.clone() });
    Ok(PodClaim {
        app_id: app_id.to_string(),
        namespace,
        owner_uid: owner.uid.clone(),
        access: settings.app_access(secret),
        secret_file,
        tls,
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
    /// With `agent.auth.pods.secretFiles read`: where Secret reads are sent ([`secret_files::reads`]).
    file_reads: Option<mpsc::Sender<SecretRead>>,
    /// Each Secret read per app: made once; after a failure, again no sooner than [`READ_RETRY`].
    reads: HashMap<ReadKey, ReadState>,
}

/// One app's (its driver pod's) read of one Secret key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    driver_uid: String,
    app_id: String,
    secret: SecretKeyRef,
}

#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Sent to the reader; `retry` when an earlier read failed (its WARN was given).
    Pending { retry: bool },
    /// Read: its claim went to the keyring.
    Done,
    /// Failed at that time.
    Failed(Instant),
}

/// How soon a failed Secret read may be made again (on a later event of the app's pods).
const READ_RETRY: Duration = Duration::from_secs(30);

impl SecretSource {
    /// A source that reads the Secrets behind apps' secret files (`agent.auth.pods.secretFiles
    /// read`) by sending them to `reads`.
    pub fn reading_secret_files(reads: mpsc::Sender<SecretRead>) -> SecretSource {
        SecretSource { file_reads: Some(reads), ..SecretSource::default() }
    }

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
        self.reads.retain(|read, _| read.driver_uid != uid);
        if let Some(driver) = self.drivers.remove(uid) {
            if keyring.forget(&driver.app_id, uid) {
                info!(app = %driver.app_id, "driver pod ended; the app's secret is dropped");
            }
        }
    }

    /// A claim whose owner is a known live driver pod: believed only if that driver is of the
    /// same app and namespace.
    fn settle(&mut self, pod: &str, mut claim: PodClaim, keyring: &Keyring) {
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
        if self.file_reads.is_some() {
            match claim.secret_file.as_ref().map(|f| f.source.clone()) {
                Some(Ok(secret)) => return self.request_read(pod, claim, secret),
                Some(Err(why)) => {
                    claim.access = AppAccess::Unsupported(format!(
                        "its executors read the secret from a file that cannot be traced to a Kubernetes Secret: {why}"
                    ))
                }
                None => {}
            }
        }
        if let AppAccess::Unsupported(why) = &claim.access {
            warn!(pod, app = %claim.app_id, why = %why, "the app cannot be served");
        }
        let app_id = claim.app_id.clone();
        let offered = keyring.offer(
            &app_id,
            Claim { namespace: claim.namespace, driver_uid: claim.owner_uid, access: claim.access, tls: claim.tls },
        );
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

impl SecretSource {
    /// Asks for the Secret behind a claim's file, unless this app's read of it is made (or in
    /// flight, or failed less than [`READ_RETRY`] ago).
    fn request_read(&mut self, pod: &str, claim: PodClaim, secret: SecretKeyRef) {
        let key = ReadKey { driver_uid: claim.owner_uid.clone(), app_id: claim.app_id.clone(), secret };
        let retry = match self.reads.get(&key) {
            None => false,
            Some(ReadState::Failed(at)) if at.elapsed() >= READ_RETRY => true,
            Some(_) => return,
        };
        let Some(reads) = &self.file_reads else { return };
        let (app, secret) = (claim.app_id.clone(), key.secret.clone());
        match reads.try_send(SecretRead { pod: pod.to_string(), claim, secret: secret.clone() }) {
            Ok(()) => {
                debug!(pod, app = %app, secret = %secret, "reading the Kubernetes Secret behind the app's secret file");
                self.reads.insert(key, ReadState::Pending { retry });
            }
            // Nothing recorded: a later event of the app's pods asks again.
            Err(_) => debug!(pod, app = %app, "secret reads queue full; the read is asked again on a later pod event"),
        }
    }

    /// The outcome of a [`SecretRead`]. A read whose app's driver ended meanwhile is dropped.
    pub fn secret_read(&mut self, read: SecretRead, outcome: Result<Zeroizing<Vec<u8>>, ReadError>, keyring: &Keyring) {
        let SecretRead { pod, mut claim, secret } = read;
        let key = ReadKey { driver_uid: claim.owner_uid.clone(), app_id: claim.app_id.clone(), secret };
        let Some(ReadState::Pending { retry }) = self.reads.get(&key).copied() else { return };
        let (app, namespace, secret) = (claim.app_id.clone(), claim.namespace.clone(), &key.secret);
        match (outcome, claim.secret_file.take()) {
            (Ok(bytes), Some(file)) => {
                info!(pod, app = %app, namespace = %namespace, secret = %secret, "read the app's secret file from its Kubernetes Secret");
                claim.access = file.settings.app_access_from_file(&bytes);
                self.reads.insert(key, ReadState::Done);
                self.settle(&pod, claim, keyring);
            }
            (Ok(_), None) => {}
            (Err(error), _) => {
                if retry {
                    debug!(pod, app = %app, secret = %secret, error = %error, "reading the app's Kubernetes Secret failed again");
                } else {
                    warn!(
                        pod,
                        app = %app,
                        namespace = %namespace,
                        secret = %secret,
                        error = %error,
                        "reading the Kubernetes Secret behind the app's secret file failed; the app is refused until a read succeeds (retried on later events of its pods, at most every 30 s)"
                    );
                }
                self.reads.insert(key, ReadState::Failed(Instant::now()));
            }
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
