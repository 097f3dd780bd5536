#!/usr/bin/env python3
"""Side-by-side bench: spark-shuffle-agent vs Spark's JVM external shuffle service.

Both servers serve the same files to the same real Spark client (ExternalBlockStoreClient from the
pyspark 4.3.0 jars, driven by tests/java/ShuffleClientDriver.java in `load` mode). Each server is pinned
to core 0 and the client to core 1 (taskset), one server at a time. For every block-size profile the
client first warms up (JIT, page cache), then runs a bounded measured load; the bench reads the
server's CPU time (utime+stime of /proc/<pid>/stat) before and after, and its peak RSS (VmHWM).

Profiles `4k`, `mixed` and `1m` name blocks of a few map outputs per call, reduce after reduce of each; `4k-reducer`
has the shape of Spark's usual reducer fetch: one reduce partition from each of 64 map outputs per call, so the
server resolves a map output (index, path, open file) for every block.

With `--auth crypto` (or `gcm`, `sasl`) both servers run with spark.authenticate=true and the client authenticates
with the same secret and keys, so every block goes through the session cipher (`crypto`: AuthEngine + AES-CTR,
Spark's default with spark.network.crypto.enabled=true; `gcm`: AES-GCM; `sasl`: DIGEST-MD5, no encryption).
`--handshakes N` then also times N new connections per client kind (none, SASL, AuthEngine) against each server:
client wall time per connection and server CPU per connection.

Run:   .venv/bin/python benches/side_by_side.py [--seconds 10] [--profiles 4k,4k-reducer,mixed,1m] [--json out.json]
                                            [--auth none|sasl|crypto|gcm] [--handshakes 2000]
Needs: target/release/spark-shuffle-agent (cargo build --release), .venv with pyspark (tests/run-all.sh).
Every load loop is bounded by a call count and by time; servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "spark"))

from client_driver import JavaDriver, compile_driver  # noqa: E402
from servers import find_agent_bin, start_agent, start_jvm_ess  # noqa: E402
from shuffle_layout import make_executor_dirs  # noqa: E402
from spark_auth import MODES, SECRET, start_auth_server  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
APP = "app-bench-0000"
EXEC = "0"


@dataclass
class Profile:
    name: str
    maps: int
    sizes: list[list[int]]  # sizes[map][reduce]
    ids_per_call: int
    concurrency: int
    # "map": a call names consecutive reduces of one map output (then the next map's);
    # "reducer": a call names one reduce of every map output, and successive calls take successive reduces.
    shape: str = "map"

    def total_bytes(self) -> int:
        return sum(sum(s) for s in self.sizes)


def make_profiles(rng: random.Random) -> dict[str, Profile]:
    four_k = Profile("4 KiB", 32, [[4096] * 64 for _ in range(32)], 64, 8)
    # Lognormal with a 32 KiB median (sigma 1.0), clipped to [64 B, 8 MiB].
    mixed_sizes = [
        [int(min(8 << 20, max(64, math.exp(rng.gauss(math.log(32 << 10), 1.0))))) for _ in range(32)]
        for _ in range(32)
    ]
    mixed = Profile("mixed (lognormal, median 32 KiB)", 32, mixed_sizes, 32, 8)
    one_m = Profile("1 MiB", 16, [[1 << 20] * 16 for _ in range(16)], 8, 4)
    reducer = Profile("4 KiB reducer (1 block from each of 64 maps per call)", 64,
                      [[4096] * 64 for _ in range(64)], 64, 8, shape="reducer")
    return {"4k": four_k, "4k-reducer": reducer, "mixed": mixed, "1m": one_m}


def write_profile(dirs, shuffle_id: int, prof: Profile) -> list[list[str]]:
    """Writes the map outputs; returns the id lists of the fetch calls in the profile's shape."""
    calls = []
    for m in range(prof.maps):
        dirs.write_map_output(shuffle_id, m, prof.sizes[m], checksum_algorithms=())
    if prof.shape == "reducer":
        reduces = min(len(s) for s in prof.sizes)
        for r in range(reduces):
            maps = [f"shuffle_{shuffle_id}_{m}_{r}" for m in range(prof.maps)]
            for start in range(0, len(maps), prof.ids_per_call):
                calls.append(maps[start:start + prof.ids_per_call])
        return calls
    for m in range(prof.maps):
        reduces = len(prof.sizes[m])
        for start in range(0, reduces, prof.ids_per_call):
            calls.append([f"shuffle_{shuffle_id}_{m}_{r}" for r in range(start, min(reduces, start + prof.ids_per_call))])
    return calls


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" : state is fields[0]; utime and stime are stat fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class pinned:
    """Runs the block with this process's CPU affinity set to `cpus`; processes started inside inherit it."""

    def __init__(self, *cpus: int):
        self.cpus = set(cpus)

    def __enter__(self):
        self.saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.cpus)

    def __exit__(self, *exc):
        os.sched_setaffinity(0, self.saved)


def client_auth(mode: str) -> dict:
    """The driver's keyword arguments for a client of `mode` (none: no spark.authenticate)."""
    return {} if mode == "none" else {"secret": SECRET, "conf": MODES[mode]}


