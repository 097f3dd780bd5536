//! The composition root: [`build`] turns a [`Config`] into a running agent, and the [`Agent`]
//! handle waits for it to stop. Everything is wired here and only here: the binary calls it,
//! and so do the tests (tests/common/agent.rs), so what is tested is what runs.
//!
//! Start-up order, and why:
//! 1. everything that can be refused as configuration (the roots, the kubeconfig) is checked
//!    before any port is bound, so a bad configuration exits 64 with nothing half-started;
//! 2. the admin port is bound and answers from then on (liveness passes and `/readyz` says 503
//!    while a large journal is read);
//! 3. registrations are recovered from the journal, then the shuffle port is bound;
//! 4. the accept loop runs on a control thread of its own, connections move to the data runtime
//!    at their first data request (src/server/placement.rs).
//!
//! The agent runs on threads of its own (a data runtime, the control thread, the admin thread),
//! so [`build`] can be called from any context, a test's tokio runtime included.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{Admin, AdminServer, Health, Node};
use crate::config::Config;
use crate::disk_usage::{DiskSettings, DiskSource, DiskUsage, DiskWatcher};
use crate::k8s::{self, K8sHealth, K8sSettings, K8sSource};
use crate::lifecycle::{Lifecycle, LifecycleSource};
use crate::podnet::{self, PodnetSource, PodnetStats};
use crate::registry::{self, ExecutorMounts, PathMode, Registry, RegistrySource, Roots};
use crate::server::{self, ServerSource, Shared};
use crate::store::{Store, StoreSource};
use crate::tls::TlsAcceptor;

/// Why the agent did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration cannot work (exit code 64, nothing was bound).
    #[error("{0}")]
    Config(String),
    /// Starting or running failed: a port in use, the journal unreadable, a thread not started.
    #[error("{0:#}")]
    Run(#[from] anyhow::Error),
}

/// A running agent. Dropping it stops it without waiting; [`Agent::wait_termination`] waits.
#[derive(Debug)]
pub struct Agent {
    started: Started,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<(), AppError>>>,
}

/// What the agent's main thread reports once the shuffle port is bound.
#[derive(Debug)]
struct Started {
    shuffle_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    admin: Arc<Admin>,
    disk: Arc<DiskUsage>,
    data: tokio::runtime::Handle,
}

/// Starts the agent `config` describes and returns once it serves (or failed to start).
pub fn build(config: Config) -> Result<Agent, AppError> {
    let shutdown = CancellationToken::new();
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<Result<Started, AppError>>(1);
    let token = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || run(config, token, started_tx))
        .map_err(|e| AppError::Run(anyhow::Error::new(e).context("starting the agent thread")))?;
    match started_rx.recv() {
        Ok(Ok(started)) => Ok(Agent { started, shutdown, thread: Some(thread) }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        // The thread ended without a word: it failed before it could report.
        Err(_) => Err(match thread.join() {
            Ok(Err(e)) => e,
            Ok(Ok(())) => AppError::Run(anyhow::anyhow!("the agent stopped before serving")),
            Err(_) => AppError::Run(anyhow::anyhow!("the agent thread panicked")),
        }),
    }
}

impl Agent {
    /// The shuffle port's address (`spark.shuffle.service.port`; the real one when 0 was asked).
    pub fn shuffle_addr(&self) -> SocketAddr {
        self.started.shuffle_addr
    }

