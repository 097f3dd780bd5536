//! The `spark-shuffle-agent` binary: parse the command line, load and validate the
//! configuration, set up logging, and run the server until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::k8s;
use spark_shuffle_agent::lifecycle::Lifecycle;
use spark_shuffle_agent::metrics::{self, DiskSettings, DiskWatcher, Health, Metrics, MetricsServer};
use spark_shuffle_agent::registry::{self, Registry, Roots};
use spark_shuffle_agent::server::{self, Shared};
use spark_shuffle_agent::store::Store;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Exit code for bad configuration (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Spark's external shuffle service as a node agent.
///
/// With no subcommand, serves shuffle blocks (on 0.0.0.0:7337 with the embedded defaults).
#[derive(Debug, Parser)]
#[command(name = "spark-shuffle-agent", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve shuffle blocks (the default).
    Serve(ServeArgs),
    /// Print what a running agent knows: apps, executors, disk per app, traffic, health.
    ///
    /// Reads the agent's /status over its metrics port. Exit code 0: ready; 3: answering but not
    /// ready (recovering, binding or draining); 1: unreachable.
    Status(StatusArgs),
    /// Print which agent pod serves each node, as the 2.2 fork's drivers find them.
    ///
    /// Lists Ready pods in --namespace carrying all of --labels (spark.kubernetes.shuffle.namespace
    /// and spark.kubernetes.shuffle.labels) and prints `node<TAB>pod IP<TAB>namespace/pod` per
    /// node, or with --node just that node's agent IP. Two Ready pods on one node, or none on
    /// the --node asked for, is an error (exit code 1).
    Discover(DiscoverArgs),
    /// Say what would stop executors from using this agent on this node; exit 1 if anything would.
    Check(spark_shuffle_agent::preflight::CheckArgs),
    /// Create the roots and the state dir and hand them to the executors' uid:gid (the init container).
    PrepareDirs(spark_shuffle_agent::prepare_dirs::PrepareArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct DiscoverArgs {
    /// Namespace of the agent pods (spark.kubernetes.shuffle.namespace).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Labels every agent pod carries, k=v[,k=v...] (spark.kubernetes.shuffle.labels).
    #[arg(long)]
    labels: String,
    /// Print only the agent IP for this node.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// The kubeconfig to use (default: in-cluster service account, $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
struct StatusArgs {
    /// The agent's metrics port (agent.metrics.port).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7338")]
    addr: String,
    /// Print the /status JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Shuffle port (spark.shuffle.service.port); 0 picks a free port.
    #[arg(long)]
    port: Option<u16>,
    /// Port of /metrics, /healthz, /readyz and /status (agent.metrics.port); 0 picks a free port.
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Address to listen on (agent.bind).
    #[arg(long)]
    bind: Option<std::net::IpAddr>,
    /// A directory the agent may serve from; repeat for several (agent.roots).
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// Where registrations are persisted (agent.state.dir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A configuration file in spark-defaults.conf format.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Follow pods through the API server in this kubeconfig. Without it, the in-cluster service
    /// account is used when running in a pod; elsewhere Kubernetes is off.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// This node's name, for the executor-pod watch (default: $NODE_NAME, from the downward API).
    #[arg(long, value_name = "NODE")]
    node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad command line"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        None => serve_command(cli.serve),
        Some(Command::Serve(args)) => serve_command(args),
        Some(Command::Status(args)) => ExitCode::from(metrics::status::command(&args.addr, args.json)),
        Some(Command::Discover(args)) => discover_command(args),
        Some(Command::Check(args)) => ExitCode::from(spark_shuffle_agent::preflight::command(&args)),
        Some(Command::PrepareDirs(args)) => ExitCode::from(spark_shuffle_agent::prepare_dirs::command(&args)),
    }
}

fn serve_command(args: ServeArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(args.log_format);
    let kube = match kube_setup(&args, &config) {
        Ok(kube) => kube,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(config, kube) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config::default();
    if let Some(path) = &cli.config {
        config.load_file(path)?;
    }
    if let Some(port) = cli.port {
        config.port = port;
    }
    if let Some(port) = cli.metrics_port {
        config.metrics_port = port;
    }
    if let Some(bind) = cli.bind {
        config.bind = bind;
    }
    if !cli.roots.is_empty() {
        config.roots = cli.roots.clone();
    }
    if let Some(dir) = &cli.state_dir {
        config.state_dir = dir.clone();
    }
    config.validate()?;
    Ok(config)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The API server the agent follows pods through, and how; None when Kubernetes is off. A bad
/// `--kubeconfig` is a configuration error; an unusable in-cluster service account is logged
/// and the agent serves without Kubernetes (it must serve shuffle data regardless).
fn kube_setup(args: &ServeArgs, agent: &Config) -> anyhow::Result<Option<(kube::Config, k8s::K8sSettings)>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = match runtime.block_on(k8s::client_config(args.kubeconfig.as_deref())) {
        Ok(Some(config)) => config,
        Ok(None) => {
            info!("Kubernetes off (not in a pod, no --kubeconfig): executor and application ends are not followed");
            return Ok(None);
        }
        Err(e) if args.kubeconfig.is_some() => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "Kubernetes off: the in-cluster service account is unusable; nothing is deleted on Kubernetes' account");
            return Ok(None);
        }
    };
    let node_name = args.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok()).filter(|n| !n.is_empty());
    Ok(Some((config, agent.k8s_settings(node_name))))
}

fn discover_command(args: DiscoverArgs) -> ExitCode {
    if let Err(e) = k8s::discovery::label_selector(&args.labels) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match discover(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn discover(args: &DiscoverArgs) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let config = k8s::discovery_config(args.kubeconfig.as_deref()).await?;
        let node = args.node.as_deref();
        Ok(k8s::discovery::discover_text(config, &args.namespace, &args.labels, node).await?)
    })
}

