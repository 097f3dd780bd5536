"""faultfs itself: passthrough, the page cache, sendfile, and each fault rule, on a real FUSE mount.

Needs root (or /dev/fuse access) and libfuse 3; tests/run-all.sh installs both. Every wait is on
a condition with a timeout, so a broken daemon fails a test instead of hanging the run.
"""

import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from faultfs import FaultFSError, mounted
from faultfs.mount import is_mounted
from faultfs.rules import CommandError, Rule, Rules

WAIT_S = 10.0


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    """One mount for the module (mounting costs a Python start-up); each test gets its own dir."""
    base = tmp_path_factory.mktemp("faultfs")
    with mounted(base / "back", base / "mnt") as fs:
        yield fs


@pytest.fixture
def fs(shared_mount, request):
    shared_mount.dir = f"/{request.node.name}"
    os.mkdir(shared_mount.mountpoint + shared_mount.dir)
    yield shared_mount
    shared_mount.clear()


def put(fs, name, data):
    path = os.path.join(fs.mountpoint + fs.dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def cold_read(path, size=4096, offset=0):
    """Read after dropping the file's pages, so the read has to reach the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def in_thread(fn, *args):
    """Run fn in a thread; returns (thread, outcome) where outcome gets "value" or "error"."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except OSError as e:
            outcome["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def wait_for(condition, what):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- passthrough ------------------------------------------------------------------------------

def test_writes_reads_renames_and_deletes_pass_through_to_the_backing_directory(fs):
    data = os.urandom(300_000)
    path = put(fs, "app-1/blockmgr-x/0c/shuffle_0_0_0.data.tmp", data)
    final = path.removesuffix(".tmp")
    os.rename(path, final)
    backing = fs.backing + fs.dir + "/app-1/blockmgr-x/0c/shuffle_0_0_0.data"
    with open(backing, "rb") as f:
        assert f.read() == data
    assert cold_read(final, len(data)) == data
    assert os.listdir(os.path.dirname(final)) == ["shuffle_0_0_0.data"]

    fd = os.open(final, os.O_RDWR)
    os.ftruncate(fd, 1000)
    os.fsync(fd)
    os.close(fd)
    assert os.path.getsize(backing) == 1000
    assert os.statvfs(fs.mountpoint).f_blocks == os.statvfs(fs.backing).f_blocks

    # The agent deletes a whole app directory, with a file still open (as a fetch in flight is).
    held = os.open(final, os.O_RDONLY)
    shutil.rmtree(fs.mountpoint + fs.dir + "/app-1")
    os.posix_fadvise(held, 0, 0, os.POSIX_FADV_DONTNEED)  # so the read reaches the daemon
    assert os.pread(held, 10, 0) == data[:10]
    os.close(held)
    assert os.listdir(fs.backing + fs.dir) == []


def test_what_another_user_creates_through_the_mount_is_theirs_and_permissions_hold(fs):
    shared = fs.mountpoint + fs.dir + "/shared"
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    # Relative paths from a working directory inside the mount: pytest's tmp dirs are 0700 root.
    as_user = ["setpriv", "--reuid", "1234", "--regid", "1234", "--clear-groups", "sh", "-c"]
    subprocess.run(as_user + ["echo hi > f && mkdir d"], cwd=shared, check=True, timeout=WAIT_S)
    assert [(os.stat(f"{shared}/{n}").st_uid, os.stat(f"{shared}/{n}").st_gid) for n in "fd"] == [(1234, 1234)] * 2
    denied = subprocess.run(as_user + ["echo x > ../mine"], cwd=shared, capture_output=True, timeout=WAIT_S)
    assert b"Permission denied" in denied.stderr and not os.path.exists(fs.backing + fs.dir + "/mine")


def test_a_warm_read_is_served_from_the_page_cache_and_dontneed_makes_it_cold(fs):
    path = put(fs, "f", b"x" * 8192)
    with open(path, "rb") as f:
        assert f.read() == b"x" * 8192  # now in the page cache
    fs.eio(fs.dir)
    with open(path, "rb") as f:
        assert f.read() == b"x" * 8192, "a cached read reached the daemon"
    with pytest.raises(OSError) as e:
        cold_read(path)
    assert e.value.errno == errno.EIO


def test_sendfile_from_a_file_on_the_mount_delivers_its_bytes_cold_and_warm(fs):
    data = os.urandom(1 << 20)
    path = put(fs, "shuffle_0_1_0.data", data)
    for temperature in ("cold", "warm"):
        fd = os.open(path, os.O_RDONLY)
        if temperature == "cold":
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        a, b = socket.socketpair()
        with a, b:
            reader, got = in_thread(lambda: b"".join(iter(lambda: b.recv(1 << 16), b"")))
            offset, end = 12_345, 12_345 + 700_000
            while offset < end:
                offset += os.sendfile(a.fileno(), fd, offset, end - offset)
            a.shutdown(socket.SHUT_WR)
            reader.join(WAIT_S)
        os.close(fd)
        assert got.get("value") == data[12_345:end], temperature


# -- the rules --------------------------------------------------------------------------------

def test_a_2ms_latency_rule_makes_a_cold_4k_read_take_at_least_2ms(fs):
    path = put(fs, "slow", os.urandom(4096))
    fs.latency(fs.dir, 2)
    start = time.monotonic()
    cold_read(path)
    assert time.monotonic() - start >= 0.002


def test_eio_fails_reads_under_the_prefix_and_other_paths_still_read(fs):
    bad = put(fs, "root1/f", b"bad")
    good = put(fs, "root2/f", b"good")
    fs.eio(fs.dir + "/root1")
    with pytest.raises(OSError) as e:
        cold_read(bad)
    assert e.value.errno == errno.EIO
    assert cold_read(good) == b"good"
    os.stat(bad)  # only reads fail, unless asked for opens too
    fs.eio(fs.dir + "/root1", on_open=True)
    with pytest.raises(OSError) as e:
        open(bad, "rb")
    assert e.value.errno == errno.EIO
    fs.clear(fs.dir + "/root1")
    assert cold_read(bad) == b"bad"


def test_a_stall_blocks_reads_under_the_prefix_until_cleared_while_other_paths_read(fs):
    # More stalled reads than libfuse's default 10 worker threads: faultfs raises that limit.
    stuck = [put(fs, f"root1/f{i}", b"%d" % i) for i in range(12)]
    good = put(fs, "root2/f", b"good")
    fs.stall(fs.dir + "/root1")
    readers = [in_thread(cold_read, p) for p in stuck]
    wait_for(lambda: fs.stalled() == len(stuck), "every read to be stalled")

    other, outcome = in_thread(cold_read, good)
    other.join(WAIT_S)
    assert outcome.get("value") == b"good"
    assert all(t.is_alive() for t, _ in readers)

    fs.clear(fs.dir + "/root1")
    for i, (t, outcome) in enumerate(readers):
        t.join(WAIT_S)
        assert outcome.get("value") == b"%d" % i


def test_vanish_makes_the_subtree_enoent_and_held_descriptors_eio(fs):
    gone = put(fs, "root1/app/f", b"gone")
    put(fs, "root2/f", b"here")
    held = os.open(gone, os.O_RDONLY)
    fs.vanish(fs.dir + "/root1")
    for call in (os.stat, os.listdir, open):
        with pytest.raises(OSError) as e:
            call(gone)
        assert e.value.errno == errno.ENOENT
    assert sorted(os.listdir(fs.mountpoint + fs.dir)) == ["root2"]
    with pytest.raises(OSError) as e:
        os.posix_fadvise(held, 0, 0, os.POSIX_FADV_DONTNEED)
        os.pread(held, 4, 0)
    assert e.value.errno == errno.EIO
    os.close(held)
    fs.clear()
    assert cold_read(gone) == b"gone"


def test_readonly_refuses_changes_with_erofs_and_still_reads(fs):
    path = put(fs, "root1/f", b"ro")
    fs.readonly(fs.dir + "/root1")
    for change in (lambda: os.unlink(path), lambda: os.mkdir(path + ".d"), lambda: open(path + ".new", "wb"),
                   lambda: open(path, "r+b")):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EROFS
    assert cold_read(path) == b"ro"


def test_a_bad_command_is_refused_with_its_reason(fs):
    with pytest.raises(FaultFSError, match="milliseconds"):
        fs.command("latency", "/x", "fast")
    with pytest.raises(FaultFSError, match="unknown command"):
        fs.command("explode", "/x")
    assert fs.rules() == {}


def test_the_longest_matching_prefix_wins_and_only_whole_components_match():
    rules = Rules(stall_cap_s=1)
    rules.command("latency / 2")
    rules.command("eio /root1/")
    assert rules.fault("/root1/app/f") == Rule("eio")
    assert rules.fault("/root10/f") == Rule("latency", ms=2.0)
    rules.command("clear /root1")
    assert rules.fault("/root1/f") == Rule("latency", ms=2.0)
    with pytest.raises(CommandError):
        rules.command("eio root1")


# -- mounts of their own ----------------------------------------------------------------------

def test_a_stall_past_the_safety_cap_fails_the_read_with_eio(tmp_path):
    with mounted(tmp_path / "back", tmp_path / "mnt", stall_cap_s=0.2) as fs:
        path = os.path.join(fs.mountpoint, "f")
        with open(path, "wb") as f:
            f.write(b"x")
        fs.stall("/")
        reader, outcome = in_thread(cold_read, path)
        reader.join(WAIT_S)
        assert outcome["error"].errno == errno.EIO


def test_the_mount_is_gone_after_a_failing_body_even_with_a_stalled_read_or_a_killed_daemon(tmp_path):
    mnt = str(tmp_path / "mnt")
    with pytest.raises(RuntimeError, match="the test failed"):
        with mounted(tmp_path / "back", mnt) as fs:
            with open(os.path.join(mnt, "f"), "wb") as f:
                f.write(b"x")
            fs.stall("/")
            reader, _ = in_thread(cold_read, os.path.join(mnt, "f"))
            wait_for(lambda: fs.stalled() == 1, "the read to stall")
            raise RuntimeError("the test failed")
    reader.join(WAIT_S)
    assert not reader.is_alive() and not is_mounted(mnt)

    with mounted(tmp_path / "back", mnt) as fs:
        os.kill(fs.proc.pid, signal.SIGKILL)
        fs.proc.wait(WAIT_S)
        with pytest.raises(OSError) as e:
            os.stat(os.path.join(mnt, "f"))
        assert e.value.errno == errno.ENOTCONN  # what a dead FUSE daemon looks like
    assert not is_mounted(mnt)