def run_load(driver: JavaDriver, port: int, ids: list[str], concurrency: int, count: int, seconds: float,
             ids_per_call: int | None = None, auth: str = "none") -> dict:
    """One load run; with `ids_per_call` the driver splits `ids` into calls of that many, round robin,
    otherwise every call names all of `ids`."""
    steps = [["load", "--exec", EXEC, "--ids", ",".join(ids), "--concurrency", concurrency, "--count", count,
              "--seconds", seconds]]
    if ids_per_call:
        steps[0] += ["--ids-per-call", ids_per_call]
    with pinned(1):
        res = driver.run(steps, port=port, app=APP, timeout_s=seconds + 60, jvm_opts=("-XX:ActiveProcessorCount=1",),
                         **client_auth(auth))
    return [x for x in res.lines if x.get("op") == "load"][-1]


# The client kinds of the handshake rows: a server with spark.network.crypto.enabled=true also takes SASL
# clients (spark.network.crypto.saslFallback, on by default in both servers).
HANDSHAKES = {"none": "TCP connect, no spark.authenticate", "sasl": "SASL DIGEST-MD5 handshake",
              "crypto": "AuthEngine handshake (AES-CTR)"}


def bench_handshakes(driver: JavaDriver, pid: int, port: int, count: int) -> dict:
    """Per client kind: `count` new connections one after another, each handshaking and closed at once."""
    out = {}
    for kind in HANDSHAKES:
        with pinned(1):
            driver.run([["connect", "--count", min(200, count), "--seconds", 10]], port=port, app=APP,
                       **client_auth(kind))  # warm-up (JIT)
            cpu0 = cpu_seconds(pid)
            res = driver.run([["connect", "--count", count, "--seconds", 60]], port=port, app=APP,
                             timeout_s=120, **client_auth(kind))
            cpu = cpu_seconds(pid) - cpu0
        r = [x for x in res.lines if x.get("op") == "connect"][-1]
        n = r["connections"]
        out[kind] = {"connections": n, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                     "cpu_us_per_conn": cpu * 1e6 / n if n else None}
    return out


