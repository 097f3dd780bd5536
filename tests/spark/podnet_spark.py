"""A Spark standalone cluster on the simulated pod network (podnet_topology.py), its executors in pods.

  * this process (the "control plane", 10.231.0.254): the simulated API server, the Master and the
    driver (the session's py4j driver JVM);
  * each node namespace: the agent binary in pod network mode (`agent.network.mode pod`, its own
    --node-name, the simulated API's kubeconfig, :7337 on 0.0.0.0, root = the node's disk) and one
    Worker (its own shuffle service off), the node's kubelet: it launches executors, and
    pod_launcher.py puts each into a fresh pod of the node (see there for why the Worker is not in
    the pod);
  * executor local dirs: the Worker's SPARK_LOCAL_DIRS, the node's root, so under the agent's roots.
Every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from servers import _pump, port_accepts, scrape_metrics, wait_until
from sim_kube_api import SimApi
from spark_cluster import FAIL_FAST, RETRY_LINE, SparkCluster, gateway_spark_props
from podnet_topology import CONTROL_IP, PORT, Topology

NAMESPACE = "jobs"
# The scenarios' job: N numbers summed by key (KEYS keys) over a shuffle of 4 maps and 8 reduces.
N = 4000
KEYS = 97
EXPECTED = {k: sum(x for x in range(N) if x % KEYS == k) for k in range(KEYS)}
METRICS_PORT = 7338
HERE = Path(__file__).resolve().parent


class Process:
    """A child process with its output pumped to a log file; stopped by its own pid only."""

    def __init__(self, argv: list[str], log: Path, env: dict, cwd: Path):
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=str(cwd))
        self._pump = threading.Thread(target=_pump, args=(self.proc.stdout, log), daemon=True)
        self._pump.start()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.text().splitlines() if needle in line]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._pump.join(timeout=5)


class Node:
    """One node's agent and Worker, and its pool of pod sandboxes."""

    def __init__(self, name: str, topo: Topology, work: Path):
        self.name, self.topo = name, topo
        self.ip = topo.node_ip(name)
        self.dir = work / name
        self.root = self.dir / "root"
        self.pool = self.dir / "pods"
        for d in (self.root, self.pool / "free", self.pool / "used", self.dir / "work"):
            d.mkdir(parents=True)
        self.agent: Process | None = None
        self.worker: Process | None = None

    def add_pods(self, names: list[str]) -> None:
        for name in names:
            pod = self.topo.pod(name, self.name)
            (self.pool / "free" / f"{name}.json").write_text(
                json.dumps({"name": name, "ip": pod.ip, "netns": pod.netns}))

    def used_pods(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.pool / "used").glob("*.json"))]

    def start_agent(self, binary: Path, kubeconfig: str, extra_conf: str = "") -> None:
        conf = self.dir / "agent.conf"
        conf.write_text("agent.network.mode pod\n" + extra_conf)
        argv = [*self.topo.exec_argv(self.name), str(binary), "--port", str(PORT), "--bind", "0.0.0.0",
                "--metrics-port", str(METRICS_PORT), "--log-format", "json", "--config", str(conf),
                "--state-dir", str(self.dir / "agent-state"), "--kubeconfig", kubeconfig,
                "--node-name", self.name, "--root", str(self.root)]
        env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "NODE_NAME")}
        # The DaemonSet's downward API gives the agent its node's IP.
        env.update(RUST_LOG="info", NO_COLOR="1", NODE_IP=self.ip)
        self.agent = Process(argv, self.dir / "agent.log", env, self.dir)
        wait_until(lambda: self._alive_and(lambda: '"message":"pod network mode on"' in self.agent.text()),
                   30, 0.1, f"{self.name}'s agent in pod network mode")

    def start_worker(self, home: Path, conf_dir: Path, master: str, launcher_env: dict) -> None:
        argv = [*self.topo.exec_argv(self.name), str(home / "bin" / "spark-class"),
                "org.apache.spark.deploy.worker.Worker", "--host", self.ip, "--cores", "2", "--memory", "2g",
                "--webui-port", "8081", "--work-dir", str(self.dir / "work"), master]
        env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
        env.update(SPARK_HOME=str(home), SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP=self.ip,
                   SPARK_LOCAL_DIRS=str(self.root),
                   # The Worker's own (embedded) shuffle service stays off: the agent is the service.
                   SPARK_WORKER_OPTS="-Dspark.shuffle.service.enabled=false",
                   PODNET_POOL=str(self.pool), PODNET_NODE=self.name, PODNET_NODE_IP=self.ip, **launcher_env)
        self.worker = Process(argv, self.dir / "worker.log", env, self.dir)

    def _alive_and(self, cond) -> bool:
        assert self.agent.alive(), f"{self.name}'s agent exited:\n{self.agent.text()[-3000:]}"
        return cond()

    def agent_log(self, message: str, **fields: str) -> list[dict]:
        """The agent's JSON log lines with this message and these fields."""
        out = []
        for line in self.agent.lines(message):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            flat = {**record, **record.get("fields", {})}
            if flat.get("message") == message and all(str(flat.get(k)) == v for k, v in fields.items()):
                out.append(flat)
        return out

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.ip}:{METRICS_PORT}/status", timeout=10) as r:
            return json.load(r)

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(f"http://{self.ip}:{METRICS_PORT}")

    def stop(self) -> None:
        for p in (self.worker, self.agent):
            if p is not None:
                p.stop()


