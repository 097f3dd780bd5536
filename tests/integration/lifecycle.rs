//! The lifecycle engine on real files and a real journal: what is deleted when executors and
//! applications go away, that a crash mid-cleanup resumes, and the automatic sweep rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::wait_until;
use spark_shuffle_agent::lifecycle::{Lifecycle, LifecycleSettings};
use spark_shuffle_agent::protocol::ExecutorShuffleInfo;
use spark_shuffle_agent::registry::{Registry, Roots};
use spark_shuffle_agent::store::Store;
use tokio_util::sync::CancellationToken;

struct Node {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

fn node() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    Node { root, state: base.join("state"), _tmp: tmp }
}

fn settings() -> LifecycleSettings {
    LifecycleSettings { keep_rdd: false, app_retention: None, sweep_interval: Duration::from_secs(3600) }
}

fn open(node: &Node) -> Arc<Registry> {
    let roots = Roots::new(std::slice::from_ref(&node.root)).unwrap();
    Arc::new(Registry::open(roots, &node.state).unwrap().0)
}

/// An executor dir `<root>/spark-<app>/blockmgr-<exec>` holding a shuffle output and a spill file.
fn executor_dir(root: &Path, app: &str, exec: &str) -> PathBuf {
    let dir = root.join(format!("spark-{app}")).join(format!("blockmgr-{exec}"));
    for (sub, name) in [("0c", "shuffle_0_0_0.data"), ("30", "shuffle_0_0_0.index"), ("11", "temp_shuffle_x")] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join(name), b"bytes").unwrap();
    }
    dir
}

fn info(dir: &Path) -> ExecutorShuffleInfo {
    ExecutorShuffleInfo {
        local_dirs: vec![dir.to_string_lossy().into_owned()],
        sub_dirs_per_local_dir: 64,
        shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
    }
}

fn start(registry: &Arc<Registry>, settings: LifecycleSettings) -> (Lifecycle, CancellationToken) {
    let (lifecycle, worker) = Lifecycle::new(Arc::clone(registry), Arc::new(Store::new(1 << 20)), settings);
    let stop = CancellationToken::new();
    tokio::spawn(worker.run(stop.clone()));
    (lifecycle, stop)
}

#[tokio::test]
async fn a_removed_executor_loses_its_spill_files_but_keeps_its_shuffle_files_and_registration() {
    let n = node();
    let registry = open(&n);
    let dir = executor_dir(&n.root, "app-1", "1");
    registry.register_executor("app-1", "1", info(&dir)).await.unwrap();
    let (lifecycle, stop) = start(&registry, settings());
    assert!(lifecycle.executor_removed("app-1", "1"));
    wait_until("the spill file is deleted", || !dir.join("11/temp_shuffle_x").exists()).await;
    assert!(dir.join("0c/shuffle_0_0_0.data").exists());
    assert!(dir.join("30/shuffle_0_0_0.index").exists());
    assert!(registry.executor("app-1", "1").is_some());
    assert!(!lifecycle.executor_removed("app-1", "never-registered"));
    stop.cancel();
}

#[tokio::test]
async fn a_removed_application_loses_its_registrations_and_dirs_and_stays_removed_after_restart() {
    let n = node();
    let registry = open(&n);
    let (d1, d2) = (executor_dir(&n.root, "app-2", "1"), executor_dir(&n.root, "app-2", "2"));
    let other = executor_dir(&n.root, "app-3", "1");
    registry.register_executor("app-2", "1", info(&d1)).await.unwrap();
    registry.register_executor("app-2", "2", info(&d2)).await.unwrap();
    registry.register_executor("app-3", "1", info(&other)).await.unwrap();
    let (lifecycle, stop) = start(&registry, settings());
    assert!(lifecycle.application_removed("app-2").await);
    assert!(registry.executor("app-2", "1").is_none());
    wait_until("the app's dirs are deleted", || !d1.exists() && !d2.exists()).await;
    // After its last executor dir, in the same cleanup: waited for, not raced (it failed 1 in 3).
    wait_until("the emptied spark-<app> dir goes too", || !n.root.join("spark-app-2").exists()).await;
    wait_until("the cleanup is recorded", || registry.pending_cleanups().is_empty()).await;
    assert!(other.join("0c/shuffle_0_0_0.data").exists(), "another app is untouched");
    stop.cancel();
    drop(lifecycle);
    drop(registry);
    let reopened = wait_for_reopen(&n).await;
    assert!(reopened.executor("app-2", "1").is_none());
    assert!(reopened.executor("app-3", "1").is_some());
    assert!(reopened.pending_cleanups().is_empty());
}