def bench_server(kind: str, handle, driver: JavaDriver, dirs, workloads: dict, args) -> dict:
    pid = handle.proc.pid
    out = {"idle_rss_mib": rss_kib(pid, "VmRSS") / 1024}
    with pinned(1):
        dir_args = [a for d in dirs.local_dirs for a in ("--dir", d)]
        driver.run([["register", "--exec", EXEC, *dir_args, "--subdirs", dirs.subdirs]], port=handle.port, app=APP,
                   **client_auth(args.auth))
    for key, (prof, calls) in workloads.items():
        # One call's ids per load run: the load driver repeats the same call; pick the calls round robin by
        # running one load per call group would multiply JVM starts, so use a representative call of each map.
        ids = [i for c in calls[: max(1, 256 // prof.ids_per_call)] for i in c][: prof.ids_per_call * 8]
        per_call = None
        if prof.shape == "reducer":
            # Each call is one reduce from every map; the driver cycles through 8 reduces' calls.
            ids = [i for c in calls[:8] for i in c]
            per_call = prof.ids_per_call
        run_load(driver, handle.port, ids, prof.concurrency, 50, min(3.0, args.seconds), per_call, args.auth)  # warm-up
        cpu0 = cpu_seconds(pid)
        r = run_load(driver, handle.port, ids, prof.concurrency, args.max_calls, args.seconds, per_call, args.auth)
        cpu = cpu_seconds(pid) - cpu0
        gb = r["bytes"] / 1e9
        out[key] = {
            "blocks_per_s": r["blocks_per_s"],
            "mb_per_s": r["mb_per_s"],
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
            "cpu_s": cpu,
            "cpu_s_per_gb": cpu / gb if gb else None,
            "cpu_us_per_block": cpu * 1e6 / r["blocks"] if r["blocks"] else None,
            "blocks": r["blocks"],
            "failures": r["failures"],
            "first_error": r["first_error"],
        }
    if args.handshakes:
        out["handshakes"] = bench_handshakes(driver, pid, handle.port, args.handshakes)
    out["peak_rss_mib"] = rss_kib(pid, "VmHWM") / 1024
    return out


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def print_table(results: dict, workloads: dict) -> None:
    agent, jvm = results["agent"], results["jvm"]
    print()
    print("| profile | metric | agent | JVM ESS | agent / JVM |")
    print("|---|---|---:|---:|---:|")
    for key, (prof, _) in workloads.items():
        a, j = agent[key], jvm[key]
        rows = [
            ("blocks/s", "blocks_per_s", 0),
            ("MB/s", "mb_per_s", 1),
            ("p50 call latency (ms)", "p50_ms", 2),
            ("p99 call latency (ms)", "p99_ms", 2),
            ("server CPU-s per GB", "cpu_s_per_gb", 2),
            ("server CPU µs per block", "cpu_us_per_block", 1),
        ]
        for label, k, d in rows:
            print(f"| {prof.name} | {label} | {fmt(a[k], d)} | {fmt(j[k], d)} | {ratio(a[k], j[k])} |")
        if a["failures"] or j["failures"]:
            print(f"| {prof.name} | failures | {a['failures']} | {j['failures']} | |")
    for kind, label in (HANDSHAKES.items() if "handshakes" in agent else ()):
        a, j = agent["handshakes"][kind], jvm["handshakes"][kind]
        for metric, k, d in (("client ms per connection, p50", "p50_ms", 2), ("client ms per connection, p99", "p99_ms", 2),
                             ("server CPU µs per connection", "cpu_us_per_conn", 0)):
            print(f"| {label} | {metric} | {fmt(a[k], d)} | {fmt(j[k], d)} | {ratio(a[k], j[k])} |")
    print(f"| all | start to listening (ms) | {fmt(agent['start_ms'], 0)} | {fmt(jvm['start_ms'], 0)} | "
          f"{ratio(agent['start_ms'], jvm['start_ms'])} |")
    print(f"| all | idle RSS (MiB) | {fmt(agent['idle_rss_mib'])} | {fmt(jvm['idle_rss_mib'])} | "
          f"{ratio(agent['idle_rss_mib'], jvm['idle_rss_mib'])} |")
    print(f"| all | peak RSS (MiB) | {fmt(agent['peak_rss_mib'])} | {fmt(jvm['peak_rss_mib'])} | "
          f"{ratio(agent['peak_rss_mib'], jvm['peak_rss_mib'])} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per profile and server")
    ap.add_argument("--max-calls", type=int, default=2_000_000, help="upper bound of fetch calls per run")
    ap.add_argument("--profiles", default="4k,4k-reducer,mixed,1m")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--auth", choices=["none", *MODES], default="none",
                    help="spark.authenticate on both servers and the client, in this mode")
    ap.add_argument("--handshakes", type=int, default=0, help="also time this many new connections per client kind")
    args = ap.parse_args()

    venv = Path(os.environ.get("SPARK_VENV", REPO / ".venv"))
    spark_home = next(venv.glob("lib/python3*/site-packages/pyspark"))
    jars = spark_home / "jars"
    agent_bin = find_agent_bin(REPO)
    if agent_bin is None:
        print("build the agent first: cargo build --release", file=sys.stderr)
        return 2
    build = compile_driver(REPO / "tests" / "java", REPO / "tests" / "java" / "build", jars)
    driver = JavaDriver(build, jars)

    work = Path(tempfile.mkdtemp(prefix="shuffle-bench-"))
    try:
        root = work / "root"
        dirs = make_executor_dirs(str(root / "blockmgr-bench"), n_dirs=2, subdirs=64)
        rng = random.Random(args.seed)
        all_profiles = make_profiles(rng)
        workloads = {}
        for i, key in enumerate(args.profiles.split(",")):
            prof = all_profiles[key]
            workloads[key] = (prof, write_profile(dirs, i, prof))
        results = {}
        for kind in ("agent", "jvm"):
            with pinned(0):
                (work / kind).mkdir(parents=True, exist_ok=True)
                if args.auth != "none":
                    handle = start_auth_server(kind, args.auth, work / kind, str(root), spark_home)
                elif kind == "agent":
                    handle = start_agent(agent_bin, work / kind, [str(root)])
                else:
                    handle = start_jvm_ess(spark_home, work / kind, str(root))
            try:
                results[kind] = bench_server(kind, handle, driver, dirs, workloads, args)
            finally:
                handle.stop()
            with pinned(0):
                results[kind]["start_ms"] = time_to_listen(kind, agent_bin, spark_home, work / f"{kind}-start", root)
        print_machine(args.auth)
        print_table(results, workloads)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def time_to_listen(kind: str, agent_bin: Path, spark_home: Path, work: Path, root: Path) -> float:
    """Milliseconds from spawning the server to its port accepting a connection (1 ms polling)."""
    import socket

    from servers import free_port

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    if kind == "agent":
        argv = [str(agent_bin), "--bind", "127.0.0.1", "--port", str(port), "--root", str(root),
                "--state-dir", str(work / "state")]
    else:
        conf = work / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "spark-defaults.conf").write_text(
            f"spark.shuffle.service.port {port}\nspark.shuffle.service.db.enabled false\nspark.local.dir {root}\n")
        env.update(SPARK_HOME=str(spark_home), SPARK_CONF_DIR=str(conf), SPARK_NO_DAEMONIZE="1")
        argv = [str(spark_home / "bin" / "spark-class"), "org.apache.spark.deploy.ExternalShuffleService"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = t0 + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                s.settimeout(0.05)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return (time.monotonic() - t0) * 1000
            time.sleep(0.001)
        return float("nan")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def print_machine(auth: str) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores ({cpu}), kernel {os.uname().release}; "
          f"server pinned to core 0, client (Spark 4.3.0 ExternalBlockStoreClient, Java 17) to core 1; "
          f"spark.authenticate: {'off' if auth == 'none' else auth + ' ' + str(MODES[auth])}")


if __name__ == "__main__":
    sys.exit(main())
