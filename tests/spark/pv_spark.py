"""Real Spark with executor local dirs on node-local PersistentVolumes (issue 12): the host-network
cluster, and what the tests look at on the node (pv_volumes.py makes the volumes and mounts).

The host-network cluster (`host_cluster`), all on 127.0.0.1 in this process's network namespace:
  * a SIMULATED Kubernetes API server (sim_kube_api.py; no real one can run here);
  * the agent binary with `agent.localDirs.translate true`, the simulated API's kubeconfig, node
    name NODE, and one root: the node's PV base directory `<work>/node/pvs` (where the
    provisioner puts every volume);
  * a standalone Master and one Worker, the node's kubelet: pod_launcher.py starts each executor
    in a hostNetwork pod of its own (recorded in `<work>/records`), on a PV mounted in its own mount
    namespace. The Worker's own local dir (`<work>/worker-local`) is never an executor's.
Every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from podnet_spark import NAMESPACE, Process, alive_workers, fake_java_home, start_master, which_java
from podnet_topology import sigkill
from pv_volumes import MOUNT_PATH, mount_ns, mounted_at, mounts_of, pids_in_mount_ns
from servers import agent_metrics_url, free_port, restart_agent, start_agent, wait_until
from sim_kube_api import SimApi

NODE = "node-a"
AGENT_CONF = "agent.localDirs.translate true\n"


class HostCluster:
    """What `host_cluster` runs; `agent` changes when the agent is restarted."""

    def __init__(self, work: Path):
        self.work = work
        self.node = work / "node"
        self.pvs = self.node / "pvs"  # the agent's root
        self.elsewhere = self.node / "elsewhere"  # a PV base outside the agent's roots
        self.records = work / "records"
        for d in (self.pvs, self.elsewhere, self.records, work / "worker-local", work / "work"):
            d.mkdir(parents=True)
        self.sim = SimApi()
        self.agent = None
        self.master = None
        self.worker = None
        self.master_url = ""
        self.java_home = fake_java_home(work)

    def start_agent(self, binary: Path) -> None:
        conf = self.work / "agent.conf"
        conf.write_text(AGENT_CONF)
        args = ["--config", str(conf), "--kubeconfig", self.sim.kubeconfig(self.work / "kubeconfig"),
                "--node-name", NODE]
        # A fixed port: a restarted agent must listen where its journal's executors registered.
        self.agent = start_agent(binary, self.work, [str(self.pvs)], extra_args=args, port=free_port())
        wait_until(lambda: "pods listed" in self.agent.log_text(), 30, what="the agent's first pod list")

    def restart_agent(self) -> None:
        """SIGTERM, then the same agent again on its port and state dir: it recovers its journal."""
        self.agent.stop()
        self.agent = restart_agent(self.agent)

    def start_spark(self, home: Path) -> None:
        conf_dir = Path(os.environ["SPARK_CONF_DIR"])  # set by spark_env (spark_cluster.set_spark_env)
        self.master, self.master_url, ui = start_master(home, conf_dir, self.work, host="127.0.0.1",
                                                        port=free_port(), ui=free_port())
        argv = [str(home / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                "--cores", "2", "--memory", "2g", "--webui-port", str(free_port()), "--work-dir",
                str(self.work / "work"), self.master_url]
        env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
        env.update(SPARK_HOME=str(home), SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP="127.0.0.1",
                   SPARK_LOCAL_DIRS=str(self.work / "worker-local"),
                   # The Worker's own (embedded) shuffle service stays off: the agent is the service.
                   SPARK_WORKER_OPTS="-Dspark.shuffle.service.enabled=false",
                   PODNET_API=self.sim.url, PODNET_NAMESPACE=NAMESPACE, PODNET_REAL_JAVA=which_java(),
                   PODNET_NODE=NODE, PODNET_NODE_IP="127.0.0.1", PODNET_RECORDS=str(self.records),
                   PV_BASE=str(self.pvs), PV_HIDE=str(self.node))
        self.worker = Process(argv, self.work / "worker.log", env, self.work)
        wait_until(lambda: alive_workers(ui) == 1, 90, 0.25, "the Worker registered with the Master")

    def launched(self, app: str) -> dict[str, dict]:
        """Executor id -> pod_launcher.py's record of its pod and volume."""
        recs = [json.loads(p.read_text()) for p in sorted(self.records.glob("*.json"))]
        return {r["exec"]: r for r in recs if r["app"] == app}

    def status(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"{agent_metrics_url(self.agent)}/status", timeout=10) as r:
            return json.load(r)

    def close(self) -> None:
        for p in (self.worker, self.master, self.agent):
            if p is not None:
                p.stop()
        self.sim.close()
        print(f"[pv-spark] agent log {self.agent.log_path if self.agent else '-'}, worker log "
              f"{self.work / 'worker.log'}, executor logs {self.work / 'work'}")


