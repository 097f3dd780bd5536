//! Everything that talks to the Kubernetes API server: learning when executors and applications
//! end (Spark 4.x never tells a shuffle service, spec/kubernetes.md §2), and finding the agent on
//! each node for the 2.2 fork's drivers ([`discovery`]).
//!
//! What runs, when the agent is in a cluster or given `--kubeconfig` ([`run`]):
//!
//! * [`executors`]: one watch on executor pods of this node (`spark-role=executor`,
//!   `spec.nodeName=$NODE_NAME`). A pod deleted or finished → `Lifecycle::executor_removed`.
//!   With per-app secrets, the same events feed the apps' secrets and the pods' mounts that
//!   new registrations are checked against.
//! * [`executor_ips`] (pod network mode only): one watch on executor pods in all namespaces,
//!   for their pod and node IPs: this node's are adopted (listeners inside the pod), every
//!   ended one becomes a dead-IP redirect (src/podnet/controller.rs).
//! * [`drivers`]: one watch on driver pods in all namespaces (`spark-role=driver`), kept as a
//!   small view (pod → app id, finished or not). A driver pod of an app registered here that
//!   finished or was deleted → `Lifecycle::application_removed`.
//! * [`secret_files`] (with `agent.auth.pods.secretFiles read`): a GET of the Kubernetes Secret
//!   behind an app's secret file, once per app, when its executor pod names one.
//! * [`reconcile`]: every `reconcile_interval`, and after every complete list of driver pods,
//!   each app registered here is judged against that view; an app with no driver pod in it is
//!   checked with two direct LISTs before anything is deleted (restarts, missed events).
//!
//! Why one cluster-wide driver watch rather than one per application: every agent would
//! otherwise hold one watch per app running on its node, N nodes × M apps watches on the API
//! server, each re-listing on its own after an expiry. One watch per agent costs the API server
//! N watches whatever the number of apps, and driver pods change rarely (a few events per app).
//!
//! The safety rule everywhere: only a definite answer deletes. A finished phase, a DELETED
//! event, or a successful LIST without the pod (for a pod seen before, or an app known before
//! the LIST was sent) is definite. An error, a timeout, an unreachable API server, a watch not
//! yet synced, phase Unknown: keep everything, say so in the log and in [`K8sHealth`], retry.
//!
//! This module never blocks start-up: the watchers run as tasks, and the shuffle port is served
//! whether or not the API server answers. It deletes nothing itself; the lifecycle engine does.

mod api_health;
pub mod app_secrets;
pub mod discovery;
pub mod drivers;
pub mod executor_ips;
pub mod executors;
pub mod metrics;
pub mod pods;
pub mod reconcile;
pub mod secret_files;
pub mod volumes;

pub use api_health::{K8sHealth, K8sSnapshot, WatchHealth, WatchSnapshot};
pub use metrics::K8sSource;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lifecycle::Lifecycle;
use crate::registry::Registry;
use api_health::{ObserveLayer, Watch};

/// Where the service-account token is mounted in a pod.
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Why the Kubernetes side could not start.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The kubeconfig file could not be read or used.
    #[error("cannot use kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    /// The in-cluster configuration (service-account token, CA, KUBERNETES_SERVICE_HOST) is unusable.
    #[error("cannot use the in-cluster service account: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// No configuration could be inferred (discover without --kubeconfig).
    #[error("cannot find a Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The HTTP client could not be built (TLS material, proxy settings).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// How the watchers behave.
#[derive(Debug, Clone)]
pub struct K8sSettings {
    /// This node's name (`--node-name`, else `$NODE_NAME` from the downward API). Without it the
    /// executor watch is off: watching every executor in the cluster is not this agent's job.
    pub node_name: Option<String>,
    /// How often every app registered here is checked against the driver pods
    /// (`agent.k8s.reconcile.interval`). Must not be zero.
    pub reconcile_interval: Duration,
    /// How long to wait before asking the API again about an app that has no driver pod but
    /// still has running executors (a client-mode app, whose driver is not a labelled pod;
    /// `agent.k8s.absent.recheck`).
    pub absent_recheck: Duration,
    /// Read the Kubernetes Secret behind an app's secret file (`agent.auth.pods.secretFiles
    /// read`; needs `get secrets`). Only with per-app secrets.
    pub read_secret_files: bool,
}

