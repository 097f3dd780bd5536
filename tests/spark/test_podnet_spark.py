"""Real Spark on the simulated pod network: executors in pods with their own IPs, two agents in pod
network mode, a SIMULATED Kubernetes API server (sim_kube_api.py; no real one can run here).

Topology and cluster: podnet_topology.py and podnet_spark.py. Each node's Worker stays in the node
namespace and starts every executor in a pod of its own (pod_launcher.py says why a Worker per pod
would not do: its death makes the driver drop the host's map outputs). Executors advertise their pod IPs and
register with the shuffle service at podIP:7337, exactly as on Kubernetes, which only the agents'
in-pod listeners serve (nothing else listens there).

Scenario: a shuffle job over both executors (one per node); the executor on node-a is killed as a
pod deletion does it (deletionTimestamp, every process in the pod killed, CNI DEL, DELETED); Spark
starts a replacement in a fresh pod with a new IP; the shuffle is read again. Checked:
  * results right, map side not re-run (accumulator unchanged, the re-read's map stage SKIPPED, no
    stage retried), no failed task in the whole app, and no fetch retried by any executor (the
    redirect was in place and the dead pod's connections reset before the re-read);
  * every executor advertised its pod IP and was served by its node's agent (in-pod listener);
  * the re-read's connections to :7337 took both paths: to a live pod IP (in-pod listener) and to
    the dead pod's IP (the agents' source-side redirect to node-a), counted by nft counters in each
    live pod (podnet_topology.PROBE_TABLE), and both agents show the redirect in /status and
    /metrics (spark_shuffle_agent_podnet_*).
Prints the agents' time from pod IP to in-pod listener ("listening inside the executor pod",
millis) and the re-read's connections and bytes by path.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from podnet_spark import EXPECTED, NAMESPACE, Node, PodnetApp, delete_executor_pod, driver_pod, podnet_cluster, \
    pods_by_exec, retried_fetches
from podnet_topology import PORT, Topology, privileged, probe_counters
from servers import find_agent_bin, wait_until
from spark_cluster import RETRY_LOG4J2

pytestmark = pytest.mark.spark_job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(server_kind, spark_env, jobs_local_dir, tmp_path):
    """Topology, simulated API, agents and Workers on both nodes, the Master; torn down after the test."""
    if server_kind != "agent":
        pytest.skip("pod network mode is the agent's; Spark's JVM service has none")
    privileged("test_podnet_spark")
    binary = find_agent_bin(REPO)
    assert binary is not None and binary.exists(), "agent binary not found: set AGENT_BIN"
    with podnet_cluster(Path(spark_env), tmp_path, binary) as box:
        yield {**box, "local_dir": jobs_local_dir}


def adoption_millis(node: Node, pod_name: str) -> int:
    line, = wait_until(lambda: node.agent_log("listening inside the executor pod", pod=f"{NAMESPACE}/{pod_name}"),
                       30, 0.1, f"{node.name}'s agent to listen inside {pod_name}")
    return int(line["millis"])


def live_probe_counters(topo: Topology) -> dict[str, dict[str, int]]:
    return {name: probe_counters(pod.netns) for name, pod in topo.pods.items()}


def counter_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    """Per live pod, what its probe counters gained between the two readings."""
    return {p: {k: v - before.get(p, {}).get(k, 0) for k, v in counts.items()} for p, counts in after.items()}


def test_real_spark_executors_on_the_pod_network_survive_an_executor_pod_death_simulated_api(cluster):
    topo, sim, nodes = cluster["topo"], cluster["sim"], cluster["nodes"]
    started = time.monotonic()
    log4j2 = cluster["tmp"] / "executor-log4j2.properties"
    log4j2.write_text(RETRY_LOG4J2)
    app = PodnetApp(cluster["master"], cluster["local_dir"], "podnet-spark", cluster["java_home"], log4j2)
    try:
        sim.apply(driver_pod(app.app_id))
        first = app.wait_executors(2, timeout_s=120)
        pods = pods_by_exec(nodes, app.app_id)
        hosts = app.executor_hosts()
        assert {pods[e]["node"] for e in first} == {"node-a", "node-b"}, f"one executor per node: {pods}"
        for e in first:
            assert hosts[e] == pods[e]["ip"], f"executor {e} advertises {hosts[e]}, its pod IP is {pods[e]['ip']}"
        millis = {pods[e]["name"]: adoption_millis(nodes[pods[e]["node"]], pods[e]["pod"]) for e in first}

        # Phase 1: write the shuffle on both executors and read it.
        rdd, acc = app.write_shuffle()

        # node-a's executor pod dies; Spark replaces it (the Master keeps the app at spark.cores.max)
        # in a fresh pod with a new IP.
        dead_exec = next(e for e in first if pods[e]["node"] == "node-a")
        survivor, = set(first) - {dead_exec}
        dead = pods[dead_exec]
        delete_executor_pod(sim, topo, nodes["node-a"], dead)
        now = app.wait_executors(2, exclude={dead_exec}, timeout_s=120)
        new_exec, = set(now) - {survivor}
        pods = pods_by_exec(nodes, app.app_id)
        new = pods[new_exec]
        assert new["ip"] != dead["ip"] and app.executor_hosts()[new_exec] == new["ip"], new
        millis[new["name"]] = adoption_millis(nodes[new["node"]], new["pod"])
        for node in nodes.values():
            wait_until(lambda: node.status()["pod_network"]["redirects"] >= 1, 30, 0.1,
                       f"{node.name}'s agent to redirect the dead IP")

        # Phase 2: read the shuffle again, on the survivor and the new executor.
        before = live_probe_counters(topo)
        app.sc.setJobGroup("phase2", "read the shuffle again after the executor pod's death")
        assert dict(rdd.collect()) == EXPECTED
        by_pod = counter_delta(before, live_probe_counters(topo))
        m = app.check_reread("phase2", acc)
        retries = retried_fetches([n.dir / "work" for n in nodes.values()])
        paths = {k: sum(d[k] for d in by_pod.values()) for k in next(iter(by_pod.values()))}
        status = {n.name: n.status()["pod_network"] for n in nodes.values()}
        metrics = {n.name: {k: v for k, v in n.metrics().items() if k.startswith("spark_shuffle_agent_podnet_")}
                   for n in nodes.values()}
        print(f"\n[podnet-spark] pod IP -> in-pod listener (agent 'millis'): {millis}")
        print(f"[podnet-spark] re-read connections to :{PORT}: to a live pod IP (in-pod listener) "
              f"{paths['direct_conns']}, to the dead IP (redirect) {paths['redirect_conns']}; bytes received "
              f"{paths['direct_bytes']} / {paths['redirect_bytes']}; per pod {by_pod}")
        print(f"[podnet-spark] shuffle read: {m['remote_blocks']} remote blocks, {m['local_blocks']} local; "
              f"fetch retries logged by executors: {len(retries)}")
        print(f"[podnet-spark] agents' pod_network status: {status}")
        print(f"[podnet-spark] agents' podnet metrics: {metrics}")
        print(f"[podnet-spark] executors {first} -> {now} (dead {dead_exec} at {dead['ip']}, new {new_exec} at "
              f"{new['ip']} on {new['node']}); {time.monotonic() - started:.1f} s")
        assert paths["redirect_conns"] > 0 and paths["redirect_bytes"] > 0, f"no fetch through a redirect: {by_pod}"
        assert paths["direct_conns"] > 0 and paths["direct_bytes"] > 0, f"no fetch from a live pod: {by_pod}"
        assert not retries, f"executors retried fetches: {retries}"
        for name, s in status.items():
            assert s["redirects"] >= 1 and s["adoption_failures"] == 0 and s["nft_failures"] == 0, (name, s)
            assert metrics[name]["spark_shuffle_agent_podnet_redirects"] >= 1, (name, metrics[name])
        listened = {p["pod"] for s in status.values() for p in s["pods"]}
        want = {f"{NAMESPACE}/{pods[survivor]['pod']}", f"{NAMESPACE}/{new['pod']}"}
        assert want <= listened and f"{NAMESPACE}/{dead['pod']}" not in listened, status
    finally:
        app.stop()
