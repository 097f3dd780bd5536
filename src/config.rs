//! The one configuration tree. Embedded defaults, then the `--config` file, then command-line
//! flags; parsed and validated once, before any port is bound. Keys follow Spark's names where
//! Spark has one (`spark.shuffle.service.port`, ...); the agent's own keys start with `agent.`.
//!
//! The file format is the one of Spark's `spark-defaults.conf`: `key value` (or `key=value`,
//! `key: value`) per line, `#` and `!` comments.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::server::Settings;

/// How log lines are written (`agent.log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// Everything the agent can be told.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `agent.bind`: address the shuffle port listens on.
    pub bind: IpAddr,
    /// `spark.shuffle.service.port`: the shuffle port executors dial.
    pub port: u16,
    /// `agent.metrics.port`: `/metrics`, `/healthz`, `/readyz` and `/status`, on `bind`; 0 picks
    /// a free port.
    pub metrics_port: u16,
    /// `agent.roots`: directories the agent serves from; executors' local dirs must lie under one.
    pub roots: Vec<PathBuf>,
    /// `agent.state.dir`: where registrations are persisted.
    pub state_dir: PathBuf,
    /// `spark.shuffle.service.index.cache.size`: bytes of parsed index files kept in memory.
    pub index_cache_bytes: u64,
    /// `spark.shuffle.io.connectionTimeout`: idle connections are closed after this.
    pub idle_timeout: Duration,
    /// `spark.shuffle.maxChunksBeingTransferred`: server-wide cap of chunks in flight.
    pub max_chunks_being_transferred: u64,
    /// `spark.shuffle.service.fetch.rdd.enabled`: keep `rdd_*` files when an executor goes away.
    pub fetch_rdd_enabled: bool,
    /// `spark.shuffle.io.serverThreads`: runtime worker threads; 0 = one per core.
    pub server_threads: usize,
    /// `agent.data.threads.nice`: how many nice levels the data runtime's threads run below the
    /// control thread and the journal writer (0 to 19), so registrations are not queued behind a
    /// saturated data path (src/thread_priority.rs).
    pub data_threads_nice: i32,
    /// `agent.max.frame.bytes`: largest request frame accepted.
    pub max_frame_bytes: usize,
    /// `agent.max.pending.frame.bytes`: node-wide memory for large request frames being received.
    pub max_pending_frame_bytes: usize,
    /// `agent.sendfile.min.bytes`: chunk bodies this large or larger go out with sendfile(2).
    pub sendfile_min_bytes: u64,
    /// `agent.max.connections`: connections served at once.
    pub max_connections: usize,
    /// `agent.max.streams.per.connection`: streams one connection may hold open.
    pub max_streams_per_connection: usize,
    /// `agent.drain.grace`: how long SIGTERM waits for connections to finish.
    pub drain_grace: Duration,
    /// `agent.app.retention`: remove apps idle (no registration, no fetch) this long; 0 = never.
    pub app_retention: Duration,
    /// `agent.cleanup.interval`: how often the lifecycle sweep runs.
    pub cleanup_interval: Duration,
    /// `agent.k8s.reconcile.interval`: how often every app registered here is checked against
    /// the driver pods.
    pub k8s_reconcile_interval: Duration,
    /// `agent.k8s.absent.recheck`: how long an app with running executors but no driver pod (a
    /// client-mode app) is left alone before the API is asked about it again.
    pub k8s_absent_recheck: Duration,
    /// `agent.k8s.kubeconfig`: follow pods through the API server in this kubeconfig; None = the
    /// in-cluster service account when in a pod, else Kubernetes is off.
    pub kubeconfig: Option<PathBuf>,
    /// `agent.k8s.node.name`: this node's name for the executor-pod watch; None = `$NODE_NAME`.
    pub node_name: Option<String>,
    /// `agent.log.format`: `text` or `json`.
    pub log_format: LogFormat,
    /// `spark.authenticate` and the keys around it, with Spark's meaning (src/auth/settings.rs).
    pub auth: crate::auth::AuthSettings,
    /// `agent.auth.secrets`: `shared` (one secret, as the JVM service) or `pods` (each app's
    /// own, from its executor pods; `spark.authenticate` then means "refuse apps without").
    pub auth_per_app: bool,
    /// `agent.auth.pods.wait`: how long a handshake for an app no pod is known of waits for the
    /// watch to deliver one, and a registration for its executor's pod (whose mounts its dirs
    /// are checked against).
    pub auth_pods_wait: Duration,
    /// `agent.auth.pods.secretFiles`: `refuse` (default) or `read`: for apps whose executors read
    /// the secret from a file, GET the Kubernetes Secret mounted there (needs `get secrets`).
    pub auth_pods_read_secret_files: bool,
    /// `spark.ssl.rpc.*` (falling back to `spark.ssl.*`) and `agent.tls.plaintext`: TLS on the
    /// shuffle port (src/tls/).
    pub tls: crate::tls::TlsSettings,
    /// `agent.localDirs.translate`: serve each registered local dir from the node path its
    /// executor pod's volume holds it at (a hostPath at any mount path, or a claim on a hostPath
    /// or local PersistentVolume), looked up through the API; false: only hostPaths mounted at
    /// their own node path, served at the path registered (issue 12, docs/deploy.md).
    pub local_dirs_translate: bool,
    /// `agent.network.mode`: `host` (executors on hostNetwork, the default), `pod` or `both`
    /// (also listen inside each executor pod's network namespace, redirect dead ones' IPs).
    pub network_mode: crate::podnet::NetworkMode,
    /// `agent.network.procRoot`: the host's `/proc` as the agent sees it (pod mode).
    pub network_proc_root: PathBuf,
    /// `agent.network.nft`: the nftables program (pod mode).
    pub network_nft: PathBuf,
    /// `agent.network.node.ip`: this node's IP, the target of its dead executors' redirects;
    /// None = `$NODE_IP`, else learned from this node's executor pods' `status.hostIP`.
    pub network_node_ip: Option<IpAddr>,
}