    /// The admin port's address (`agent.metrics.port`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.started.admin_addr
    }

    /// What connections share: counters, registry, store (tests read counters through it).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.started.shared
    }

    /// The admin side: metrics, health, the status document.
    pub fn admin(&self) -> &Arc<Admin> {
        &self.started.admin
    }

    /// The last disk measurements (tests walk on demand through it).
    pub fn disk_usage(&self) -> &Arc<DiskUsage> {
        &self.started.disk
    }

    /// Stops on SIGTERM or SIGINT: not ready first, then stop accepting and drain.
    pub fn stop_on_signals(&self) {
        self.started.data.spawn(stop_on_signal(self.shutdown.clone(), self.started.admin.health.clone()));
    }

    /// Stops accepting and drains, as SIGTERM does; [`Agent::wait_termination`] waits for it.
    pub fn stop(&self) {
        self.started.admin.health.set_draining();
        self.shutdown.cancel();
    }

    /// Waits until the agent has stopped (a signal, [`Agent::stop`]) and drained.
    pub fn wait_termination(mut self) -> Result<(), AppError> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(AppError::Run(anyhow::anyhow!("the agent thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The agent's main thread: the data runtime, and everything on it until shutdown.
fn run(
    config: Config,
    shutdown: CancellationToken,
    started: SyncSender<Result<Started, AppError>>,
) -> Result<(), AppError> {
    let runtime = match data_runtime(&config) {
        Ok(r) => r,
        Err(e) => {
            let _ = started.send(Err(AppError::Run(e)));
            return Ok(());
        }
    };
    runtime.block_on(async move {
        let Err(e) = serve(config, shutdown, &started).await else { return Ok(()) };
        // Before start-up finished, the error goes to `build` (still waiting on the channel);
        // after, to `wait_termination`.
        match started.try_send(Err(e)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(result) | TrySendError::Disconnected(result)) => result.map(|_| ()),
        }
    })
}

/// The data runtime: one worker per core (or `spark.shuffle.io.serverThreads`), each running
/// `agent.data.threads.nice` levels below the control thread and the journal writer.
fn data_runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.server_threads > 0 {
        runtime.worker_threads(config.server_threads);
    }
    let nice = config.data_threads_nice;
    runtime.on_thread_start(move || crate::thread_priority::lower_this_thread(nice));
    Ok(runtime.enable_all().build()?)
}

/// The API server to follow pods through, when there is one. A bad `agent.k8s.kubeconfig` is a
/// configuration error; an unusable in-cluster service account is logged and the agent serves
/// without Kubernetes (it must serve shuffle data regardless).
async fn kube_setup(config: &Config) -> Result<Option<(kube::Config, K8sSettings)>, AppError> {
    let kubeconfig = config.kubeconfig.as_deref();
    let client = match k8s::client_config(kubeconfig).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            info!("Kubernetes off (not in a pod, no kubeconfig): executor and application ends are not followed");
            return Ok(None);
        }
        Err(e) if kubeconfig.is_some() => return Err(AppError::Config(e.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "Kubernetes off: the in-cluster service account is unusable; nothing is deleted on Kubernetes' account");
            return Ok(None);
        }
    };
    Ok(Some((client, config.k8s_settings())))
}

