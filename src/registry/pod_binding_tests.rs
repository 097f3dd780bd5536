//! The registry with its dirs bound to executor pods: what a new registration is told, and
//! that recovered registrations are not judged by pods that are gone.

use super::*;

const WAIT: Duration = Duration::from_millis(30);

fn info(dirs: &[&Path]) -> ExecutorShuffleInfo {
    ExecutorShuffleInfo {
        local_dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
        sub_dirs_per_local_dir: 4,
        shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
    }
}

fn pod(app: &str, exec: &str, host_path: &Path) -> PodMounts {
    PodMounts {
        pod: format!("jobs/{app}-exec-{exec}"),
        app_id: app.into(),
        exec_id: exec.into(),
        mounts: vec![Mount { mount_path: host_path.into(), source: MountSource::HostPath(host_path.into()) }],
    }
}

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn node() -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    for sub in ["a", "b", "state"] {
        std::fs::create_dir(root.join(sub)).expect("mkdir");
    }
    Node { _dir: dir, root }
}

fn bound(node: &Node, pods: &Arc<ExecutorMounts>) -> Registry {
    let mut registry = Registry::in_memory(Roots::new(std::slice::from_ref(&node.root)).expect("roots"));
    registry.bind_to_pods(Arc::clone(pods), WAIT);
    registry
}

#[tokio::test]
async fn a_registration_inside_its_pods_hostpath_is_served_and_one_outside_is_refused() {
    let node = node();
    let pods = Arc::new(ExecutorMounts::default());
    pods.upsert(pod("app-1", "1", &node.root.join("a")));
    let registry = bound(&node, &pods);
    let inside = node.root.join("a/blockmgr-1");
    assert!(registry.register_executor("app-1", "1", info(&[&inside])).await.is_ok());

    let outside = node.root.join("b/blockmgr-2");
    let err = registry.register_executor("app-1", "1", info(&[&inside, &outside])).await.expect_err("refused");
    let text = JavaError::from(err).to_string();
    assert_eq!(
        text,
        format!(
            "java.lang.IllegalArgumentException: localDirs entry {} of executor 1 of application app-1 is not within \
             a hostPath volume that its pod jobs/app-1-exec-1 mounts at the same path: the pod mounts no volume there",
            outside.display()
        )
    );
    assert_eq!(registry.executor("app-1", "1").map(|e| e.info.local_dirs.len()), Some(1), "the first one stays");
}

#[tokio::test]
async fn an_executor_whose_pod_is_not_known_is_refused_after_the_wait_naming_app_and_exec() {
    let node = node();
    let pods = Arc::new(ExecutorMounts::default());
    // Another executor of the app is known; this one is not.
    pods.upsert(pod("app-1", "1", &node.root.join("a")));
    let registry = bound(&node, &pods);
    let err = registry.register_executor("app-1", "2", info(&[&node.root.join("a/x")])).await.expect_err("refused");
    let text = JavaError::from(err).to_string();
    assert!(
        text.starts_with(
            "java.lang.SecurityException: Executor 2 of application app-1 is refused: no executor pod of it \
             (spark-app-selector=app-1, spark-exec-id=2) is known on this node"
        ),
        "{text}"
    );
    assert!(registry.executor("app-1", "2").is_none());
}

#[tokio::test]
async fn another_apps_pod_vouches_for_nothing() {
    let node = node();
    let pods = Arc::new(ExecutorMounts::default());
    pods.upsert(pod("app-2", "1", &node.root.join("b")));
    let registry = bound(&node, &pods);
    let err = registry.register_executor("app-1", "1", info(&[&node.root.join("b/x")])).await.expect_err("refused");
    assert!(matches!(err, RegistryError::NoExecutorPod { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_recovered_after_a_restart_are_not_checked_against_pods_that_are_gone() {
    let node = node();
    let roots = || Roots::new(std::slice::from_ref(&node.root)).expect("roots");
    let state = node.root.join("state");
    let dir = node.root.join("a/blockmgr-1");
    {
        let (mut registry, _) = Registry::open(roots(), &state).expect("open");
        let pods = Arc::new(ExecutorMounts::default());
        pods.upsert(pod("app-1", "1", &node.root.join("a")));
        registry.bind_to_pods(pods, WAIT);
        registry.register_executor("app-1", "1", info(&[&dir])).await.expect("registered");
    }
    // The restarted agent knows no pod at all: its executor pod was deleted meanwhile.
    let (mut registry, report) = Registry::open(roots(), &state).expect("reopen");
    registry.bind_to_pods(Arc::new(ExecutorMounts::default()), WAIT);
    assert_eq!((report.executors, report.refused), (1, 0));
    assert!(registry.executor("app-1", "1").is_some());
}
