"""Fixtures of the real-Spark compatibility suite.

Every test runs against a *server fixture* that is either our agent or Spark's own JVM external shuffle
service. Select it with `--server=agent|jvm|both` or env `SHUFFLE_SERVER` (default: agent). With `both`,
every server-using test runs once per kind (ids `[agent]` / `[jvm]`). Running against the JVM ESS proves the
tests themselves are right; running against the agent proves the agent is indistinguishable.

Environment knobs:
  SHUFFLE_SERVER      agent | jvm | both (default agent)
  AGENT_BIN           path of the agent binary (default target/release or target/debug spark-shuffle-agent)
  SPARK_VENV          venv holding pyspark (default <repo>/.venv)
  SHUFFLE_DRIVER_BUILD  where the Java driver is compiled (default tests/java/build, git-ignored)
  SKIP_HUGE_BLOCK=1   skip the > 2 GiB sparse-file stream test (needs ~2.2 GiB of free disk for the download)

Helpers (not fixtures) live next to this file: shuffle_layout.py (the on-disk layout generator),
client_driver.py (compile/run the Java driver), servers.py (start/stop servers), wiretap.py (frame-decoding
relay used by the job tests).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client_driver import JavaDriver, compile_driver  # noqa: E402
from servers import find_agent_bin, start_agent, start_jvm_ess  # noqa: E402
from shuffle_layout import ExecutorDirs, make_executor_dirs  # noqa: E402
from spark_cluster import launch_gateway, prepare_spark_home, set_spark_env  # noqa: E402

REPO = HERE.parent.parent
KINDS = ("agent", "jvm")


def pytest_addoption(parser):
    parser.addoption(
        "--server",
        action="store",
        default=None,
        choices=("agent", "jvm", "both"),
        help="server under test (default: env SHUFFLE_SERVER or 'agent')",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "huge: > 2 GiB block test (skip with SKIP_HUGE_BLOCK=1)")
    config.addinivalue_line("markers", "spark_job: runs real pyspark jobs in local-cluster mode")
    config.addinivalue_line("markers", "image: builds the agent image and runs it from its unpacked filesystem")
    config.addinivalue_line("markers", "jvm_since(version, why): the JVM service behaves so only from this Spark "
                                       "version on; against an older line's JVM service the test must fail")


def spark_line_version() -> tuple[int, ...]:
    return tuple(int(x) for x in os.environ.get("SPARK_LINE", "4.3.0").split("."))


def pytest_collection_modifyitems(config, items):
    """Spark lines (tests/run-spark-lines.sh): the agent behaves as Spark 4.3's JVM service whatever the
    client line, so its tests run unchanged. Against an older line's own JVM service, a test that checks
    a newer JVM behaviour is a strict xfail: it must fail there, and the reason says what differs."""
    line = spark_line_version()
    for item in items:
        mark = item.get_closest_marker("jvm_since")
        params = getattr(item, "callspec", None)
        if mark is None or params is None or params.params.get("server_kind") != "jvm":
            continue
        since, why = mark.args
        if line < tuple(int(x) for x in since.split(".")):
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"JVM service of Spark {'.'.join(map(str, line))}: {why}"))


def selected_kinds(config) -> list[str]:
    v = config.getoption("--server") or os.environ.get("SHUFFLE_SERVER", "agent")
    v = v.strip().lower()
    if v == "both":
        return list(KINDS)
    if v not in KINDS:
        raise pytest.UsageError(f"SHUFFLE_SERVER must be agent, jvm or both, not {v!r}")
    return [v]


def pytest_generate_tests(metafunc):
    if "server_kind" in metafunc.fixturenames:
        metafunc.parametrize("server_kind", selected_kinds(metafunc.config), scope="session")


# ---------------------------------------------------------------------------------------------------------------
# Environment discovery


class SparkPaths:
    def __init__(self):
        venv = Path(os.environ.get("SPARK_VENV", REPO / ".venv"))
        line = os.environ.get("SPARK_LINE")
        if line:
            self.pyspark = spark_line_pyspark(line)
        else:
            cands = sorted(venv.glob("lib/python3*/site-packages/pyspark"))
            if not cands:
                pytest.exit(f"pyspark not found under {venv}", returncode=3)
            self.pyspark = cands[-1]
        self.venv = venv
        self.jars = self.pyspark / "jars"
        self.bin = self.pyspark / "bin"
        for need in (self.jars, self.bin / "spark-class"):
            if not need.exists():
                pytest.exit(f"missing {need}", returncode=3)
        if not list(self.jars.glob("spark-network-shuffle_*.jar")):
            pytest.exit(f"no spark-network-shuffle jar in {self.jars}", returncode=3)
        self.java = shutil.which("java") or "java"
        self.javac = shutil.which("javac") or "javac"
        self.python = sys.executable


def spark_line_pyspark(line: str) -> Path:
    """SPARK_LINE=3.5.8 (tests/run-spark-lines.sh): this process must really be running that pyspark
    (PYTHONPATH=.spark-lines/pyspark-3.5.8), and the client jars are that pyspark's, so the Java driver,
    the job tests' driver and executors, and the JVM service are all of that line."""
    import pyspark

    if pyspark.__version__ != line:
        pytest.exit(f"SPARK_LINE={line} but pyspark {pyspark.__version__} is imported from {pyspark.__file__}; "
                    f"put .spark-lines/pyspark-{line} first on PYTHONPATH", returncode=3)
    return Path(pyspark.__file__).resolve().parent


