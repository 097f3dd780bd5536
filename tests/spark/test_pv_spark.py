"""Real Spark with executor local dirs on node-local PersistentVolumes (issue 12, item 4b): the agent
translates each registered dir (a path in the executor's own mount namespace) to the node path
that holds it, through the executor pod, its PVC and the PV in a SIMULATED Kubernetes API server
(sim_kube_api.py; no real one can run here).

Every executor runs in a mount namespace of its own in which its local dir, the same container
path for all (pv_volumes.MOUNT_PATH), is a bind mount of a different node directory, as the kubelet
mounts a local-path PV; the node's volume directories are hidden from it. Its pod, claim and PV
(hostPath PVs for some executors, local PVs with nodeAffinity for others, one with a subPath) are
created in the API as it starts (pod_launcher.py, pv_volumes.py). Scenarios:
  * host network (pv_spark.host_cluster): one agent and one Worker on 127.0.0.1; after a shuffle the
    executors are killed (their mount namespaces gone, the volumes mounted nowhere), their pods
    deleted, the agent restarted (it has only its journal for the old executors' node paths), and
    new executors read the shuffle again;
  * the pod network (podnet_spark.podnet_cluster): two nodes, each executor in a pod network
    namespace and a mount namespace of its own; both executor pods are deleted and the new
    executors read the old output through the dead IPs' redirects;
  * a PV outside the agent's roots: the registration is refused and the executor logs why.
Checked in both scenarios: results right, the map side not re-run (accumulator, map stage
SKIPPED, no stage retried), no failed task, the agent's log maps each registered dir to its node
path, and when the driver pod goes Succeeded the agent drops the app and deletes nothing of its
volumes. spark.shuffle.readHostLocalDisk is off on the host network: there all executors share
one host, and an executor cannot read another pod's volume (it is not mounted in its pod).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from podnet_spark import (EXPECTED, NAMESPACE, PodnetApp, delete_executor_pod, driver_pod, podnet_cluster, pods_by_exec,
                          retried_fetches)
from podnet_topology import privileged
from pv_spark import (AGENT_CONF, check_gone, check_mounted, host_cluster, kill_mount_ns, mapping_lines,
                      registered_dirs, shuffle_files)
from pv_volumes import MOUNT_PATH
from servers import find_agent_bin, wait_until
from spark_cluster import RETRY_LOG4J2

pytestmark = pytest.mark.spark_job

REPO = Path(__file__).resolve().parents[2]
REFUSED = "Failed to connect to external shuffle server"
OUTSIDE = "which is not under any of the service's local directories"


def agent_binary(server_kind) -> Path:
    if server_kind != "agent":
        pytest.skip("local dir translation is the agent's; Spark's JVM service has none")
    privileged("test_pv_spark")
    binary = find_agent_bin(REPO)
    assert binary is not None and binary.exists(), "agent binary not found: set AGENT_BIN"
    return binary


@pytest.fixture(scope="module")
def host(server_kind, spark_env, tmp_path_factory):
    """The host-network cluster (pv_spark.py), shared by the scenario and the refusal."""
    with host_cluster(Path(spark_env), tmp_path_factory.mktemp("pv-host"), agent_binary(server_kind)) as box:
        yield box


def new_app(master: str, local_dir: Path, name: str, java_home: Path, work: Path, **kw) -> PodnetApp:
    log4j2 = work / "executor-log4j2.properties"
    log4j2.write_text(RETRY_LOG4J2)
    return PodnetApp(master, local_dir, name, java_home, log4j2, **kw)


def check_volumes(recs: dict[str, dict], log: str) -> dict[str, set]:
    """Each executor wrote its shuffle files into its own node directory, and the agent's log maps
    every dir it registered (the same container path for all) to that directory; its files."""
    files = {}
    for e, rec in recs.items():
        files[e] = shuffle_files(rec)
        assert files[e], f"executor {e} wrote no shuffle file into its volume {rec['pv_dir']}"
        dirs = registered_dirs(rec)
        assert dirs, f"executor {e} has no blockmgr dir in its volume {rec['pv_dir']}"
        for container, node in dirs.items():
            assert container.startswith(MOUNT_PATH + "/")
            assert mapping_lines(log, container, node), f"the agent's log maps {container} to {node} nowhere"
    return files


def driver_succeeded(sim, app: PodnetApp) -> None:
    """The (stopped) app's driver pod goes Succeeded, as it does in cluster mode."""
    sim.apply({**driver_pod(app.app_id), "status": {"phase": "Succeeded"}})


