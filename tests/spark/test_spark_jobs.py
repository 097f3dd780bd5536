"""Real pyspark jobs in local-cluster[2,1,1024] whose executors use the server under test as their external
shuffle service (spark.shuffle.service.enabled=true, port = a WireTap relay in front of the server).

Pattern: run a shuffle and count map-side records with an accumulator; kill EVERY executor through the
driver, wait until the driver has forgotten them; request new executors and wait until they are up; read
the shuffle (or cached RDD) again. The results must be right, the accumulator must show the map side did
not re-run, and no task may have failed. What is checked, honestly:
  * results: compared with values computed in Python;
  * "map side did not re-run": the accumulator (map-side records) is unchanged after the re-read, and the
    REST API (driver UI on 127.0.0.1) shows the map stage of the re-read job as SKIPPED;
  * "no failed tasks": numFailedTasks of every job and stage attempt of the app (REST API), and no stage
    attempt other than 0 (no stage retry after a FetchFailed);
  * what the server did: the WireTap decodes the traffic, so each scenario asserts which messages the real
    executors sent (RegisterExecutor, GetLocalDirsForExecutors, FetchShuffleBlocks with/without batch,
    OpenBlocks, RemoveBlocks) and that the server answered none of them with a failure.
"""

from __future__ import annotations

import os

from pathlib import Path

import pytest

from servers import wait_until
from spark_cluster import SparkCluster

pytestmark = pytest.mark.spark_job

SORT = "org.apache.spark.shuffle.sort.SortShuffleManager"
N = 4000
KEYS = 97
EXPECTED = {k: sum(x for x in range(N) if x % KEYS == k) for k in range(KEYS)}


@pytest.fixture
def cluster(spark_env, ess, jobs_local_dir, request):
    """Factory: cluster(conf) -> a running SparkCluster; stopped after the test."""
    made = []

    def make(conf: dict | None = None) -> SparkCluster:
        cl = SparkCluster(ess, jobs_local_dir, request.node.name, conf)
        made.append(cl)
        # The driver JVM's version (not pyspark's), so a Spark-line run really runs that line's jobs.
        line = os.environ.get("SPARK_LINE")
        assert line is None or cl.jsc.version() == line, f"SPARK_LINE={line}, driver JVM {cl.jsc.version()}"
        return cl

    yield make
    for cl in made:
        cl.stop()


# ---------------------------------------------------------------------------------------------------------------
# Shared steps and checks


def shuffled_rdd(cl: SparkCluster):
    acc = cl.sc.accumulator(0)

    def tag(x):
        acc.add(1)
        return (x % KEYS, x)

    rdd = cl.sc.parallelize(range(N), 4).map(tag).reduceByKey(lambda a, b: a + b, 6)
    return rdd, acc


def check_registrations(cl: SparkCluster, exec_ids):
    """Every executor registered with the service (through 127.0.0.1:<tap port>) with dirs under spark.local.dir."""
    regs = cl.registrations()
    root = cl.local_dir.resolve()
    for e in exec_ids:
        assert e in regs, f"executor {e} never registered with the shuffle service; wire: {cl.tap.summary()}"
        r = regs[e]
        assert r["app"] == cl.app_id and r["subdirs"] == 64 and r["manager"] == SORT, r
        for d in r["local_dirs"]:
            assert Path(d).resolve().is_relative_to(root), f"{d} not under spark.local.dir {root}"


def check_no_server_failures(cl: SparkCluster):
    assert not cl.tap.failures(), f"server sent failures: {cl.tap.failures()}"
    assert not cl.tap.decode_errors(), cl.tap.decode_errors()


def check_reread(cl: SparkCluster, group: str, acc, expected_acc: int):
    """The re-read job succeeded, skipped its map stage and had no failed task; the map side did not re-run."""
    assert acc.value == expected_acc, f"map side re-ran: accumulator {acc.value} != {expected_acc}"
    m = cl.read_metrics(group)
    assert m["job_status"] and all(s == "SUCCEEDED" for s in m["job_status"]), m
    assert m["failed_tasks"] == 0, m
    statuses = [st for (_, _, st, _, _) in m["stages"]]
    assert "SKIPPED" in statuses, f"the map stage was not skipped: {m['stages']}"
    assert all(att == 0 for (_, att, _, _, _) in m["stages"]), f"a stage was retried: {m['stages']}"
    assert cl.all_failed_tasks() == 0
    return m