/// A configuration the agent refuses to start with. One line, for stderr.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A line of the config file is not `key value`.
    #[error("{path}:{line}: expected `key value`, got {text:?}")]
    Syntax { path: PathBuf, line: usize, text: String },
    /// A key the agent does not know (a typo would otherwise be silently ignored).
    #[error("unknown configuration key {0:?}")]
    UnknownKey(String),
    /// A value that does not parse or is out of range.
    #[error("invalid value {value:?} for {key}: {reason}")]
    BadValue { key: String, value: String, reason: String },
    /// The authentication settings cannot work (no secret, an unreadable secret file, a
    /// SASL auth-conf asked for). The value is not repeated: it may be a secret.
    #[error("{key}: {reason}")]
    Auth { key: String, reason: String },
    /// TLS is on but its keys cannot be used as given.
    #[error("{key}: {reason}")]
    Tls { key: String, reason: String },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 7337,
            metrics_port: 7338,
            roots: vec![std::env::temp_dir()],
            state_dir: default_state_dir(),
            index_cache_bytes: 100 << 20,
            idle_timeout: Duration::from_secs(120),
            max_chunks_being_transferred: i64::MAX as u64,
            fetch_rdd_enabled: false,
            server_threads: 0,
            data_threads_nice: 10,
            max_frame_bytes: 16 << 20,
            max_pending_frame_bytes: 64 << 20,
            sendfile_min_bytes: 16 << 10,
            max_connections: 16_384,
            max_streams_per_connection: 4096,
            drain_grace: Duration::from_secs(30),
            app_retention: Duration::ZERO,
            cleanup_interval: Duration::from_secs(60),
            k8s_reconcile_interval: Duration::from_secs(30),
            k8s_absent_recheck: Duration::from_secs(300),
            kubeconfig: None,
            node_name: None,
            log_format: LogFormat::Text,
            auth: crate::auth::AuthSettings::new(),
            auth_per_app: false,
            // Under the 5 s of spark.shuffle.registration.timeout, so an executor registering
            // before its pod event reaches us gets our answer rather than its own timeout.
            auth_pods_wait: Duration::from_secs(4),
            auth_pods_read_secret_files: false,
            local_dirs_translate: false,
            tls: crate::tls::TlsSettings::default(),
            network_mode: crate::podnet::NetworkMode::Host,
            network_proc_root: PathBuf::from("/proc"),
            network_nft: PathBuf::from("nft"),
            network_node_ip: None,
        }
    }
}

/// `$XDG_STATE_HOME/spark-shuffle-agent`, else `~/.local/state/spark-shuffle-agent`, else a
/// directory under the temp dir: something an unprivileged local run can always create.
fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("spark-shuffle-agent")
}

