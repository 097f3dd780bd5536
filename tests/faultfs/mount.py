"""Mounting faultfs from a test: `with mounted(backing, mountpoint) as fs: fs.eio("/root1")`.

The daemon (fs.py) runs in a subprocess of its own: libfuse wants the main thread for its signal
handling, a stalled read must not stall the test, and a daemon that is killed leaves the test
process intact. This module does not import mfusepy, so importing it costs nothing.
"""

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python -m faultfs` must find this package: it lives in tests/, which is put on PYTHONPATH.
TESTS_DIR = Path(__file__).resolve().parent.parent


class FaultFSError(RuntimeError):
    """The daemon did not come up, or refused a command (its reply is the message)."""


def send(ctl_path, line, timeout_s=10.0):
    """One control command over the daemon's unix socket; returns its reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(ctl_path)
        s.sendall(line.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    reply = reply.decode().strip()
    if reply.startswith("error:") or not reply:
        raise FaultFSError(f"{line!r}: {reply or 'no reply'}")
    return reply


def is_mounted(mountpoint):
    """From /proc/self/mountinfo, not os.path.ismount: a dead FUSE mount answers stat with ENOTCONN,
    which ismount takes for "not a mount point"."""
    with open("/proc/self/mountinfo") as f:
        # Field 5 is the mount point, with spaces and such escaped as octal (\040).
        return any(line.split()[4].encode().decode("unicode_escape") == mountpoint for line in f)


class Handle:
    """A mounted faultfs: its paths, its daemon, and the rule commands."""

    def __init__(self, backing, mountpoint, ctl_path, proc, log_path):
        self.backing, self.mountpoint, self.ctl_path = backing, mountpoint, ctl_path
        self.proc, self.log_path = proc, log_path

    def command(self, *words):
        return send(self.ctl_path, " ".join(shlex.quote(str(w)) for w in words))

    def latency(self, prefix, ms, meta=False):
        """Add `ms` to every read under `prefix` (and to open/getattr/readdir with meta=True)."""
        self.command("latency", prefix, ms, *(["meta"] if meta else []))

    def eio(self, prefix, on_open=False):
        """Reads under `prefix` fail with EIO (and opens too with on_open=True)."""
        self.command("eio", prefix, *(["open"] if on_open else []))

    def stall(self, prefix):
        """Reads under `prefix` block until the rule is changed or cleared (or the cap runs out)."""
        self.command("stall", prefix)

    def vanish(self, prefix):
        """The subtree is gone: lookups ENOENT, I/O on descriptors opened before EIO."""
        self.command("vanish", prefix)

    def readonly(self, prefix):
        """Changes under `prefix` fail with EROFS, as after a remount read-only."""
        self.command("readonly", prefix)

    def clear(self, prefix=None):
        self.command("clear", *([prefix] if prefix is not None else []))

    def rules(self):
        return json.loads(self.command("rules"))

    def stalled(self):
        """How many reads the daemon holds in stall rules right now."""
        return int(self.command("stalled"))

    def log(self):
        return Path(self.log_path).read_text(errors="replace")


@contextlib.contextmanager
def mounted(backing, mountpoint, stall_cap_s=120.0, ready_timeout_s=15.0):
    """Mount `backing` at `mountpoint` (both created if missing) through faultfs; yield a Handle;
    unmount at the end, also when the body raised or the daemon died."""
    backing, mountpoint = os.path.realpath(backing), os.path.realpath(mountpoint)
    os.makedirs(backing, exist_ok=True)
    os.makedirs(mountpoint, exist_ok=True)
    # A short directory for the socket: unix socket paths are limited to 108 bytes, and pytest's
    # tmp_path names can be long.
    run_dir = tempfile.mkdtemp(prefix="faultfs-")
    ctl_path, log_path = os.path.join(run_dir, "ctl"), os.path.join(run_dir, "log")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "faultfs", "mount", backing, mountpoint, "--ctl", ctl_path,
             "--stall-cap", str(stall_cap_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = Handle(backing, mountpoint, ctl_path, proc, log_path)
    try:
        _wait_ready(handle, ready_timeout_s)
        yield handle
    finally:
        _unmount(handle)
        shutil.rmtree(run_dir, ignore_errors=True)


def _wait_ready(handle, timeout_s):
    deadline = time.monotonic() + timeout_s
    while True:
        if handle.proc.poll() is not None:
            raise FaultFSError(f"faultfs exited with {handle.proc.returncode} before serving:\n{handle.log()}")
        # The socket starts in the filesystem's init, which libfuse runs once the kernel has the
        # mount: a ping that answers means the mount serves.
        with contextlib.suppress(OSError, FaultFSError):
            if send(handle.ctl_path, "ping", timeout_s=1.0) == "ok" and is_mounted(handle.mountpoint):
                return
        if time.monotonic() > deadline:
            raise FaultFSError(f"faultfs not serving {handle.mountpoint} after {timeout_s} s:\n{handle.log()}")
        time.sleep(0.02)


def _unmount(handle):
    # Release stalled reads first, so the daemon's worker threads can finish.
    with contextlib.suppress(OSError, FaultFSError):
        handle.clear()
    # SIGTERM: libfuse leaves its loop and unmounts (lazily, as root) on its way out.
    if handle.proc.poll() is None:
        handle.proc.terminate()
        try:
            handle.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            handle.proc.kill()
            handle.proc.wait(timeout=10)
    # A daemon that died or was killed leaves a dead mount ("Transport endpoint is not connected").
    if is_mounted(handle.mountpoint):
        fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
        if fusermount:
            subprocess.run([fusermount, "-u", "-z", handle.mountpoint], capture_output=True, timeout=10)
        if is_mounted(handle.mountpoint):
            subprocess.run(["umount", "-l", handle.mountpoint], capture_output=True, timeout=10)
    if is_mounted(handle.mountpoint):
        raise FaultFSError(f"could not unmount {handle.mountpoint}")