def fake_java_home(work: Path) -> Path:
    """A JAVA_HOME whose bin/java is pod_launcher.py (spark.executorEnv.JAVA_HOME of the app)."""
    home = work / "pod-java"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'pod_launcher.py'} \"$@\"\n")
    java.chmod(0o755)
    return home


def start_master(home: Path, conf_dir: Path, work: Path, host: str = CONTROL_IP, port: int = 7077,
                 ui: int = 8080) -> tuple[Process, str, str]:
    """The standalone Master on the control address; (process, spark:// URL, web UI URL)."""
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_CONF_DIR": str(conf_dir), "SPARK_LOCAL_IP": host}
    argv = [str(home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master", "--host", host,
            "--port", str(port), "--webui-port", str(ui)]
    master = Process(argv, work / "master.log", env, work)
    wait_until(lambda: port_accepts(host, port) or not master.alive(), 90, 0.2, "the Master")
    assert master.alive(), master.text()[-3000:]
    return master, f"spark://{host}:{port}", f"http://{host}:{ui}"


def alive_workers(ui: str) -> int:
    """Workers ALIVE in the Master's JSON view (0 while its web UI is not up yet)."""
    try:
        with urllib.request.urlopen(f"{ui}/json/", timeout=10) as r:
            return sum(w["state"] == "ALIVE" for w in json.load(r)["workers"])
    except OSError:
        return 0


class PodnetApp(SparkCluster):
    """One application on the standalone Master. Reuses SparkCluster's observation helpers (REST API,
    stage metrics, executor waits); unlike it, executors dial the service directly (no WireTap)."""

    N_EXEC = 2

    def __init__(self, master: str, local_dir: Path, name: str, java_home: Path, log4j2: Path,
                 budget_s: float = 300, host: str = CONTROL_IP, port: int = PORT, conf: dict | None = None):
        from pyspark import SparkConf, SparkContext

        self.tap = None
        c = (
            SparkConf()
            .setMaster(master)
            .setAppName(name)
            .set("spark.shuffle.service.enabled", "true")
            .set("spark.shuffle.service.port", str(port))
            .set("spark.executorEnv.JAVA_HOME", str(java_home))
            .set("spark.cores.max", str(self.N_EXEC))
            .set("spark.executor.cores", "1")
            .set("spark.executor.memory", "512m")
            .set("spark.local.dir", str(local_dir))
            .set("spark.driver.host", host)
            .set("spark.driver.bindAddress", host)
            .set("spark.ui.enabled", "true")
            .set("spark.ui.port", "0")
            .set("spark.ui.showConsoleProgress", "false")
            # As SparkCluster: a fetch that fails is a test failure, at once.
            .setAll(FAIL_FAST.items())
            # RETRY_LOG4J2: executors log their fetch retries (counted by the test).
            .set("spark.executor.extraJavaOptions",
                 f"-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dlog4j2.configurationFile={log4j2}")
            .setAll((conf or {}).items())
        )
        import spark_cluster

        assert spark_cluster._GATEWAY_PROPS is not None, "launch_gateway() must start the driver JVM first"
        assert gateway_spark_props() == spark_cluster._GATEWAY_PROPS, "the driver JVM's spark.* properties changed"
        self.sc = SparkContext(conf=c)
        self.jsc = self.sc._jsc.sc()
        self.app_id = self.sc.applicationId
        self._start_watchdog(budget_s)

    def stop(self):
        self._watchdog.cancel()
        self.sc.stop()
        assert not self.expired, "the test's Spark jobs ran past their time budget and were cancelled"

    def rest(self, path: str):
        # The UI listens on the gateway JVM's SPARK_LOCAL_IP (127.0.0.1, spark_cluster.set_spark_env);
        # uiWebUrl names spark.driver.host.
        port = self.sc.uiWebUrl.rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}/api/v1/applications/{self.app_id}{path}"
        with urllib.request.urlopen(url, timeout=15) as r:
            return json.load(r)

    def write_shuffle(self):
        """Phase 1: the job's shuffle written on the executors and read; (rdd, map-side accumulator)."""
        acc = self.sc.accumulator(0)

        def tag(x):
            acc.add(1)
            return (x % KEYS, x)

        rdd = self.sc.parallelize(range(N), 4).map(tag).reduceByKey(lambda a, b: a + b, 8)
        self.sc.setJobGroup("phase1", "write the shuffle and read it")
        assert dict(rdd.collect()) == EXPECTED
        assert acc.value == N
        return rdd, acc

    def check_reread(self, group: str, acc) -> dict:
        """As test_spark_jobs.check_reread: the re-read succeeded, skipped its map stage, retried no
        stage, and no task of the app failed; the map side did not re-run (accumulator `acc` at N)."""
        assert acc.value == N, f"map side re-ran: accumulator {acc.value} != {N}"
        m = self.read_metrics(group)
        assert m["job_status"] and all(s == "SUCCEEDED" for s in m["job_status"]), m
        assert "SKIPPED" in [st for (_, _, st, _, _) in m["stages"]], f"the map stage was not skipped: {m['stages']}"
        assert all(att == 0 for (_, att, _, _, _) in m["stages"]), f"a stage was retried: {m['stages']}"
        assert m["failed_tasks"] == 0 and self.all_failed_tasks() == 0, m
        return m

    def executor_hosts(self) -> dict[str, str]:
        """Live executor id -> the host it advertises (its block manager's, so the shuffle service's)."""
        self.settle()
        return {e["id"]: e["hostPort"].rsplit(":", 1)[0] for e in self.rest("/executors")
                if e["id"] != "driver" and e["isActive"]}