def run_shuffle_replace_and_reread(cl: SparkCluster):
    old, new, mark, m = replace_and_reread(cl)
    check_registrations(cl, old + new)
    check_no_server_failures(cl)
    return old, new, mark, m


def replace_and_reread(cl: SparkCluster):
    """The kill-and-replace flow: write the shuffle and read it, replace every executor, read it again from the
    new ones (check_reread: no map task re-ran). Returns the old and new executors, the tap's mark before the
    re-read, and the re-read's metrics."""
    rdd, acc = shuffled_rdd(cl)
    cl.sc.setJobGroup("phase1", "write the shuffle and read it")
    assert dict(rdd.collect()) == EXPECTED
    assert acc.value == N
    old, new = cl.replace_all_executors()
    assert sorted(old) == cl.initial_executors
    mark = cl.tap.mark()
    cl.sc.setJobGroup("phase2", "read the shuffle again from new executors")
    assert dict(rdd.collect()) == EXPECTED
    m = check_reread(cl, "phase2", acc, N)
    return old, new, mark, m


# ---------------------------------------------------------------------------------------------------------------
# Scenarios


def test_shuffle_survives_executor_replacement_with_host_local_reads(cluster):
    """Host-local reads on (the production default of spark.shuffle.readHostLocalDisk): the new executors ask
    the service for the dead executors' local dirs (GetLocalDirsForExecutors) and read the files from disk
    themselves. local-cluster mode defaults the key to FALSE (SparkContext.createTaskScheduler), so it is set
    explicitly here."""
    cl = cluster({"spark.shuffle.readHostLocalDisk": "true"})
    old, new, mark, m = run_shuffle_replace_and_reread(cl)
    asks = cl.tap.rpcs("GetLocalDirsForExecutors", since=mark)
    asked = {e for a in asks for e in a["exec_ids"]}
    assert asked and asked <= set(old), f"GetLocalDirs after the kill: {asks}"
    replies = cl.tap.rpcs("LocalDirsForExecutors", since=mark, direction="s2c")
    regs = cl.registrations()
    for rep in replies:
        for e, dirs in rep["dirs"].items():
            assert dirs == regs[e]["local_dirs"], (e, dirs)
    assert replies, "no LocalDirsForExecutors reply"
    assert not cl.tap.rpcs("FetchShuffleBlocks", since=mark) and not cl.tap.rpcs("OpenBlocks", since=mark)
    assert m["local_blocks"] > 0 and m["remote_blocks"] == 0, m


def test_shuffle_survives_executor_replacement_with_remote_fetches(cluster):
    """spark.shuffle.readHostLocalDisk=false (also local-cluster's own default): every block of the dead
    executors comes through the service (FetchShuffleBlocks + ChunkFetchRequest)."""
    cl = cluster({"spark.shuffle.readHostLocalDisk": "false"})
    old, new, mark, m = run_shuffle_replace_and_reread(cl)
    fetches = cl.tap.rpcs("FetchShuffleBlocks", since=mark)
    assert fetches and {f["exec"] for f in fetches} <= set(old), fetches
    assert not any(f["batch"] for f in fetches)  # RDD API: no batch fetch
    assert not cl.tap.rpcs("GetLocalDirsForExecutors", since=mark)
    chunks = cl.tap.frames("ChunkFetchSuccess", since=mark)
    assert len(chunks) == m["remote_blocks"], (len(chunks), m)
    assert sum(c["body_len"] for c in chunks) == m["remote_bytes"], m
    assert m["remote_blocks"] > 0 and m["local_blocks"] == 0, m


