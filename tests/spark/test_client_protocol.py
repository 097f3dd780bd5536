"""Spark's real shuffle client (ExternalBlockStoreClient from the pyspark 4.3.0 jars) against the server.

Each test writes Spark's on-disk layout with shuffle_layout.py (generator bytes of spec/vectors/layout.txt),
drives the real client through tests/java/ShuffleClientDriver.java, and checks what the client observed:
bytes (length, CRC32, SHA-256 against the generator), callback order, and for failures the first line of
the error text the server sent (spec/vectors/NOTES.md section 5). Expected texts are those of Spark's own
JVM service; run with SHUFFLE_SERVER=jvm to see them hold.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from client_driver import server_text
from shuffle_layout import (ExecutorDirs, crc32, file_digests, file_path, rdd_bytes, sha256, shuffle_bytes,
                            write_sparse_map_output)
from wiretap import WireTap

SORT = "org.apache.spark.shuffle.sort.SortShuffleManager"


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def assert_block(rec: dict, expected: bytes, where: str = ""):
    assert rec["ok"], f"{where} expected success, got {rec}"
    assert rec["len"] == len(expected), f"{where} length {rec['len']} != {len(expected)}"
    assert rec["crc32"] == crc32(expected), f"{where} CRC32 mismatch for {rec['block']}"
    assert rec["sha256"] == sha256(expected), f"{where} SHA-256 mismatch for {rec['block']}"


def assert_server_error(rec: dict, expected, where: str = ""):
    """expected: exact first line (str) or a compiled regex that must fullmatch it."""
    assert not rec["ok"], f"{where} expected a failure, got success {rec}"
    got = server_text(rec)
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(got), f"{where} error text {got!r} does not match {expected.pattern!r}\n{rec}"
    else:
        assert got == expected, f"{where} error text\n  got:      {got!r}\n  expected: {expected!r}\n{rec}"


def not_registered(app: str, exec_id: str) -> str:
    return f"java.lang.RuntimeException: Executor is not registered (appId={app}, execId={exec_id})"


class StdData:
    """The data set of spec/vectors/layout.txt, under this test's dir, for executor "0"."""

    def __init__(self, client, ex: ExecutorDirs):
        self.client, self.ex = client, ex
        self.app = client.app
        self.m00 = ex.write_map_output(0, 0, [13, 0, 29, 7])
        self.m01 = ex.write_map_output(0, 1, [5, 17, 64, 100], corrupt_checksum={"ADLER32": 2})
        self.m0big = ex.write_map_output(0, 4294967301, [8, 9, 10, 11], checksum_algorithms=())
        self.m10 = ex.write_map_output(1, 0, [3000, 0, 100], checksum_algorithms=())
        self.m20 = ex.write_map_output(2, 0, [4, 4], checksum_algorithms=())
        self.m30 = ex.write_map_output(3, 0, [6, 6], checksum_algorithms=(), write_data=False)
        self.rdd10 = ex.write_rdd_block(1, 0, 200)
        self.rdd11 = ex.write_rdd_block(1, 1, 16)

    def run(self, *steps, conf=None, timeout_s=60, exec_id="0"):
        """Register executor `exec_id` with this data's dirs, then run `steps` on the same client."""
        r = self.client.run(self.client.register_step(exec_id, self.ex), *steps, conf=conf, timeout_s=timeout_s)
        reg = r.one(0)
        assert reg["ok"], f"registration failed: {reg}\n{r.debug()}"
        return r.shifted(1)


@pytest.fixture
def std(shuffle_client, make_exec_dirs) -> StdData:
    return StdData(shuffle_client, make_exec_dirs("exec0"))


def fetch(exec_id, *ids, download=None, extra=()):
    s = ["fetch", "--exec", exec_id]
    for i in ids:
        s += ["--id", i]
    if download:
        s += ["--download", str(download)]
    return s + list(extra)


OLD = {"spark.shuffle.useOldFetchProtocol": "true"}


# ---------------------------------------------------------------------------------------------------------------
# Registration


def test_register_executor_with_default_custom_and_push_style_managers(shuffle_client, make_exec_dirs):
    ex = make_exec_dirs("e", n_dirs=1, subdirs=5)
    c = shuffle_client
    r = c.run(
        c.register_step("0", ex),
        c.register_step("1", ex, manager="org.example.MyShuffleManager"),
        # Push-based shuffle form, including the two stray '}' the real client appends (spec 2.4).
        c.register_step("2", ex, manager=SORT + ':{"mergeDir":"merge_manager_1","attemptId":"1"}}}'),
    )
    for i in range(3):
        assert r.one(i)["ok"], r.debug()


