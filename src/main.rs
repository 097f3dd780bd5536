//! The `spark-shuffle-agent` binary: parse the command line, load and validate the
//! configuration, set up logging, and run the server until SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use spark_shuffle_agent::admin::status_command;
use spark_shuffle_agent::app::{self, AppError};
use spark_shuffle_agent::config::{Config, LogFormat};
use spark_shuffle_agent::k8s;

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
    /// Wait until 127.0.0.1:--port accepts (pod network mode: the executor pod's init container,
    /// so the executor starts only once the agent listens inside its pod). Exit 1 at the timeout.
    WaitForListener(WaitArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct WaitArgs {
    /// The shuffle port (spark.shuffle.service.port).
    #[arg(long, default_value_t = 7337)]
    port: u16,
    /// How long to wait, e.g. 60s or 2min.
    #[arg(long, default_value = "60s", value_parser = spark_shuffle_agent::config::parse_duration)]
    timeout: std::time::Duration,
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
    /// Log format (agent.log.format; default text).
    #[arg(long, value_enum)]
    log_format: Option<LogFlag>,
    /// Follow pods through the API server in this kubeconfig (agent.k8s.kubeconfig). Without it,
    /// the in-cluster service account is used when running in a pod; elsewhere Kubernetes is off.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// This node's name, for the executor-pod watch (agent.k8s.node.name; default: $NODE_NAME,
    /// from the downward API).
    #[arg(long, value_name = "NODE")]
    node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFlag {
    Text,
    Json,
}

impl LogFlag {
    fn as_key(self) -> &'static str {
        match self {
            LogFlag::Text => "text",
            LogFlag::Json => "json",
        }
    }
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
        Some(Command::Status(args)) => ExitCode::from(status_command::command(&args.addr, args.json)),
        Some(Command::Discover(args)) => discover_command(args),
        Some(Command::Check(args)) => ExitCode::from(spark_shuffle_agent::preflight::command(&args)),
        Some(Command::PrepareDirs(args)) => ExitCode::from(spark_shuffle_agent::prepare_dirs::command(&args)),
        Some(Command::WaitForListener(args)) => wait_for_listener(&args),
    }
}

fn wait_for_listener(args: &WaitArgs) -> ExitCode {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    match spark_shuffle_agent::podnet::gate::wait_until_accepting(addr, args.timeout) {
        Ok(waited) => {
            println!("the agent listens on {addr} (waited {} ms)", waited.as_millis());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}; is the agent running in pod network mode on this node?");
            ExitCode::FAILURE
        }
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
    init_tracing(config.log_format);
    let agent = match app::build(config) {
        Ok(agent) => agent,
        Err(e) => return failed(&e),
    };
    agent.stop_on_signals();
    match agent.wait_termination() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

/// One line on stderr; 64 for a configuration the agent refuses, 1 for anything else.
fn failed(e: &AppError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        AppError::Config(_) => ExitCode::from(EXIT_CONFIG),
        AppError::Run(_) => ExitCode::FAILURE,
    }
}

/// The embedded defaults, then `--config`, then the flags.
fn load_config(cli: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config::default();
    if let Some(path) = &cli.config {
        config.load_file(path)?;
    }
    let flags = [
        ("spark.shuffle.service.port", cli.port.map(|p| p.to_string())),
        ("agent.metrics.port", cli.metrics_port.map(|p| p.to_string())),
        ("agent.bind", cli.bind.map(|b| b.to_string())),
        ("agent.state.dir", cli.state_dir.as_ref().map(|d| d.display().to_string())),
        ("agent.k8s.kubeconfig", cli.kubeconfig.as_ref().map(|p| p.display().to_string())),
        ("agent.k8s.node.name", cli.node_name.clone()),
        ("agent.log.format", cli.log_format.map(|f| f.as_key().to_string())),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            config.set(key, &value)?;
        }
    }
    if !cli.roots.is_empty() {
        config.roots = cli.roots.clone();
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