@pytest.fixture(scope="session")
def spark_paths() -> SparkPaths:
    return SparkPaths()


@pytest.fixture(scope="session")
def java_driver(spark_paths, tmp_path_factory) -> JavaDriver:
    """Spark's real client, compiled once per session (cached by source hash)."""
    build_root = Path(os.environ.get("SHUFFLE_DRIVER_BUILD", REPO / "tests" / "java" / "build"))
    build = compile_driver(REPO / "tests" / "java", build_root, spark_paths.jars, spark_paths.javac)
    logs = tmp_path_factory.mktemp("driver-logs")
    return JavaDriver(build, spark_paths.jars, spark_paths.java, log_dir=logs)


# ---------------------------------------------------------------------------------------------------------------
# Server under test


@pytest.fixture(scope="session")
def server_base(tmp_path_factory) -> Path:
    """<base>/root is the server's root (agent --root / JVM spark.local.dir); <base>/outside is not under it."""
    base = Path(os.path.realpath(tmp_path_factory.mktemp("ess")))
    (base / "root").mkdir()
    (base / "outside").mkdir()
    return base


@pytest.fixture(scope="session")
def server(server_kind, server_base, spark_paths, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"server-{server_kind}")
    root = str(server_base / "root")
    if server_kind == "jvm":
        h = start_jvm_ess(spark_paths.pyspark, work, root)
    else:
        binary = find_agent_bin(REPO)
        if binary is None or not binary.exists():
            pytest.fail(
                "agent binary not found: run `cargo build --release` or set AGENT_BIN "
                "(or run with SHUFFLE_SERVER=jvm to check the tests against Spark's own service)",
                pytrace=False,
            )
        h = start_agent(binary, work, [root])
    yield h
    rc = h.stop()
    print(f"\n[{server_kind}] server stopped rc={rc}; log: {h.log_path}")


@pytest.fixture
def ess(server):
    """The running server; fails the test if the server died during it (a crash is never a pass)."""
    assert server.alive(), f"{server.kind} server is not running:\n{server.log_tail()}"
    yield server
    assert server.alive(), f"{server.kind} server died during the test:\n{server.log_tail()}"


_app_counter = itertools.count(1)


@pytest.fixture
def app_id() -> str:
    """A fresh application id per test, so registrations never leak between tests."""
    return f"app-20260101000000-{next(_app_counter):04d}"


@pytest.fixture
def test_dir(server_base, request) -> Path:
    """A per-test directory under the server root."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:80]
    d = server_base / "root" / name
    n = 0
    while d.exists():
        n += 1
        d = server_base / "root" / f"{name}_{n}"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def outside_dir(server_base, request) -> Path:
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:80]
    d = server_base / "outside" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def make_exec_dirs(test_dir):
    """Factory: make_exec_dirs(name, n_dirs=2, subdirs=64) -> ExecutorDirs under this test's dir."""

    def make(name: str = "exec0", n_dirs: int = 2, subdirs: int = 64) -> ExecutorDirs:
        return make_executor_dirs(str(test_dir / name), n_dirs, subdirs)

    return make


class ShuffleClient:
    """Convenience wrapper: the Java driver bound to one server and one appId."""

    def __init__(self, driver: JavaDriver, server, app: str):
        self.driver, self.server, self.app = driver, server, app

    def run(self, *steps, conf=None, timeout_s=60, **kw):
        return self.driver.run(list(steps), port=self.server.port, app=self.app, conf=conf,
                               timeout_s=timeout_s, **kw)

    @staticmethod
    def register_step(exec_id: str, ex: ExecutorDirs | None = None, dirs=None, subdirs=None, manager=None):
        dirs = dirs if dirs is not None else ex.local_dirs
        subdirs = subdirs if subdirs is not None else (ex.subdirs if ex else 64)
        s = ["register", "--exec", exec_id]
        for d in dirs:
            s += ["--dir", d]
        s += ["--subdirs", str(subdirs)]
        if manager is not None:
            s += ["--manager", manager]
        return s

    @staticmethod
    def fetch_step(exec_id: str, ids, download: str | None = None, extra=()):
        s = ["fetch", "--exec", exec_id]
        for i in ids:
            s += ["--id", i]
        if download:
            s += ["--download", download]
        return s + list(extra)

    def register(self, exec_id: str, ex: ExecutorDirs, **kw):
        r = self.run(self.register_step(exec_id, ex, **kw))
        rec = r.one(0)
        assert rec["ok"], f"registration failed: {rec}\n{r.debug()}"
        return rec


@pytest.fixture
def shuffle_client(java_driver, ess, app_id) -> ShuffleClient:
    return ShuffleClient(java_driver, ess, app_id)


# ---------------------------------------------------------------------------------------------------------------
# pyspark jobs (SparkCluster): test_spark_jobs.py, test_restart.py, test_auth.py


@pytest.fixture(scope="session")
def spark_env(spark_paths, tmp_path_factory):
    """SPARK_HOME and friends for the driver JVM, which is started here, once, with no app's conf
    (spark_cluster.launch_gateway says why)."""
    home, conf = prepare_spark_home(spark_paths.pyspark, tmp_path_factory.mktemp("spark-env"))
    set_spark_env(home, conf)
    launch_gateway()
    return home


@pytest.fixture(scope="session")
def jobs_local_dir(server_base) -> Path:
    """spark.local.dir of every job: one per session (the driver JVM caches its local root dirs)."""
    d = server_base / "root" / "spark-jobs"
    d.mkdir(exist_ok=True)
    return d
