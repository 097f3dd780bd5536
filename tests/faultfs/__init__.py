"""faultfs: a test-only FUSE passthrough filesystem that injects disk faults on command.

Per path prefix, while mounted: latency per read, EIO, stalled reads, a vanished subtree, a
read-only subtree. See README.md beside this file. Tests use `mounted`; put tests/ on sys.path.
"""

from .mount import FaultFSError, Handle, mounted

__all__ = ["FaultFSError", "Handle", "mounted"]