def test_registration_uses_the_registered_dirs_and_subdirs(shuffle_client, make_exec_dirs):
    """1 dir x 5 subdirs: the server must hash with the registered geometry, not a default of 64."""
    ex = make_exec_dirs("odd", n_dirs=3, subdirs=5)
    mo = ex.write_map_output(7, 3, [10, 20, 30])
    r = shuffle_client.run(shuffle_client.register_step("0", ex), fetch("0", "shuffle_7_3_0", "shuffle_7_3_2"))
    b = r.blocks(1)
    assert_block(b["shuffle_7_3_0"], mo.block(0))
    assert_block(b["shuffle_7_3_2"], mo.block(2))


def test_re_registration_overwrites_the_previous_dirs(shuffle_client, make_exec_dirs):
    a = make_exec_dirs("first", n_dirs=1)
    b = make_exec_dirs("second", n_dirs=2)
    a.write_map_output(0, 0, [5])
    mb = b.write_map_output(0, 0, [9])
    c = shuffle_client
    r = c.run(c.register_step("0", a), c.register_step("0", b), fetch("0", "shuffle_0_0_0"))
    assert_block(r.blocks(2)["shuffle_0_0_0"], mb.block(0))


# ---------------------------------------------------------------------------------------------------------------
# Fetches


def test_plain_fetch_ids_out_of_map_order_and_map_id_above_2_pow_32(std):
    ids = ["shuffle_0_0_0", "shuffle_0_1_3", "shuffle_0_0_2", "shuffle_0_4294967301_1"]
    r = std.run(fetch("0", *ids))
    b = r.blocks(0)
    assert set(b) == set(ids)
    assert_block(b["shuffle_0_0_0"], std.m00.block(0))
    assert_block(b["shuffle_0_0_2"], std.m00.block(2))
    assert_block(b["shuffle_0_1_3"], std.m01.block(3))
    assert_block(b["shuffle_0_4294967301_1"], std.m0big.block(1))
    for rec in b.values():
        assert rec["buffer"] == "NettyManagedBuffer"
    # The client groups ids by map (first-seen order) into chunks; the server answers chunks in order.
    assert r.summary(0)["order"] == ["shuffle_0_0_0", "shuffle_0_0_2", "shuffle_0_1_3", "shuffle_0_4294967301_1"]


def test_batch_fetch_of_contiguous_reduce_ranges(std):
    r = std.run(fetch("0", "shuffle_0_0_0_3", "shuffle_0_1_1_4"))
    b = r.blocks(0)
    assert_block(b["shuffle_0_0_0_3"], std.m00.range_bytes(0, 3))
    assert_block(b["shuffle_0_1_1_4"], std.m01.range_bytes(1, 4))
    assert b["shuffle_0_0_0_3"]["len"] == 42 and b["shuffle_0_1_1_4"]["len"] == 181


def test_empty_partition_is_a_zero_length_success(std):
    r = std.run(fetch("0", "shuffle_0_0_1"), fetch("0", "shuffle_1_0_1"))
    assert_block(r.blocks(0)["shuffle_0_0_1"], b"")
    assert_block(r.blocks(1)["shuffle_1_0_1"], b"")


def test_old_fetch_protocol_open_blocks(std):
    ids = ["shuffle_0_0_2", "shuffle_0_1_0", "shuffle_0_0_0", "shuffle_0_0_1"]
    r = std.run(fetch("0", *ids), conf=OLD)
    b = r.blocks(0)
    assert_block(b["shuffle_0_0_2"], std.m00.block(2))
    assert_block(b["shuffle_0_1_0"], std.m01.block(0))
    assert_block(b["shuffle_0_0_0"], std.m00.block(0))
    assert_block(b["shuffle_0_0_1"], b"")
    # OpenBlocks keeps the caller's order: one chunk per id.
    assert r.summary(0)["order"] == ids


def test_rdd_blocks_are_served_whole_through_open_blocks(std):
    r = std.run(fetch("0", "rdd_1_0", "rdd_1_1"))
    b = r.blocks(0)
    assert_block(b["rdd_1_0"], rdd_bytes(1, 0, 200))
    assert_block(b["rdd_1_1"], rdd_bytes(1, 1, 16))