fn run(config: Config, kube: Option<(kube::Config, k8s::K8sSettings)>) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.server_threads > 0 {
        runtime.worker_threads(config.server_threads);
    }
    let nice = config.data_threads_nice;
    runtime.on_thread_start(move || spark_shuffle_agent::thread_priority::lower_this_thread(nice));
    let runtime = runtime.enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(config, kube))
}

async fn serve(config: Config, kube: Option<(kube::Config, k8s::K8sSettings)>) -> anyhow::Result<()> {
    // The metrics port answers from before recovery on (its own thread and runtime), so the
    // liveness probe passes while a large journal is read and /readyz says 503 until it is done.
    let health = Health::new();
    let metrics = Arc::new(Metrics::with_health(health.clone()));
    let metrics_listener = std::net::TcpListener::bind((config.bind, config.metrics_port))
        .with_context(|| format!("binding the metrics port {}:{}", config.bind, config.metrics_port))?;
    let metrics_server =
        MetricsServer::start(metrics_listener, Arc::clone(&metrics)).context("starting the metrics server")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(health.clone().run_heartbeat(shutdown.clone()));
    hold_recovery_for_tests().await;
    let roots = Roots::new(&config.roots).context("opening the roots")?;
    let started = std::time::Instant::now();
    let (registry, report) = Registry::open(roots, &config.state_dir)
        .with_context(|| format!("recovering registrations from {}", config.state_dir.display()))?;
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
        tracing::warn!(%reason, "a torn or corrupt journal tail was skipped");
    }
    registry::pin_port(&config.state_dir, config.port, report.executors).map_err(anyhow::Error::msg)?;
    health.set_recovered();
    let registry = Arc::new(registry);
    let store = Arc::new(Store::new(config.index_cache_bytes));
    let (lifecycle, worker) = Lifecycle::new(Arc::clone(&registry), Arc::clone(&store), config.lifecycle_settings());
    let shared = Arc::new(
        Shared::new(config.server_settings(), Arc::clone(&registry), store).with_metrics(Arc::clone(&metrics)),
    );
    metrics.attach_server(&shared);
    metrics.attach_lifecycle(&lifecycle);
    // Kubernetes runs beside the server and never delays it: the API server being down must
    // not stop shuffle data from being served. K8sHealth is for the metrics module to export.
    let k8s_health = Arc::new(k8s::K8sHealth::default());
    metrics.attach_k8s(&k8s_health);
    if let Some((kube_config, k8s_settings)) = kube {
        let targets = k8s::Targets {
            registry: Arc::clone(&registry),
            lifecycle: lifecycle.clone(),
            health: Arc::clone(&k8s_health),
        };
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = k8s::run(kube_config, k8s_settings, targets, token).await {
                tracing::error!(error = %e, "Kubernetes watchers not started; nothing is deleted on Kubernetes' account");
            }
        });
    }
    let disk = DiskWatcher::spawn(Arc::clone(&metrics), registry, DiskSettings::default())
        .context("starting the disk-usage thread")?;
    let listener = tokio::net::TcpListener::bind((config.bind, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind, config.port))?;
    let addr = listener.local_addr()?;
    metrics.set_shuffle_addr(addr);
    health.set_listening();
    info!(%addr, roots = ?config.roots, "listening");
    // Logged after the shuffle port's line (though serving since start-up): tools that take the
    // first `listening addr=` line of the log (tests/spark/servers.py) mean the shuffle port.
    info!(addr = %metrics_server.local_addr(), "metrics listening");
    tokio::spawn(stop_on_signal(shutdown.clone(), health));
    let cleaner = tokio::spawn(worker.run(shutdown.clone()));
    serve_with_control_thread(listener, shared, shutdown, config.drain_grace).await?;
    let _ = cleaner.await;
    // The disk thread may be mid-walk; it stops at its next wait, the process does not wait.
    drop(disk);
    metrics_server.stop();
    info!("stopped");
    Ok(())
}

/// Runs the accept loop on a control runtime in a thread of its own, with this (data) runtime
/// for connections that fetch. Registrations and other small RPCs are then answered by a thread
/// the kernel schedules on its own, however busy the data path is (SPARK-20640, SPARK-24355:
/// registrations timing out on a busy service).
async fn serve_with_control_thread(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    let data = tokio::runtime::Handle::current();
    let listener = listener.into_std().context("moving the listener to the control thread")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the control runtime")
                .and_then(|rt| {
                    rt.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        server::run(listener, shared, shutdown, grace, Some(data)).await;
                        Ok(())
                    })
                });
            let _ = done_tx.send(result);
        })
        .context("starting the control thread")?;
    done_rx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("the control thread died")))
}

/// Test hook: with this variable set to a path, recovery waits until that path exists, so a test
/// can watch /readyz answer 503 while registrations are "being recovered" (tests/metrics/). A
/// real journal recovers too fast to observe reliably. Never set in production.
const HOLD_RECOVERY_ENV: &str = "SPARK_SHUFFLE_AGENT_TEST_HOLD_RECOVERY";

async fn hold_recovery_for_tests() {
    let Some(path) = std::env::var_os(HOLD_RECOVERY_ENV).map(PathBuf::from) else { return };
    tracing::warn!(path = %path.display(), "test hook {HOLD_RECOVERY_ENV}: recovery waits until this file exists");
    while !path.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
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
    };
    info!(signal = name, "stopping");
    // Not ready first, so Kubernetes stops routing here while open connections drain.
    health.set_draining();
    shutdown.cancel();
}
