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
    registry.bind_to_pods(Arc::clone(pods), WAIT, PathMode::Identical);
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
        registry.bind_to_pods(pods, WAIT, PathMode::Identical);
        registry.register_executor("app-1", "1", info(&[&dir])).await.expect("registered");
    }
    // The restarted agent knows no pod at all: its executor pod was deleted meanwhile.
    let (mut registry, report) = Registry::open(roots(), &state).expect("reopen");
    registry.bind_to_pods(Arc::new(ExecutorMounts::default()), WAIT, PathMode::Identical);
    assert_eq!((report.executors, report.refused), (1, 0));
    assert!(registry.executor("app-1", "1").is_some());
}

/// Claims answered from a table, as the API would: claim name → node dir, or why not.
#[derive(Debug, Default)]
struct TableClaims(std::collections::HashMap<String, Result<PathBuf, String>>);

impl Claims for TableClaims {
    fn node_dir<'a>(
        &'a self,
        namespace: &'a str,
        claim: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<PathBuf, String>> {
        let answer = match namespace {
            "jobs" => self.0.get(claim).cloned().unwrap_or_else(|| Err("which does not exist".into())),
            _ => Err("which does not exist".into()),
        };
        Box::pin(async move { answer })
    }
}

fn claim_pod(app: &str, exec: &str, mount: &str, claim: &str, sub_path: &str) -> PodMounts {
    PodMounts {
        pod: format!("jobs/{app}-exec-{exec}"),
        app_id: app.into(),
        exec_id: exec.into(),
        mounts: vec![Mount {
            mount_path: mount.into(),
            source: MountSource::Claim { name: claim.into(), sub_path: sub_path.into() },
        }],
    }
}

fn translating(node: &Node, pods: &Arc<ExecutorMounts>) -> Registry {
    let mut registry = Registry::in_memory(Roots::new(std::slice::from_ref(&node.root)).expect("roots"));
    registry.bind_to_pods(Arc::clone(pods), WAIT, PathMode::Translated);
    registry
}

fn claims(table: &[(&str, Result<PathBuf, String>)]) -> Arc<TableClaims> {
    Arc::new(TableClaims(table.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()))
}

#[tokio::test]
async fn translated_a_claims_dir_is_served_from_its_volumes_node_dir_and_reported_as_registered() {
    let node = node();
    let pods = Arc::new(ExecutorMounts::default());
    pods.set_claims(claims(&[("app-1-exec-1-pvc-0", Ok(node.root.join("a")))]));
    pods.upsert(claim_pod("app-1", "1", "/data/spark-local-dir-1", "app-1-exec-1-pvc-0", "sub"));
    let registry = translating(&node, &pods);
    let registered = "/data/spark-local-dir-1/blockmgr-1".to_string();
    let mut shuffle_info = info(&[]);
    shuffle_info.local_dirs = vec![registered.clone()];
    let executor = registry.register_executor("app-1", "1", shuffle_info).await.expect("registered");
    let on_node = node.root.join("a/sub/blockmgr-1");
    assert_eq!(executor.info.local_dirs, [registered], "GetLocalDirsForExecutors answers what was registered");
    assert_eq!(executor.node.as_ref().map(|n| n.dirs.clone()), Some(vec![on_node.display().to_string()]));
    assert_eq!(executor.dirs.canonical_dirs(), std::slice::from_ref(&on_node));
    assert!(executor.dirs.file_path("shuffle_0_0_0.data").starts_with(&on_node), "files are opened on the node");
    assert_eq!(executor.deletable_dirs().count(), 0, "a volume's files are Kubernetes' to delete");
}

#[tokio::test]
async fn translated_a_hostpath_at_another_mount_path_is_served_and_deletable() {
    let node = node();
    let pods = Arc::new(ExecutorMounts::default());
    pods.upsert(PodMounts {
        mounts: vec![Mount {
            mount_path: "/var/data/spark-1".into(),
            source: MountSource::HostPath(node.root.join("b")),
        }],
        ..pod("app-1", "1", &node.root)
    });
    let registry = translating(&node, &pods);
    let mut shuffle_info = info(&[]);
    shuffle_info.local_dirs = vec!["/var/data/spark-1/blockmgr-2".into()];
    let executor = registry.register_executor("app-1", "1", shuffle_info).await.expect("registered");
    assert_eq!(executor.dirs.canonical_dirs(), [node.root.join("b/blockmgr-2")]);
    assert_eq!(executor.deletable_dirs().collect::<Vec<_>>(), [&node.root.join("b/blockmgr-2")]);
}