impl Config {
    /// Reads `path` over the current values.
    pub fn load_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = split_key_value(line) else {
                return Err(ConfigError::Syntax { path: path.into(), line: n + 1, text: raw.to_string() });
            };
            self.set(key, value)?;
        }
        Ok(())
    }

    /// Sets one key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadValue { key: key.into(), value: value.into(), reason };
        match key {
            "spark.shuffle.service.port" => self.port = value.parse().map_err(|e| bad(format!("{e}")))?,
            "agent.metrics.port" => self.metrics_port = value.parse().map_err(|e| bad(format!("{e}")))?,
            "agent.bind" => self.bind = value.parse().map_err(|e| bad(format!("{e}")))?,
            "agent.roots" => {
                self.roots = value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(PathBuf::from).collect()
            }
            "agent.state.dir" => self.state_dir = PathBuf::from(value),
            "spark.shuffle.service.index.cache.size" => {
                self.index_cache_bytes = parse_bytes(value, 1 << 20).map_err(bad)?
            }
            "spark.shuffle.io.connectionTimeout" => self.idle_timeout = parse_duration(value).map_err(bad)?,
            "spark.shuffle.maxChunksBeingTransferred" => {
                self.max_chunks_being_transferred = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "spark.shuffle.service.fetch.rdd.enabled" => self.fetch_rdd_enabled = parse_bool(value).map_err(bad)?,
            "spark.shuffle.io.serverThreads" => self.server_threads = value.parse().map_err(|e| bad(format!("{e}")))?,
            "agent.data.threads.nice" => match value.parse::<i32>() {
                Ok(n) if (0..=19).contains(&n) => self.data_threads_nice = n,
                _ => return Err(bad("an integer from 0 to 19 (lower priority only)".into())),
            },
            "agent.max.frame.bytes" => self.max_frame_bytes = parse_bytes(value, 1).map_err(bad)? as usize,
            "agent.max.pending.frame.bytes" => {
                self.max_pending_frame_bytes = parse_bytes(value, 1).map_err(bad)? as usize
            }
            "agent.sendfile.min.bytes" => self.sendfile_min_bytes = parse_bytes(value, 1).map_err(bad)?,
            "agent.max.connections" => self.max_connections = value.parse().map_err(|e| bad(format!("{e}")))?,
            "agent.max.streams.per.connection" => {
                self.max_streams_per_connection = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "agent.drain.grace" => self.drain_grace = parse_duration(value).map_err(bad)?,
            "agent.app.retention" => self.app_retention = parse_duration(value).map_err(bad)?,
            "agent.cleanup.interval" => self.cleanup_interval = parse_duration(value).map_err(bad)?,
            "agent.k8s.reconcile.interval" => self.k8s_reconcile_interval = parse_duration(value).map_err(bad)?,
            "agent.k8s.absent.recheck" => self.k8s_absent_recheck = parse_duration(value).map_err(bad)?,
            "agent.k8s.kubeconfig" => self.kubeconfig = Some(PathBuf::from(value)),
            "agent.k8s.node.name" => self.node_name = Some(value.to_string()).filter(|n| !n.is_empty()),
            "agent.log.format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(bad("text or json".into())),
                }
            }
            "agent.auth.secrets" => {
                self.auth_per_app = match value.trim() {
                    "shared" => false,
                    "pods" => true,
                    _ => return Err(bad("shared or pods".into())),
                }
            }
            "agent.auth.pods.wait" => self.auth_pods_wait = parse_duration(value).map_err(bad)?,
            "agent.auth.pods.secretFiles" => {
                self.auth_pods_read_secret_files = match value.trim() {
                    "refuse" => false,
                    "read" => true,
                    _ => return Err(bad("refuse or read".into())),
                }
            }
            "agent.tls.reload.interval" => {
                self.tls.reload_interval = parse_duration(value).map_err(bad)?;
                if self.tls.reload_interval.is_zero() {
                    return Err(bad("must be positive".into()));
                }
            }
            "agent.localDirs.translate" => self.local_dirs_translate = parse_bool(value).map_err(bad)?,
            "agent.network.mode" => self.network_mode = value.parse().map_err(bad)?,
            "agent.network.procRoot" => self.network_proc_root = PathBuf::from(value),
            "agent.network.nft" => self.network_nft = PathBuf::from(value),
            "agent.network.node.ip" => {
                self.network_node_ip = Some(value.trim().parse().map_err(|e| bad(format!("{e}")))?)
            }
            other => {
                if !self.tls.set(other, value).map_err(bad)? && !self.auth.set(other, value).map_err(bad)? {
                    return Err(ConfigError::UnknownKey(other.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Checks what cannot be checked key by key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, reason: &str| {
            Err(ConfigError::BadValue { key: key.into(), value, reason: reason.into() })
        };
        if self.roots.is_empty() {
            return bad("agent.roots", String::new(), "at least one root directory is needed");
        }
        if let Some(root) = self.roots.iter().find(|r| !r.is_dir()) {
            return bad("agent.roots", root.display().to_string(), "not an existing directory");
        }
        if self.idle_timeout.is_zero() {
            return bad("spark.shuffle.io.connectionTimeout", "0".into(), "must be positive");
        }
        if self.max_frame_bytes < 1024 {
            return bad("agent.max.frame.bytes", self.max_frame_bytes.to_string(), "must be at least 1k");
        }
        if self.max_pending_frame_bytes < self.max_frame_bytes {
            return bad(
                "agent.max.pending.frame.bytes",
                self.max_pending_frame_bytes.to_string(),
                "must be at least agent.max.frame.bytes (a frame it cannot hold could never be received)",
            );
        }
        for (key, interval) in [
            ("agent.cleanup.interval", self.cleanup_interval),
            ("agent.k8s.reconcile.interval", self.k8s_reconcile_interval),
            ("agent.k8s.absent.recheck", self.k8s_absent_recheck),
        ] {
            if interval.is_zero() {
                return bad(key, "0".into(), "must be positive");
            }
        }
        if self.metrics_port != 0 && self.metrics_port == self.port {
            return bad(
                "agent.metrics.port",
                self.metrics_port.to_string(),
                "must differ from spark.shuffle.service.port",
            );
        }
        if self.max_connections == 0 {
            return bad("agent.max.connections", "0".into(), "must be positive");
        }
        if self.tls.enabled() {
            if let Err((key, reason)) = self.tls.files() {
                return Err(ConfigError::Tls { key, reason });
            }
        }
        if self.auth_pods_read_secret_files && !self.auth_per_app {
            return bad(
                "agent.auth.pods.secretFiles",
                "read".into(),
                "only means something with agent.auth.secrets pods (apps' secrets from their pods)",
            );
        }
        Ok(())
    }

    /// How the lifecycle engine runs.
    pub fn lifecycle_settings(&self) -> crate::lifecycle::LifecycleSettings {
        crate::lifecycle::LifecycleSettings {
            keep_rdd: self.fetch_rdd_enabled,
            app_retention: (!self.app_retention.is_zero()).then_some(self.app_retention),
            sweep_interval: self.cleanup_interval,
        }
    }

    /// How the Kubernetes watchers and the reconciler run, on this node (`agent.k8s.node.name`,
    /// else `$NODE_NAME` from the downward API).
    pub fn k8s_settings(&self) -> crate::k8s::K8sSettings {
        let from_env = || std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        crate::k8s::K8sSettings {
            node_name: self.node_name.clone().or_else(from_env),
            reconcile_interval: self.k8s_reconcile_interval,
            absent_recheck: self.k8s_absent_recheck,
            read_secret_files: self.auth_per_app && self.auth_pods_read_secret_files,
        }
    }

    /// How the pod network controller runs (`agent.network.*`; the node IP falls back to
    /// `$NODE_IP` from the downward API, then to what this node's executor pods say).
    pub fn podnet_settings(&self) -> crate::podnet::controller::Settings {
        let from_env = || std::env::var("NODE_IP").ok().and_then(|ip| ip.trim().parse().ok());
        crate::podnet::controller::Settings {
            port: self.port,
            proc_root: self.network_proc_root.clone(),
            state_dir: self.state_dir.clone(),
            nft: self.network_nft.clone(),
            node_ip: self.network_node_ip.or_else(from_env),
            adopt_warn_after: Duration::from_secs(10),
        }
    }

    /// Who may act for which app (src/auth/access.rs). With one shared secret, it is read from
    /// `$_SPARK_AUTH_SECRET`, the key or the file. Called once, at start.
    pub fn access(&self) -> Result<crate::auth::Access, ConfigError> {
        use crate::auth::Access;
        let env = std::env::var(crate::auth::SECRET_ENV).ok().filter(|s| !s.is_empty());
        if self.auth_per_app {
            let shared = [
                ("spark.authenticate.secret", self.auth.secret.is_some()),
                ("spark.authenticate.secret.file", self.auth.secret_file.is_some()),
                (crate::auth::SECRET_ENV, env.is_some()),
            ];
            if let Some((key, _)) = shared.iter().find(|(_, set)| *set) {
                return Err(ConfigError::Auth {
                    key: (*key).into(),
                    reason: "agent.auth.secrets=pods takes each app's secret from its pods; a shared secret is not used, so it must not be set".into(),
                });
            }
            return Ok(Access::PerApp {
                keyring: std::sync::Arc::new(crate::auth::Keyring::new()),
                require: self.auth.enabled,
                wait: self.auth_pods_wait,
            });
        }
        let policy = self.auth.policy(env).map_err(|(key, reason)| ConfigError::Auth { key: key.into(), reason })?;
        Ok(policy.map_or(Access::Open, Access::Shared))
    }

    /// The data-path settings the server runs with.
    pub fn server_settings(&self) -> Settings {
        Settings {
            idle_timeout: self.idle_timeout,
            max_frame_bytes: self.max_frame_bytes,
            max_pending_frame_bytes: self.max_pending_frame_bytes,
            coalesce_max_bytes: self.sendfile_min_bytes,
            max_chunks_being_transferred: self.max_chunks_being_transferred,
            max_connections: self.max_connections,
            max_streams_per_connection: self.max_streams_per_connection,
        }
    }
}

fn split_key_value(line: &str) -> Option<(&str, &str)> {
    let end = line.find(|c: char| c == '=' || c == ':' || c.is_whitespace())?;
    let key = &line[..end];
    let rest = line[end..].trim_start();
    let value = rest.strip_prefix(['=', ':']).unwrap_or(rest).trim();
    (!key.is_empty()).then_some((key, value))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Spark's byte strings: `100m`, `64k`, `1g`, `512b`; a bare number is in `default_unit` bytes.
pub fn parse_bytes(value: &str, default_unit: u64) -> Result<u64, String> {
    let v = value.trim().to_ascii_lowercase();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let n: u64 = num.parse().map_err(|_| "expected a size such as 100m".to_string())?;
    let mult = match unit {
        "" => default_unit,
        "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return Err(format!("unknown size unit {unit:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// Spark's time strings: `120s`, `500ms`, `2min`, `1h`; a bare number is in seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim().to_ascii_lowercase();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let n: u64 = num.parse().map_err(|_| "expected a duration such as 120s".to_string())?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => return Err(format!("unknown time unit {unit:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spark_style_lines_set_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.conf");
        std::fs::write(
            &path,
            "# comment\nspark.shuffle.service.port 7444\nagent.bind=127.0.0.1\n\
             spark.shuffle.service.index.cache.size: 10\nspark.shuffle.io.connectionTimeout 2min\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.load_file(&path).unwrap();
        assert_eq!(c.port, 7444);
        assert_eq!(c.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.index_cache_bytes, 10 << 20, "a bare cache size is in MiB, as in Spark");
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = Config::default().set("agent.rots", "/tmp").unwrap_err();
        assert_eq!(err.to_string(), "unknown configuration key \"agent.rots\"");
    }

    #[test]
    fn a_bad_value_names_the_key() {
        let err = Config::default().set("spark.shuffle.service.port", "70000").unwrap_err();
        assert!(err.to_string().starts_with("invalid value \"70000\" for spark.shuffle.service.port"), "{err}");
    }

    #[test]
    fn the_metrics_port_cannot_be_the_shuffle_port() {
        let c = Config { port: 7400, metrics_port: 7400, ..Config::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("agent.metrics.port"), "{err}");
        assert!(Config { port: 0, metrics_port: 0, ..Config::default() }.validate().is_ok(), "two free ports");
    }

    #[test]
    fn data_threads_may_only_be_lowered() {
        let mut c = Config::default();
        c.set("agent.data.threads.nice", "10").unwrap();
        assert_eq!(c.data_threads_nice, 10);
        for refused in ["-1", "20", "high"] {
            let err = c.set("agent.data.threads.nice", refused).unwrap_err().to_string();
            assert!(err.contains("agent.data.threads.nice") && err.contains("0 to 19"), "{err}");
        }
        assert_eq!(c.data_threads_nice, 10, "a refused value changes nothing");
    }

    #[test]
    fn a_missing_root_fails_validation() {
        let c = Config { roots: vec![PathBuf::from("/nonexistent/root")], ..Config::default() };
        assert!(c.validate().is_err());
    }

    #[test]
    fn sizes_and_durations_parse_like_spark() {
        assert_eq!(parse_bytes("64k", 1), Ok(64 << 10));
        assert_eq!(parse_bytes("1g", 1), Ok(1 << 30));
        assert!(parse_bytes("12q", 1).is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn the_pending_frame_budget_parses_and_must_hold_the_largest_frame() {
        let mut c = Config::default();
        c.set("agent.max.pending.frame.bytes", "512m").unwrap();
        assert_eq!(c.max_pending_frame_bytes, 512 << 20);
        assert_eq!(c.server_settings().max_pending_frame_bytes, 512 << 20);
        c.set("agent.max.pending.frame.bytes", "8m").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("invalid value \"8388608\" for agent.max.pending.frame.bytes"), "{err}");
        assert!(err.contains("agent.max.frame.bytes"), "{err}");
        c.set("agent.max.frame.bytes", "8m").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn kubernetes_intervals_parse_and_reach_the_k8s_settings() {
        let mut c = Config::default();
        c.set("agent.k8s.reconcile.interval", "5s").unwrap();
        c.set("agent.k8s.absent.recheck", "10min").unwrap();
        c.validate().unwrap();
        c.set("agent.k8s.node.name", "node-a").unwrap();
        let k = c.k8s_settings();
        assert_eq!(k.reconcile_interval, Duration::from_secs(5));
        assert_eq!(k.absent_recheck, Duration::from_secs(600));
        assert_eq!(k.node_name.as_deref(), Some("node-a"));
    }

    #[test]
    fn a_zero_or_negative_kubernetes_interval_is_refused_naming_its_key() {
        for key in ["agent.k8s.reconcile.interval", "agent.k8s.absent.recheck"] {
            let mut c = Config::default();
            c.set(key, "0s").unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert_eq!(err, format!("invalid value \"0\" for {key}: must be positive"));
            c.set(key, "0ms").unwrap();
            assert!(c.validate().is_err(), "{key} 0ms");
            let err = Config::default().set(key, "-30s").unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid value \"-30s\" for {key}:")), "{err}");
        }
    }

    #[test]
    fn per_app_secrets_take_no_shared_secret_and_spark_authenticate_means_required() {
        let mut c = Config::default();
        c.set("agent.auth.secrets", "pods").unwrap();
        match c.access().unwrap() {
            crate::auth::Access::PerApp { require, wait, .. } => assert!(!require && wait == Duration::from_secs(4)),
            other => panic!("{other:?}"),
        }
        c.set("spark.authenticate", "true").unwrap();
        assert!(matches!(c.access().unwrap(), crate::auth::Access::PerApp { require: true, .. }));
        c.set("spark.authenticate.secret", "hunter2").unwrap();
        let err = c.access().unwrap_err().to_string();
        assert!(err.starts_with("spark.authenticate.secret: agent.auth.secrets=pods"), "{err}");
        assert!(!err.contains("hunter2"));
        assert!(Config::default().set("agent.auth.secrets", "vault").is_err());
    }

    #[test]
    fn reading_apps_secret_files_is_off_by_default_and_only_with_per_app_secrets() {
        let mut c = Config::default();
        assert!(!c.auth_pods_read_secret_files && !c.k8s_settings().read_secret_files);
        c.set("agent.auth.pods.secretFiles", "read").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("agent.auth.pods.secretFiles") && err.contains("agent.auth.secrets pods"), "{err}");
        c.set("agent.auth.secrets", "pods").unwrap();
        c.validate().unwrap();
        assert!(c.k8s_settings().read_secret_files);
        c.set("agent.auth.pods.secretFiles", "refuse").unwrap();
        assert!(!c.k8s_settings().read_secret_files);
        assert!(c.set("agent.auth.pods.secretFiles", "true").is_err(), "refuse or read, not a boolean");
    }

    #[test]
    fn the_shipped_conf_file_is_the_embedded_defaults() {
        // conf/spark-shuffle-agent.conf documents every key with its default value; loading it
        // must change nothing, or the docs and the code disagree.
        let mut c = Config::default();
        c.load_file(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/spark-shuffle-agent.conf"))).unwrap();
        assert_eq!(c, Config::default());
    }
}