/// The parts of the agent the watchers act on.
#[derive(Debug, Clone)]
pub struct Targets {
    pub registry: Arc<Registry>,
    pub lifecycle: Lifecycle,
    pub health: Arc<K8sHealth>,
    /// With `agent.auth.secrets=pods`: where the apps' secrets learned from pods go.
    pub keyring: Option<Arc<crate::auth::Keyring>>,
    /// With `agent.auth.secrets=pods` or `agent.localDirs.translate`: this node's executor
    /// pods' mounts, which new registrations' dirs are checked against and placed by
    /// (src/registry/executor_mounts.rs); its claims are looked up through the API here.
    pub executor_mounts: Option<Arc<crate::registry::ExecutorMounts>>,
    /// In pod network mode: the controller that adopts executor pods and redirects dead IPs.
    pub pod_network: Option<std::sync::mpsc::Sender<crate::podnet::PodChange>>,
}

impl Targets {
    /// Feeds a watch event to the per-app secrets, when they are on.
    fn secrets(
        &self,
        source: &Mutex<app_secrets::SecretSource>,
        feed: impl FnOnce(&mut app_secrets::SecretSource, &crate::auth::Keyring),
    ) {
        if let Some(keyring) = &self.keyring {
            feed(&mut crate::sync::lock(source), keyring);
        }
    }

    /// Whether an application is registered here (executors, or a RegisterDriver).
    fn knows(&self, app_id: &str) -> bool {
        self.registry.driver(app_id).is_some() || !self.registry.executors_of(app_id).is_empty()
    }

    /// Tells the pod network controller, if any, that an app ended (its dead IPs go).
    fn pod_network_app_ended(&self, app_id: &str) {
        if let Some(changes) = &self.pod_network {
            let _ = changes.send(crate::podnet::PodChange::AppEnded { app_id: app_id.to_string() });
        }
    }

    /// Hands a finished application to the lifecycle engine, which drops its registrations
    /// (persisted first) and deletes its dirs in the background.
    async fn remove_app(&self, app_id: &str, reason: &str) {
        self.pod_network_app_ended(app_id);
        if self.lifecycle.application_removed(app_id).await {
            self.health.apps_removed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(app = %app_id, reason, "application ended; deleting its files");
        }
    }
}

