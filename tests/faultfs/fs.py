"""The faultfs daemon: a passthrough FUSE filesystem over a backing directory that obeys Rules.

Every operation goes straight to the same path under the backing directory, after asking the
rule table whether that path is slowed, failing, stalled, gone or read-only. Only this module
imports mfusepy (libfuse 3 through ctypes); tests import the helper (mount.py), which runs this
in a subprocess.

Why these FUSE options (see `serve`):
* kernel_cache: file contents stay in the kernel page cache across opens, as on a real disk, so
  a warm read never reaches this process and posix_fadvise(DONTNEED) makes a file cold again;
  sendfile/splice read the same page cache. Safe because every write goes through the mount.
* entry_timeout=0, negative_timeout=0: the kernel asks again on every lookup, so a `vanish`
  takes effect at once instead of after the dentry cache's second.
* hard_remove: an unlinked open file is really unlinked (no .fuse_hidden files left behind in
  the backing directory, which would make the agent's rmdir of an app directory fail).
* max_threads: libfuse runs each request on a worker thread (10 at most by default); each
  stalled read holds one, so there are more of them than any test stalls at once.
"""

import errno
import os
import socketserver
import threading
import time

# libfuse 3 (Debian's fuse3) even where libfuse 2 is installed too: mfusepy would take 2 first, and
# max_threads below is a libfuse 3 option.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # noqa: E402

from .rules import CommandError, Rules  # noqa: E402


