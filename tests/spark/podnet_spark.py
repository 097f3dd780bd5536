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
from pathlib import Path

from servers import _pump, port_accepts, scrape_metrics, wait_until
from spark_cluster import FAIL_FAST, SparkCluster, gateway_spark_props
from podnet_topology import CONTROL_IP, PORT, Topology

NAMESPACE = "jobs"
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

    def start_agent(self, binary: Path, kubeconfig: str) -> None:
        conf = self.dir / "agent.conf"
        conf.write_text("agent.network.mode pod\n")
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


def start_master(home: Path, conf_dir: Path, work: Path) -> tuple[Process, str, str]:
    """The standalone Master on the control address; (process, spark:// URL, web UI URL)."""
    port, ui = 7077, 8080
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_CONF_DIR": str(conf_dir), "SPARK_LOCAL_IP": CONTROL_IP}
    argv = [str(home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master", "--host", CONTROL_IP,
            "--port", str(port), "--webui-port", str(ui)]
    master = Process(argv, work / "master.log", env, work)
    wait_until(lambda: port_accepts(CONTROL_IP, port) or not master.alive(), 90, 0.2, "the Master")
    assert master.alive(), master.text()[-3000:]
    return master, f"spark://{CONTROL_IP}:{port}", f"http://{CONTROL_IP}:{ui}"


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
                 budget_s: float = 300):
        from pyspark import SparkConf, SparkContext

        self.tap = None
        c = (
            SparkConf()
            .setMaster(master)
            .setAppName(name)
            .set("spark.shuffle.service.enabled", "true")
            .set("spark.shuffle.service.port", str(PORT))
            .set("spark.executorEnv.JAVA_HOME", str(java_home))
            .set("spark.cores.max", str(self.N_EXEC))
            .set("spark.executor.cores", "1")
            .set("spark.executor.memory", "512m")
            .set("spark.local.dir", str(local_dir))
            .set("spark.driver.host", CONTROL_IP)
            .set("spark.driver.bindAddress", CONTROL_IP)
            .set("spark.ui.enabled", "true")
            .set("spark.ui.port", "0")
            .set("spark.ui.showConsoleProgress", "false")
            # As SparkCluster: a fetch that fails is a test failure, at once.
            .setAll(FAIL_FAST.items())
            # RETRY_LOG4J2: executors log their fetch retries (counted by the test).
            .set("spark.executor.extraJavaOptions",
                 f"-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dlog4j2.configurationFile={log4j2}")
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