async fn serve(
    config: Config,
    shutdown: CancellationToken,
    started: &SyncSender<Result<Started, AppError>>,
) -> Result<(), AppError> {
    let roots = Roots::new(&config.roots).map_err(|e| AppError::Config(format!("agent.roots: {e}")))?;
    let access = config.access().map_err(|e| AppError::Config(e.to_string()))?;
    let kube = kube_setup(&config).await?;
    // Per-app secrets come from this node's executor pods: without them no app could be served.
    if access.keyring().is_some() && kube.as_ref().is_none_or(|(_, k8s)| k8s.node_name.is_none()) {
        return Err(AppError::Config(
            "agent.auth.secrets=pods needs the Kubernetes API (in a pod, or agent.k8s.kubeconfig) and this node's name (agent.k8s.node.name or $NODE_NAME)".into(),
        ));
    }
    if config.local_dirs_translate && kube.as_ref().is_none_or(|(_, k8s)| k8s.node_name.is_none()) {
        return Err(AppError::Config(
            "agent.localDirs.translate needs the Kubernetes API (in a pod, or agent.k8s.kubeconfig) and this node's name (agent.k8s.node.name or $NODE_NAME)".into(),
        ));
    }
    if config.network_mode.uses_pod_network() {
        if kube.as_ref().is_none_or(|(_, k8s)| k8s.node_name.is_none()) {
            return Err(AppError::Config(format!(
                "agent.network.mode={} needs the Kubernetes API (in a pod, or agent.k8s.kubeconfig) and this node's name (agent.k8s.node.name or $NODE_NAME)",
                config.network_mode
            )));
        }
        podnet::privilege::check(&config.network_proc_root, &config.network_nft)
            .map_err(|e| AppError::Config(e.to_string()))?;
    }
    let health = Health::new();
    let admin = Arc::new(Admin::new(health.clone()));
    let admin_listener = std::net::TcpListener::bind((config.bind, config.metrics_port))
        .map_err(|e| anyhow::anyhow!("binding the metrics port {}:{}: {e}", config.bind, config.metrics_port))?;
    let admin_server = AdminServer::start(admin_listener, Arc::clone(&admin))
        .map_err(|e| anyhow::anyhow!("starting the metrics server: {e}"))?;
    tokio::spawn(health.clone().run_heartbeat(shutdown.clone()));
    hold_recovery_for_tests().await;
    // Per-app secrets and translated dirs bind new registrations' dirs to their executor pods.
    let bound_to_pods = access.keyring().is_some() || config.local_dirs_translate;
    let executor_mounts = bound_to_pods.then(|| Arc::new(ExecutorMounts::default()));
    let registry = recover(roots, &config, executor_mounts.clone())?;
    health.set_recovered();
    let store = Arc::new(Store::new(config.index_cache_bytes));
    let (lifecycle, worker) = Lifecycle::new(Arc::clone(&registry), Arc::clone(&store), config.lifecycle_settings());
    let tls = tls_acceptor(&config)?;
    let mut settings = config.server_settings();
    settings.max_connections = crate::server::limits::fit_connections(settings.max_connections);
    let shared = Arc::new(
        Shared::new(settings, Arc::clone(&registry), Arc::clone(&store))
            .with_access(access.clone())
            .with_tls(tls.clone()),
    );
    let k8s_health = Arc::new(K8sHealth::default());
    let disk = Arc::new(DiskUsage::new());
    let control = Control::start(Arc::clone(&shared), config.drain_grace, shutdown.clone())
        .map_err(|e| anyhow::anyhow!("starting the control thread: {e}"))?;
    let podnet_stats = config.network_mode.uses_pod_network().then(|| Arc::new(PodnetStats::default()));
    let pod_network = match &podnet_stats {
        Some(stats) => Some(pod_network(&config, &control, Arc::clone(stats), &shutdown)?),
        None => None,
    };
    let exporter = &admin.exporter;
    exporter.add(ServerSource::new(Arc::clone(&shared)));
    exporter.add(RegistrySource::new(Arc::clone(&registry)));
    exporter.add(StoreSource::new(store));
    exporter.add(LifecycleSource::new(lifecycle.clone(), Arc::clone(&registry)));
    exporter.add(K8sSource::new(Arc::clone(&k8s_health)));
    exporter.add(DiskSource::new(Arc::clone(&disk)));
    if let Some(stats) = &podnet_stats {
        exporter.add(PodnetSource::new(Arc::clone(stats)));
    }
    if let Some(acceptor) = &tls {
        exporter.add(crate::tls::metrics::TlsSource::new(Arc::clone(acceptor)));
        let interval = config.tls.reload_interval;
        tokio::spawn(crate::tls::watch_key_files(Arc::clone(acceptor), interval, shutdown.clone()));
    }
    if let Some((kube_config, k8s_settings)) = kube {
        // Beside the server, never in its way: the API server being down must not stop
        // shuffle data from being served.
        let targets = k8s::Targets {
            registry: Arc::clone(&registry),
            lifecycle: lifecycle.clone(),
            health: Arc::clone(&k8s_health),
            keyring: access.keyring().cloned(),
            executor_mounts,
            pod_network,
        };
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = k8s::run(kube_config, k8s_settings, targets, token).await {
                tracing::error!(error = %e, "Kubernetes watchers not started; nothing is deleted on Kubernetes' account");
            }
        });
    }
    let disk_watcher = DiskWatcher::spawn(Arc::clone(&disk), Arc::clone(&registry), DiskSettings::default())
        .map_err(|e| anyhow::anyhow!("starting the disk-usage thread: {e}"))?;
    let listener = crate::server::limits::listen((config.bind, config.port).into())
        .map_err(|e| anyhow::anyhow!("binding {}:{}: {e}", config.bind, config.port))?;
    let shuffle_addr = listener.local_addr().map_err(anyhow::Error::new)?;
    let listener = listener.into_std().map_err(anyhow::Error::new)?;
    // Handed to the control runtime before `build` returns, so no stop can come first (the
    // control thread ends at a stop once the loops it holds have drained).
    let node_listener = control.serve(listener, shutdown.clone());
    admin.node_is_up(Node {
        shared: Arc::clone(&shared),
        lifecycle,
        k8s: k8s_health,
        disk: Arc::clone(&disk),
        shuffle_addr,
        podnet: podnet_stats,
    });
    health.set_listening();
    info!(addr = %shuffle_addr, roots = ?config.roots, "listening");
    // Logged after the shuffle port's line (though serving since start-up): tools that take the
    // first `listening addr=` line of the log (tests/spark/servers.py) mean the shuffle port.
    info!(addr = %admin_server.local_addr(), "metrics listening");
    let _ = started.send(Ok(Started {
        shuffle_addr,
        admin_addr: admin_server.local_addr(),
        shared: Arc::clone(&shared),
        admin: Arc::clone(&admin),
        disk,
        data: tokio::runtime::Handle::current(),
    }));
    let cleaner = tokio::spawn(worker.run(shutdown.clone()));
    node_listener.await.map_err(|e| anyhow::anyhow!("the node's accept loop failed: {e}"))?;
    let _ = cleaner.await;
    // The disk thread may be mid-walk; it stops at its next wait, the process does not wait.
    drop(disk_watcher);
    admin_server.stop();
    info!("stopped");
    Ok(())
}

