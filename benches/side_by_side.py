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

With `--tls` (`--tls pem`, the default, or `--tls keystore`) both servers run with spark.ssl.rpc.enabled=true and
one self-signed certificate (tests/spark/spark_tls.py), and the client connects over TLS as a Spark 4 executor does:
  * `pem`: both servers get `spark.ssl.rpc.certChain` + `privateKey` (PEM) and `openSslEnabled=true`, and so does
    the client (which then trusts exactly that chain), with the JVM option Spark's launcher gives every executor
    (-Dio.netty.handler.ssl.defaultEndpointVerificationAlgorithm=NONE). The JVM service and the client run
    Netty's OpenSSL engine (BoringSSL from the netty-tcnative jar Spark ships; the bench reports whether the JVM
    service loaded it); the agent runs rustls;
  * `keystore`: both servers get the same key and chain in a PKCS12 `spark.ssl.rpc.keyStore` (no openSslEnabled,
    Spark's default), the client a keystore of its own and a `trustStore` with the certificate: the JDK's TLS
    engine on the JVM service and the client.
The agent is started with agent.tls.plaintext=refuse (TLS only, as Spark's service), so no client reaches it in
plaintext. Before the loads the bench reads the cipher suite each server picks for this client out of the server's
ServerHello (one connection through a relay on 127.0.0.1) and prints it with the TLS engine: the suites can differ
between the servers (a JDK server picks by its own order, so does the agent, OpenSSL by the client's). Under TLS
the JVM service cannot use zero-copy (FileRegion): it reads file bodies and encrypts them in chunks of
spark.network.ssl.maxEncryptedBlockSize (64 KiB); the agent cannot use sendfile either. The bench reports block bytes
served as the client counted them, and the agent's user-space copies per byte written
(spark_shuffle_agent_bytes_copied_total). `--tls` combines with `--auth` (spark.authenticate runs inside TLS, and with
crypto/gcm the session cipher sits between TLS and the socket), and with `--handshakes` (every new connection then
includes the TLS handshake).

Profiles `cold` and `crowded` are driven by benches/loadgen.rs (`--addr`: the same RegisterExecutor and
FetchShuffleBlocks against either server) instead of Spark's client; each server is started fresh, loaded, stopped,
and the bench prints every metric loadgen printed, side by side, with both loadgen command lines:
  * `cold`: one pass over a `mixed-reducer` dataset of `--cold-gb` GB (default 8: more than fits comfortably in the
    page cache beside the rest), written once under `--loadgen-root` and evicted from the page cache (fsync +
    posix_fadvise DONTNEED) just before each server's pass; `--cold-connections` connections; beside the pass a
    page-cached 4 KiB block fetched every 10 ms on a connection of its own (`hot fetch`) and a registration every
    20 ms on a fresh connection;
  * `crowded`: `--crowd` connections (default 10,000) opened in one burst, each then making one small call a second
    (one in 100 registers, the others fetch one 4 KiB block), and the registration probe: connections in and not
    in (refused, timed out, connected but never answered), connect p50/p99, failed calls, registration p99, the
    server's RSS with the connections open and its peak RSS. Neither server's defaults are changed: what a server
    does not take shows as connections not in, and is repeated under the table.
A loadgen run that fails is reported under its table and makes the bench exit 1; the other server still runs.
The loadgen profiles take neither --auth nor --tls.

Every load run must serve every call: a failed block, a length that changed between fetches, a call that did not
complete, or a failed registration stops the bench with the client's first error and the server's log tail.

Run:   .venv/bin/python benches/side_by_side.py [--seconds 10] [--profiles 4k,4k-reducer,mixed,1m] [--json out.json]
                                            [--auth none|sasl|crypto|gcm] [--tls [pem|keystore]] [--handshakes 2000]
       .venv/bin/python benches/side_by_side.py --profiles cold,crowded [--cold-gb 8] [--cold-connections 16]
                                            [--crowd 10000] [--loadgen-root DIR]
Needs: target/release/spark-shuffle-agent (cargo build --release; or AGENT_BIN=/path/to/agent), .venv with pyspark
(tests/run-all.sh; or SPARK_VENV=/path/to/venv); for --tls also openssl and keytool on PATH; for cold and crowded the
loadgen bench (built with `cargo bench --bench loadgen --no-run`; or LOADGEN_BIN=/path/to/it).
Every load loop is bounded by a call count and by time; servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
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
from servers import agent_metrics_url, find_agent_bin, scrape_metrics, start_agent, start_jvm_ess  # noqa: E402
from shuffle_layout import make_executor_dirs  # noqa: E402
from spark_auth import MODES, SECRET, auth_conf, start_auth_server  # noqa: E402
from spark_tls import (EXECUTOR_JVM_OPTS, Cert, keystore_keys, pem_client_conf, server_conf,  # noqa: E402
                       start_tls_server)
from spark_tls import client_conf as jdk_client_conf  # noqa: E402

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


class BenchError(RuntimeError):
    """A client error in a run: the bench stops, since a number from a run with errors means nothing."""


# The TLS key modes of --tls. The default, `pem`, is what executors of a Spark 4 deployment on Kubernetes (where this
# agent runs) use: their keys come as PEM files (a cert-manager Certificate, or any kubernetes.io/tls Secret, is
# tls.crt + tls.key, the form docs/security.md sets the agent up with), and Spark's client reads PEM files only with
# spark.ssl.rpc.openSslEnabled=true (its JDK path takes keystores only, TransportConf.sslRpcEnabledAndKeysAreValid).
# With PEM keys executors and the service share one certificate (the PEM client trusts exactly its certChain).
# `keystore` is the other way, Spark's default (openSslEnabled=false): JDK keystores, the JDK's TLS engine.
TLS_MODES = {
    "pem": "PEM certChain + privateKey, openSslEnabled=true (Netty OpenSSL engine on the JVM side)",
    "keystore": "PKCS12 keyStore, client trustStore (JDK TLS engine on the JVM side)",
}


@dataclass
class Security:
    """What both servers and the client are given: spark.authenticate (`auth`) and TLS (`tls`, None: off)."""

    auth: str = "none"
    tls: str | None = None
    server_tls: dict | None = None  # the spark.ssl.rpc.* keys of both servers
    client_tls: dict | None = None  # the client's spark.ssl.rpc.* keys
    cert: Cert | None = None

    @classmethod
    def make(cls, auth: str, tls: str | None, directory: Path) -> "Security":
        if tls is None:
            return cls(auth)
        cert = Cert(directory, "server")
        if tls == "pem":
            return cls(auth, tls, server_conf(cert), pem_client_conf(cert), cert)
        keys = keystore_keys(cert, "keytool", directory / "keys")
        return cls(auth, tls, keys, jdk_client_conf(cert, Cert(directory, "client")), cert)

    def server_conf(self) -> dict[str, str]:
        """Every setting both servers get beyond the bench's own (port, dirs)."""
        return {**(self.server_tls or {}), **(auth_conf(self.auth) if self.auth != "none" else {})}

    def client(self, auth: str | None = None, jvm_opts: tuple = ()) -> dict:
        """JavaDriver.run keyword arguments of a client authenticating as `auth` (default: the servers' mode)."""
        auth = self.auth if auth is None else auth
        conf = dict(self.client_tls or {})
        kw = {"jvm_opts": tuple(jvm_opts)}
        if self.tls:
            # Spark's launcher gives every driver and executor JVM this (spark_tls.EXECUTOR_JVM_OPTS).
            kw["jvm_opts"] += EXECUTOR_JVM_OPTS
        if auth != "none":
            conf.update(MODES[auth])
            kw["secret"] = SECRET
        kw["conf"] = conf
        return kw

    def describe(self) -> str:
        auth = "off" if self.auth == "none" else f"{self.auth} {MODES[self.auth]}"
        if not self.tls:
            return f"spark.authenticate: {auth}; TLS: off"
        keys = lambda d: ", ".join(k.removeprefix("spark.ssl.rpc.") for k in d)  # noqa: E731
        return (f"spark.authenticate: {auth}; TLS: ON, {self.tls} ({TLS_MODES[self.tls]}); "
                f"server keys spark.ssl.rpc.{{{keys(self.server_tls)}}}; "
                f"client keys spark.ssl.rpc.{{{keys(self.client_tls)}}}; client JVM {' '.join(EXECUTOR_JVM_OPTS)}")


# The agent serves TLS and plaintext on one port by default; refusing plaintext, as Spark's service does, makes sure
# no client of the bench reaches the agent without TLS.
AGENT_TLS_ONLY = {"agent.tls.plaintext": "refuse"}


def start_server(kind: str, sec: Security, work: Path, root: str, agent_bin: Path, spark_home: Path):
    if sec.tls:
        extra = {**(auth_conf(sec.auth) if sec.auth != "none" else {}), **(AGENT_TLS_ONLY if kind == "agent" else {})}
        return start_tls_server(kind, sec.cert, work, root, spark_home, extra=extra, keys=sec.server_tls)
    if sec.auth != "none":
        return start_auth_server(kind, sec.auth, work, root, spark_home)
    if kind == "agent":
        return start_agent(agent_bin, work, [root])
    return start_jvm_ess(spark_home, work, root)


def jvm_tls_engine(pid: int) -> str:
    """Which TLS engine a JVM has loaded: netty-tcnative's OpenSSL (BoringSSL) shows as a mapped library."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "?"
    return "OpenSSL (netty-tcnative BoringSSL)" if "netty_tcnative" in maps else "JDK SSLEngine"


SUITES = {0x1301: "TLS 1.3 AES_128_GCM_SHA256", 0x1302: "TLS 1.3 AES_256_GCM_SHA384",
          0x1303: "TLS 1.3 CHACHA20_POLY1305_SHA256", 0xC02B: "TLS 1.2 ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
          0xC02C: "TLS 1.2 ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 0xC02F: "TLS 1.2 ECDHE_RSA_WITH_AES_128_GCM_SHA256",
          0xC030: "TLS 1.2 ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xCCA8: "TLS 1.2 ECDHE_RSA_WITH_CHACHA20_POLY1305",
          0xCCA9: "TLS 1.2 ECDHE_ECDSA_WITH_CHACHA20_POLY1305"}


def negotiated_suite(driver: JavaDriver, port: int, sec: Security) -> str:
    """The cipher suite the server picks for the bench's client: one connection (TLS handshake, no RPC) through a
    relay on 127.0.0.1 that reads the suite out of the server's ServerHello (plaintext in TLS 1.2 and 1.3)."""
    import socket
    import struct
    import threading

    first = bytearray()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(60)

    def pump(src, dst, keep):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if keep and len(first) < 256:
                    first.extend(data[: 256 - len(first)])
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve():
        try:
            client, _ = lsock.accept()
        except OSError:
            return
        with client, socket.create_connection(("127.0.0.1", port), timeout=60) as server:
            client.settimeout(60)
            up = threading.Thread(target=pump, args=(client, server, False), daemon=True)
            up.start()
            pump(server, client, True)
            up.join(60)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pinned(1):
            driver.run([["connect", "--count", 1, "--seconds", 30]], port=lsock.getsockname()[1], app=APP,
                       **sec.client())
    finally:
        t.join(60)
        lsock.close()
    b = bytes(first)
    # Record header (5), handshake type 2 and length (4), legacy version (2), random (32), session id, suite (2).
    if len(b) < 44 or b[0] != 0x16 or b[5] != 2:
        return f"? (first server bytes {b[:12].hex()})"
    at = 44 + b[43]
    if len(b) < at + 2:
        return "? (short ServerHello)"
    code = struct.unpack(">H", b[at:at + 2])[0]
    return SUITES.get(code, f"suite 0x{code:04x}")


def check_load(kind: str, prof, r: dict, handle) -> None:
    """Every call served, every block ok: otherwise the bench stops with the first error."""
    bad = []
    if r["failures"]:
        bad.append(f"{r['failures']} failed blocks, first: {r['first_error']}")
    if r["len_mismatches"]:
        bad.append(f"{r['len_mismatches']} blocks whose length changed between fetches")
    if not r["drained"] or r["calls_completed"] != r["calls_issued"]:
        bad.append(f"{r['calls_issued']} calls issued, {r['calls_completed']} completed (drained: {r['drained']})")
    if not r["blocks"]:
        bad.append("no block fetched")
    if bad:
        raise BenchError(f"{kind}, {prof.name}: " + "; ".join(bad) + f"\nserver log (tail):\n{handle.log_tail(30)}")


def run_load(driver: JavaDriver, port: int, ids: list[str], concurrency: int, count: int, seconds: float,
             ids_per_call: int | None = None, sec: Security = Security()) -> dict:
    """One load run; with `ids_per_call` the driver splits `ids` into calls of that many, round robin,
    otherwise every call names all of `ids`."""
    steps = [["load", "--exec", EXEC, "--ids", ",".join(ids), "--concurrency", concurrency, "--count", count,
              "--seconds", seconds]]
    if ids_per_call:
        steps[0] += ["--ids-per-call", ids_per_call]
    with pinned(1):
        res = driver.run(steps, port=port, app=APP, timeout_s=seconds + 60,
                         **sec.client(jvm_opts=("-XX:ActiveProcessorCount=1",)))
    return [x for x in res.lines if x.get("op") == "load"][-1]


# The client kinds of the handshake rows: a server with spark.network.crypto.enabled=true also takes SASL
# clients (spark.network.crypto.saslFallback, on by default in both servers).
HANDSHAKES = {"none": "TCP connect, no spark.authenticate", "sasl": "SASL DIGEST-MD5 handshake",
              "crypto": "AuthEngine handshake (AES-CTR)", "gcm": "AuthEngine handshake (AES-GCM)"}


def handshake_kinds(auth: str) -> list[str]:
    """The client kinds a server of `auth` takes: any with no spark.authenticate only plain clients; with it, SASL
    clients too (saslFallback), and AuthEngine clients of its own cipher (the cipher is not negotiated)."""
    if auth == "none":
        return ["none"]
    return ["none", "sasl"] + ([auth] if auth in ("crypto", "gcm") else [])


def handshake_label(kind: str, sec: Security) -> str:
    if not sec.tls:
        return HANDSHAKES[kind]
    return "TCP connect + TLS handshake, no spark.authenticate" if kind == "none" else f"TLS, then {HANDSHAKES[kind]}"


def bench_handshakes(driver: JavaDriver, pid: int, port: int, count: int, sec: Security = Security()) -> dict:
    """Per client kind: `count` new connections one after another, each handshaking and closed at once."""
    out = {}
    for kind in handshake_kinds(sec.auth):
        # `none` against a server with spark.authenticate: the connection (and TLS handshake) alone, no RPC.
        with pinned(1):
            driver.run([["connect", "--count", min(200, count), "--seconds", 10]], port=port, app=APP,
                       **sec.client(kind))  # warm-up (JIT)
            cpu0 = cpu_seconds(pid)
            res = driver.run([["connect", "--count", count, "--seconds", 60]], port=port, app=APP,
                             timeout_s=120, **sec.client(kind))
            cpu = cpu_seconds(pid) - cpu0
        r = [x for x in res.lines if x.get("op") == "connect"][-1]
        n = r["connections"]
        out[kind] = {"connections": n, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                     "cpu_us_per_conn": cpu * 1e6 / n if n else None}
    return out


def bench_server(kind: str, handle, driver: JavaDriver, dirs, workloads: dict, args, sec: Security) -> dict:
    pid = handle.proc.pid
    out = {"idle_rss_mib": rss_kib(pid, "VmRSS") / 1024}
    with pinned(1):
        dir_args = [a for d in dirs.local_dirs for a in ("--dir", d)]
        reg = driver.run([["register", "--exec", EXEC, *dir_args, "--subdirs", dirs.subdirs]], port=handle.port,
                         app=APP, **sec.client())
    rec = [x for x in reg.lines if x.get("op") == "register"][-1]
    if not rec.get("ok"):
        raise BenchError(f"{kind}: registration failed: {rec}\nserver log (tail):\n{handle.log_tail(30)}")
    if sec.tls:
        out["tls_suite"] = negotiated_suite(driver, handle.port, sec)
    for key, (prof, calls) in workloads.items():
        # One call's ids per load run: the load driver repeats the same call; pick the calls round robin by
        # running one load per call group would multiply JVM starts, so use a representative call of each map.
        ids = [i for c in calls[: max(1, 256 // prof.ids_per_call)] for i in c][: prof.ids_per_call * 8]
        per_call = None
        if prof.shape == "reducer":
            # Each call is one reduce from every map; the driver cycles through 8 reduces' calls.
            ids = [i for c in calls[:8] for i in c]
            per_call = prof.ids_per_call
        warm = run_load(driver, handle.port, ids, prof.concurrency, 50, min(3.0, args.seconds), per_call, sec)
        check_load(kind, prof, warm, handle)
        copies0 = agent_copies(handle) if kind == "agent" else None
        cpu0 = cpu_seconds(pid)
        r = run_load(driver, handle.port, ids, prof.concurrency, args.max_calls, args.seconds, per_call, sec)
        cpu = cpu_seconds(pid) - cpu0
        copies = agent_copies(handle) if kind == "agent" else None
        check_load(kind, prof, r, handle)
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
            # Block bytes the client received.
            "bytes": r["bytes"],
            # The agent's user-space copies per byte it wrote (spark_shuffle_agent_bytes_copied_total).
            "copies_per_byte": copies_per_byte(copies0, copies),
            "calls": r["calls_completed"],
            "failures": r["failures"],
            "first_error": r["first_error"],
        }
    if args.handshakes:
        out["handshakes"] = bench_handshakes(driver, pid, handle.port, args.handshakes, sec)
    out["peak_rss_mib"] = rss_kib(pid, "VmHWM") / 1024
    if kind == "jvm" and sec.tls:
        out["tls_engine"] = jvm_tls_engine(pid)
    elif kind == "agent" and sec.tls:
        out["tls_engine"] = "rustls (ring)"
    return out


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def agent_copies(handle) -> tuple[float, float]:
    m = scrape_metrics(agent_metrics_url(handle))
    return m["spark_shuffle_agent_bytes_copied_total"], m["spark_shuffle_agent_bytes_written_total"]


def copies_per_byte(before, after) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def print_table(results: dict, workloads: dict, sec: Security = Security()) -> None:
    agent, jvm = results["agent"], results["jvm"]
    print()
    if sec.tls:
        print(f"TLS on ({sec.tls} keys): agent {agent['tls_engine']}, {agent['tls_suite']}; "
              f"JVM ESS {jvm['tls_engine']}, {jvm['tls_suite']}")
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
        print(f"| {prof.name} | GB served (calls; failed blocks) | {a['bytes'] / 1e9:,.2f} ({a['calls']:,}; "
              f"{a['failures']}) | {j['bytes'] / 1e9:,.2f} ({j['calls']:,}; {j['failures']}) | |")
        print(f"| {prof.name} | bytes copied in user space per byte written | {fmt(a.get('copies_per_byte'), 2)} | "
              f"— | |")
    for kind in (agent.get("handshakes") or {}):
        label = handshake_label(kind, sec)
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


# ---------------------------------------------------------------------------------------------------------------
# Profiles driven by benches/loadgen.rs (--addr) instead of Spark's client: each server is started as above, loaded,
# stopped, then the next one.

def loadgen_args(key: str, args) -> list[str]:
    """The loadgen flags of a loadgen profile, besides the server's address and pid."""
    if key == "cold":
        # One pass over a dataset larger than comfortably fits in the page cache, evicted (posix_fadvise DONTNEED)
        # just before each server's pass; a page-cached block fetched every 10 ms and a registration every 20 ms
        # on connections of their own beside it.
        return ["--profile", "mixed-reducer", "--dataset-gb", str(args.cold_gb), "--one-pass", "--drop-caches",
                "--hot-probe", "--register-probe", "--connections", str(args.cold_connections)]
    # crowded: this many connections in one burst, each making one small call a second, and the registration probe.
    return ["--profile", "4k", "--idle", "--connections", str(args.crowd), "--register-probe"]


LOADGEN_PROFILES = {"cold": "cold cache, one pass, mixed sizes, reducer shape",
                    "crowded": "many connections, mostly idle"}
# A loadgen metric line: two spaces, a label (no two spaces in a row), two or more spaces, the value, a unit.
METRIC_LINE = re.compile(r"^  (\S.*?)\s{2,}(\S+)(?: (.*))?$")
# Metrics whose non-zero value means a server did not do what a target asks; they are repeated under the table.
MUST_BE_ZERO = ("connections not in", "failed calls", "failures", "registration failures", "hot fetch failures",
                "connections lost after getting in")


def find_loadgen() -> Path:
    """LOADGEN_BIN, or the bench binary cargo builds (incrementally) for `cargo bench --bench loadgen`."""
    if os.environ.get("LOADGEN_BIN"):
        return Path(os.environ["LOADGEN_BIN"])
    out = subprocess.run(["cargo", "bench", "--bench", "loadgen", "--no-run", "--message-format=json"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    exes = [m["executable"] for m in map(json.loads, out.splitlines())
            if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "loadgen"
            and m.get("executable")]
    return Path(exes[-1])


def parse_loadgen(stdout: str) -> tuple[dict[str, str], list[str]]:
    """loadgen's metrics as {label (unit): value} in its order, and its `note:` lines."""
    metrics, notes = {}, []
    for line in stdout.splitlines():
        if line.startswith("  note: "):
            notes.append(line[8:])
            continue
        m = METRIC_LINE.match(line)
        if m:
            label, value, unit = m.group(1), m.group(2), (m.group(3) or "").strip()
            metrics[f"{label} ({unit})" if unit else label] = value
    return metrics, notes


def run_loadgen(kind: str, key: str, handle, loadgen: Path, root: Path, args) -> dict:
    seconds = args.crowd_seconds if key == "crowded" else args.seconds
    argv = [str(loadgen), *loadgen_args(key, args), "--seconds", str(seconds), "--root", str(root),
            "--addr", f"127.0.0.1:{handle.port}", "--server-pid", str(handle.proc.pid), "--client-cpu", "1"]
    if kind == "agent":
        argv += ["--metrics-addr", agent_metrics_url(handle).removeprefix("http://")]
    # Writing the dataset the first time is part of the first run (a few minutes for 8 GB), not of its measurement.
    timeout = seconds + 120 + (60 * args.cold_gb if key == "cold" else 0)
    with pinned(1):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    metrics, notes = parse_loadgen(p.stdout)
    out = {"argv": argv, "metrics": metrics, "notes": notes, "exit": p.returncode}
    if p.returncode != 0:
        out["error"] = (p.stderr.strip().splitlines() or ["(no stderr)"])[-5:] + ["server log (tail):",
                                                                                  handle.log_tail(20)]
    return out


def bench_loadgen_profiles(keys: list[str], args, work: Path, agent_bin: Path, spark_home: Path) -> dict:
    """Each loadgen profile against the agent, then against the JVM service, each started fresh on core 0."""
    if not keys:
        return {}
    loadgen = find_loadgen()
    # One dataset for both servers (and, with --loadgen-root, for later runs): loadgen reuses what is written.
    root = args.loadgen_root or work / "loadgen-root"
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    results = {}
    for key in keys:
        results[key] = {}
        for kind in ("agent", "jvm"):
            with pinned(0):
                (work / f"{kind}-{key}").mkdir(parents=True, exist_ok=True)
                handle = start_server(kind, Security(), work / f"{kind}-{key}", str(root), agent_bin, spark_home)
            try:
                results[key][kind] = run_loadgen(kind, key, handle, loadgen, root, args)
            finally:
                handle.stop()
    return results


def print_loadgen_tables(results: dict) -> bool:
    """The loadgen profiles side by side, every metric loadgen printed, with the command lines; False if a run
    failed."""
    ok = True
    for key, runs in results.items():
        a, j = runs["agent"], runs["jvm"]
        print()
        print(f"{key}: {LOADGEN_PROFILES[key]}")
        for kind, r in runs.items():
            print(f"  {kind}: {' '.join(r['argv'])}")
        print("| profile | metric | agent | JVM ESS | agent / JVM |")
        print("|---|---|---:|---:|---:|")
        labels = list(dict.fromkeys([*a["metrics"], *j["metrics"]]))
        for label in labels:
            av, jv = a["metrics"].get(label, "-"), j["metrics"].get(label, "-")
            print(f"| {key} | {label} | {av} | {jv} | {ratio(as_number(av), as_number(jv))} |")
        for kind, r in runs.items():
            for note in r["notes"]:
                print(f"  {kind}, note: {note}")
            for label in labels:
                if label.split(" (")[0] in MUST_BE_ZERO and as_number(r["metrics"].get(label)):
                    print(f"  {kind}: {label} = {r['metrics'][label]} (should be 0)")
            if r["exit"] != 0:
                ok = False
                print(f"  {kind}: loadgen FAILED (exit {r['exit']}):\n    " + "\n    ".join(r["error"]))
    return ok


def as_number(v) -> float | None:
    try:
        return float(str(v).replace(",", ""))
    except (TypeError, ValueError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per profile and server")
    ap.add_argument("--max-calls", type=int, default=2_000_000, help="upper bound of fetch calls per run")
    ap.add_argument("--profiles", default="4k,4k-reducer,mixed,1m")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--auth", choices=["none", *MODES], default="none",
                    help="spark.authenticate on both servers and the client, in this mode")
    ap.add_argument("--tls", nargs="?", const="pem", choices=list(TLS_MODES), default=None,
                    help="spark.ssl.rpc.enabled=true on both servers and the client, with PEM keys and "
                         "openSslEnabled (pem, the default) or JDK keystores (keystore)")
    ap.add_argument("--handshakes", type=int, default=0, help="also time this many new connections per client kind")
    ap.add_argument("--cold-gb", type=float, default=8.0, help="cold profile: dataset size (GB), one pass over it")
    ap.add_argument("--cold-connections", type=int, default=16, help="cold profile: loadgen connections")
    ap.add_argument("--crowd", type=int, default=10_000, help="crowded profile: connections opened at once")
    ap.add_argument("--crowd-seconds", type=float, default=20.0,
                    help="crowded profile: seconds (longer than loadgen's 10 s connect timeout, so that a connect "
                         "that retried still has a chance to get in)")
    ap.add_argument("--loadgen-root", type=Path,
                    help="where the loadgen profiles' files go (default: the bench's temp dir); a later run with the "
                         "same sizes reuses them, and a slow filesystem mounted there makes the cold profile slow-disk")
    args = ap.parse_args()
    keys = args.profiles.split(",")
    client_keys = [k for k in keys if k not in LOADGEN_PROFILES]
    loadgen_keys = [k for k in keys if k in LOADGEN_PROFILES]
    if loadgen_keys and (args.auth != "none" or args.tls):
        print("the loadgen profiles (cold, crowded) run without --auth and --tls", file=sys.stderr)
        return 2

    venv = Path(os.environ.get("SPARK_VENV", REPO / ".venv"))
    spark_home = next(venv.glob("lib/python3*/site-packages/pyspark"))
    agent_bin = find_agent_bin(REPO)
    if agent_bin is None:
        print("build the agent first: cargo build --release", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="shuffle-bench-"))
    try:
        sec = Security.make(args.auth, args.tls, work / "certs")
        results, workloads = {}, {}
        if client_keys:
            try:
                results, workloads = bench_client_profiles(client_keys, args, sec, work, agent_bin, spark_home)
            except BenchError as e:
                print(f"FAILED: {e}", file=sys.stderr)
                return 1
        loadgen_results = bench_loadgen_profiles(loadgen_keys, args, work, agent_bin, spark_home)
        print_machine(sec)
        if client_keys:
            print_table(results, workloads, sec)
        ok = print_loadgen_tables(loadgen_results)
        if args.json:
            redact = lambda d: {k: ("(secret)" if "secret" in k else v) for k, v in d.items()}  # noqa: E731
            results["loadgen"] = loadgen_results
            results["settings"] = {"auth": args.auth, "tls": args.tls, "server_conf": redact(sec.server_conf()),
                                   "client": redact(sec.client()), "seconds": args.seconds, "profiles": args.profiles}
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def bench_client_profiles(keys: list[str], args, sec: Security, work: Path, agent_bin: Path,
                          spark_home: Path) -> tuple[dict, dict]:
    """The profiles driven by Spark's client, against the agent then the JVM service; raises BenchError."""
    jars = spark_home / "jars"
    build = compile_driver(REPO / "tests" / "java", REPO / "tests" / "java" / "build", jars)
    driver = JavaDriver(build, jars)
    root = work / "root"
    dirs = make_executor_dirs(str(root / "blockmgr-bench"), n_dirs=2, subdirs=64)
    rng = random.Random(args.seed)
    all_profiles = make_profiles(rng)
    workloads = {}
    for i, key in enumerate(keys):
        prof = all_profiles[key]
        workloads[key] = (prof, write_profile(dirs, i, prof))
    results = {}
    for kind in ("agent", "jvm"):
        with pinned(0):
            (work / kind).mkdir(parents=True, exist_ok=True)
            handle = start_server(kind, sec, work / kind, str(root), agent_bin, spark_home)
        try:
            results[kind] = bench_server(kind, handle, driver, dirs, workloads, args, sec)
        finally:
            handle.stop()
        with pinned(0):
            start_conf = {**sec.server_conf(), **(AGENT_TLS_ONLY if kind == "agent" and sec.tls else {})}
            results[kind]["start_ms"] = time_to_listen(kind, agent_bin, spark_home, work / f"{kind}-start",
                                                       root, start_conf)
    return results, workloads


def time_to_listen(kind: str, agent_bin: Path, spark_home: Path, work: Path, root: Path,
                   extra: dict[str, str] | None = None) -> float:
    """Milliseconds from spawning the server, with the bench's settings `extra` (TLS keys, spark.authenticate),
    to its port accepting a connection (1 ms polling)."""
    import socket

    from servers import free_port

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    extra = extra or {}
    if kind == "agent":
        # --metrics-port 0: the fixed default port may be taken by another agent on the machine.
        argv = [str(agent_bin), "--bind", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--root",
                str(root), "--state-dir", str(work / "state")]
        if extra:
            path = work / "agent.conf"
            # The agent has no OpenSSL switch (spark_tls.start_tls_server).
            path.write_text("".join(f"{k} {v}\n" for k, v in extra.items() if k != "spark.ssl.rpc.openSslEnabled"))
            argv += ["--config", str(path)]
    else:
        conf = work / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "spark-defaults.conf").write_text(
            f"spark.shuffle.service.port {port}\nspark.shuffle.service.db.enabled false\nspark.local.dir {root}\n"
            + "".join(f"{k} {v}\n" for k, v in extra.items()))
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


def print_machine(sec: Security) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores ({cpu}), kernel {os.uname().release}; "
          f"server pinned to core 0, client (Spark 4.3.0 ExternalBlockStoreClient, Java 17) to core 1; "
          f"{sec.describe()}")


if __name__ == "__main__":
    sys.exit(main())
