"""The real agent binary's metrics port, read the way operators' tools read it.

* /metrics after real traffic is parsed by prometheus_client's own text parser (the reference
  Python implementation of the exposition format) and must say what the traffic did.
* /readyz is 503 while registrations are being recovered (held with the test hook
  SPARK_SHUFFLE_AGENT_TEST_HOLD_RECOVERY, since a real recovery is too fast to observe) and goes
  503 again on SIGTERM while a connection drains.
* `spark-shuffle-agent status` prints the node; `--log-format json` logs are JSON lines and
  routine connection ends are not logged at info.

Binary: AGENT_BIN, else target/release, else target/debug. No timing is asserted; every wait polls.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_client import (ShuffleConnection, agent_binary, fetch_shuffle_blocks, http_get, register_executor,
                          start_agent, try_get, wait_until, write_map_output, block_path)

APP = "app-20260101000000-0777"
ERROR_KINDS = {"bad_frame", "idle_timeout", "io", "refused", "chunk_limit", "frame_budget", "chunk_failure", "rpc_failure",
               "accept", "tls"}


@pytest.fixture
def dirs(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return tmp_path, root.resolve()


@pytest.fixture
def agent(dirs):
    work, root = dirs
    a = start_agent(work, root)
    yield a
    a.stop()


def families(port: int) -> dict:
    status, text = http_get(port, "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict, family: str, suffix: str = "", **labels) -> float:
    for s in fams[family].samples:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{family}{suffix}{labels} not in {[s for s in fams[family].samples]}")


def test_the_sample_layout_hashes_like_spark():
    # Spec §4.1's table, verified on a JVM.
    assert block_path(["/d"], 64, "shuffle_0_0_0.data").parent.name == "0c"
    assert block_path(["/a", "/b"], 5, "rdd_1_0") == block_path(["/a", "/b"], 5, "rdd_1_0")
    assert str(block_path(["/a", "/b"], 5, "rdd_1_0")) == "/b/03/rdd_1_0"


def test_metrics_parse_with_the_prometheus_parser_and_follow_real_traffic(agent, dirs):
    work, root = dirs
    local_dirs = [str(root / "blockmgr-1"), str(root / "blockmgr-2")]
    parts = write_map_output(local_dirs, 8, 0, 5, [1000, 0, 4000])
    conn = ShuffleConnection(agent.shuffle_port)
    ok, _ = conn.rpc(register_executor(APP, "1", local_dirs, 8))
    assert ok
    stream, n = conn.open_stream(fetch_shuffle_blocks(APP, "1", 0, [5], [[0, 1, 2]]))
    assert n == 3
    for i in range(3):
        ok, body = conn.chunk(stream, i)
        assert ok and body == parts[i]
    stream, _ = conn.open_stream(fetch_shuffle_blocks(APP, "not-registered", 0, [5], [[0]]))
    ok, text = conn.chunk(stream, 0)
    assert not ok and b"not registered" in text
    bad = ShuffleConnection(agent.shuffle_port)
    bad.send_bad_frame()
    assert wait_until(bad.closed_by_peer, "the agent closing the bad connection")

    wait_until(lambda: sample(families(agent.metrics_port), "spark_shuffle_agent_errors", "_total", kind="bad_frame") == 1,
               "the bad frame to be counted")
    fams = families(agent.metrics_port)
    for name, fam in fams.items():
        assert name.startswith(("spark_shuffle_agent_", "process_")), name
        assert fam.documentation, f"{name} has no HELP"
    # prometheus_client names a counter family without its _total suffix.
    assert fams["spark_shuffle_agent_chunks_transferred"].type == "counter"
    assert sample(fams, "spark_shuffle_agent_chunks_transferred", "_total") == 3
    assert sample(fams, "spark_shuffle_agent_blocks_transferred", "_total") == 3
    assert sample(fams, "spark_shuffle_agent_block_bytes_transferred", "_total") == 5000
    assert sample(fams, "spark_shuffle_agent_registered_executors") == 1
    assert sample(fams, "spark_shuffle_agent_registered_apps") == 1
    errors = {s.labels["kind"]: s.value for s in fams["spark_shuffle_agent_errors"].samples if s.name.endswith("_total")}
    assert set(errors) == ERROR_KINDS, "the kind label has exactly the documented values"
    assert errors["chunk_failure"] == 1 and errors["bad_frame"] == 1 and errors["rpc_failure"] == 0

    for hist, count in (("spark_shuffle_agent_fetch_latency_seconds", 3),
                        ("spark_shuffle_agent_open_block_request_latency_seconds", 2),
                        ("spark_shuffle_agent_register_executor_request_latency_seconds", 1)):
        fam = fams[hist]
        assert fam.type == "histogram", hist
        buckets = [(s.labels["le"], s.value) for s in fam.samples if s.name == hist + "_bucket"]
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{hist} buckets are cumulative"
        assert buckets[-1] == ("+Inf", count), hist
        assert sample(fams, hist, "_count") == count
    assert sample(fams, "spark_shuffle_agent_ready") == 1
    assert sample(fams, "spark_shuffle_agent_build_info", version=sample_version(fams)) == 1
    assert sample(fams, "process_resident_memory_bytes") > 0
    conn.close()


def sample_version(fams: dict) -> str:
    return fams["spark_shuffle_agent_build_info"].samples[0].labels["version"]


def test_readyz_is_503_until_registrations_are_recovered(dirs):
    work, root = dirs
    gate = work / "recovery-may-finish"
    agent = start_agent(work, root, env_extra={"SPARK_SHUFFLE_AGENT_TEST_HOLD_RECOVERY": str(gate)},
                        wait_listening=False)
    try:
        # Liveness answers while recovery is held: the kubelet must not restart a slow recovery.
        assert wait_until(lambda: try_get(agent.metrics_port, "/healthz"), "the metrics port") == (200, "ok\n")
        assert http_get(agent.metrics_port, "/readyz") == (503, "not ready: recovering\n")
        status = json.loads(http_get(agent.metrics_port, "/status")[1])
        assert status["phase"] == "recovering" and status["ready"] is False
        metrics = families(agent.metrics_port)
        assert sample(metrics, "spark_shuffle_agent_ready") == 0
        out = subprocess.run([str(agent_binary()), "status", "--addr", f"127.0.0.1:{agent.metrics_port}"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 3, out
        assert "NOT READY (recovering)" in out.stdout
        gate.touch()
        wait_until(lambda: http_get(agent.metrics_port, "/readyz")[0] == 200, "/readyz to turn 200")
        assert "listening" in agent.log()
    finally:
        agent.stop()


def write_big_block(local_dirs: list[str], sub_dirs: int, size: int):
    """shuffle_1_0_0 with one partition of `size` bytes, sparse (no time spent writing it)."""
    index = block_path(local_dirs, sub_dirs, "shuffle_1_0_0.index")
    data = block_path(local_dirs, sub_dirs, "shuffle_1_0_0.data")
    for p in (index, data):
        p.parent.mkdir(parents=True, exist_ok=True)
    index.write_bytes(struct.pack(">qq", 0, size))
    with open(data, "wb") as f:
        f.truncate(size)


def test_sigterm_turns_readyz_off_while_a_connection_drains(agent, dirs):
    work, root = dirs
    local_dirs = [str(root / "blockmgr-big")]
    write_big_block(local_dirs, 4, 256 << 20)
    conn = ShuffleConnection(agent.shuffle_port)
    assert conn.rpc(register_executor(APP, "1", local_dirs, 4))[0]
    stream, _ = conn.open_stream(fetch_shuffle_blocks(APP, "1", 1, [0], [[0]]))
    # Ask for 256 MiB and do not read it: the agent's write blocks on a full socket, so the
    # connection is still sending when SIGTERM arrives and the drain has to wait for it.
    conn.sock.sendall(struct.pack(">q", 8 + 1 + 12) + bytes([0]) + struct.pack(">qi", stream, 0))
    wait_until(lambda: sample(families(agent.metrics_port), "spark_shuffle_agent_chunks_in_flight") == 1,
               "the chunk to be in flight")
    assert http_get(agent.metrics_port, "/readyz")[0] == 200
    agent.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: http_get(agent.metrics_port, "/readyz")[0] == 503, "/readyz to go 503 on SIGTERM")
    assert http_get(agent.metrics_port, "/readyz") == (503, "not ready: draining\n")
    assert http_get(agent.metrics_port, "/healthz")[0] == 200, "draining is alive"
    assert agent.proc.poll() is None, "the agent waits for the connection it is sending on"
    conn.close()
    assert agent.proc.wait(timeout=60) == 0
    assert "draining connections" in agent.log()


def test_the_status_command_prints_apps_disk_traffic_and_health(agent, dirs):
    work, root = dirs
    local_dirs = [str(root / "blockmgr-s")]
    write_map_output(local_dirs, 4, 3, 1, [2048, 2048])
    conn = ShuffleConnection(agent.shuffle_port)
    assert conn.rpc(register_executor(APP, "7", local_dirs, 4))[0]
    stream, _ = conn.open_stream(fetch_shuffle_blocks(APP, "7", 3, [1], [[0, 1]]))
    assert conn.chunk(stream, 0)[0] and conn.chunk(stream, 1)[0]
    addr = f"127.0.0.1:{agent.metrics_port}"
    cmd = [str(agent_binary()), "status", "--addr", addr]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    assert "READY" in out.stdout and APP in out.stdout and "TRAFFIC" in out.stdout and str(root) in out.stdout
    assert "4.0 KiB of blocks in 2 chunks" in out.stdout, out.stdout
    report = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=60).stdout)
    assert report["registered_executors"] == 1
    assert [a["app_id"] for a in report["apps"]] == [APP]
    assert report["traffic"]["block_bytes_total"] == 4096
    unreachable = subprocess.run([str(agent_binary()), "status", "--addr", "127.0.0.1:1"], capture_output=True,
                                 text=True, timeout=60)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    conn.close()


def test_json_logs_are_json_lines_and_routine_closes_stay_below_info(dirs):
    work, root = dirs
    agent = start_agent(work, root, extra_args=["--log-format", "json"])
    try:
        quiet = ShuffleConnection(agent.shuffle_port)
        quiet.close()
        bad = ShuffleConnection(agent.shuffle_port)
        bad.send_bad_frame()
        wait_until(bad.closed_by_peer, "the bad connection to be closed")
        wait_until(lambda: "bad frame" in agent.log(), "the bad frame to be logged")
        wait_until(lambda: "metrics listening" in agent.log(), "the metrics line")
    finally:
        agent.stop()
    records = [json.loads(line) for line in agent.log().splitlines() if line.strip()]
    by_message = {}
    for r in records:
        by_message.setdefault(r["message"], []).append(r)
    (metrics_line,) = by_message["metrics listening"]
    assert metrics_line["addr"] == f"127.0.0.1:{agent.metrics_port}" and metrics_line["level"] == "INFO"
    assert [r["level"] for r in by_message["connection closed"]] == ["WARN"], "only the bad frame is logged"
    assert "connection ended" not in by_message, "a peer closing its connection is routine: debug"
