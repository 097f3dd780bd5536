"""Start and stop the server under test: our agent, or Spark's own JVM external shuffle service.

Both listen on 127.0.0.1 (the JVM ESS binds the wildcard address; clients only ever dial 127.0.0.1) and are
given a root directory under which all executor local dirs of the tests live:
  * agent:  --root ROOT (it serves only files under its roots)
  * JVM:    spark.local.dir ROOT (its LocalDirValidator refuses localDirs outside it, NOTES D5)
Every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ADDR = re.compile(r"addr=\"?(127\.0\.0\.1):(\d+)")
METRICS_ADDR = re.compile(r"metrics listening addr=\"?127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(cond, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll cond() until truthy; raise TimeoutError after `timeout` seconds. Returns cond()'s value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServerHandle:
    kind: str  # "agent" | "jvm"
    host: str
    port: int
    roots: list[str]
    log_path: Path
    proc: subprocess.Popen
    argv: list[str]
    env_note: str = ""
    _threads: list = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def signal(self, sig: int, timeout_s: float = 40.0) -> int:
        """Send `sig` to this server's process group and wait (bounded) for it to exit; its exit code
        (negative = killed by that signal, as subprocess reports it). Output pumps are joined too."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        rc = self.proc.wait(timeout=timeout_s)
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, bounded wait, then SIGKILL. Only this process (and its own session) is signalled."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=5)
        return self.proc.returncode


def _pump(stream, log_file, on_line=None):
    """Copy a child's output to its log file line by line (so pipes never fill)."""
    with open(log_file, "a", encoding="utf-8", errors="replace") as f:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            f.write(line)
            f.flush()
            if on_line is not None:
                on_line(line)
    stream.close()


# ---------------------------------------------------------------------------------------------------------------
# Spark's JVM ESS


def start_jvm_ess(spark_home: Path, work_dir: Path, root: str, extra_conf: dict | None = None,
                  timeout_s: float = 90.0) -> ServerHandle:
    conf_dir = work_dir / "jvm-ess-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = {
        "spark.shuffle.service.port": str(port),
        "spark.shuffle.service.db.enabled": "false",
        # LocalDirValidator (4.3.0) accepts only executor localDirs canonically under these dirs.
        "spark.local.dir": root,
    }
    conf.update(extra_conf or {})
    (conf_dir / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    log_path = work_dir / "jvm-ess.log"
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_LOCAL_DIRS", "SPARK_CONF_DIR")}
    env.update(SPARK_HOME=str(spark_home), SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP="127.0.0.1")
    argv = [str(spark_home / "bin" / "spark-class"), "org.apache.spark.deploy.ExternalShuffleService"]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=str(work_dir))
    h = ServerHandle("jvm", "127.0.0.1", port, [root], log_path, proc, argv,
                     env_note=f"SPARK_CONF_DIR={conf_dir}")

    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"JVM ESS exited with {proc.returncode} during start-up:\n{h.log_tail()}")
        return port_accepts("127.0.0.1", port)

    try:
        wait_until(ready, timeout_s, 0.2, f"JVM ESS to accept connections on 127.0.0.1:{port}")
    except Exception:
        h.stop()
        raise
    return h


# ---------------------------------------------------------------------------------------------------------------
# Our agent


def find_agent_bin(repo: Path) -> Path | None:
    env = os.environ.get("AGENT_BIN")
    if env:
        return Path(env)
    for prof in ("release", "debug"):
        p = repo / "target" / prof / "spark-shuffle-agent"
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def start_agent(binary: Path, work_dir: Path, roots: list[str], extra_args: list[str] | None = None,
                timeout_s: float = 30.0, port: int = 0, state_dir: Path | None = None) -> ServerHandle:
    """Start the agent on 127.0.0.1:`port` (0 = any free port) with `state_dir` (default <work_dir>/agent-state).

    A fixed port matters for restart tests: the agent records the port of its registrations only when it is
    not 0, and refuses to start on another one later (registry::pin_port)."""
    state_dir = Path(state_dir) if state_dir is not None else work_dir / "agent-state"
    state_dir.mkdir(parents=True, exist_ok=True)
    # --metrics-port 0: the default metrics port (7338) is fixed and would collide between agents.
    argv = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--metrics-port", "0"]
    for r in roots:
        argv += ["--root", r]
    argv += ["--state-dir", str(state_dir)]
    argv += extra_args or []
    return _launch_agent(argv, work_dir, list(roots), timeout_s)


def agent_argv_on_port(h: ServerHandle, port: int) -> list[str]:
    """The argv `h` was started with, with its --port replaced (same state dir, roots and other flags)."""
    argv = list(h.argv)
    i = argv.index("--port")
    argv[i + 1] = str(port)
    return argv


def restart_agent(h: ServerHandle, port: int | None = None, timeout_s: float = 30.0) -> ServerHandle:
    """Start the agent again with h's argv (same --state-dir, so it recovers h's registrations) on `port`
    (default: the port h was listening on). `h` must have exited. Its log goes on in the same file."""
    assert not h.alive(), "restart_agent: the previous agent is still running"
    argv = agent_argv_on_port(h, h.port if port is None else port)
    return _launch_agent(argv, h.log_path.parent, list(h.roots), timeout_s)


def agent_metrics_url(h: ServerHandle) -> str:
    """http://127.0.0.1:PORT of the agent's metrics server, from its last `metrics listening addr=` line
    (the log of a restarted agent holds one such line per start; the last one is the running process's)."""
    ports = [m.group(1) for m in METRICS_ADDR.finditer(ANSI.sub("", h.log_text()))]
    assert ports, f"no 'metrics listening addr=' line in {h.log_path}"
    return f"http://127.0.0.1:{ports[-1]}"


def scrape_metrics(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """GET <url>/metrics and return {'name{labels}': value} for every sample line (Prometheus text format)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as r:
        text = r.read().decode("utf-8", errors="replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _launch_agent(argv: list[str], work_dir: Path, roots: list[str], timeout_s: float) -> ServerHandle:
    log_path = work_dir / "agent.log"
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env.setdefault("RUST_BACKTRACE", "1")
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True, cwd=str(work_dir))
    found: dict = {}
    got = threading.Event()

    def on_line(line: str):
        if got.is_set():
            return
        clean = ANSI.sub("", line)
        m = ADDR.search(clean)
        if "listening" in clean and m:
            found["port"] = int(m.group(2))
            got.set()

    threads = [
        threading.Thread(target=_pump, args=(proc.stderr, log_path, on_line), daemon=True),
        threading.Thread(target=_pump, args=(proc.stdout, log_path, on_line), daemon=True),
    ]
    for t in threads:
        t.start()
    h = ServerHandle("agent", "127.0.0.1", -1, list(roots), log_path, proc, argv, _threads=threads)

    def ready():
        if got.is_set():
            return True
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode} during start-up:\n{h.log_tail()}")
        return False

    try:
        wait_until(ready, timeout_s, 0.05, "the agent's 'listening addr=127.0.0.1:PORT' line")
        h.port = found["port"]
        wait_until(lambda: port_accepts("127.0.0.1", h.port), 10, 0.05, f"agent port {h.port}")
    except Exception:
        h.stop()
        raise
    return h