#[tokio::test]
async fn a_crash_between_removal_and_deletion_resumes_the_deletion_on_restart() {
    let n = node();
    let dir = executor_dir(&n.root, "app-4", "1");
    {
        let registry = open(&n);
        registry.register_executor("app-4", "1", info(&dir)).await.unwrap();
        // Removal is journaled, but no worker runs: the agent "dies" before deleting anything.
        registry.remove_app("app-4").await.unwrap();
        assert!(dir.exists());
    }
    let registry = wait_for_reopen(&n).await;
    assert_eq!(registry.pending_cleanups().len(), 1);
    assert!(registry.executor("app-4", "1").is_none());
    let (_lifecycle, stop) =
        start(&registry, LifecycleSettings { sweep_interval: Duration::from_millis(50), ..settings() });
    wait_until("the resumed deletion is done", || !dir.exists() && registry.pending_cleanups().is_empty()).await;
    stop.cancel();
}

#[tokio::test]
async fn an_app_whose_dirs_all_vanished_is_dropped_by_the_sweep() {
    let n = node();
    let registry = open(&n);
    let gone = executor_dir(&n.root, "app-5", "1");
    let kept = executor_dir(&n.root, "app-6", "1");
    registry.register_executor("app-5", "1", info(&gone)).await.unwrap();
    registry.register_executor("app-6", "1", info(&kept)).await.unwrap();
    // A standalone Worker deleting the app's directories behind the agent's back.
    std::fs::remove_dir_all(n.root.join("spark-app-5")).unwrap();
    let (_lifecycle, stop) =
        start(&registry, LifecycleSettings { sweep_interval: Duration::from_millis(50), ..settings() });
    wait_until("the vanished app is dropped", || registry.executor("app-5", "1").is_none()).await;
    assert!(registry.executor("app-6", "1").is_some());
    stop.cancel();
}

#[tokio::test]
async fn an_app_idle_past_the_retention_limit_is_removed_and_a_busy_one_is_not() {
    let n = node();
    let registry = open(&n);
    let dir = executor_dir(&n.root, "app-7", "1");
    registry.register_executor("app-7", "1", info(&dir)).await.unwrap();
    let retention = LifecycleSettings {
        app_retention: Some(Duration::from_secs(3600)),
        sweep_interval: Duration::from_millis(20),
        ..settings()
    };
    let (lifecycle, stop) = start(&registry, retention);
    // Three sweeps ran (the first at start), and an app used this hour stays.
    let sweeps = || lifecycle.counters().sweeps.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("three sweeps ran", || sweeps() >= 3).await;
    assert!(registry.executor("app-7", "1").is_some(), "an app used this hour is kept");
    stop.cancel();
    // Zero retention: any app not used in the current second is idle.
    let (_lifecycle, stop) = start(
        &registry,
        LifecycleSettings {
            app_retention: Some(Duration::ZERO),
            sweep_interval: Duration::from_millis(20),
            ..settings()
        },
    );
    wait_until("the idle app is removed and deleted", || registry.executor("app-7", "1").is_none() && !dir.exists())
        .await;
    stop.cancel();
}

/// The journal holds an exclusive lock until its writer thread has finished; reopen when free.
async fn wait_for_reopen(n: &Node) -> Arc<Registry> {
    let roots = Roots::new(std::slice::from_ref(&n.root)).unwrap();
    let deadline = tokio::time::Instant::now() + crate::common::WAIT;
    loop {
        match Registry::open(roots.clone(), &n.state) {
            Ok((registry, _)) => return Arc::new(registry),
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

/// RegisterExecutor's dirs are the client's choice, so an app could name another app's dirs
/// and fetch its files under its own (authenticated) id. The first app to register a dir owns
/// it, the dirs above and below it included, until it is removed; across restarts too.
#[tokio::test]
async fn an_app_cannot_register_another_apps_dirs_until_that_app_is_removed() {
    let n = node();
    let registry = open(&n);
    let dir = executor_dir(&n.root, "victim", "1");
    registry.register_executor("victim", "1", info(&dir)).await.unwrap();
    let inside = dir.join("0c");
    for (what, d) in [("the same dir", dir.clone()), ("a dir above", n.root.clone()), ("a dir inside", inside)] {
        let err = registry.register_executor("thief", "1", info(&d)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("localDirs entry is not within application thief's directory: {}", d.display()),
            "{what}"
        );
    }
    registry.register_executor("victim", "2", info(&dir)).await.expect("its own app may share it");
    drop(registry);
    let registry = wait_for_reopen(&n).await;
    assert!(registry.register_executor("thief", "1", info(&dir)).await.is_err(), "owned after a restart too");
    registry.remove_app("victim").await.unwrap();
    registry.register_executor("thief", "1", info(&dir)).await.expect("free once its app is removed");
}