def _check_downloads(r, step: int, expected: dict[str, bytes], download_dir: Path):
    b = r.blocks(step)
    assert set(b) == set(expected)
    for bid, data in expected.items():
        rec = b[bid]
        assert_block(rec, data, where=bid)
        # The StreamRequest path: the client wrote the bytes to a temp file of our DownloadFileManager.
        assert rec["buffer"] == "FileSegmentManagedBuffer", rec
        assert rec["temp_exists"] and rec["temp_size"] == len(data), rec
        assert Path(rec["temp_path"]).parent == download_dir, rec
        assert rec["streamed_bytes"] == len(data)
        assert rec["streamed_crc32"] == crc32(data) and rec["streamed_sha256"] == sha256(data)
    s = r.summary(step)
    assert s["temp_files_created"] == len(expected) and s["temp_files_remaining"] == 0, s


def test_stream_fetch_with_download_file_manager(std, tmp_path):
    dl = tmp_path / "downloads"
    dl.mkdir()
    ids = ["shuffle_1_0_0", "shuffle_1_0_1", "shuffle_1_0_2"]  # 3000 B, 0 B, 100 B
    ids2 = ["shuffle_0_1_0", "shuffle_0_1_1", "shuffle_0_1_2", "shuffle_0_1_3"]
    r = std.run(fetch("0", *ids, download=dl), fetch("0", *ids2, download=dl))
    _check_downloads(r, 0, {i: std.m10.block(int(i[-1])) for i in ids}, dl)
    _check_downloads(r, 1, {i: std.m01.block(int(i[-1])) for i in ids2}, dl)
    assert r.summary(0)["order"] == ids
    assert list(dl.iterdir()) == [], "temp files left behind"


def test_stream_fetch_of_rdd_and_batch_blocks_and_old_protocol(std, tmp_path):
    dl = tmp_path / "downloads"
    dl.mkdir()
    r = std.run(fetch("0", "rdd_1_0", download=dl), fetch("0", "shuffle_0_1_1_4", download=dl))
    _check_downloads(r, 0, {"rdd_1_0": rdd_bytes(1, 0, 200)}, dl)
    _check_downloads(r, 1, {"shuffle_0_1_1_4": std.m01.range_bytes(1, 4)}, dl)
    r = std.run(fetch("0", "shuffle_0_0_2", "shuffle_0_0_0", download=dl), conf=OLD)
    _check_downloads(r, 0, {"shuffle_0_0_2": std.m00.block(2), "shuffle_0_0_0": std.m00.block(0)}, dl)
    assert list(dl.iterdir()) == []


def test_two_fetches_on_one_client_reuse_one_connection(std, java_driver):
    """The server keeps the connection open after a completed stream; the client's pool reuses it."""
    tap = WireTap("127.0.0.1", std.client.server.port).start()
    try:
        steps = [std.client.register_step("0", std.ex), fetch("0", "shuffle_0_0_0"), fetch("0", "shuffle_0_1_0"),
                 fetch("0", "shuffle_0_9_0"), fetch("0", "shuffle_0_1_3")]
        r = java_driver.run(steps, port=tap.port, app=std.app)
    finally:
        tap.stop()
    assert r.one(0)["ok"]
    assert_block(r.blocks(1)["shuffle_0_0_0"], std.m00.block(0))
    assert_block(r.blocks(2)["shuffle_0_1_0"], std.m01.block(0))
    assert not r.blocks(3)["shuffle_0_9_0"]["ok"]  # a ChunkFetchFailure does not close the connection ...
    assert_block(r.blocks(4)["shuffle_0_1_3"], std.m01.block(3))  # ... the next fetch uses it
    # Registration has its own connection (the client closes it); all fetches share one pooled connection.
    fetch_conns = {x["conn"] for x in tap.rpcs("FetchShuffleBlocks")}
    reg_conns = {x["conn"] for x in tap.rpcs("RegisterExecutor")}
    assert len(tap.rpcs("FetchShuffleBlocks")) == 4
    assert len(fetch_conns) == 1, tap.summary()
    assert fetch_conns.isdisjoint(reg_conns)
    assert not tap.decode_errors(), tap.decode_errors()


def test_fetch_from_a_second_executor_with_other_dirs(std, make_exec_dirs):
    ex1 = make_exec_dirs("exec1", n_dirs=1, subdirs=64)
    mo = ex1.write_map_output(0, 0, [33, 44])
    r = std.run(std.client.register_step("1", ex1), fetch("1", "shuffle_0_0_1"), fetch("0", "shuffle_0_0_0"))
    assert r.one(0)["ok"]
    assert_block(r.blocks(1)["shuffle_0_0_1"], mo.block(1))
    assert_block(r.blocks(2)["shuffle_0_0_0"], std.m00.block(0))


