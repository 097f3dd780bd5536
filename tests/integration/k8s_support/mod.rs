//! Fixtures of the Kubernetes tests (`tests/k8s_*.rs`): the SIMULATED API server
//! ([`sim_api`]), pod JSON builders, a kubeconfig pointing at the simulator, and an agent "node":
//! the real registry (journal on disk), store and lifecycle engine on temp dirs, with the real
//! watchers of `spark_shuffle_agent::k8s` running against the simulator.
//!
//! Every test crate compiles this module whole but uses only part of it, hence the allow.
#![allow(dead_code)]

pub mod sim_api;
mod sim_http;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use spark_shuffle_agent::k8s::{self, K8sHealth, K8sSettings, K8sSnapshot, Targets};
use spark_shuffle_agent::lifecycle::{Lifecycle, LifecycleSettings};
use spark_shuffle_agent::protocol::ExecutorShuffleInfo;
use spark_shuffle_agent::registry::{Driver, Registry, Roots};
use spark_shuffle_agent::store::Store;
use tokio_util::sync::CancellationToken;

pub use sim_api::SimApi;

/// The longest any one wait may take before the test fails. A hang detector, not a timing
/// assertion: generous, because kube's backoff after an error starts at ~0.8 s.
pub const WAIT: Duration = Duration::from_secs(30);

/// The node the agent under test runs on.
pub const NODE: &str = "node-a";

/// Polls `condition` every 10 ms until it holds; fails the test after [`WAIT`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes a kubeconfig for `server` (no credentials: the simulator asks for none).
pub fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {server}\n\
         contexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: default\n\
         current-context: sim\nusers:\n- name: sim\n  user: {{}}\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// A kubeconfig pointing at a port nothing listens on.
pub fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    kubeconfig(dir, &format!("http://{addr}"))
}

fn pod(namespace: &str, name: &str, labels: Value, node: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "labels": labels },
        "spec": { "nodeName": node, "containers": [{ "name": "spark", "image": "spark:4.0.0" }] },
        "status": { "phase": phase }
    })
}

/// A Spark driver pod of `app`, as Spark labels it.
pub fn driver_pod(namespace: &str, name: &str, app: &str, phase: &str) -> Value {
    let labels = json!({ "spark-role": "driver", "spark-app-selector": app, "spark-app-name": "test" });
    pod(namespace, name, labels, "node-z", phase)
}

/// A Spark executor pod of `app` on `node`.
pub fn executor_pod(namespace: &str, name: &str, app: &str, exec: &str, node: &str, phase: &str) -> Value {
    let labels = json!({ "spark-role": "executor", "spark-app-selector": app, "spark-exec-id": exec });
    pod(namespace, name, labels, node, phase)
}

/// An agent pod with the 2.2 fork's discovery labels.
pub fn agent_pod(namespace: &str, name: &str, node: &str, ip: &str, ready: bool) -> Value {
    let labels = json!({ "app": "spark-shuffle-service", "spark-version": "2.2.0" });
    let mut p = pod(namespace, name, labels, node, "Running");
    p["status"]["podIP"] = json!(ip);
    p["status"]["conditions"] = json!([{ "type": "Ready", "status": if ready { "True" } else { "False" } }]);
    p
}

/// What stays on disk across agent restarts: the shuffle root and the state dir.
pub struct Disk {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub scratch: PathBuf,
}

impl Disk {
    pub fn new() -> Disk {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("local");
        let state = tmp.path().join("state");
        let scratch = tmp.path().join("scratch");
        for d in [&root, &state, &scratch] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        Disk { root: root.canonicalize().expect("canonical"), state, scratch, _tmp: tmp }
    }

    /// The block-manager dir an executor of `app` would use.
    pub fn executor_dir(&self, app: &str, exec: &str) -> PathBuf {
        self.root.join(format!("blockmgr-{app}-{exec}"))
    }
}

/// Files an executor leaves: served ones (kept when the executor goes) and unserved ones.
pub struct ExecutorFiles {
    pub dir: PathBuf,
    pub shuffle: Vec<PathBuf>,
    pub unserved: Vec<PathBuf>,
}