def test_shuffle_survives_executor_replacement_with_old_fetch_protocol(cluster):
    """spark.shuffle.useOldFetchProtocol=true: OpenBlocks with shuffle_S_M_R ids, M = map partition index."""
    cl = cluster({"spark.shuffle.useOldFetchProtocol": "true"})
    old, new, mark, m = run_shuffle_replace_and_reread(cl)
    opens = cl.tap.rpcs("OpenBlocks", since=mark)
    assert opens and {o["exec"] for o in opens} <= set(old), opens
    ids = [b for o in opens for b in o["block_ids"]]
    assert all(b.startswith("shuffle_") and len(b.split("_")) == 4 for b in ids), ids
    assert {int(b.split("_")[2]) for b in ids} <= set(range(4)), ids  # map index, not task attempt id
    assert not cl.tap.rpcs("FetchShuffleBlocks")  # never, in the whole application
    assert not cl.tap.rpcs("GetLocalDirsForExecutors")  # old protocol disables host-local reads
    assert len(cl.tap.frames("ChunkFetchSuccess", since=mark)) == m["remote_blocks"] > 0


def test_dataframe_aggregation_with_aqe_uses_batch_fetch(cluster):
    """AQE coalesces 20 shuffle partitions into a few; each reader then asks for a contiguous reduce range per
    map (FetchShuffleBlocks batchFetchEnabled=true, reduceIds [start, end)). Host-local reads are off so the
    reads go through the service and the batch flag is visible on the wire.

    Spark quirk (4.3.0): batch mode is decided per task from the local property
    `__fetch_continuous_blocks_in_batch_enabled`, which ShuffledRowRDD sets once, when the plan is built.
    Re-running the same finalized AQE plan (phase 2) does not set it again, so that re-read fetches the
    same ranges as single blocks (batch=false). Phase 3 sets the property exactly as ShuffledRowRDD does
    (spark.sql.adaptive.fetchShuffleBlocksInBatch=true) to make the new executors batch-fetch the dead
    executors' output."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    cl = cluster({
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.fetchShuffleBlocksInBatch": "true",
        "spark.sql.shuffle.partitions": "20",
        "spark.shuffle.readHostLocalDisk": "false",
    })
    spark = SparkSession(cl.sc)
    acc = cl.sc.accumulator(0)

    def tag(x):
        acc.add(1)
        return (x % 50, x)

    df = spark.createDataFrame(cl.sc.parallelize(range(N), 4).map(tag), "k int, v long")
    agg = df.groupBy("k").agg(F.count("*").alias("c"), F.sum("v").alias("s"))
    expected = {k: (sum(1 for x in range(N) if x % 50 == k), sum(x for x in range(N) if x % 50 == k))
                for k in range(50)}

    cl.sc.setJobGroup("phase1", "aggregate")
    assert {r["k"]: (r["c"], r["s"]) for r in agg.collect()} == expected
    assert acc.value == N
    old, new = cl.replace_all_executors()

    mark2 = cl.tap.mark()
    cl.sc.setJobGroup("phase2", "aggregate again from new executors")
    assert {r["k"]: (r["c"], r["s"]) for r in agg.collect()} == expected
    check_reread(cl, "phase2", acc, N)
    fetches2 = cl.tap.rpcs("FetchShuffleBlocks", since=mark2)
    assert fetches2 and {f["exec"] for f in fetches2} <= set(old), fetches2

    mark3 = cl.tap.mark()
    cl.sc.setJobGroup("phase3", "aggregate again, batch fetch property set as ShuffledRowRDD does")
    cl.sc.setLocalProperty("__fetch_continuous_blocks_in_batch_enabled", "true")
    assert {r["k"]: (r["c"], r["s"]) for r in agg.collect()} == expected
    check_reread(cl, "phase3", acc, N)
    fetches = cl.tap.rpcs("FetchShuffleBlocks", since=mark3)
    assert fetches and all(f["batch"] for f in fetches), fetches
    for f in fetches:
        assert all(len(r) == 2 and r[0] < r[1] for r in f["reduce_ids"]), f
    assert any(r[1] - r[0] > 1 for f in fetches for r in f["reduce_ids"]), "no multi-partition range"
    assert {f["exec"] for f in fetches} <= set(old)
    # One chunk per (map, range): every batch chunk came back as a success.
    chunks = cl.tap.frames("ChunkFetchSuccess", since=mark3)
    assert len(chunks) == sum(len(f["map_ids"]) for f in fetches)
    check_registrations(cl, old + new)
    check_no_server_failures(cl)


def test_disk_only_rdd_blocks_are_served_by_the_service_after_executor_loss(cluster):
    """spark.shuffle.service.fetch.rdd.enabled=true: DISK_ONLY blocks of dead executors are fetched from the
    service (OpenBlocks rdd_R_P), so the computing function does not run again; unpersist then deletes them
    through the service (RemoveBlocks). spark.storage.localDiskByExecutors.cacheSize=0 stops the driver from
    handing out the dead executors' dirs for a direct same-host disk read, which would bypass the service
    on this single-host cluster (BlockManagerMasterEndpoint.getLocationsAndStatus)."""
    from pyspark import StorageLevel

    cl = cluster({
        "spark.shuffle.service.fetch.rdd.enabled": "true",
        "spark.shuffle.readHostLocalDisk": "false",
        "spark.storage.localDiskByExecutors.cacheSize": "0",
    })
    acc = cl.sc.accumulator(0)

    def compute(x):
        acc.add(1)
        return x * 3

    rdd = cl.sc.parallelize(range(N), 4).map(compute).persist(StorageLevel.DISK_ONLY)
    cl.sc.setJobGroup("phase1", "materialize")
    assert rdd.count() == N and acc.value == N
    rid = rdd.id()
    blocks = cl.files(f"rdd_{rid}_*")
    assert len(blocks) == 4, blocks
    old, new = cl.replace_all_executors()
    mark = cl.tap.mark()
    cl.sc.setJobGroup("phase2", "read the cached blocks from new executors")
    assert sorted(rdd.collect()) == [x * 3 for x in range(N)]
    assert acc.value == N, "the computing function ran again: the cached blocks were not served"
    assert cl.all_failed_tasks() == 0
    opens = cl.tap.rpcs("OpenBlocks", since=mark)
    served = {b for o in opens for b in o["block_ids"]}
    assert served == {f"rdd_{rid}_{p}" for p in range(4)}, opens
    assert {o["exec"] for o in opens} <= set(old)
    assert len(cl.tap.frames("ChunkFetchSuccess", since=mark)) >= 4
    check_registrations(cl, old + new)
    check_no_server_failures(cl)

    mark = cl.tap.mark()
    rdd.unpersist(blocking=True)
    removes = cl.tap.rpcs("RemoveBlocks", since=mark)
    assert {b for r in removes for b in r["block_ids"]} == served, removes
    wait_until(lambda: not any(p.exists() for p in blocks), 30, 0.1, "rdd block files to be deleted")
    removed = cl.tap.rpcs("BlocksRemoved", since=mark, direction="s2c")
    assert sum(r["removed"] for r in removed) == 4, removed


def test_remove_shuffle_deletes_files_of_released_executors(cluster):
    """spark.shuffle.service.removeShuffle=true (the 4.x default, set explicitly): when a shuffle is cleaned
    after its executors are gone, the driver sends RemoveBlocks(shuffle_S_M_0.index, .data) to the service,
    which must really delete them. (ContextCleaner.doCleanupShuffle(id, blocking=true) stands in for the
    GC-driven cleanup.)"""
    cl = cluster({"spark.shuffle.service.removeShuffle": "true"})
    rdd, acc = shuffled_rdd(cl)
    assert dict(rdd.collect()) == EXPECTED
    data = cl.files("shuffle_*_0.data")
    index = cl.files("shuffle_*_0.index")
    checksums = cl.files("shuffle_*_0.checksum.*")
    assert len(data) == 4 and len(index) == 4, (data, index)
    sids = {p.name.split("_")[1] for p in data}
    assert len(sids) == 1
    sid = int(sids.pop())
    old = cl.kill_all_executors()
    mark = cl.tap.mark()
    cl.jsc.cleaner().get().doCleanupShuffle(sid, True)
    removes = cl.tap.rpcs("RemoveBlocks", since=mark)
    asked = sorted(b for r in removes for b in r["block_ids"])
    assert asked == sorted(p.name for p in data + index), removes
    assert {r["exec"] for r in removes} <= set(old)
    wait_until(lambda: not any(p.exists() for p in data + index), 30, 0.1, "shuffle files to be deleted")
    removed = cl.tap.rpcs("BlocksRemoved", since=mark, direction="s2c")
    assert sum(r["removed"] for r in removed) == len(asked), removed
    # Only what was asked for is deleted: the checksum files stay (Spark does not send their ids).
    assert all(p.exists() for p in checksums)
    check_no_server_failures(cl)
    check_registrations(cl, old)
