"""Compile and run tests/java/ShuffleClientDriver.java (Spark's real ExternalBlockStoreClient) from Python."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DRIVER_SOURCES = ["ShuffleClientDriver.java"]

# Client-side logging of the driver JVM goes to stderr at WARN, so stdout carries only JSON lines.
DRIVER_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n%ex
"""

CHUNK_PREFIX = re.compile(r"^Failure while fetching StreamChunkId\[[^\]]*\]: ")


def compile_driver(java_src_dir: Path, build_root: Path, jars_dir: Path, javac: str = "javac") -> Path:
    """Compile the driver into build_root/<source-hash>/ (reused when the sources are unchanged).

    Compiles into a fresh temp dir first and renames it into place, so concurrent sessions never see a
    half-written build.
    """
    h = hashlib.sha256()
    for name in DRIVER_SOURCES:
        h.update((java_src_dir / name).read_bytes())
    h.update(str(jars_dir).encode())
    out = build_root / h.hexdigest()[:16]
    if (out / "OK").exists():
        return out
    build_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="compile-", dir=build_root))
    try:
        cmd = [javac, "-nowarn", "-encoding", "UTF-8", "-d", str(tmp), "-cp", f"{jars_dir}/*"]
        cmd += [str(java_src_dir / n) for n in DRIVER_SOURCES]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"javac failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        (tmp / "log4j2-driver.properties").write_text(DRIVER_LOG4J2)
        (tmp / "OK").write_text("ok\n")
        try:
            os.rename(tmp, out)
        except OSError:
            # Another session won the race; use its build.
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and tmp != out:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def register_step(exec_id: str, ex) -> list[str]:
    """The driver's `register` step for executor `exec_id` with the dirs of `ex` (shuffle_layout.ExecutorDirs)."""
    s = ["register", "--exec", exec_id]
    for d in ex.local_dirs:
        s += ["--dir", d]
    return s + ["--subdirs", str(ex.subdirs)]


def server_text(rec: dict) -> str:
    """The first line of the error text the SERVER sent, recovered from the client's exception.

    * ChunkFetchFailure -> ChunkFetchFailureException("Failure while fetching StreamChunkId[...]: <text>")
    * RpcFailure / StreamFailure -> RuntimeException(<text>), possibly wrapped by sendRpcSync
      (RuntimeException(cause)); the innermost exception of the chain carries the text.
    """
    chain = rec.get("chain") or []
    if not chain:
        return rec.get("error", "")
    inner = chain[-1]
    msg = inner.get("message", "")
    if inner.get("class", "").endswith("ChunkFetchFailureException"):
        msg = CHUNK_PREFIX.sub("", msg)
    return msg


@dataclass
class DriverResult:
    argv: list[str]
    returncode: int
    lines: list[dict]
    stdout: str
    stderr: str
    non_json: list[str] = field(default_factory=list)
    offset: int = 0  # steps prepended by a helper (e.g. a registration) are hidden from step numbers

    def shifted(self, n: int) -> "DriverResult":
        return DriverResult(self.argv, self.returncode, self.lines, self.stdout, self.stderr, self.non_json,
                            self.offset + n)

    def step(self, i: int) -> list[dict]:
        return [x for x in self.lines if x.get("step") == i + self.offset]

    def one(self, i: int) -> dict:
        recs = self.step(i)
        assert len(recs) == 1, f"step {i}: expected 1 record, got {recs}\n{self.debug()}"
        return recs[0]

    def blocks(self, i: int) -> dict[str, dict]:
        """Per-block fetch records of step i, keyed by block id (asserts no duplicate callbacks)."""
        out = {}
        for x in self.step(i):
            if x.get("op") == "fetch" and "block" in x:
                assert x["block"] not in out, f"duplicate callback for {x['block']}: {self.debug()}"
                out[x["block"]] = x
        return out

    def summary(self, i: int) -> dict:
        s = [x for x in self.step(i) if x.get("done")]
        assert len(s) == 1, f"step {i}: no summary line\n{self.debug()}"
        return s[0]

    def debug(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-60:])
        return f"argv={' '.join(self.argv)}\nrc={self.returncode}\nstdout:\n{self.stdout}\nstderr (tail):\n{tail}"


class JavaDriver:
    """Runs ShuffleClientDriver steps against one server. One invocation = one client = one connection pool."""

    def __init__(self, build_dir: Path, jars_dir: Path, java: str = "java", log_dir: Path | None = None):
        self.build_dir = build_dir
        self.jars_dir = jars_dir
        self.java = java
        self.log_dir = log_dir
        self._n = 0

    def argv(self, steps, port=None, app=None, conf=None, timeout_s=60, host="127.0.0.1", jvm_opts=(), secret=None):
        argv = [
            self.java,
            "-Xmx512m",
            f"-Dlog4j2.configurationFile={self.build_dir / 'log4j2-driver.properties'}",
            *jvm_opts,
            "-cp",
            f"{self.build_dir}:{self.jars_dir}/*",
            "ShuffleClientDriver",
            "--host",
            host,
            "--timeout-s",
            str(timeout_s),
        ]
        if port is not None:
            argv += ["--port", str(port)]
        if app is not None:
            argv += ["--app", app]
        if secret is not None:
            argv += ["--secret", secret]
        for k, v in (conf or {}).items():
            argv += ["--conf", f"{k}={v}"]
        for i, s in enumerate(steps):
            if i:
                argv.append("--then")
            argv += [str(a) for a in s]
        return argv

    def run(self, steps, port=None, app=None, conf=None, timeout_s=60, proc_timeout_s=None, **kw) -> DriverResult:
        argv = self.argv(steps, port=port, app=app, conf=conf, timeout_s=timeout_s, **kw)
        # Bound the whole process too: every step has its own timeout, plus JVM start and slack.
        limit = proc_timeout_s or (timeout_s * len(steps) + 60)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
        lines, junk = [], []
        for ln in r.stdout.splitlines():
            ln = ln.strip()
            if not ln:
                continue
            if ln.startswith("{"):
                lines.append(json.loads(ln))
            else:
                junk.append(ln)
        res = DriverResult(argv, r.returncode, lines, r.stdout, r.stderr, junk)
        if self.log_dir is not None:
            self._n += 1
            (self.log_dir / f"driver-{self._n:03d}.log").write_text(res.debug())
        assert r.returncode == 0, f"driver failed\n{res.debug()}"
        assert not junk, f"non-JSON output on stdout: {junk}\n{res.debug()}"
        return res