impl ExecutorFiles {
    pub fn write(dir: PathBuf) -> ExecutorFiles {
        let sub = dir.join("0c");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let shuffle = vec![sub.join("shuffle_0_1_0.data"), sub.join("shuffle_0_1_0.index")];
        let unserved = vec![sub.join("temp_shuffle_6b2f0e1c"), sub.join("broadcast_0_piece0"), dir.join("rdd_3_1")];
        for f in shuffle.iter().chain(&unserved) {
            std::fs::write(f, b"bytes").expect("write");
        }
        ExecutorFiles { dir, shuffle, unserved }
    }
}

/// One agent on [`NODE`]: real registry, store, lifecycle engine, and (with a kubeconfig) the
/// real Kubernetes watchers.
pub struct Node {
    pub registry: Arc<Registry>,
    pub lifecycle: Lifecycle,
    pub health: Arc<K8sHealth>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Settings for tests: a short reconcile interval, so a missed pass shows quickly.
pub fn settings() -> K8sSettings {
    K8sSettings {
        node_name: Some(NODE.to_string()),
        reconcile_interval: Duration::from_millis(200),
        absent_recheck: Duration::from_secs(3600),
        read_secret_files: false,
    }
}

impl Node {
    /// Opens the registry from `disk` (recovering what an earlier agent persisted) and starts
    /// the lifecycle worker; with `kubeconfig`, the watchers too.
    pub async fn start(disk: &Disk, kubeconfig: Option<&Path>) -> Node {
        Node::start_with(disk, kubeconfig, settings()).await
    }

    /// [`Node::start`] with watchers pointed at the API server at `url` (a kubeconfig in the
    /// disk's scratch dir).
    pub async fn watching(disk: &Disk, url: &str) -> Node {
        Node::start(disk, Some(&kubeconfig(&disk.scratch, url))).await
    }

    pub async fn start_with(disk: &Disk, kubeconfig: Option<&Path>, settings: K8sSettings) -> Node {
        // RUST_LOG=debug shows what the watchers and kube do (stderr is captured per test).
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let roots = Roots::new(std::slice::from_ref(&disk.root)).expect("roots");
        let (registry, _) = Registry::open(roots, &disk.state).expect("open the registry");
        let registry = Arc::new(registry);
        let lifecycle_settings =
            LifecycleSettings { keep_rdd: false, app_retention: None, sweep_interval: Duration::from_secs(3600) };
        let (lifecycle, worker) =
            Lifecycle::new(Arc::clone(&registry), Arc::new(Store::new(1 << 20)), lifecycle_settings);
        let shutdown = CancellationToken::new();
        let health = Arc::new(K8sHealth::default());
        let mut tasks = vec![tokio::spawn(worker.run(shutdown.clone()))];
        if let Some(path) = kubeconfig {
            let config = k8s::client_config(Some(path)).await.expect("kubeconfig").expect("a client config");
            let targets = Targets {
                registry: Arc::clone(&registry),
                lifecycle: lifecycle.clone(),
                health: Arc::clone(&health),
                keyring: None,
                executor_mounts: None,
                pod_network: None,
            };
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                k8s::run(config, settings, targets, token).await.expect("k8s::run");
            }));
        }
        Node { registry, lifecycle, health, shutdown, tasks }
    }

    /// Registers executor `exec` of `app` with a block-manager dir full of files.
    pub async fn register(&self, disk: &Disk, app: &str, exec: &str) -> ExecutorFiles {
        let files = ExecutorFiles::write(disk.executor_dir(app, exec));
        let info = ExecutorShuffleInfo {
            local_dirs: vec![files.dir.to_string_lossy().into_owned()],
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        };
        self.registry.register_executor(app, exec, info).await.expect("register executor");
        files
    }

    /// RegisterDriver, as the 2.2 fork's driver sends it.
    pub async fn register_driver(&self, app: &str) {
        let driver = Driver { app_id: app.to_string(), heartbeat_timeout_ms: 0 };
        self.registry.register_driver(driver).await.expect("register driver");
    }

    pub fn knows(&self, app: &str) -> bool {
        self.registry.app_ids().iter().any(|a| a == app)
    }

    pub fn health(&self) -> K8sSnapshot {
        self.health.snapshot()
    }

    /// Waits until the driver watch has listed and is watching (and the executor watch too).
    pub async fn wait_synced(&self) {
        wait_until("both watches are up", || {
            let h = self.health();
            h.drivers.up && h.executors.up
        })
        .await;
    }

    /// Stops everything and waits for it, releasing the journal for the next agent.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(WAIT, task).await.expect("a task did not stop").expect("a task panicked");
        }
    }
}