# ---------------------------------------------------------------------------------------------------------------
# Host-local dirs, remove, diagnose


def test_get_host_local_dirs(std, make_exec_dirs):
    ex1 = make_exec_dirs("exec1", n_dirs=1)
    r = std.run(std.client.register_step("1", ex1), ["local-dirs", "--exec", "0", "--exec", "1"],
                ["local-dirs", "--exec", "1"])
    rec = r.one(1)
    assert rec["ok"], rec
    assert rec["dirs"] == {"0": std.ex.local_dirs, "1": ex1.local_dirs}
    assert r.one(2)["dirs"] == {"1": ex1.local_dirs}


def test_remove_blocks_three_existing_one_missing(std):
    victims = [std.m20.data_path, std.m20.index_path, std.rdd11]
    keep = [std.m00.data_path, std.m00.index_path, std.rdd10]
    for p in victims + keep:
        assert os.path.exists(p)
    r = std.run(["remove", "--exec", "0", "--ids", "shuffle_2_0_0.data,shuffle_2_0_0.index,rdd_1_1,rdd_1_99"])
    rec = r.one(0)
    assert rec["ok"] and rec["removed"] == 3, rec
    for p in victims:
        assert not os.path.exists(p), f"{p} was not deleted"
    for p in keep:
        assert os.path.exists(p), f"{p} was deleted but not asked for"


def diag(exec_id, shuffle, map_id, reduce, checksum, alg, raw=False):
    s = ["diagnose", "--exec", exec_id, "--shuffle", shuffle, "--map", map_id, "--reduce", reduce,
         "--checksum", checksum, "--algorithm", alg]
    return s + (["--raw"] if raw else [])


@pytest.mark.jvm_since("4.0.0", "the 3.5 JVM service knows no CRC32C: it answers UNSUPPORTED_CHECKSUM_ALGORITHM, not UNKNOWN_ISSUE")
def test_diagnose_corruption_all_causes(std):
    m00_alder_r2 = std.m00.checksums["ADLER32"][2]  # 2833714933 as in layout.txt
    assert m00_alder_r2 == 2833714933
    m01_r2_true_adler = std.m01.checksums["ADLER32"][2] ^ 1  # the file holds true ^ 1 (corrupted entry)

    cases = [
        (diag("0", 0, 0, 2, m00_alder_r2, "ADLER32"), "CHECKSUM_VERIFY_PASS"),
        (diag("0", 0, 0, 2, std.m00.checksums["CRC32"][2], "CRC32"), "CHECKSUM_VERIFY_PASS"),
        (diag("0", 0, 0, 1, 1, "ADLER32"), "CHECKSUM_VERIFY_PASS"),  # empty partition: Adler32 = 1
        (diag("0", 0, 0, 1, 0, "CRC32"), "CHECKSUM_VERIFY_PASS"),  # empty partition: CRC32 = 0
        (diag("0", 0, 1, 2, m01_r2_true_adler, "ADLER32"), "DISK_ISSUE"),
        (diag("0", 0, 0, 2, m00_alder_r2 + 1, "ADLER32"), "NETWORK_ISSUE"),
        (diag("0", 0, 0, 2, 482662352, "CRC32C"), "UNKNOWN_ISSUE"),  # no .checksum.CRC32C file
        (diag("0", 0, 0, 2, 12345, "MD5"), "UNSUPPORTED_CHECKSUM_ALGORITHM"),
        (diag("0", 0, 7, 0, 1, "ADLER32"), "UNKNOWN_ISSUE"),  # missing index: RpcFailure -> client says UNKNOWN
        (diag("0", 0, 7, 0, 1, "MD5"), "UNKNOWN_ISSUE"),  # index read before the algorithm check (NOTES D9)
        (diag("99", 0, 0, 2, m00_alder_r2, "ADLER32"), "UNKNOWN_ISSUE"),  # unregistered: RpcFailure
    ]
    r = std.run(*[c for c, _ in cases])
    for i, (step, want) in enumerate(cases):
        rec = r.one(i)
        assert rec["ok"] and rec["cause"] == want, f"{step}: {rec}"