/// `spark.ssl.rpc.enabled`: the key files read once here, so a bad one stops the start.
fn tls_acceptor(config: &Config) -> Result<Option<Arc<TlsAcceptor>>, AppError> {
    if !config.tls.enabled() {
        return Ok(None);
    }
    let files = config.tls.files().map_err(|(key, reason)| AppError::Config(format!("{key}: {reason}")))?;
    let acceptor = TlsAcceptor::new(files, config.tls.plaintext).map_err(|e| AppError::Config(e.to_string()))?;
    info!(plaintext = ?acceptor.plaintext, "TLS on the shuffle port (spark.ssl.rpc.enabled)");
    Ok(Some(Arc::new(acceptor)))
}

/// Recovers registrations from the journal in the state dir, and pins the shuffle port to it.
fn recover(
    roots: Roots,
    config: &Config,
    executor_mounts: Option<Arc<ExecutorMounts>>,
) -> Result<Arc<Registry>, AppError> {
    let started = Instant::now();
    let (mut registry, report) = Registry::open(roots, &config.state_dir)
        .map_err(|e| anyhow::anyhow!("recovering registrations from {}: {e}", config.state_dir.display()))?;
    info!(
        executors = report.executors,
        drivers = report.drivers,
        pending_cleanups = report.pending_cleanups,
        refused = report.refused,
        journal_bytes = report.journal_bytes,
        millis = started.elapsed().as_millis() as u64,
        "registrations recovered"
    );
    if let Some(reason) = &report.skipped_tail {
        warn!(%reason, "a torn or corrupt journal tail was skipped");
    }
    // A port other than the one the journal's executors registered on is a configuration error.
    registry::pin_port(&config.state_dir, config.port, report.executors).map_err(AppError::Config)?;
    // After the recovery: the registrations just restored are not checked against pods.
    if let Some(pods) = executor_mounts {
        let mode = if config.local_dirs_translate { PathMode::Translated } else { PathMode::Identical };
        registry.bind_to_pods(pods, config.auth_pods_wait, mode);
    }
    Ok(Arc::new(registry))
}