/// Which API server to use, if any: `--kubeconfig FILE` if given; else the in-cluster service
/// account if `KUBERNETES_SERVICE_HOST` is set and the token is mounted; else none (Ok(None)).
///
/// `KUBECONFIG` and `~/.kube/config` are deliberately not consulted: an agent started by hand
/// on a workstation must not start deleting files because of some cluster's pods.
pub async fn client_config(kubeconfig: Option<&Path>) -> Result<Option<kube::Config>, K8sError> {
    if let Some(path) = kubeconfig {
        return from_kubeconfig(path).await.map(Some);
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
    if in_cluster && Path::new(TOKEN_PATH).exists() {
        return Ok(Some(kube::Config::incluster()?));
    }
    Ok(None)
}

/// For `discover`: `--kubeconfig FILE`, else what kubectl would use (in-cluster, `KUBECONFIG`,
/// `~/.kube/config`). Discovery only reads.
pub async fn discovery_config(kubeconfig: Option<&Path>) -> Result<kube::Config, K8sError> {
    match kubeconfig {
        Some(path) => from_kubeconfig(path).await,
        None => Ok(kube::Config::infer().await?),
    }
}

async fn from_kubeconfig(path: &Path) -> Result<kube::Config, K8sError> {
    let wrap = |source| K8sError::Kubeconfig { path: path.display().to_string(), source };
    let file = kube::config::Kubeconfig::read_from(path).map_err(wrap)?;
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await.map_err(wrap)
}

/// A client whose requests are counted in `health` (and, for a watch, mark it up).
fn observed_client(
    config: &kube::Config,
    health: &Arc<K8sHealth>,
    watch: Option<Watch>,
) -> Result<kube::Client, K8sError> {
    let layer = ObserveLayer { health: Arc::clone(health), watch };
    Ok(kube::client::ClientBuilder::try_from(config.clone())?.with_layer(&layer).build())
}

/// Runs the watchers and the reconciler until `shutdown`. Returns at once with an error only
/// if the clients cannot be built (bad TLS material); an unreachable API server is not an
/// error here: the watchers retry, with backoff, for as long as the agent runs.
pub async fn run(
    config: kube::Config,
    settings: K8sSettings,
    targets: Targets,
    shutdown: CancellationToken,
) -> Result<(), K8sError> {
    let health = Arc::clone(&targets.health);
    let driver_client = observed_client(&config, &health, Some(Watch::Drivers))?;
    let reconcile_client = observed_client(&config, &health, None)?;
    let executor_ips_client = match (&settings.node_name, &targets.pod_network) {
        (Some(_), Some(_)) => Some(observed_client(&config, &health, Some(Watch::ExecutorIps))?),
        _ => None,
    };
    let executor_client = match &settings.node_name {
        Some(_) => Some(observed_client(&config, &health, Some(Watch::Executors))?),
        None => None,
    };
    health.enabled.store(true, std::sync::atomic::Ordering::Relaxed);
    info!(server = %config.cluster_url, node = settings.node_name.as_deref().unwrap_or("-"), "watching the Kubernetes API");

    let view = Arc::new(Mutex::new(drivers::DriverView::default()));
    let synced = Arc::new(Notify::new());
    let mut source = app_secrets::SecretSource::default();
    let mut secret_reads = None;
    if settings.read_secret_files && targets.keyring.is_some() {
        let (tx, rx) = secret_files::channel();
        source = app_secrets::SecretSource::reading_secret_files(tx);
        secret_reads = Some(rx);
    }
    let secrets = Arc::new(Mutex::new(source));
    if let Some(mounts) = &targets.executor_mounts {
        mounts.set_claims(Arc::new(volumes::ApiClaims::new(observed_client(&config, &health, None)?)));
    }
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(keyring), Some(rx)) = (&targets.keyring, secret_reads) {
        let client = observed_client(&config, &health, None)?;
        info!("apps' secret files are read from their Kubernetes Secrets (agent.auth.pods.secretFiles read)");
        tasks.spawn(secret_files::reads(client, Arc::clone(keyring), Arc::clone(&secrets), rx, shutdown.clone()));
    }
    if let Some(keyring) = &targets.keyring {
        let client = observed_client(&config, &health, None)?;
        let (keyring, registry) = (Arc::clone(keyring), Arc::clone(&targets.registry));
        tasks.spawn(app_secrets::lookups(client, keyring, Arc::clone(&secrets), registry, shutdown.clone()));
    }
    tasks.spawn(drivers::watch(
        driver_client,
        targets.clone(),
        Arc::clone(&view),
        Arc::clone(&secrets),
        Arc::clone(&synced),
        shutdown.clone(),
    ));
    tasks.spawn(reconcile::run(reconcile_client, targets.clone(), view, synced, settings.clone(), shutdown.clone()));
    if let (Some(client), Some(node), Some(changes)) =
        (executor_ips_client, settings.node_name.clone(), targets.pod_network.clone())
    {
        health.pod_network.store(true, std::sync::atomic::Ordering::Relaxed);
        tasks.spawn(executor_ips::watch(client, node, Arc::clone(&health), changes, shutdown.clone()));
    }
    match (executor_client, settings.node_name) {
        (Some(client), Some(node)) => {
            tasks.spawn(executors::watch(client, node, targets, secrets, shutdown.clone()));
        }
        _ => warn!("no node name (--node-name or NODE_NAME): executor pods are not watched; executors' files are deleted with their application"),
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The next event of a watcher stream, recording its health; None on shutdown. Errors are
/// logged and counted here and never end the watch: the stream retries them with backoff
/// (re-watching from the last resourceVersion, or re-listing after 410 Gone).
async fn next_event<S>(
    stream: &mut S,
    health: &WatchHealth,
    what: &'static str,
    shutdown: &CancellationToken,
) -> Option<watcher::Event<Pod>>
where
    S: Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
{
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return None,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(event)) => {
                if matches!(event, watcher::Event::InitDone) {
                    health.synced();
                    info!(watch = what, "pods listed; watching for changes");
                }
                return Some(event);
            }
            Some(Err(e)) => {
                health.failed();
                warn!(watch = what, error = %e, "watch interrupted; retrying with backoff (nothing is deleted on its account meanwhile)");
            }
            None => {
                // kube-runtime's watcher never ends by itself; if it ever did, say so loudly.
                // The caller starts a new one (never silently stop following pods).
                health.failed();
                tracing::error!(watch = what, "watch stream ended unexpectedly; starting a new one");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-cluster API server is HTTPS only. rustls panics at client construction when it
    /// cannot pick a crypto provider, so build an HTTPS client and make it do a handshake
    /// (against a socket that hangs up): an error, not a panic.
    #[tokio::test]
    async fn an_https_client_builds_and_fails_cleanly_against_a_server_that_hangs_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let url: http::Uri = format!("https://{addr}").parse().expect("uri");
        let health = Arc::new(K8sHealth::default());
        let client = observed_client(&kube::Config::new(url), &health, None).expect("an HTTPS client");
        let listed = kube::Api::<Pod>::all(client).list(&kube::api::ListParams::default()).await;
        assert!(listed.is_err());
        assert_eq!(health.snapshot().api_errors, 1);
    }
}