def test_diagnose_corruption_rpc_failure_texts(std):
    """The failing DiagnoseCorruption requests sent with sendRpcSync on the client's own pooled connection (the
    high-level call turns any failure into UNKNOWN_ISSUE, hiding the text)."""
    r = std.run(diag("0", 0, 7, 0, 1, "ADLER32", raw=True), diag("0", 0, 7, 0, 1, "MD5", raw=True),
                diag("0", 0, 0, 2, 12345, "MD5", raw=True))
    missing_index = file_path(std.ex.local_dirs, 64, "shuffle_0_7_0.index")
    assert_server_error(r.one(0), f"java.lang.RuntimeException: Failed to open file: {missing_index}")
    assert_server_error(r.one(1), f"java.lang.RuntimeException: Failed to open file: {missing_index}")
    assert r.one(2)["ok"] and r.one(2)["cause"] == "UNSUPPORTED_CHECKSUM_ALGORITHM"


def test_diagnose_corruption_unregistered_executor_rpc_failure_text(std, server_kind):
    """NOTES D8: the JVM answers with an accidental NullPointerException text; the agent deliberately answers
    with the "Executor is not registered" text every other RPC uses. Invisible to real Spark (the client maps
    any DiagnoseCorruption failure to UNKNOWN_ISSUE); each server is held to its own documented text."""
    r = std.run(diag("99", 0, 0, 2, 2833714933, "ADLER32", raw=True))
    if server_kind == "jvm":
        expected = 'java.lang.NullPointerException: Cannot read field "localDirs" because "executor" is null'
    else:
        expected = not_registered(std.app, "99")
    assert_server_error(r.one(0), expected)


# ---------------------------------------------------------------------------------------------------------------
# Error paths (NOTES section 5), as the real client reports them


def test_fetch_from_unregistered_executor(std):
    r = std.run(fetch("99", "shuffle_0_0_0"), fetch("99", "shuffle_0_0_0_2"))
    assert_server_error(r.blocks(0)["shuffle_0_0_0"], not_registered(std.app, "99"))
    assert_server_error(r.blocks(1)["shuffle_0_0_0_2"], not_registered(std.app, "99"))
    r = std.run(fetch("99", "shuffle_0_0_0"), conf=OLD)
    # OpenBlocks parses ids eagerly but resolves the executor lazily: a ChunkFetchFailure, not an RpcFailure.
    rec = r.blocks(0)["shuffle_0_0_0"]
    assert_server_error(rec, not_registered(std.app, "99"))
    assert rec["error_class"].endswith("ChunkFetchFailureException"), rec


def test_fetch_with_missing_index_file(std):
    r = std.run(fetch("0", "shuffle_0_7_0"))
    path = file_path(std.ex.local_dirs, 64, "shuffle_0_7_0.index")
    assert path == std.ex.local_dirs[1] + "/3b/shuffle_0_7_0.index"  # as in NOTES section 5
    assert_server_error(r.blocks(0)["shuffle_0_7_0"], f"java.lang.RuntimeException: Failed to open file: {path}")


def test_first_failed_chunk_fails_the_rest_but_not_the_earlier_ones(std):
    r = std.run(fetch("0", "shuffle_0_0_0", "shuffle_0_7_0", "shuffle_0_1_1"),
                fetch("0", "shuffle_0_7_0", "shuffle_0_0_0", "shuffle_0_0_2"))
    path = file_path(std.ex.local_dirs, 64, "shuffle_0_7_0.index")
    b = r.blocks(0)
    assert_block(b["shuffle_0_0_0"], std.m00.block(0))
    assert_server_error(b["shuffle_0_7_0"], f"java.lang.RuntimeException: Failed to open file: {path}")
    assert not b["shuffle_0_1_1"]["ok"]
    b = r.blocks(1)  # err_partial: chunk 0 fails, the client fails every remaining block with that error
    for bid in ("shuffle_0_7_0", "shuffle_0_0_0", "shuffle_0_0_2"):
        assert_server_error(b[bid], f"java.lang.RuntimeException: Failed to open file: {path}", where=bid)


IOOBE = re.compile(r"java\.lang\.IndexOutOfBoundsException(: \d+)?")  # NOTES D11: message depends on the JIT


def test_reduce_id_out_of_range(std):
    r = std.run(fetch("0", "shuffle_0_0_4"), fetch("0", "shuffle_0_0_9"), fetch("0", "shuffle_0_0_3_5"),
                fetch("0", "shuffle_0_0_1"))
    assert_server_error(r.blocks(0)["shuffle_0_0_4"], IOOBE)
    assert_server_error(r.blocks(1)["shuffle_0_0_9"], IOOBE)
    assert_server_error(r.blocks(2)["shuffle_0_0_3_5"], IOOBE)
    assert_block(r.blocks(3)["shuffle_0_0_1"], b"")  # the connection still works afterwards
    r = std.run(fetch("0", "shuffle_0_0_4"), conf=OLD)
    assert_server_error(r.blocks(0)["shuffle_0_0_4"], IOOBE)