@contextmanager
def host_cluster(home: Path, work: Path, binary: Path):
    box = HostCluster(work)
    try:
        box.start_agent(binary)
        box.start_spark(home)
        yield box
    finally:
        box.close()


# -- what the tests look at on the node --------------------------------------------------------------------------


def shown_dir(rec: dict) -> Path:
    """The node directory an executor sees at MOUNT_PATH: its PV's directory and subPath."""
    return Path(rec["pv_dir"]) / rec["sub_path"] if rec["sub_path"] else Path(rec["pv_dir"])


def check_mounted(rec: dict) -> int:
    """The executor runs in a mount namespace of its own whose MOUNT_PATH shows its volume; its inode."""
    ns = mount_ns(rec["pid"])
    assert ns is not None and ns != mount_ns(os.getpid()), f"executor {rec['exec']} is not in a mount namespace " \
                                                           f"of its own: {rec}"
    roots = mounted_at(rec["pid"], MOUNT_PATH)
    want = "/" + shown_dir(rec).relative_to(Path(rec["pv_dir"]).parent).as_posix()
    assert roots and roots[-1].endswith(want), f"executor {rec['exec']}: {MOUNT_PATH} shows {roots}, not {want}"
    return ns


def registered_dirs(rec: dict) -> dict[str, str]:
    """The local dirs the executor registered (its blockmgr dirs, as it sees them) -> their node paths."""
    shown = shown_dir(rec)
    return {f"{MOUNT_PATH}/{d.relative_to(shown).as_posix()}": str(d) for d in sorted(shown.rglob("blockmgr-*"))
            if d.is_dir()}


def shuffle_files(rec: dict) -> set[Path]:
    return {p for p in Path(rec["pv_dir"]).rglob("shuffle_*") if p.is_file()}


def kill_mount_ns(ns: int) -> None:
    """SIGKILL to every process of mount namespace `ns` (an executor and its Python workers)."""
    sigkill(pids_in_mount_ns(ns))


def check_gone(rec: dict, ns: int) -> None:
    """The executor's pod is gone: no process left in its mount namespace, and its volume mounted
    nowhere (in no process's namespace)."""
    try:
        # Generous: once, in a full CI run, a process was still there after 30 s (it passed alone).
        wait_until(lambda: not pids_in_mount_ns(ns) and mount_ns(rec["pid"]) is None, 90, 0.1,
                   f"every process of executor {rec['exec']}'s mount namespace to exit")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; left: {[describe_process(p) for p in pids_in_mount_ns(ns)]}") from None
    left = mounts_of(Path(rec["pv_dir"]).name)
    assert not left, f"executor {rec['exec']}'s volume is still mounted: {left}"


def describe_process(pid: int) -> str:
    """pid, state and command line, for a failure message."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State"))
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        return f"{pid} {state} {cmd}"
    except (OSError, StopIteration):
        return f"{pid} (gone)"


PLACED = "local dirs placed on the node"


def mapping_lines(log: str, container: str, node: str) -> list[str]:
    """The agent's log lines that place a registered dir at this node path."""
    return [line for line in log.splitlines() if PLACED in line and container in line and node in line]