/// The control runtime, on a thread of its own: every accept loop (the node's listener, and in
/// pod network mode each pod's) runs there, with the data runtime for connections that fetch.
/// Registrations and other small RPCs are then answered by a thread the kernel schedules on its
/// own, however busy the data path is (SPARK-20640, SPARK-24355: registrations timing out on a
/// busy service).
#[derive(Clone)]
struct Control {
    handle: tokio::runtime::Handle,
    tasks: tokio_util::task::TaskTracker,
    data: tokio::runtime::Handle,
    shared: Arc<Shared>,
    grace: Duration,
}

impl Control {
    /// Starts the thread; it runs until `shutdown`, then until every accept loop has drained.
    fn start(shared: Arc<Shared>, grace: Duration, shutdown: CancellationToken) -> anyhow::Result<Control> {
        let tasks = tokio_util::task::TaskTracker::new();
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let tracker = tasks.clone();
        std::thread::Builder::new().name("control".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async move {
                        shutdown.cancelled().await;
                        tracker.close();
                        tracker.wait().await;
                    });
                }
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                }
            }
        })?;
        let handle = handle_rx.recv().map_err(|_| anyhow::anyhow!("the control thread died"))??;
        Ok(Control { handle, tasks, data: tokio::runtime::Handle::current(), shared, grace })
    }

    /// Serves `listener` until `token` is cancelled (then drains its connections for the grace).
    fn serve(&self, listener: std::net::TcpListener, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (shared, grace, data) = (Arc::clone(&self.shared), self.grace, self.data.clone());
        self.tasks.spawn_on(
            async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => server::run(listener, shared, token, grace, Some(data)).await,
                    Err(e) => tracing::error!(error = %e, "cannot serve a listener"),
                }
            },
            &self.handle,
        )
    }
}

/// Pod network mode: checks its privileges (before any port is bound), then starts the
/// controller and returns where the executor-pod watch sends its changes.
fn pod_network(
    config: &Config,
    control: &Control,
    stats: Arc<PodnetStats>,
    shutdown: &CancellationToken,
) -> Result<std::sync::mpsc::Sender<podnet::PodChange>, AppError> {
    let settings = config.podnet_settings();
    let control = control.clone();
    let serve: podnet::controller::Serve = Box::new(move |listener, token| {
        control.serve(listener, token);
    });
    let controller = podnet::Controller::new(settings, serve, stats, shutdown.clone())
        .map_err(|e| anyhow::anyhow!("starting pod network mode: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    controller.spawn(rx).map_err(|e| anyhow::anyhow!("starting the pod network thread: {e}"))?;
    Ok(tx)
}

/// Test hook: with this variable set to a path, recovery waits until that path exists, so a test
/// can watch /readyz answer 503 while registrations are "being recovered" (tests/metrics/). A
/// real journal recovers too fast to observe reliably. Never set in production.
const HOLD_RECOVERY_ENV: &str = "SPARK_SHUFFLE_AGENT_TEST_HOLD_RECOVERY";

async fn hold_recovery_for_tests() {
    let Some(path) = std::env::var_os(HOLD_RECOVERY_ENV).map(PathBuf::from) else { return };
    warn!(path = %path.display(), "test hook {HOLD_RECOVERY_ENV}: recovery waits until this file exists");
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop_on_signal(shutdown: CancellationToken, health: Health) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = shutdown.cancelled() => return,
    };
    info!(signal = name, "stopping");
    // Not ready first, so Kubernetes stops routing here while open connections drain.
    health.set_draining();
    shutdown.cancel();
}
