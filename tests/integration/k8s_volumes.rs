//! `agent.localDirs.translate` end to end, in process, against the SIMULATED API server: an
//! executor registers the paths it sees in its own container, the agent looks its pod, claims
//! and volumes up and serves the node dirs that hold them: through a hostPath PV, a local PV
//! (with a subPath) and a hostPath mounted at another path. Files are read back over the wire.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::protocol::BlockTransferMessage as M;

use crate::common::agent::{start_agent_with, test_config, TestAgent};
use crate::common::client::TestClient;
use crate::common::shuffle_files::{ExecutorFiles, MapOutput};
use crate::k8s_support::{driver_pod, executor_pod, kubeconfig, wait_until, SimApi, NODE};

const NS: &str = "jobs";
const APP: &str = "spark-vol";

/// This node's directories: the agent's root holds the provisioner's volumes and a plain
/// hostPath; `outside` is a node dir the agent does not serve.
struct NodeDisk {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl NodeDisk {
    fn new() -> NodeDisk {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        let (root, outside) = (base.join("node"), base.join("elsewhere"));
        for dir in [&root, &outside] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        NodeDisk { _tmp: tmp, root, outside }
    }
}

fn claim(name: &str, volume: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": {"volumeName": volume, "accessModes": ["ReadWriteOncePod"]},
        "status": {"phase": "Bound"},
    })
}

/// A PersistentVolume bound to claim `claim`: `source` is `{"hostPath": ..}` or `{"local": ..}`.
fn volume(name: &str, claim: &str, source: Value) -> Value {
    let mut spec = json!({"claimRef": {"namespace": NS, "name": claim}, "capacity": {"storage": "1Gi"}});
    for (key, value) in source.as_object().expect("an object") {
        spec[key] = value.clone();
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec})
}

/// Executor `exec`'s pod with these volumes, each mounted by the executor container as given.
fn executor_with(exec: &str, volumes: Value, mounts: Value) -> Value {
    let mut pod = executor_pod(NS, &format!("{APP}-exec-{exec}"), APP, exec, NODE, "Running");
    pod["spec"]["volumes"] = volumes;
    pod["spec"]["containers"][0]["volumeMounts"] = mounts;
    pod
}

/// Executor 1 of [`APP`]: `/data/1` a claim on a hostPath PV, `/data/2` subPath `spark` of a
/// claim on a local PV, `/data/3` a hostPath mounted at another path than its own.
fn three_volumes(sim: &SimApi, disk: &NodeDisk) {
    let (pv_host, pv_local, host) =
        (disk.root.join("pvs/pvc-1_jobs_a"), disk.root.join("pvs/pvc-2_jobs_b"), disk.root.join("hostdir"));
    for dir in [&pv_host, &pv_local.join("spark"), &host] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    sim.put_object(claim("exec-1-pvc-0", "pvc-1"));
    sim.put_object(volume("pvc-1", "exec-1-pvc-0", json!({"hostPath": {"path": pv_host}})));
    sim.put_object(claim("exec-1-pvc-1", "pvc-2"));
    sim.put_object(volume("pvc-2", "exec-1-pvc-1", json!({"local": {"path": pv_local}})));
    sim.apply(executor_with(
        "1",
        json!([
            {"name": "spark-local-dir-1", "persistentVolumeClaim": {"claimName": "exec-1-pvc-0"}},
            {"name": "spark-local-dir-2", "persistentVolumeClaim": {"claimName": "exec-1-pvc-1"}},
            {"name": "spark-local-dir-3", "hostPath": {"path": host}},
        ]),
        json!([
            {"name": "spark-local-dir-1", "mountPath": "/data/1"},
            {"name": "spark-local-dir-2", "mountPath": "/data/2", "subPath": "spark"},
            {"name": "spark-local-dir-3", "mountPath": "/data/3"},
        ]),
    ));
}

fn translating(sim: &SimApi, scratch: &Path) -> Config {
    let mut config = test_config();
    config.kubeconfig = Some(kubeconfig(scratch, &sim.url()));
    config.node_name = Some(NODE.to_string());
    config.local_dirs_translate = true;
    config.auth_pods_wait = Duration::from_secs(2);
    config
}