class FaultFS(mfusepy.Operations):
    use_ns = True  # times in nanoseconds (mfusepy deprecates float seconds)

    def __init__(self, backing, ctl_path, rules):
        self.backing = os.path.realpath(backing)
        self.ctl_path = ctl_path
        self.rules = rules
        # Reads of a file unlinked while open arrive without a path (hard_remove); they are judged
        # by the path the file was opened under.
        self._opened = {}

    def _real(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    # -- the faults -------------------------------------------------------------------------

    def _lookup(self, path):
        """Path-based operations (lookup, open, mkdir, unlink, ...): a vanished path is ENOENT."""
        rule = self.rules.fault(path)
        if rule is None:
            return None
        # The mount's root stays, as the empty mount-point directory of an unmounted disk does.
        if rule.kind == "vanish" and path != "/":
            raise OSError(errno.ENOENT, "vanished")
        if rule.kind == "latency" and rule.wide:
            time.sleep(rule.ms / 1000)
        return rule

    def _modify(self, path):
        """Operations that change the filesystem: a read-only prefix answers EROFS."""
        rule = self._lookup(path)
        if rule is not None and rule.kind == "readonly":
            raise OSError(errno.EROFS, "read-only")

    def _io(self, path):
        """I/O on an open descriptor: the device behind a vanished path answers EIO."""
        rule = self.rules.fault(path)
        if rule is not None and rule.kind == "vanish":
            raise OSError(errno.EIO, "vanished")
        return rule

    # -- files ------------------------------------------------------------------------------

    def getattr(self, path, fh=None):
        if fh is not None:
            self._io(path)
            st = os.fstat(fh)
        else:
            self._lookup(path)
            st = os.lstat(self._real(path))
        attrs = {k: getattr(st, k) for k in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_blksize", "st_rdev")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def open(self, path, flags):
        rule = self._lookup(path)
        if rule is not None and rule.kind == "eio" and rule.wide:
            raise OSError(errno.EIO, "eio rule")
        if rule is not None and rule.kind == "readonly" and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise OSError(errno.EROFS, "read-only")
        fh = os.open(self._real(path), flags)
        self._opened[fh] = path
        return fh

    def create(self, path, mode, flags):
        self._modify(path)
        fh = os.open(self._real(path), flags | os.O_CREAT, mode)
        self._own(path)
        self._opened[fh] = path
        return fh

    def read(self, path, size, offset, fh):
        path = path or self._opened.get(fh, "/")
        rule = self._io(path)
        if rule is not None:
            if rule.kind == "eio":
                raise OSError(errno.EIO, "eio rule")
            if rule.kind == "stall" and not self.rules.wait_while_stalled(path):
                raise OSError(errno.EIO, "stalled past the safety cap")
            if rule.kind == "latency":
                time.sleep(rule.ms / 1000)
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        rule = self._io(path or self._opened.get(fh, "/"))
        if rule is not None and rule.kind == "readonly":
            raise OSError(errno.EROFS, "read-only")
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        self._modify(path)
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._real(path), length)

    def fsync(self, path, datasync, fh):
        self._io(path or self._opened.get(fh, "/"))
        (os.fdatasync if datasync else os.fsync)(fh)

    def flush(self, path, fh):
        return 0  # the descriptor is closed in release; nothing is buffered here

    def release(self, path, fh):
        self._opened.pop(fh, None)
        os.close(fh)

    def unlink(self, path):
        self._modify(path)
        os.unlink(self._real(path))

    def rename(self, old, new, flags=0):
        if flags:
            # RENAME_NOREPLACE/EXCHANGE: said plainly instead of silently ignored (mfusepy drops them).
            raise OSError(errno.EINVAL, "rename flags not supported")
        self._modify(old)
        self._modify(new)
        os.rename(self._real(old), self._real(new))

    def chmod(self, path, mode):
        self._modify(path)
        os.chmod(self._real(path), mode)

    def chown(self, path, uid, gid):
        self._modify(path)
        os.lchown(self._real(path), uid, gid)

    def utimens(self, path, times=None):
        self._modify(path)
        os.utime(self._real(path), ns=times) if times else os.utime(self._real(path))

    def readlink(self, path):
        self._lookup(path)
        return os.readlink(self._real(path))

    def symlink(self, target, source):
        self._modify(target)
        os.symlink(source, self._real(target))
        self._own(target, follow=False)

    def _own(self, path, follow=True):
        # The daemon runs as root: give what it creates to the caller, as a kernel filesystem does.
        uid, gid, _ = mfusepy.fuse_get_context()
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.chown(self._real(path), uid, gid, follow_symlinks=follow)

    # -- directories ------------------------------------------------------------------------

    def mkdir(self, path, mode):
        self._modify(path)
        os.mkdir(self._real(path), mode)
        self._own(path)

    def rmdir(self, path):
        self._modify(path)
        os.rmdir(self._real(path))

    def readdir(self, path, fh):
        self._lookup(path)
        entries = [(".", {"st_mode": 0o040000}, 0), ("..", {"st_mode": 0o040000}, 0)]
        with os.scandir(self._real(path)) as it:
            for e in it:
                child = path.rstrip("/") + "/" + e.name
                rule = self.rules.fault(child)
                if rule is not None and rule.kind == "vanish":
                    continue  # a vanished subtree is not listed either
                # The entry's type (d_type) from the backing directory, so walkers need no stat.
                entries.append((e.name, {"st_mode": e.stat(follow_symlinks=False).st_mode}, 0))
        return entries

    def fsyncdir(self, path, datasync, fh):
        fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def statfs(self, path):
        self._lookup(path)
        sv = os.statvfs(self._real(path))
        return {k: getattr(sv, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
            "f_namemax")}

    # -- control ----------------------------------------------------------------------------

    def init(self, path):
        # Called by libfuse once the kernel has the mount: from here on the socket answers, so a
        # `ping` that answers means the mount serves.
        start_control(self.ctl_path, self.rules)


class _FUSE(mfusepy.FUSE):
    def rename_fuse_3(self, old, new, flags):
        # mfusepy drops rename's flags; pass them on so FaultFS.rename can refuse them.
        return self.operations.rename(old.decode(), new.decode(), flags)


def start_control(ctl_path, rules):
    """Serve control commands on a unix socket, one line in, one line out, on its own threads.

    A socket rather than a control file inside the mount: commands then never wait for a FUSE
    worker thread, so `clear` gets through even while reads are stalled."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for raw in self.rfile:
                try:
                    reply = rules.command(raw.decode().strip())
                except CommandError as e:
                    reply = f"error: {e}"
                self.wfile.write(reply.encode() + b"\n")

    if os.path.exists(ctl_path):
        os.unlink(ctl_path)
    server = socketserver.ThreadingUnixStreamServer(ctl_path, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="faultfs-ctl", daemon=True).start()


def serve(backing, mountpoint, ctl_path, stall_cap_s=120.0, max_threads=64, debug=False):
    """Mount and serve in the foreground until unmounted or sent SIGTERM/SIGINT."""
    options = dict(
        foreground=True, debug=debug, fsname="faultfs", subtype="faultfs",
        kernel_cache=True, entry_timeout=0, negative_timeout=0, hard_remove=True,
        max_threads=max_threads, default_permissions=True,
    )
    if os.geteuid() == 0:
        options["allow_other"] = True  # the agent under test may run as another user
    try:
        _FUSE(FaultFS(backing, ctl_path, Rules(stall_cap_s)), mountpoint, **options)
    finally:
        if os.path.exists(ctl_path):
            os.unlink(ctl_path)
