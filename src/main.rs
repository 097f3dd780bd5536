//! The `spark-shuffle-agent` binary: parse the command line, load and validate the
//! configuration, set up logging, and run the server until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::lifecycle::Lifecycle;
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
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Shuffle port (spark.shuffle.service.port); 0 picks a free port.
    #[arg(long)]
    port: Option<u16>,
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
    match run(config) {
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

fn run(config: Config) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.server_threads > 0 {
        runtime.worker_threads(config.server_threads);
    }
    let runtime = runtime.enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
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
    let registry = Arc::new(registry);
    let store = Arc::new(Store::new(config.index_cache_bytes));
    let (_lifecycle, worker) = Lifecycle::new(Arc::clone(&registry), Arc::clone(&store), config.lifecycle_settings());
    let shared = Arc::new(Shared::new(config.server_settings(), registry, store));
    let listener = tokio::net::TcpListener::bind((config.bind, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind, config.port))?;
    let addr = listener.local_addr()?;
    info!(%addr, roots = ?config.roots, "listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let cleaner = tokio::spawn(worker.run(shutdown.clone()));
    server::run(listener, shared, shutdown, config.drain_grace).await;
    let _ = cleaner.await;
    info!("stopped");
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
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
    shutdown.cancel();
}
