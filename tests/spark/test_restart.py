"""The agent restarted under real Spark: registrations survive SIGKILL and SIGTERM, on the same port.

The agent journals every registration under --state-dir before acknowledging it and recovers the journal at
start-up. These tests kill it between the map and the reduce stage of a real pyspark job and start it again on
the SAME port with the SAME state dir; the executors that wrote the map output are gone by then, so the reduce
can only succeed if the restarted agent recovered their registrations. Spark's fetch retries are set to its
defaults (spark.shuffle.io.maxRetries=3, retryWait=5s): a restart within a few seconds must be absorbed by them.

Scenarios:
  * SIGKILL after the map stage; the executors are replaced while the agent is down; the agent is back before
    the new executors start (they register with it at start-up), and the re-read needs recovered registrations.
  * SIGKILL after the executors were replaced; the re-read STARTS while the agent is down. A thread restarts the
    agent as soon as the wiretap sees the first connection that could not reach it (so the reduce provably ran
    into the outage); Spark's retry after 5 s then finds the restarted agent.
  * SIGTERM (graceful drain, exit code 0) in place of SIGKILL, same ordering as the first scenario.
  * A restart on ANOTHER port with a state dir holding registrations is refused with one clear line; the
    restart on the right port serves the old registration to Spark's real client (no re-registration).
  * Rolling restart: SIGTERM + restart while Spark's real client runs a `load`; every fetch eventually succeeds.

What is checked in the job scenarios is what test_spark_jobs.py checks (results against Python, map-side
accumulator unchanged, map stage SKIPPED, zero failed tasks and no stage retry from the REST API), plus: the
re-read's fetches went to the departed executors (wiretap) and the server sent no failure.

The JVM service keeps nothing across restarts unless its DB is enabled, and has no port pinning, so these
tests run against the agent only. Each job scenario replaces all executors once; the module shares one agent
and one SparkContext (about 25 s per scenario on 2 cores, mostly executor JVM start-up and the 5 s retry wait).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from servers import (ServerHandle, agent_argv_on_port, agent_metrics_url, find_agent_bin, free_port, port_accepts,
                     restart_agent, scrape_metrics, start_agent, wait_until)
from shuffle_layout import crc32, sha256
from spark_cluster import RETRY_LINE, RETRY_LOG4J2, SparkCluster
from test_spark_jobs import EXPECTED, N, check_reread, shuffled_rdd

REPO = Path(__file__).resolve().parent.parent.parent

# Spark's own defaults for fetch retries (SparkCluster lowers them so a broken server fails fast; a restart
# test needs the real ones: the outage must fit into maxRetries * retryWait).
SPARK_RETRY_DEFAULTS = {"spark.shuffle.io.maxRetries": "3", "spark.shuffle.io.retryWait": "5s"}

OUTAGE_S = 2.0  # how long the agent stays down once the reduce has run into the outage
RECOVERED = re.compile(r"registrations recovered executors=(\d+).*?millis=(\d+)")


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def agent_only(server_kind):
    if server_kind != "agent":
        pytest.skip("restart durability is an agent feature: Spark's JVM service keeps no registrations across a "
                    "restart unless spark.shuffle.service.db.enabled, and has no port pinning")


@pytest.fixture(scope="session")
def agent_bin(agent_only) -> Path:
    b = find_agent_bin(REPO)
    if b is None or not b.exists():
        pytest.fail("agent binary not found: run `cargo build --release` or set AGENT_BIN", pytrace=False)
    return b


@pytest.fixture(scope="session")
def retry_log4j2(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("retry-log") / "log4j2-retry.properties"
    p.write_text(RETRY_LOG4J2)
    return p


@dataclass
class Restart:
    """Timings of one stop + start, in seconds (monotonic clock)."""

    how: str
    rc: int
    stop_s: float  # signal sent -> process exited
    start_s: float  # relaunch -> `listening` line and port accepting
    down_s: float  # signal sent -> port accepting again (includes what the test did meanwhile)
    recovered_executors: int
    recovery_ms: int


@dataclass
class Rig:
    """One agent on a fixed port with its own state dir, and a SparkCluster using it (through a WireTap)."""

    agent: ServerHandle
    cl: SparkCluster | None = None
    restarts: list[Restart] = field(default_factory=list)

    def stop_agent(self, sig: int) -> tuple[int, float, float]:
        t0 = time.monotonic()
        rc = self.agent.signal(sig)
        return rc, t0, time.monotonic() - t0

    def start_again(self, how: str, rc: int, t_signal: float, stop_s: float) -> Restart:
        t1 = time.monotonic()
        self.agent = restart_agent(self.agent)
        t2 = time.monotonic()
        found = RECOVERED.findall(self.agent.log_text())
        assert found, f"no 'registrations recovered' line:\n{self.agent.log_tail()}"
        execs, ms = found[-1]
        r = Restart(how, rc, stop_s, t2 - t1, t2 - t_signal, int(execs), int(ms))
        self.restarts.append(r)
        print(f"\n[restart] {r}")
        return r


def executor_retry_lines(cl: SparkCluster) -> list[str]:
    """RetryingBlockTransferor's 'Retrying fetch (i/n)' lines from every executor's stderr of this app."""
    # The Worker's work dir is under the SPARK_HOME the driver JVM was started with.
    work = Path(str(cl.sc._jvm.java.lang.System.getenv("SPARK_HOME"))) / "work" / cl.app_id
    lines = []
    for f in sorted(work.glob("*/stderr")):
        lines += [ln for ln in f.read_text(errors="replace").splitlines() if RETRY_LINE.search(ln)]
    return lines


@pytest.fixture(scope="module")
def rig(agent_bin, spark_env, jobs_local_dir, server_base, retry_log4j2, tmp_path_factory):
    work = tmp_path_factory.mktemp("restart-agent")
    port = free_port()
    agent = start_agent(agent_bin, work, [str(server_base / "root")], port=port, state_dir=work / "state")
    rg = Rig(agent)
    conf = dict(SPARK_RETRY_DEFAULTS)
    conf.update({
        # Every block of a departed executor then comes through the service (local-cluster's default too).
        "spark.shuffle.readHostLocalDisk": "false",
        "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC "
                                           f"-Dlog4j2.configurationFile={retry_log4j2}",
    })
    try:
        rg.cl = SparkCluster(agent, jobs_local_dir, "test_restart", conf, budget_s=420)
        yield rg
    finally:
        try:
            if rg.cl is not None:
                rg.cl.stop()
        finally:
            rc = rg.agent.stop()
            print(f"\n[restart-agent] stopped rc={rc}; log: {rg.agent.log_path}")
            for r in rg.restarts:
                print(f"[restart-agent] {r}")


@pytest.fixture
def live_rig(rig):
    """The rig with a running agent; fails the test if the agent died during it."""
    if not rig.agent.alive():  # an earlier scenario failed half-way
        rig.agent = restart_agent(rig.agent)
    yield rig
    assert rig.agent.alive(), f"agent died during the test:\n{rig.agent.log_tail()}"


def connect_errors(cl: SparkCluster, since: int) -> list[float]:
    """Times at which a client reached the wiretap but the tap could not reach the agent (it was down)."""
    return [e.t for e in cl.tap.snapshot()[since:] if "connect_error" in e.ev]


def check_fetched_from(cl: SparkCluster, mark: int, old: list[str]):
    fetches = cl.tap.rpcs("FetchShuffleBlocks", since=mark)
    assert fetches and {f["exec"] for f in fetches} <= set(old), fetches
    assert not cl.tap.failures(since=mark), f"server sent failures: {cl.tap.failures(since=mark)}"
    assert not cl.tap.decode_errors(), cl.tap.decode_errors()


def map_then_replace_while_agent_is_down(rg: Rig, sig: int, group: str):
    """Map stage with the agent up; stop it with `sig`; replace every executor; start the agent again
    (same port, same state dir) BEFORE the new executors are requested (they register with it at start-up);
    read the shuffle again. Returns the restart record."""
    cl = rg.cl
    rdd, acc = shuffled_rdd(cl)
    cl.sc.setJobGroup(f"{group}-1", "write the shuffle and read it")
    assert dict(rdd.collect()) == EXPECTED
    assert acc.value == N
    writers = cl.active_executors()
    n_regs = len(RECOVERED.findall(rg.agent.log_text()))
    rc, t_signal, stop_s = rg.stop_agent(sig)
    old = cl.kill_all_executors()
    assert old == writers
    r = rg.start_again(signal.Signals(sig).name, rc, t_signal, stop_s)
    assert len(RECOVERED.findall(rg.agent.log_text())) == n_regs + 1
    assert r.recovered_executors >= len(old), r
    assert cl.jsc.requestExecutors(cl.N_EXEC), "requestExecutors refused"
    new = cl.wait_executors(cl.N_EXEC, exclude=set(old))
    mark = cl.tap.mark()
    cl.sc.setJobGroup(f"{group}-2", "read the shuffle again from new executors")
    assert dict(rdd.collect()) == EXPECTED
    check_reread(cl, f"{group}-2", acc, N)
    check_fetched_from(cl, mark, old)
    regs = cl.registrations()
    assert set(old + new) <= set(regs), f"not every executor registered: {sorted(regs)}"
    return r


# ---------------------------------------------------------------------------------------------------------------
# The Java driver against a restarted agent


def driver_conf(**kw) -> dict:
    c = dict(SPARK_RETRY_DEFAULTS)
    c.update(kw)
    return c


def register_step(exec_id, ex):
    s = ["register", "--exec", exec_id]
    for d in ex.local_dirs:
        s += ["--dir", d]
    return s + ["--subdirs", str(ex.subdirs)]


def fetch_step(exec_id, ids):
    s = ["fetch", "--exec", exec_id]
    for i in ids:
        s += ["--id", i]
    return s


def assert_blocks(rec_by_id: dict, expected: dict):
    assert set(rec_by_id) == set(expected), (sorted(rec_by_id), sorted(expected))
    for bid, data in expected.items():
        rec = rec_by_id[bid]
        assert rec["ok"], f"{bid}: {rec}"
        assert rec["len"] == len(data) and rec["crc32"] == crc32(data) and rec["sha256"] == sha256(data), rec


def test_restart_on_another_port_is_refused_and_the_right_port_serves_old_registrations(
        agent_bin, java_driver, make_exec_dirs, server_base, app_id, tmp_path):
    root = str(server_base / "root")
    port = free_port()
    h = start_agent(agent_bin, tmp_path, [root], port=port, state_dir=tmp_path / "state")
    try:
        ex = make_exec_dirs("exec0")
        mo = ex.write_map_output(0, 0, [100, 70_000, 0, 5])
        ids = ["shuffle_0_0_0", "shuffle_0_0_1", "shuffle_0_0_3"]
        expected = {f"shuffle_0_0_{r}": mo.block(r) for r in (0, 1, 3)}
        res = java_driver.run([register_step("0", ex), fetch_step("0", ids)], port=port, app=app_id)
        assert res.one(0)["ok"], res.debug()
        assert_blocks(res.blocks(1), expected)
        assert h.signal(signal.SIGTERM) == 0
        assert (tmp_path / "state" / "shuffle.port").read_text().strip() == str(port)

        other = free_port()
        while other == port:
            other = free_port()
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        t0 = time.monotonic()
        p = subprocess.run(agent_argv_on_port(h, other), capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL, cwd=str(tmp_path))
        refused_s = time.monotonic() - t0
        print(f"\n[wrong-port] exit {p.returncode} after {refused_s:.2f}s; stderr:\n{p.stderr}")
        assert p.returncode == 64, f"exit {p.returncode} on port {other} with registrations made on {port} (64 expected)"
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, p.stderr
        assert str(port) in errors[0] and str(other) in errors[0], errors[0]
        assert not re.search(r"\bERROR\b|\bWARN\b|panicked", p.stderr), p.stderr
        assert "listening" not in p.stderr and not p.stdout.strip(), (p.stdout, p.stderr)
        assert not port_accepts("127.0.0.1", other)
        # The refused start changed nothing: the pinned port is still the old one.
        assert (tmp_path / "state" / "shuffle.port").read_text().strip() == str(port)

        h = restart_agent(h)
        assert h.port == port
        found = RECOVERED.findall(h.log_text())
        assert found and int(found[-1][0]) == 1, found
        # No registration in this client: the block must come from the recovered one.
        res = java_driver.run([fetch_step("0", ids)], port=port, app=app_id)
        assert_blocks(res.blocks(0), expected)
    finally:
        h.stop()


def test_rolling_restart_during_a_load_loses_no_fetch(agent_bin, java_driver, make_exec_dirs, server_base, app_id,
                                                      retry_log4j2, tmp_path):
    """SIGTERM + restart (same port, same state dir) while Spark's real client runs a `load` at concurrency 4.
    Spark's retry defaults (3 x 5 s) must absorb the drain and the gap: zero failures, lengths stable, and the
    blocks are byte-exact afterwards (on the same client)."""
    root = str(server_base / "root")
    port = free_port()
    h = start_agent(agent_bin, tmp_path, [root], port=port, state_dir=tmp_path / "state")
    try:
        ex = make_exec_dirs("exec0")
        sizes = [3_000, 100_000, 17, 70_000, 1]
        mos = [ex.write_map_output(1, m, sizes, checksum_algorithms=()) for m in range(3)]
        ids = [f"shuffle_1_{m}_{r}" for m in range(3) for r in range(len(sizes))]
        expected = {f"shuffle_1_{m}_{r}": mos[m].block(r) for m in range(3) for r in range(len(sizes))}
        load_s = 15
        steps = [register_step("0", ex),
                 ["load", "--exec", "0", "--ids", ",".join(ids), "--concurrency", "4", "--count", "10000000",
                  "--seconds", str(load_s)],
                 fetch_step("0", ids)]
        out: dict = {}

        def drive():
            try:
                out["res"] = java_driver.run(steps, port=port, app=app_id, conf=driver_conf(), timeout_s=60,
                                             jvm_opts=[f"-Dlog4j2.configurationFile={retry_log4j2}"])
            except BaseException as e:
                out["error"] = e

        url = agent_metrics_url(h)
        t = threading.Thread(target=drive, name="driver-load", daemon=True)
        t.start()

        def chunks():
            try:
                return scrape_metrics(url).get("spark_shuffle_agent_chunks_transferred_total", 0)
            except OSError:
                return 0

        # Restart once the load is really running (some thousands of chunks served).
        wait_until(lambda: chunks() >= 3000 or not t.is_alive(), 60, 0.05, "the load to get going")
        assert t.is_alive(), f"the driver ended before the restart: {out}"
        served_before = chunks()
        t0 = time.monotonic()
        rc = h.signal(signal.SIGTERM)
        stop_s = time.monotonic() - t0
        h = restart_agent(h)
        down_s = time.monotonic() - t0
        assert rc == 0, f"SIGTERM exit code {rc}"
        t.join(timeout=load_s + 120)
        assert not t.is_alive(), "the driver did not finish"
        assert "error" not in out, f"driver failed: {out['error']!r}"
        res = out["res"]
        load = res.one(1)
        retries = [ln for ln in res.stderr.splitlines() if RETRY_LINE.search(ln)]
        print(f"\n[rolling] drain {stop_s:.2f}s, down {down_s:.2f}s, {int(served_before)} chunks served before "
              f"SIGTERM; load: {load}; retry lines in the client: {len(retries)}")
        for ln in retries[:6]:
            print(f"  {ln}")
        assert load["failures"] == 0, f"fetches failed across the restart: {load}\n{res.debug()}"
        assert load["len_mismatches"] == 0 and load["drained"], load
        assert load["calls_completed"] == load["calls_issued"] > 0, load
        assert_blocks(res.blocks(2), expected)
        # The restarted agent served part of the load (the client came back to it).
        assert scrape_metrics(agent_metrics_url(h)).get("spark_shuffle_agent_chunks_transferred_total", 0) > 0
    finally:
        h.stop()


# ---------------------------------------------------------------------------------------------------------------
# Real jobs


@pytest.mark.spark_job
def test_sigkill_between_map_and_reduce_loses_no_registration(live_rig):
    r = map_then_replace_while_agent_is_down(live_rig, signal.SIGKILL, "kill9")
    assert r.rc == -signal.SIGKILL


@pytest.mark.spark_job
def test_sigterm_between_map_and_reduce_drains_exits_0_and_loses_no_registration(live_rig):
    log_before = len(live_rig.agent.log_text())
    r = map_then_replace_while_agent_is_down(live_rig, signal.SIGTERM, "term")
    assert r.rc == 0, f"SIGTERM exit code {r.rc}"
    stopped = live_rig.agent.log_text()[log_before:]
    assert 'stopping signal="SIGTERM"' in stopped or "stopping signal=SIGTERM" in stopped, stopped[-2000:]
    assert re.search(r"INFO \S+: stopped\b", stopped), stopped[-2000:]


@pytest.mark.spark_job
def test_agent_down_when_the_reduce_starts_is_absorbed_by_spark_fetch_retries(live_rig):
    """The executors are replaced with the agent up; then the agent is SIGKILLed and the re-read starts. A
    thread waits until the wiretap records the first client connection that could not reach the agent (so the
    reduce has provably started during the outage), leaves the agent down OUTAGE_S longer (a restart that
    takes a couple of seconds; the other running tasks run into it too), then restarts it. The executors'
    retries 5 s later must find the restarted agent, with the old executors' registrations recovered."""
    rg = live_rig
    cl = rg.cl
    rdd, acc = shuffled_rdd(cl)
    cl.sc.setJobGroup("down-1", "write the shuffle and read it")
    assert dict(rdd.collect()) == EXPECTED
    old, new = cl.replace_all_executors()
    retries_before = len(executor_retry_lines(cl))
    rc, t_signal, stop_s = rg.stop_agent(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    mark = cl.tap.mark()
    outcome: dict = {}

    def restart_on_first_refusal():
        try:
            wait_until(lambda: connect_errors(cl, mark), 60, 0.02,
                       "a fetch to reach the wiretap while the agent is down")
            outcome["first_refusal"] = time.monotonic()
            time.sleep(OUTAGE_S)  # the outage itself, not a wait for a condition
            outcome["restart"] = rg.start_again("SIGKILL, reduce running", rc, t_signal, stop_s)
        except BaseException as e:  # reported by the main thread
            outcome["error"] = e

    t = threading.Thread(target=restart_on_first_refusal, name="restart-agent", daemon=True)
    t_action = time.monotonic()
    t.start()
    cl.sc.setJobGroup("down-2", "read the shuffle again while the agent is down")
    result = dict(rdd.collect())
    t_done = time.monotonic()
    t.join(timeout=90)
    assert not t.is_alive(), "the restart thread did not finish"
    assert "error" not in outcome, f"restart failed: {outcome['error']!r}\n{rg.agent.log_tail()}"
    assert result == EXPECTED
    check_reread(cl, "down-2", acc, N)
    refusals = connect_errors(cl, mark)
    assert refusals, "no fetch ran into the outage"
    check_fetched_from(cl, mark, old)
    r = outcome["restart"]
    assert r.recovered_executors >= len(old) + len(new), r
    retries = executor_retry_lines(cl)[retries_before:]
    print(f"\n[down-while-reduce] the re-read ran into the outage {outcome['first_refusal'] - t_action:.2f}s after "
          f"the action started; connections refused during the outage: {len(refusals)}; agent down {r.down_s:.2f}s "
          f"(start-up {r.start_s:.2f}s); re-read took {t_done - t_action:.1f}s; executor retry lines: "
          f"{len(retries)}")
    for ln in retries[:6]:
        print(f"  {ln}")
    # Every refused connection was a fetch Spark then retried (at least one retry line per executor that hit it).
    assert retries, "Spark logged no fetch retry, yet the agent was down when the reduce started"