def test_bad_block_id_fails_the_open_blocks_rpc(std):
    r = std.run(fetch("0", "broadcast_1"))
    rec = r.blocks(0)["broadcast_1"]
    assert_server_error(rec, "java.lang.IllegalArgumentException: Unexpected block id format: broadcast_1")
    assert rec["error_class"] == "java.lang.RuntimeException", rec  # an RpcFailure


def test_mixed_shuffle_and_rdd_ids(std):
    r = std.run(fetch("0", "shuffle_0_0_0", "rdd_1_0"))
    b = r.blocks(0)
    for bid in ("shuffle_0_0_0", "rdd_1_0"):
        assert_server_error(b[bid], "java.lang.IllegalArgumentException: Unexpected shuffle block id format: rdd_1_0")


def test_open_blocks_with_a_map_id_above_int_range(std):
    r = std.run(fetch("0", "shuffle_0_4294967301_0"), conf=OLD)
    assert_server_error(r.blocks(0)["shuffle_0_4294967301_0"],
                        'java.lang.NumberFormatException: For input string: "4294967301"')


def test_missing_rdd_block_chunk_and_stream(std, tmp_path):
    dl = tmp_path / "dl"
    dl.mkdir()
    r = std.run(fetch("0", "rdd_1_99"), fetch("0", "rdd_1_99", download=dl), fetch("0", "rdd_1_0"))
    assert_server_error(r.blocks(0)["rdd_1_99"], "java.lang.IllegalStateException: Chunk was not found")
    assert_server_error(r.blocks(1)["rdd_1_99"], re.compile(r"Stream '\d+_0' was not found\."))
    assert r.summary(1)["temp_files_remaining"] == 0
    assert_block(r.blocks(2)["rdd_1_0"], rdd_bytes(1, 0, 200))
    assert list(dl.iterdir()) == []


@pytest.mark.jvm_since("4.3.0", "LocalDirValidator (4.3 only) refuses dirs and files outside spark.local.dir")
def test_symlinked_block_files_escaping_the_local_dirs(std, outside_dir, tmp_path):
    """Index and data are symlinks (at their hashed paths) to real files outside the registered dirs."""
    real = ExecutorDirs([str(outside_dir)], 1)
    mo = real.write_map_output(5, 0, [5, 6], checksum_algorithms=())
    idx = std.ex.path("shuffle_5_0_0.index")
    dat = std.ex.path("shuffle_5_0_0.data")
    for link, target in ((idx, mo.index_path), (dat, mo.data_path)):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)
    dl = tmp_path / "dl"
    dl.mkdir()
    r = std.run(fetch("0", "shuffle_5_0_0"), fetch("0", "shuffle_5_0_0", download=dl))
    msg = f"java.lang.RuntimeException: Block file {idx} resolves outside the executor's registered local directories"
    assert_server_error(r.blocks(0)["shuffle_5_0_0"], msg)
    assert_server_error(r.blocks(1)["shuffle_5_0_0"], msg)
    r = std.run(fetch("0", "shuffle_5_0_0"), conf=OLD)
    assert_server_error(r.blocks(0)["shuffle_5_0_0"], msg)


@pytest.mark.jvm_since("4.3.0", "LocalDirValidator (4.3 only) refuses dirs and files outside spark.local.dir")
def test_symlinked_rdd_block_escaping_the_local_dirs(std, outside_dir):
    target = outside_dir / "rdd_3_0"
    target.write_bytes(rdd_bytes(3, 0, 50))
    link = std.ex.path("rdd_3_0")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)
    r = std.run(fetch("0", "rdd_3_0"))
    rec = r.blocks(0)["rdd_3_0"]
    assert_server_error(rec, f"java.lang.RuntimeException: Block file {link} resolves outside the executor's "
                             f"registered local directories")


