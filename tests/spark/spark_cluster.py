"""A pyspark `local-cluster[2,1,1024]` application whose executors use the server under test as their
external shuffle service, with helpers to kill and replace every executor and to inspect what happened.

Facts this relies on (checked in Spark 4.3.0, see README.md):
  * local-cluster works from the pyspark wheel: the Worker launches executors with $SPARK_HOME/bin and jars.
    We point SPARK_HOME at a private directory of symlinks (bin, jars, python, sbin) so the Worker's
    `work/` directory (executor stdout/stderr) lands in a temp dir, not inside the venv.
  * LocalSparkCluster forces spark.shuffle.service.enabled=false for its Workers, so they do not start an
    embedded shuffle service; executors (app conf: enabled=true) register with 127.0.0.1:<port> instead.
  * SPARK_LOCAL_IP=127.0.0.1 is needed: this VM's hostname resolves to 127.0.0.1 and Spark would otherwise
    pick the eth0 address.
  * Executors get their local dirs from the Worker (spark.local.dir of the app conf, cloned into the Worker
    conf): <spark.local.dir>/spark-*/executor-*/blockmgr-*; the Worker deletes them when the app ends.
    Utils.getOrCreateLocalRootDirs caches the root dirs for the life of the driver JVM (the py4j gateway,
    shared by all tests of a pytest process), so all job tests use ONE spark.local.dir.
  * local-cluster mode defaults spark.shuffle.readHostLocalDisk to false (SparkContext.createTaskScheduler).
  * The driver JVM is launched once per process, without any app's conf (launch_gateway), so no app's conf
    becomes a default of the next app.
Every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import urllib.request
from pathlib import Path

from client_driver import DRIVER_LOG4J2
from servers import wait_until
from wiretap import WireTap

# The driver's console logging (WARN to stderr), and Spark's network classes kept at WARN too.
SPARK_LOG4J2 = DRIVER_LOG4J2 + """\
logger.ess.name = org.apache.spark.network
logger.ess.level = warn
"""


# SPARK_LOG4J2 plus RetryingBlockTransferor at INFO, whose retries ("Retrying fetch (1/3) for 6 outstanding
# blocks after 5000 ms") are otherwise invisible. For executors (-Dlog4j2.configurationFile in
# spark.executor.extraJavaOptions) and the Java driver (jvm_opts); count them with RETRY_LINE.
RETRY_LOG4J2 = SPARK_LOG4J2 + """\
logger.retry.name = org.apache.spark.network.shuffle.RetryingBlockTransferor
logger.retry.level = info
"""
RETRY_LINE = re.compile(r"Retrying (fetch|\w+) \((\d+)/(\d+)\)")


def prepare_spark_home(pyspark_dir: Path, base: Path) -> tuple[Path, Path]:
    home = base / "spark-home"
    home.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "jars", "python", "sbin"):
        src = pyspark_dir / name
        if src.exists() and not (home / name).exists():
            os.symlink(src, home / name)
    conf = base / "spark-conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "log4j2.properties").write_text(SPARK_LOG4J2)
    return home, conf


def set_spark_env(home: Path, conf: Path) -> None:
    """Must run before the first SparkContext of this process (the py4j gateway reads it at launch)."""
    os.environ["SPARK_HOME"] = str(home)
    os.environ["SPARK_CONF_DIR"] = str(conf)
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.pop("SPARK_LOCAL_DIRS", None)


# The spark.* JVM system properties of this process's py4j gateway right after launch_gateway() started it.
_GATEWAY_PROPS: dict[str, str] | None = None


def gateway_spark_props() -> dict[str, str]:
    from pyspark import SparkContext

    p = SparkContext._jvm.java.lang.System.getProperties()
    return {str(k): str(p.getProperty(k)) for k in p.stringPropertyNames() if str(k).startswith("spark.")}


def launch_gateway() -> None:
    """Start this process's py4j gateway JVM (the driver JVM of every SparkCluster) with no application conf.

    pyspark launches the gateway with the conf of the FIRST SparkContext of the process (`spark-submit --conf
    k=v ... pyspark-shell`); SparkSubmit makes each of those keys a JVM system property for the life of the
    process, and every later SparkConf() loads them as defaults. Left to the first test's app, its keys
    (spark.authenticate, its secret, spark.network.crypto.enabled, readHostLocalDisk, ...) silently became
    settings of every later app of the session: after an authenticated app, the executors of every later job
    authenticated to a server without authentication ("Unknown message type: 234") and never came up.
    Must run after set_spark_env() and before any SparkContext."""
    global _GATEWAY_PROPS
    from pyspark import SparkContext

    if _GATEWAY_PROPS is not None:
        return
    assert SparkContext._gateway is None, "a SparkContext started the gateway before launch_gateway()"
    SparkContext._ensure_initialized()
    _GATEWAY_PROPS = gateway_spark_props()


# Settings every test app shares: a broken server fails fast and visibly, not after minutes of
# retries; a task or fetch failure is a test failure (the job aborts at once); no locality waits
# (speed only, 2 cores).
FAIL_FAST = {
    "spark.shuffle.io.maxRetries": "1",
    "spark.shuffle.io.retryWait": "1s",
    "spark.shuffle.registration.timeout": "10000",
    "spark.shuffle.registration.maxAttempts": "2",
    "spark.task.maxFailures": "1",
    "spark.stage.maxConsecutiveAttempts": "1",
    "spark.network.timeout": "60s",
    "spark.locality.wait": "0",
}

# C1-only JIT for the short-lived executor JVMs (speed only). An app that sets spark.executor.extraJavaOptions
# replaces these, so it starts its value with them.
EXECUTOR_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


class SparkCluster:
    """One SparkContext in local-cluster mode, its shuffle-service traffic relayed through a WireTap.

    tls=True for an app with spark.ssl.rpc.enabled: its shuffle-service traffic is TLS, so the tap only relays it
    (WireTap's tls) and registrations() cannot be read from the wire."""

    N_EXEC = 2

    def __init__(self, server, local_dir: Path, name: str, conf: dict | None = None, budget_s: float = 300,
                 tls: bool = False):
        from pyspark import SparkConf, SparkContext

        self.server = server
        self.local_dir = local_dir
        self.tls = tls
        self.tap = WireTap(server.host, server.port, tls=tls).start()
        c = (
            SparkConf()
            .setMaster(f"local-cluster[{self.N_EXEC},1,1024]")
            .setAppName(name)
            .set("spark.shuffle.service.enabled", "true")
            .set("spark.shuffle.service.port", str(self.tap.port))
            .set("spark.local.dir", str(local_dir))
            .set("spark.driver.host", "127.0.0.1")
            .set("spark.driver.bindAddress", "127.0.0.1")
            .set("spark.executor.memory", "512m")
            .set("spark.ui.enabled", "true")
            .set("spark.ui.port", "0")
            .set("spark.ui.showConsoleProgress", "false")
            .setAll(FAIL_FAST.items())
            .set("spark.executor.extraJavaOptions", EXECUTOR_JAVA_OPTS)
        )
        for k, v in (conf or {}).items():
            c.set(k, str(v))
        assert _GATEWAY_PROPS is not None, "launch_gateway() must start the driver JVM first"
        assert gateway_spark_props() == _GATEWAY_PROPS, (
            f"the driver JVM's spark.* system properties changed since launch: {gateway_spark_props()} "
            f"!= {_GATEWAY_PROPS}; they would be defaults of this app")
        try:
            self.sc = SparkContext(conf=c)
        except Exception:
            self.tap.stop()
            raise
        self.jsc = self.sc._jsc.sc()
        self.app_id = self.sc.applicationId
        self._start_watchdog(budget_s)
        try:
            # Both executors up before any job, so map outputs land on both of them.
            self.initial_executors = self.wait_executors(self.N_EXEC)
        except Exception:
            self.stop()
            raise

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _start_watchdog(self, budget_s: float):
        """No job of this application may run past the budget (a hung server must not hang the suite)."""
        self.expired = False
        self._watchdog = threading.Timer(budget_s, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self):
        self.expired = True
        try:
            self.sc.cancelAllJobs()
        except Exception:
            pass

    def stop(self):
        self._watchdog.cancel()
        try:
            self.sc.stop()
        finally:
            self.tap.stop()
        assert not self.expired, "the test's Spark jobs ran past their time budget and were cancelled"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- observation -------------------------------------------------------------------------------------------
    def settle(self, timeout_ms: int = 30_000):
        """Wait until every listener event so far is processed, so the REST API / status store are current."""
        self.jsc.listenerBus().waitUntilEmpty(timeout_ms)

    def rest(self, path: str):
        url = f"{self.sc.uiWebUrl}/api/v1/applications/{self.app_id}{path}"
        with urllib.request.urlopen(url, timeout=15) as r:
            return json.load(r)

    def block_managers(self) -> int:
        """Block managers known to the driver's BlockManagerMaster (the driver's own included)."""
        return int(self.jsc.getExecutorMemoryStatus().size())

    def active_executors(self) -> list[str]:
        self.settle()
        return sorted(e["id"] for e in self.rest("/executors") if e["id"] != "driver" and e["isActive"])

    def wait_executors(self, n: int, exclude: set[str] = frozenset(), timeout_s: float = 120) -> list[str]:
        def ok():
            if self.block_managers() != n + 1:
                return None
            ids = self.active_executors()
            return ids if len(ids) == n and not (set(ids) & set(exclude)) else None

        return wait_until(ok, timeout_s, 0.25, f"{n} live executors (not {sorted(exclude)})")

    def kill_all_executors(self, timeout_s: float = 60) -> list[str]:
        """Kill every executor through the driver and wait until the driver has forgotten all of them."""
        ids = self.active_executors()
        assert ids, "no executors to kill"
        for e in ids:
            assert self.jsc.killExecutor(e), f"killExecutor({e}) refused"

        def gone():
            if self.block_managers() != 1:
                return False
            self.settle()
            alive = {x["id"] for x in self.rest("/allexecutors") if x["isActive"] and x["id"] != "driver"}
            return not (alive & set(ids))

        wait_until(gone, timeout_s, 0.25, f"executors {ids} to be removed")
        return ids

    def replace_all_executors(self, timeout_s: float = 120) -> tuple[list[str], list[str]]:
        old = self.kill_all_executors()
        assert self.jsc.requestExecutors(self.N_EXEC), "requestExecutors refused"
        new = self.wait_executors(self.N_EXEC, exclude=set(old), timeout_s=timeout_s)
        return old, new

    def jobs_of_group(self, group: str) -> list[dict]:
        self.settle()
        ids = list(self.sc.statusTracker().getJobIdsForGroup(group))
        return [self.rest(f"/jobs/{j}") for j in sorted(ids)]

    def stage_attempts(self, stage_id: int) -> list[dict]:
        return self.rest(f"/stages/{stage_id}")

    def all_failed_tasks(self) -> int:
        self.settle()
        return sum(s.get("numFailedTasks", 0) for s in self.rest("/stages"))

    def read_metrics(self, group: str) -> dict:
        """Summed shuffle-read metrics and stage states of the jobs of a job group (from the REST API)."""
        out = {"remote_blocks": 0, "local_blocks": 0, "remote_bytes": 0, "local_bytes": 0, "records": 0,
               "stages": [], "failed_tasks": 0, "job_status": []}
        for job in self.jobs_of_group(group):
            out["job_status"].append(job["status"])
            out["failed_tasks"] += job["numFailedTasks"]
            for sid in job["stageIds"]:
                for att in self.stage_attempts(sid):
                    out["stages"].append((sid, att["attemptId"], att["status"], att["numTasks"],
                                          att["numFailedTasks"]))
                    out["remote_blocks"] += att.get("shuffleRemoteBlocksFetched", 0)
                    out["local_blocks"] += att.get("shuffleLocalBlocksFetched", 0)
                    out["remote_bytes"] += att.get("shuffleRemoteBytesRead", 0)
                    out["local_bytes"] += att.get("shuffleLocalBytesRead", 0)
                    out["records"] += att.get("shuffleReadRecords", 0)
        return out

    # -- the server's side, as seen on the wire -------------------------------------------------------------------
    def registrations(self) -> dict[str, dict]:
        assert not self.tls, "under TLS the tap sees no RegisterExecutor; ask the server (the agent's /status)"
        return {r["exec"]: r for r in self.tap.rpcs("RegisterExecutor")}

    def executor_dirs(self) -> list[Path]:
        """Every local dir this application's executors registered with the service."""
        return sorted({Path(d) for r in self.registrations().values() for d in r["local_dirs"]})

    def files(self, pattern: str) -> list[Path]:
        """Files matching `pattern` in this application's executor dirs (as registered, seen on the wire)."""
        return sorted({p for d in self.executor_dirs() for p in d.rglob(pattern) if p.is_file()})