def driver_pod(app: str) -> dict:
    """The app's driver as the API shows it in cluster mode (so the agents see the app as running)."""
    return {"metadata": {"name": f"{app}-driver", "namespace": NAMESPACE, "uid": f"uid-{app}-driver",
                         "labels": {"spark-role": "driver", "spark-app-selector": app}},
            "spec": {"nodeName": "control-plane", "containers": [{"name": "spark-kubernetes-driver"}]},
            "status": {"phase": "Running"}}


def which_java() -> str:
    java = shutil.which("java")
    assert java, "java is not on PATH"
    return os.path.realpath(java)


@contextmanager
def podnet_cluster(home: Path, work: Path, binary: Path, agent_conf: str = "", node_env=lambda node: {}):
    """Topology, simulated API, agents (pod network mode and `agent_conf`) and Workers on both nodes,
    three pod sandboxes per node, the Master; torn down on exit. `node_env(node)`: more environment
    for that node's executor launches (pod_launcher.py)."""
    conf_dir = Path(os.environ["SPARK_CONF_DIR"])  # set by spark_env (spark_cluster.set_spark_env)
    topo = Topology()
    sim = None
    nodes: list[Node] = []
    master = None
    try:
        sim = SimApi(host=CONTROL_IP)
        kubeconfig = sim.kubeconfig(work / "kubeconfig")
        master, master_url, master_ui = start_master(home, conf_dir, work)
        launcher_env = {"PODNET_API": sim.url, "PODNET_NAMESPACE": NAMESPACE, "PODNET_REAL_JAVA": which_java(),
                        "PODNET_AGENT_BIN": str(binary), "PODNET_PORT": str(PORT)}
        for name, pods in (("node-a", ["a1", "a2", "a3"]), ("node-b", ["b1", "b2", "b3"])):
            node = Node(name, topo, work)
            nodes.append(node)
            node.add_pods(pods)
            node.start_agent(binary, kubeconfig, agent_conf)
            node.start_worker(home, conf_dir, master_url, {**launcher_env, **node_env(node)})
        wait_until(lambda: alive_workers(master_ui) == 2, 90, 0.25,
                   "both Workers registered with the Master")
        yield {"topo": topo, "sim": sim, "nodes": {n.name: n for n in nodes}, "master": master_url,
               "java_home": fake_java_home(work), "tmp": work}
    finally:
        for node in nodes:
            node.stop()
        if master is not None:
            master.stop()
        if sim is not None:
            sim.close()
        topo.close()
        for node in nodes:
            print(f"[podnet] {node.name}: agent log {node.agent.log if node.agent else '-'}, worker log "
                  f"{node.worker.log if node.worker else '-'}, executor logs {node.dir / 'work'}")


def pods_by_exec(nodes: dict[str, Node], app: str) -> dict[str, dict]:
    """Executor id -> the pod it was launched in (pod_launcher.py's records), with its node."""
    return {p["exec"]: {**p, "node": n.name} for n in nodes.values() for p in n.used_pods() if p["app"] == app}


def delete_executor_pod(sim: SimApi, topo: Topology, node: Node, pod: dict) -> None:
    """The pod deleted as Kubernetes does it: deletionTimestamp (the agent closes its in-pod listener
    while the veth still carries the resets), the containers killed, CNI DEL, then DELETED."""
    obj = sim.pods[(NAMESPACE, pod["pod"])]
    sim.apply({**obj, "metadata": {**obj["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}})
    wait_until(lambda: node.agent_log("executor pod ended; its in-pod listener is closed",
                                      pod=f"{NAMESPACE}/{pod['pod']}"),
               30, 0.1, f"{node.name}'s agent to close the dead pod's listener")
    topo.kill_pod(pod["name"])
    sim.delete(NAMESPACE, pod["pod"])


def retried_fetches(work_dirs: list[Path]) -> list[str]:
    """RetryingBlockTransferor's "Retrying fetch" lines in the stderr of every executor of these
    Worker work dirs (RETRY_LOG4J2)."""
    return [line for w in work_dirs for f in w.glob("*/*/stderr")
            for line in f.read_text(errors="replace").splitlines() if RETRY_LINE.search(line)]