def test_real_spark_executors_on_node_local_pvs_in_their_own_mount_namespaces_reread_after_death_simulated_api(
        host, jobs_local_dir):
    started = time.monotonic()
    app = new_app(host.master_url, jobs_local_dir, "pv-host", host.java_home, host.work, host="127.0.0.1",
                  port=host.agent.port, conf={"spark.shuffle.readHostLocalDisk": "false"})
    try:
        host.sim.apply(driver_pod(app.app_id))
        first = app.wait_executors(2, timeout_s=120)
        recs = host.launched(app.app_id)
        assert {recs[e]["pv_kind"] for e in first} == {"hostPath", "local"} and any(recs[e]["sub_path"] for e in first)
        namespaces = {e: check_mounted(recs[e]) for e in first}
        rdd, acc = app.write_shuffle()
        files = check_volumes({e: recs[e] for e in first}, host.agent.log_text())

        # The pods die: every process of each is killed, which ends its mount namespace; then
        # they are deleted from the API. The agent restarts, so only its journal knows the node paths.
        for e in first:
            kill_mount_ns(namespaces[e])
        for e in first:
            check_gone(recs[e], namespaces[e])
            host.sim.delete(NAMESPACE, recs[e]["pod"])
        now = app.wait_executors(2, exclude=set(first), timeout_s=120)
        host.restart_agent()
        recovered = [line for line in host.agent.log_text().splitlines() if "registrations recovered" in line][-1]
        assert "executors=4 " in recovered, recovered  # the dead executors' and the new ones'

        app.sc.setJobGroup("phase2", "read the shuffle again after the executors' pods died")
        assert dict(rdd.collect()) == EXPECTED
        m = app.check_reread("phase2", acc)
        retries = retried_fetches([host.work / "work"])
        assert not retries, f"executors retried fetches: {retries}"
        print(f"\n[pv-spark host] executors {first} -> {now}; volumes "
              f"{ {e: (recs[e]['pv_kind'], recs[e]['sub_path'], recs[e]['pv']) for e in first} }; re-read: "
              f"{m['remote_blocks']} remote blocks, {m['local_blocks']} local, stages {m['stages']}, failed tasks "
              f"{m['failed_tasks']}; shuffle files {sum(len(f) for f in files.values())}; after the restart: "
              f"{recovered.split('INFO ')[-1]}")
    finally:
        app.stop()
    driver_succeeded(host.sim, app)
    wait_until(lambda: f"application removed app={app.app_id}" in host.agent.log_text(), 30, 0.1,
               f"the agent to remove {app.app_id}")
    status = host.status()
    for e in first:
        assert shuffle_files(recs[e]) == files[e], f"executor {e}'s shuffle files changed after the app ended"
    assert status["registered_apps"] == 0, status["apps"]
    print(f"[pv-spark host] after the app: apps {status['apps']}, cleanups {status['cleanups']}; "
          f"{time.monotonic() - started:.1f} s")