fn register(exec: &str, local_dirs: &[&str]) -> M {
    M::RegisterExecutor {
        app_id: APP.into(),
        exec_id: exec.into(),
        info: spark_shuffle_agent::protocol::ExecutorShuffleInfo {
            local_dirs: local_dirs.iter().map(|d| d.to_string()).collect(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    }
}

/// Every reduce block of `outputs` through OpenBlocks, compared with what was written.
async fn read_back(client: &mut TestClient, exec: &str, outputs: &[MapOutput]) {
    for output in outputs {
        let ids: Vec<String> = (0..output.partitions.len())
            .map(|r| format!("shuffle_{}_{}_{r}", output.shuffle_id, output.map_id))
            .collect();
        let open = M::OpenBlocks { app_id: APP.into(), exec_id: exec.into(), block_ids: ids };
        let (stream, chunks) = client.open_stream(&open).await.expect("blocks opened");
        assert_eq!(chunks as usize, output.partitions.len());
        for (r, expected) in output.partitions.iter().enumerate() {
            let got = client.chunk(stream, r as i32).await.expect("chunk served");
            assert_eq!(&got[..], &expected[..], "map {} reduce {r}", output.map_id);
        }
    }
}

/// Until the executor watch has listed and watches: a registration waits for its pod anyway
/// (bounded), but waiting here keeps the tests from depending on that wait.
async fn wait_for_pods(sim: &SimApi) {
    wait_until("the executor watch is up", || sim.count_requests(&["spec.nodeName=", "watch=true"]) > 0).await;
}

/// The local dirs executor 1 registers, one on each of [`three_volumes`].
const REGISTERED: [&str; 3] = ["/data/1/blockmgr-a", "/data/2/blockmgr-b", "/data/3/blockmgr-c"];

/// A translating agent that knows [`three_volumes`], with executor 1 registered on them.
async fn registered_on_three_volumes(sim: &SimApi, disk: &NodeDisk) -> (TestAgent, TestClient) {
    three_volumes(sim, disk);
    let agent = start_agent_with(std::slice::from_ref(&disk.root), translating(sim, &disk.outside)).await;
    wait_for_pods(sim).await;
    let mut client = agent.connect().await;
    assert_eq!(client.rpc_msg(&register("1", &REGISTERED)).await, Ok(None));
    (agent, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_api_dirs_on_hostpath_pv_local_pv_with_subpath_and_moved_hostpath_are_served_from_their_node_dirs() {
    let sim = SimApi::start().await;
    let disk = NodeDisk::new();
    let (agent, mut client) = registered_on_three_volumes(&sim, &disk).await;

    // The executor wrote its files in its container; on the node they are here.
    let node_dirs = [
        disk.root.join("pvs/pvc-1_jobs_a/blockmgr-a"),
        disk.root.join("pvs/pvc-2_jobs_b/spark/blockmgr-b"),
        disk.root.join("hostdir/blockmgr-c"),
    ];
    let files = ExecutorFiles::new(&node_dirs, 64);
    let outputs: Vec<MapOutput> = (0..6).map(|m| files.write_map_output(0, m, &[100, 0, 4096, 7])).collect();
    read_back(&mut client, "1", &outputs).await;

    // Host-local readers are told the paths as registered, as the JVM service tells them.
    let asked = M::GetLocalDirsForExecutors { app_id: APP.into(), exec_ids: vec!["1".into()] };
    match client.rpc_msg(&asked).await {
        Ok(Some(M::LocalDirsForExecutors { all_local_dirs, .. })) => assert_eq!(all_local_dirs, REGISTERED),
        other => panic!("{other:?}"),
    }
    let claims_read = sim.count_requests(&["/persistentvolumeclaims/exec-1-pvc-"]);
    assert_eq!(claims_read, 2, "each claim looked up once, at registration");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_api_dirs_outside_the_roots_other_pods_and_unusable_volumes_are_refused_with_the_reason() {
    let sim = SimApi::start().await;
    let disk = NodeDisk::new();
    three_volumes(&sim, &disk);
    // Executor 2: a claim whose hostPath PV is outside the agent's roots; executor 3: a CSI PV.
    sim.put_object(claim("exec-2-pvc-0", "pvc-out"));
    sim.put_object(volume("pvc-out", "exec-2-pvc-0", json!({"hostPath": {"path": disk.outside}})));
    sim.put_object(claim("exec-3-pvc-0", "pvc-csi"));
    sim.put_object(volume(
        "pvc-csi",
        "exec-3-pvc-0",
        json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "v"}}),
    ));
    for (exec, claim_name) in [("2", "exec-2-pvc-0"), ("3", "exec-3-pvc-0")] {
        sim.apply(executor_with(
            exec,
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": claim_name}}]),
            json!([{"name": "d", "mountPath": "/data/1"}]),
        ));
    }
    let agent = start_agent_with(std::slice::from_ref(&disk.root), translating(&sim, &disk.outside)).await;
    wait_for_pods(&sim).await;
    let mut client = agent.connect().await;
    let refused = |result: Result<Option<M>, String>| result.expect_err("refused");

    let outside = refused(client.rpc_msg(&register("2", &["/data/1/blockmgr-x"])).await);
    assert!(
        outside.contains(&format!(
            "localDirs entry /data/1/blockmgr-x is on node path {}/blockmgr-x, which is not under any of the service's \
             local directories",
            disk.outside.display()
        )),
        "{outside}"
    );
    let csi = refused(client.rpc_msg(&register("3", &["/data/1/blockmgr-x"])).await);
    assert!(csi.contains("is a CSI volume of driver ebs.csi.aws.com, not a directory on the node"), "{csi}");
    // Executor 1's pod mounts nothing at /elsewhere, and no pod is executor 4's.
    let unmounted = refused(client.rpc_msg(&register("1", &["/data/1/ok", "/elsewhere/blockmgr-x"])).await);
    assert!(unmounted.ends_with("the pod mounts no volume there"), "{unmounted}");
    let no_pod = refused(client.rpc_msg(&register("4", &["/data/1/blockmgr-x"])).await);
    assert!(no_pod.contains("no executor pod of it (spark-app-selector=spark-vol, spark-exec-id=4)"), "{no_pod}");
    // A dir of executor 1's volume registered by executor 2 is looked up in executor 2's pod.
    let borrowed = refused(client.rpc_msg(&register("2", &["/data/3/blockmgr-c"])).await);
    assert!(borrowed.contains("the pod mounts no volume there"), "{borrowed}");
    assert!(agent.shared.registry.executors_of(APP).is_empty(), "nothing was registered");
    // The agent kept serving: executor 1 still registers.
    assert_eq!(client.rpc_msg(&register("1", &["/data/1/blockmgr-a"])).await, Ok(None));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_api_at_the_apps_end_its_registrations_go_and_only_the_moved_hostpath_is_cleaned() {
    let sim = SimApi::start().await;
    let disk = NodeDisk::new();
    sim.apply(driver_pod(NS, "vol-driver", APP, "Running"));
    let (agent, mut client) = registered_on_three_volumes(&sim, &disk).await;
    let (on_pv, on_host) = (disk.root.join("pvs/pvc-1_jobs_a/blockmgr-a"), disk.root.join("hostdir/blockmgr-c"));
    let files =
        ExecutorFiles::new(&[on_pv.clone(), disk.root.join("pvs/pvc-2_jobs_b/spark/blockmgr-b"), on_host.clone()], 64);
    let outputs: Vec<MapOutput> = (0..3).map(|m| files.write_map_output(0, m, &[10, 20])).collect();
    read_back(&mut client, "1", &outputs).await;

    // The executor pod goes first (Spark deletes them at the end), then the driver finishes.
    sim.delete(NS, &format!("{APP}-exec-1"));
    sim.set_phase(NS, "vol-driver", "Succeeded");
    wait_until("the app's registrations are dropped", || agent.shared.registry.executors_of(APP).is_empty()).await;
    wait_until("the hostPath's dir is deleted", || !on_host.exists()).await;
    assert!(
        outputs.iter().all(|o| o.data.exists() || o.data.starts_with(&on_host)),
        "PV files are Kubernetes' to delete"
    );
    assert!(on_pv.exists(), "the PV's dir stays until its claim goes");
    agent.stop().await;
}
