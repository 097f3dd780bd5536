"""Reads that wait for the disk do not hold up anyone else (issue 16: disk reads off the event loop).

The agent's root is a faultfs mount (tests/faultfs) and the agent runs one data thread
(spark.shuffle.io.serverThreads 1), so a read that blocked the event loop would block every
connection. One executor's files stall (reads hang until the rule is cleared), as on a sick or
very slow disk; Spark's own client fetching another executor's cold blocks must still get them,
while the stalled fetch is still waiting; once the stall is cleared, the stalled fetch completes
with the right bytes. Block files are dropped from the page cache first (posix_fadvise DONTNEED on
the mount and on the backing files), so every read really goes to the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent))  # tests/: the faultfs package

from faultfs import mounted  # noqa: E402
from servers import agent_metrics_url, find_agent_bin, scrape_metrics, start_agent  # noqa: E402
from shuffle_layout import make_executor_dirs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
APP = "app-cold-0001"



def need_fuse() -> None:
    """Skips without root or /dev/fuse, except under CI (CI set to anything but false/0): there it fails."""
    if os.geteuid() == 0 and os.path.exists("/dev/fuse"):
        return
    if os.environ.get("CI", "") not in ("", "false", "0"):
        pytest.fail("needs root and /dev/fuse; under CI a FUSE test must fail, not skip", pytrace=False)
    pytest.skip("needs root and /dev/fuse (set CI=true to make this a failure)")


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def drop_cache(*trees: Path) -> None:
    for tree in trees:
        for dirpath, _, files in os.walk(tree):
            for name in files:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def register(java_driver, agent, exec_id: str, ex) -> None:
    step = ["register", "--exec", exec_id, *[a for d in ex.local_dirs for a in ("--dir", d)], "--subdirs", str(ex.subdirs)]
    rec = java_driver.run([step], port=agent.port, app=APP).one(0)
    assert rec["ok"], f"registration failed: {rec}"


def fetch(java_driver, agent, exec_id: str, ids: list[str], timeout_s: float):
    step = ["fetch", "--exec", exec_id, *[a for i in ids for a in ("--id", i)]]
    return java_driver.run([step], port=agent.port, app=APP, timeout_s=timeout_s)


def wait_until(what: str, cond, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_stalled_disk_read_does_not_hold_up_fetches_of_other_files(java_driver, tmp_path, server_kind):
    if server_kind != "agent":
        pytest.skip("the agent's disk pool; Spark's JVM service reads on its event loop threads")
    need_fuse()
    binary = find_agent_bin(REPO)
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    with mounted(backing, mount) as fs:
        root = mount / "root"
        root.mkdir()
        sick = make_executor_dirs(str(root / "sick" / "exec0"), 1, 4)
        well = make_executor_dirs(str(root / "well" / "exec1"), 1, 4)
        # A small body (read into the outbox) and a large one (sendfile) on each side.
        sick_out = sick.write_map_output(0, 0, [3_000, 300_000], checksum_algorithms=())
        well_out = well.write_map_output(0, 1, [5_000, 400_000], checksum_algorithms=())
        conf_file = tmp_path / "agent.conf"
        conf_file.write_text("spark.shuffle.io.serverThreads 1\n")
        agent = start_agent(binary, tmp_path / "agent", [str(root)], extra_args=["--config", str(conf_file)])
        try:
            register(java_driver, agent, "0", sick)
            register(java_driver, agent, "1", well)
            drop_cache(backing, mount)
            fs.stall("/root/sick")
            stalled: dict = {}

            def fetch_sick():
                stalled["res"] = fetch(java_driver, agent, "0", ["shuffle_0_0_0", "shuffle_0_0_1"], 90)

            t = threading.Thread(target=fetch_sick, daemon=True)
            t.start()
            wait_until("the sick executor's read to reach the stalled filesystem", lambda: fs.stalled() > 0)

            res = fetch(java_driver, agent, "1", ["shuffle_0_1_0", "shuffle_0_1_1"], 30)
            blocks = res.blocks(0)
            for r in (0, 1):
                rec = blocks.get(f"shuffle_0_1_{r}")
                assert rec is not None, f"no answer for the well executor's block {r} while the other stalled: {res.debug()}"
                assert rec["ok"] and rec["sha256"] == sha256(well_out.block(r)), rec
            assert t.is_alive() and fs.stalled() > 0, "the stalled fetch was still waiting meanwhile"

            fs.clear("/root/sick")
            t.join(timeout=60)
            assert not t.is_alive(), "the stalled fetch completed once the disk answered"
            blocks = stalled["res"].blocks(0)
            for r in (0, 1):
                rec = blocks[f"shuffle_0_0_{r}"]
                assert rec["ok"] and rec["sha256"] == sha256(sick_out.block(r)), rec
            metrics = scrape_metrics(agent_metrics_url(agent))
            assert metrics["spark_shuffle_agent_blocking_disk_reads_total"] > 0, "the cold reads went to the pool"
        finally:
            fs.clear()
            agent.stop()