@pytest.mark.jvm_since("4.3.0", "LocalDirValidator (4.3 only) refuses dirs and files outside spark.local.dir")
def test_register_outside_the_roots_or_with_an_empty_dir(shuffle_client, server_base, make_exec_dirs):
    c = shuffle_client
    good = make_exec_dirs("good", n_dirs=1)
    outside = f"/var/tmp/ssa-not-allowed-{c.app}"
    dotdot = str(server_base / "root") + "/../escape-" + c.app  # canonical path is outside the root
    r = c.run(
        c.register_step("2", dirs=[outside]),
        c.register_step("2", dirs=[dotdot]),
        c.register_step("2", dirs=[""]),
        c.register_step("2", dirs=[good.local_dirs[0], outside]),
        c.register_step("2", dirs=[good.local_dirs[0]]),
        ["local-dirs", "--exec", "2"],
    )
    pre = "java.lang.IllegalArgumentException: localDirs entry is not under any of the service's local directories: "
    assert_server_error(r.one(0), pre + outside)
    assert_server_error(r.one(1), pre + dotdot)
    assert_server_error(r.one(2), "java.lang.IllegalArgumentException: localDirs entries must be non-null and non-empty")
    assert_server_error(r.one(3), pre + outside)
    assert r.one(4)["ok"], r.one(4)
    assert r.one(5)["dirs"] == {"2": good.local_dirs}  # the refused attempts registered nothing


@pytest.mark.jvm_since("4.3.0", "LocalDirValidator (4.3 only) refuses dirs and files outside spark.local.dir")
def test_register_via_symlink_resolving_outside_the_roots(shuffle_client, test_dir, outside_dir):
    link = test_dir / "link-to-outside"
    os.symlink(outside_dir, link)
    c = shuffle_client
    r = c.run(c.register_step("3", dirs=[str(link)]))
    assert_server_error(r.one(0), "java.lang.IllegalArgumentException: localDirs entry is not under any of the "
                                  f"service's local directories: {link}")


@pytest.mark.jvm_since("4.3.0", "the 3.5/4.0 JVM services delete what path-like block ids point at")
def test_remove_blocks_with_path_like_ids_removes_nothing(std):
    ex = std.ex
    victims = []
    # '../victim' -> <dir>/<xx>/../victim; 'sub/rdd_1_0' -> <dir>/<xx>/sub/rdd_1_0; 'a\\b' is a legal Linux name.
    for bid in ("../victim", "sub/rdd_1_0", "a\\b"):
        p = ex.path(bid)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.normpath(p)), exist_ok=True)
        with open(p, "wb") as f:
            f.write(b"vic")
        victims.append(os.path.normpath(p))
    # '' hashes to <dir0>/00 (java.io.File drops the trailing slash): an EMPTY dir that a plain delete would remove.
    empty_dir = ex.path("")
    os.makedirs(empty_dir, exist_ok=True)
    # '.' and '..' name the subdir and the local dir themselves.
    dot_dir = ex.path(".")
    os.makedirs(dot_dir, exist_ok=True)
    r = std.run(["remove", "--exec", "0", "--id", "../victim", "--id", "sub/rdd_1_0", "--id", ".", "--id", "..",
                 "--id", "a\\b", "--id", ""],
                ["remove", "--exec", "0", "--id", "../victim", "--id", "", "--raw"])
    assert r.one(0)["ok"] and r.one(0)["removed"] == 0, r.one(0)
    assert r.one(1)["ok"] and r.one(1)["removed"] == 0, r.one(1)
    for v in victims:
        assert os.path.exists(v), f"victim {v} was deleted"
    assert os.path.isdir(empty_dir) and os.path.isdir(dot_dir)
    assert os.path.exists(std.rdd10)


def test_remove_blocks_for_unregistered_executor(std):
    r = std.run(["remove", "--exec", "99", "--id", "rdd_1_0"], ["remove", "--exec", "99", "--id", "rdd_1_0", "--raw"])
    assert r.one(0)["ok"] and r.one(0)["removed"] == 0  # the high-level client maps any failure to 0
    assert_server_error(r.one(1), not_registered(std.app, "99"))
    assert os.path.exists(std.rdd10)


@pytest.mark.jvm_since("4.3.0", "the 3.5/4.0 JVM services answer a request naming an unregistered executor with the registered ones")
def test_get_local_dirs_unregistered_or_duplicate(std):
    r = std.run(["local-dirs", "--exec", "0", "--exec", "99"], ["local-dirs", "--exec", "0", "--exec", "0"],
                ["local-dirs", "--exec", "0"])
    assert_server_error(r.one(0), not_registered(std.app, "99"))
    assert_server_error(r.one(1), "java.lang.IllegalArgumentException: duplicate element: 0")
    assert r.one(2)["ok"] and r.one(2)["dirs"] == {"0": std.ex.local_dirs}