def test_real_spark_registration_of_a_pv_outside_the_agents_roots_is_refused_simulated_api(host, jobs_local_dir):
    app = new_app(host.master_url, jobs_local_dir, "pv-outside", host.java_home, host.work, host="127.0.0.1",
                  port=host.agent.port, conf={"spark.executorEnv.PV_BASE": str(host.elsewhere)})
    try:
        host.sim.apply(driver_pod(app.app_id))
        stderr = host.work / "work" / app.app_id

        def refused():
            logs = [(f.parent.name, f.read_text(errors="replace")) for f in stderr.glob("*/stderr")]
            return [(e, t) for e, t in logs if REFUSED in t]

        (exec_id, text), *_ = wait_until(refused, 90, 0.25, "an executor to log its refused registration")
        rec = host.launched(app.app_id)[exec_id]
        assert rec["pv_dir"].startswith(f"{host.elsewhere}/"), rec
        # The agent's answer to RegisterExecutor, as the executor logs it.
        why = f"is on node path {rec['pv_dir']}"
        reason = [line for line in text.splitlines() if f"localDirs entry {MOUNT_PATH}/" in line and why in line]
        assert reason and OUTSIDE in reason[0], \
            f"no refusal naming the node path in the executor's log:\n{text[-3000:]}"
        logged = [line for line in host.agent.log_text().splitlines()
                  if "registration refused" in line and app.app_id in line and why in line]
        assert logged, f"the agent logged no refusal for {app.app_id}:\n{host.agent.log_tail()}"
        print(f"\n[pv-spark outside] executor log: {reason[0].strip()}")
    finally:
        app.stop()
        driver_succeeded(host.sim, app)


def test_real_spark_on_the_pod_network_with_node_local_pvs_rereads_after_both_executor_pods_die_simulated_api(
        server_kind, spark_env, jobs_local_dir, tmp_path):
    binary = agent_binary(server_kind)
    started = time.monotonic()
    with podnet_cluster(Path(spark_env), tmp_path, binary, AGENT_CONF,
                        lambda node: {"PV_BASE": str(node.root / "pvs"), "PV_HIDE": str(node.root)}) as box:
        sim, topo, nodes = box["sim"], box["topo"], box["nodes"]
        app = new_app(box["master"], jobs_local_dir, "pv-podnet", box["java_home"], tmp_path)
        try:
            sim.apply(driver_pod(app.app_id))
            first = app.wait_executors(2, timeout_s=120)
            pods = pods_by_exec(nodes, app.app_id)
            assert {pods[e]["node"] for e in first} == {"node-a", "node-b"}, f"one executor per node: {pods}"
            namespaces = {e: check_mounted(pods[e]) for e in first}
            rdd, acc = app.write_shuffle()
            files = {}
            for e in first:
                files.update(check_volumes({e: pods[e]}, nodes[pods[e]["node"]].agent.text()))

            for e in first:
                delete_executor_pod(sim, topo, nodes[pods[e]["node"]], pods[e])
                check_gone(pods[e], namespaces[e])
            now = app.wait_executors(2, exclude=set(first), timeout_s=120)
            for node in nodes.values():
                wait_until(lambda: node.status()["pod_network"]["redirects"] >= 2, 30, 0.1,
                           f"{node.name}'s agent to redirect both dead IPs")

            app.sc.setJobGroup("phase2", "read the shuffle again after both executor pods died")
            assert dict(rdd.collect()) == EXPECTED
            m = app.check_reread("phase2", acc)
            retries = retried_fetches([n.dir / "work" for n in nodes.values()])
            assert not retries, f"executors retried fetches: {retries}"
            print(f"\n[pv-spark podnet] executors {first} -> {now}; volumes "
                  f"{ {e: (pods[e]['node'], pods[e]['pv_kind'], pods[e]['sub_path']) for e in first} }; re-read: "
                  f"{m['remote_blocks']} remote blocks, {m['local_blocks']} local, stages {m['stages']}, failed "
                  f"tasks {m['failed_tasks']}")
        finally:
            app.stop()
        driver_succeeded(sim, app)
        wait_until(lambda: all(n.agent_log("application removed", app=app.app_id) for n in nodes.values()), 30,
                   0.1, f"both agents to remove {app.app_id}")
        for e in first:
            assert shuffle_files(pods[e]) == files[e], f"executor {e}'s shuffle files changed after the app ended"
        status = {n.name: n.status() for n in nodes.values()}
        assert all(s["registered_apps"] == 0 for s in status.values()), status
        print(f"[pv-spark podnet] after the app: cleanups { {k: s['cleanups'] for k, s in status.items()} }; "
              f"{time.monotonic() - started:.1f} s")
