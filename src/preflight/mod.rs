//! `spark-shuffle-agent check`: a preflight that says, in plain lines, what would stop executors
//! from using this agent on this node, and exits 1 if anything would.
//!
//! It looks at what the agent would use (the same `--config`, `--root`, `--state-dir`, `--port`
//! as `serve`): each root exists and executors' uid/gid can create directories in it, free space
//! per root, the shuffle port free (or held by a running agent), the state dir writable, and the
//! API server reachable with the RBAC the agent needs. It binds no port for longer than the probe,
//! changes nothing but a probe file in the state dir, and never starts a server.

mod api;
mod dirs;

use std::path::PathBuf;

use crate::config::Config;
use crate::prepare_dirs::parse_owner;

/// Arguments of `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// A configuration file in spark-defaults.conf format (as for `serve`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A root to check; repeat for several (default: agent.roots).
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<PathBuf>,
    /// The state dir to check (default: agent.state.dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The shuffle port to check (default: spark.shuffle.service.port).
    #[arg(long)]
    pub port: Option<u16>,
    /// The metrics port, asked for /healthz when the shuffle port is taken (default: agent.metrics.port).
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// Address the agent listens on (default: agent.bind).
    #[arg(long)]
    pub bind: Option<std::net::IpAddr>,
    /// uid:gid executors run as (Spark's images: 185:185).
    #[arg(long, value_name = "UID:GID", default_value = "185:185", value_parser = parse_owner)]
    pub executor: (u32, u32),
    /// Less free space than this on a root is a failure (bytes; k/m/g/t suffixes).
    #[arg(long, value_name = "BYTES", default_value = "1g", value_parser = parse_size)]
    pub min_free: u64,
    /// The kubeconfig to check (default: the in-cluster service account when in a pod; else skipped).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::parse_bytes(s, 1)
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether executors would be stopped by this (a failure) or not.
    pub ok: bool,
    /// What was checked, e.g. `root /var/lib/spark/local`.
    pub subject: String,
    /// What was found, in words an operator can act on.
    pub detail: String,
}

impl Finding {
    fn ok(subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding { ok: true, subject: subject.into(), detail: detail.into() }
    }
    fn fail(subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding { ok: false, subject: subject.into(), detail: detail.into() }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{tag} {}: {}", self.subject, self.detail)
    }
}

/// Runs every check and prints one line per finding; 0 if none failed, 1 if any did, 64 on a
/// bad configuration.
pub fn command(args: &CheckArgs) -> u8 {
    let config = match effective_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 64;
        }
    };
    let mut findings = Vec::new();
    for root in &config.roots {
        findings.extend(dirs::check_root(root, args.executor, args.min_free));
    }
    findings.push(dirs::check_state_dir(&config.state_dir));
    findings.push(api::check_port(config.bind, config.port, config.metrics_port));
    findings.push(api::check_kubernetes(args.kubeconfig.as_deref()));
    for f in &findings {
        println!("{f}");
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed == 0 {
        println!("all {} checks passed", findings.len());
        0
    } else {
        println!("{failed} of {} checks failed", findings.len());
        1
    }
}

fn effective_config(args: &CheckArgs) -> Result<Config, crate::config::ConfigError> {
    let mut config = Config::default();
    if let Some(path) = &args.config {
        config.load_file(path)?;
    }
    if !args.roots.is_empty() {
        config.roots = args.roots.clone();
    }
    if let Some(dir) = &args.state_dir {
        config.state_dir = dir.clone();
    }
    if let Some(port) = args.port {
        config.port = port;
    }
    if let Some(port) = args.metrics_port {
        config.metrics_port = port;
    }
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    // Everything but the roots is validated as `serve` would; a root that is missing or not a
    // directory is a finding of this check (listed with the others), not a usage error.
    let mut rest = config.clone();
    rest.roots = vec![PathBuf::from("/")];
    rest.validate()?;
    Ok(config)
}