def test_missing_data_file_fails_the_block(std, tmp_path):
    """Index present, data file absent. The JVM sends the success header and closes the connection (lazy FD,
    the client sees an IOException and retries on a new connection); opening first and answering a
    ChunkFetchFailure/StreamFailure is also legal (spec 13). Either way the block must fail, and the
    server must keep serving."""
    dl = tmp_path / "dl"
    dl.mkdir()
    conf = {"spark.shuffle.io.maxRetries": "1", "spark.shuffle.io.retryWait": "100ms"}
    r = std.run(fetch("0", "shuffle_3_0_0"), fetch("0", "shuffle_3_0_1", download=dl), fetch("0", "shuffle_0_0_0"),
                conf=conf)
    assert not r.blocks(0)["shuffle_3_0_0"]["ok"]
    assert not r.blocks(1)["shuffle_3_0_1"]["ok"]
    assert_block(r.blocks(2)["shuffle_0_0_0"], std.m00.block(0))
    assert list(dl.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# > 2 GiB block through the stream path, from a sparse file


HUGE = 2**31 + 1_234_567


@pytest.mark.huge
@pytest.mark.skipif(os.environ.get("SKIP_HUGE_BLOCK") == "1", reason="SKIP_HUGE_BLOCK=1")
def test_block_larger_than_2_gib_via_stream_request(shuffle_client, make_exec_dirs, tmp_path):
    """A > 2 GiB block cannot travel in a frame; with a DownloadFileManager the client uses StreamRequest,
    whose i64 byteCount must carry it. The data file is sparse (holes + generator islands around 2^31)."""
    ex = make_exec_dirs("huge", n_dirs=1)
    mo, _ = write_sparse_map_output(ex, 9, 0, HUGE, 100)
    dl = tmp_path / "dl"
    dl.mkdir()
    exp_crc, _ = file_digests(mo.data_path, 0, HUGE, want_sha=False)
    exp_crc1, _ = file_digests(mo.data_path, HUGE, 100, want_sha=False)
    c = shuffle_client
    r = c.run(c.register_step("0", ex),
              fetch("0", "shuffle_9_0_0", "shuffle_9_0_1", download=dl, extra=["--no-reread", "--digest", "crc32"]),
              timeout_s=300)
    b = r.blocks(1)
    big, small = b["shuffle_9_0_0"], b["shuffle_9_0_1"]
    assert big["ok"], big
    assert big["len"] == HUGE and big["streamed_bytes"] == HUGE
    assert big["buffer"] == "FileSegmentManagedBuffer"
    assert big["temp_exists"] and big["temp_size"] == HUGE and Path(big["temp_path"]).parent == dl
    assert big["streamed_crc32"] == exp_crc
    assert small["ok"] and small["len"] == 100 and small["streamed_crc32"] == exp_crc1
    assert small["streamed_crc32"] == crc32(shuffle_bytes(9, 0, 1, 100))
    s = r.summary(1)
    assert s["temp_files_created"] == 2 and s["temp_files_remaining"] == 0
    assert list(dl.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# The driver's load mode (used by the benchmarks): a smoke test that it works against this server


def test_load_mode_reports_throughput_and_latency(std, tmp_path):
    # One fetchBlocks call carries one shuffle id and one id kind (the client rejects or misreads mixtures).
    dl = tmp_path / "dl"
    dl.mkdir()
    plain = "shuffle_0_0_0,shuffle_0_0_2,shuffle_0_1_3,shuffle_0_1_0"
    batch = "shuffle_0_0_0_3,shuffle_0_1_1_4"
    r = std.run(["load", "--exec", "0", "--ids", plain, "--concurrency", "4", "--count", "40", "--seconds", "60"],
                ["load", "--exec", "0", "--ids", batch, "--concurrency", "2", "--count", "10", "--seconds", "60",
                 "--download", dl])
    for i, calls, n_ids, per_call in ((0, 40, 4, 13 + 29 + 100 + 5), (1, 10, 2, 42 + 181)):
        rec = r.one(i)
        assert rec["failures"] == 0 and rec["first_error"] is None, rec
        assert rec["calls_completed"] == calls and rec["drained"], rec
        assert rec["blocks"] == n_ids * calls and rec["bytes"] == per_call * calls, rec
        assert rec["len_mismatches"] == 0
        # The driver timed the calls (the percentiles themselves are bench numbers, not asserted).
        assert rec["p50_ms"] is not None and rec["p99_ms"] is not None and rec["blocks_per_s"] > 0
    assert r.one(1)["stream_path"] is True
    assert list(dl.iterdir()) == []