#[tokio::test]
async fn translated_refusals_name_the_dir_the_pod_and_why() {
    let node = node();
    let outside = tempfile::tempdir().expect("temp dir");
    let pods = Arc::new(ExecutorMounts::default());
    pods.set_claims(claims(&[
        ("outside", Ok(outside.path().to_path_buf())),
        ("network", Err("whose PersistentVolume pv-9 is an NFS volume, not a directory on the node".into())),
    ]));
    pods.upsert(claim_pod("app-1", "1", "/data/1", "outside", ""));
    pods.upsert(claim_pod("app-1", "2", "/data/1", "network", ""));
    pods.upsert(claim_pod("app-1", "3", "/data/1", "missing", ""));
    let registry = translating(&node, &pods);
    let register = |exec: &'static str| {
        let mut shuffle_info = info(&[]);
        shuffle_info.local_dirs = vec!["/data/1/blockmgr-1".into()];
        let registry = &registry;
        async move {
            JavaError::from(registry.register_executor("app-1", exec, shuffle_info).await.expect_err("refused"))
                .to_string()
        }
    };
    assert_eq!(
        register("1").await,
        format!(
            "java.lang.IllegalArgumentException: localDirs entry /data/1/blockmgr-1 is on node path {}/blockmgr-1, which \
             is not under any of the service's local directories",
            outside.path().display()
        )
    );
    assert_eq!(
        register("2").await,
        "java.lang.IllegalArgumentException: localDirs entry /data/1/blockmgr-1 of executor 2 of application app-1 is \
         not on a volume of its pod jobs/app-1-exec-2 that the service can read on this node: the pod mounts \
         persistentVolumeClaim network, whose PersistentVolume pv-9 is an NFS volume, not a directory on the node, at \
         /data/1, not a hostPath or a PersistentVolumeClaim bound to a hostPath or local PersistentVolume"
    );
    assert!(register("3").await.contains("persistentVolumeClaim missing, which does not exist,"));
    assert!(registry.executors_of("app-1").is_empty());
}

#[tokio::test]
async fn translated_without_a_kubernetes_client_claims_are_refused_not_guessed() {
    let node = node();
    let pods = Arc::new(ExecutorMounts::default());
    pods.upsert(claim_pod("app-1", "1", "/data/1", "c", ""));
    let registry = translating(&node, &pods);
    let mut shuffle_info = info(&[]);
    shuffle_info.local_dirs = vec!["/data/1/blockmgr-1".into()];
    let err = registry.register_executor("app-1", "1", shuffle_info).await.expect_err("refused");
    assert!(err.to_string().contains("it has no Kubernetes client"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_registrations_are_recovered_with_their_node_dirs_and_their_app_leaves_volumes_alone() {
    let node = node();
    let roots = || Roots::new(std::slice::from_ref(&node.root)).expect("roots");
    let state = node.root.join("state");
    let (on_volume, on_host) = (node.root.join("a/blockmgr-1"), node.root.join("b/blockmgr-2"));
    {
        let (mut registry, _) = Registry::open(roots(), &state).expect("open");
        let pods = Arc::new(ExecutorMounts::default());
        pods.set_claims(claims(&[("pvc-0", Ok(node.root.join("a")))]));
        let mut pod = claim_pod("app-1", "1", "/data/1", "pvc-0", "");
        pod.mounts.push(Mount { mount_path: "/data/2".into(), source: MountSource::HostPath(node.root.join("b")) });
        pods.upsert(pod);
        registry.bind_to_pods(pods, WAIT, PathMode::Translated);
        let mut shuffle_info = info(&[]);
        shuffle_info.local_dirs = vec!["/data/1/blockmgr-1".into(), "/data/2/blockmgr-2".into()];
        registry.register_executor("app-1", "1", shuffle_info).await.expect("registered");
    }
    // The pod, its claim and the whole mount namespace are gone; the journal still says where.
    let (registry, report) = Registry::open(roots(), &state).expect("reopen");
    assert_eq!((report.executors, report.refused), (1, 0));
    let executor = registry.executor("app-1", "1").expect("recovered");
    assert_eq!(executor.dirs.canonical_dirs(), [on_volume.clone(), on_host.clone()]);
    assert_eq!(executor.info.local_dirs, ["/data/1/blockmgr-1", "/data/2/blockmgr-2"]);
    let to_delete = registry.remove_app("app-1").await.expect("removed");
    assert_eq!(to_delete, [on_host], "only the hostPath's dir is the agent's to delete");
    assert!(registry.executors_of("app-1").is_empty(), "the registrations go all the same");
}

#[tokio::test]
async fn translated_an_app_whose_dirs_are_all_on_volumes_is_still_removed() {
    let node = node();
    let pods = Arc::new(ExecutorMounts::default());
    pods.set_claims(claims(&[("pvc-0", Ok(node.root.join("a")))]));
    pods.upsert(claim_pod("app-1", "1", "/data/1", "pvc-0", ""));
    let registry = translating(&node, &pods);
    let mut shuffle_info = info(&[]);
    shuffle_info.local_dirs = vec!["/data/1/blockmgr-1".into()];
    registry.register_executor("app-1", "1", shuffle_info).await.expect("registered");
    assert_eq!(registry.remove_app("app-1").await, Ok(vec![]));
    assert!(registry.executor("app-1", "1").is_none());
    assert!(registry.pending_cleanups().is_empty(), "nothing for the agent to delete");
}
