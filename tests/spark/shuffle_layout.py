"""Spark's on-disk shuffle layout, written from Python so the bytes are checkable.

Path hashing follows spec section 4.1 (ExecutorDiskUtils.getFilePath / DiskBlockManager.getFile):
Java String.hashCode over UTF-16 code units, non-negative (abs, MIN_VALUE -> 0), dir = h % nDirs,
subdir = (h / nDirs) % subDirs as two+ lower-case hex digits. Index files are big-endian i64 offsets
(section 4.3), checksum files big-endian i64 per partition (section 4.4).

Data follows the generator rules of spec/vectors/layout.txt, so any served byte can be re-derived:
  shuffle block (s, m, r) byte i = (s*101 + m*31 + r*17 + i*7) & 0xff   (64-bit arithmetic)
  rdd block rdd_R_P       byte i = (R*59 + P*23 + i*11 + 3) & 0xff
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zlib
from dataclasses import dataclass, field

INT_MIN = -(2**31)

# ---------------------------------------------------------------------------------------------------------------
# Hashing and paths


def java_string_hashcode(s: str) -> int:
    """Java's String.hashCode: h = 31*h + c over UTF-16 code units, wrapping to a signed 32-bit int."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        unit = (data[i] << 8) | data[i + 1]
        h = (31 * h + unit) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


def non_negative_hash(s: str) -> int:
    h = java_string_hashcode(s)
    return 0 if h == INT_MIN else abs(h)


def _java_file_normalize(p: str) -> str:
    """java.io.File collapses duplicate slashes and drops a trailing slash; it does not resolve '..'."""
    p = re.sub(r"/+", "/", p)
    if len(p) > 1 and p.endswith("/"):
        p = p[:-1]
    return p


def file_path(local_dirs: list[str], subdirs: int, filename: str) -> str:
    """The path the Java ESS (ExecutorDiskUtils.getFilePath) computes for `filename`."""
    h = non_negative_hash(filename)
    d = local_dirs[h % len(local_dirs)]
    sub = (h // len(local_dirs)) % subdirs
    return _java_file_normalize(f"{d}/{sub:02x}/{filename}")


# ---------------------------------------------------------------------------------------------------------------
# Generator bytes


def shuffle_bytes(s: int, m: int, r: int, n: int) -> bytes:
    base = (s * 101 + m * 31 + r * 17) & 0xFF
    # (base + 7*i) & 0xff has period 256; build one period and tile it.
    period = bytes((base + 7 * i) & 0xFF for i in range(256))
    return (period * (n // 256 + 1))[:n]


def rdd_bytes(rdd: int, part: int, n: int) -> bytes:
    base = (rdd * 59 + part * 23 + 3) & 0xFF
    period = bytes((base + 11 * i) & 0xFF for i in range(256))
    return (period * (n // 256 + 1))[:n]


def adler32(b: bytes) -> int:
    return zlib.adler32(b) & 0xFFFFFFFF


def crc32(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


CHECKSUMS = {"ADLER32": adler32, "CRC32": crc32}


# ---------------------------------------------------------------------------------------------------------------
# Writers


@dataclass
class MapOutput:
    shuffle: int
    map_id: int
    sizes: list[int]
    index_path: str
    data_path: str | None
    checksum_paths: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, list[int]] = field(default_factory=dict)

    @property
    def offsets(self) -> list[int]:
        out = [0]
        for s in self.sizes:
            out.append(out[-1] + s)
        return out

    def block(self, r: int) -> bytes:
        return shuffle_bytes(self.shuffle, self.map_id, r, self.sizes[r])

    def range_bytes(self, start: int, end: int) -> bytes:
        return b"".join(self.block(r) for r in range(start, end))


@dataclass
class ExecutorDirs:
    """One executor's local dirs, as registered with the server (ExecutorShuffleInfo)."""

    local_dirs: list[str]
    subdirs: int = 64

    def path(self, filename: str) -> str:
        return file_path(self.local_dirs, self.subdirs, filename)

    def _ensure_parent(self, p: str) -> None:
        os.makedirs(os.path.dirname(p), exist_ok=True)

    def write_file(self, filename: str, content: bytes) -> str:
        p = self.path(filename)
        self._ensure_parent(p)
        tmp = p + ".tmp-writing"
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, p)
        return p

    def write_map_output(
        self,
        shuffle: int,
        map_id: int,
        sizes: list[int],
        checksum_algorithms: tuple[str, ...] = ("ADLER32", "CRC32"),
        corrupt_checksum: dict[str, int] | None = None,
        write_data: bool = True,
    ) -> MapOutput:
        """Write shuffle_S_M_0.{data,index,checksum.ALG} like IndexShuffleBlockResolver does.

        corrupt_checksum = {"ADLER32": r} stores (true value ^ 1) for partition r, as layout.txt does.
        """
        name = f"shuffle_{shuffle}_{map_id}_0"
        mo = MapOutput(shuffle, map_id, list(sizes), self.path(name + ".index"), None)
        blocks = [mo.block(r) for r in range(len(sizes))]
        if write_data:
            mo.data_path = self.write_file(name + ".data", b"".join(blocks))
        self.write_file(name + ".index", struct.pack(f">{len(sizes) + 1}q", *mo.offsets))
        for alg in checksum_algorithms:
            values = [CHECKSUMS[alg](b) for b in blocks]
            if corrupt_checksum and alg in corrupt_checksum:
                values[corrupt_checksum[alg]] ^= 1
            mo.checksums[alg] = values
            mo.checksum_paths[alg] = self.write_file(
                f"{name}.checksum.{alg}", struct.pack(f">{len(values)}q", *values)
            )
        return mo

    def write_rdd_block(self, rdd: int, part: int, size: int) -> str:
        return self.write_file(f"rdd_{rdd}_{part}", rdd_bytes(rdd, part, size))


def make_executor_dirs(base: str, n_dirs: int = 2, subdirs: int = 64) -> ExecutorDirs:
    dirs = []
    for i in range(n_dirs):
        d = os.path.join(base, f"ld{i}")
        os.makedirs(d, exist_ok=True)
        dirs.append(d)
    return ExecutorDirs(dirs, subdirs)


def write_sparse_map_output(
    ex: ExecutorDirs, shuffle: int, map_id: int, big_size: int, small_size: int = 100
) -> tuple[MapOutput, list[tuple[int, bytes]]]:
    """A 2-partition map output whose partition 0 is `big_size` bytes of a SPARSE data file.

    Only a few islands of generator bytes are written (start, around 2 GiB, the end); the rest are holes that
    read as zeros. Partition 1 is `small_size` generator bytes. Returns the map output and the islands
    (offset, bytes) so the expected digest can be computed by reading the file back.
    """
    name = f"shuffle_{shuffle}_{map_id}_0"
    mo = MapOutput(shuffle, map_id, [big_size, small_size], ex.path(name + ".index"), ex.path(name + ".data"))
    os.makedirs(os.path.dirname(mo.data_path), exist_ok=True)
    islands = [
        (0, shuffle_bytes(shuffle, map_id, 0, 4096)),
        (2**31 - 2048, shuffle_bytes(shuffle, map_id, 0, 4096)),
        (big_size - 4096, shuffle_bytes(shuffle, map_id, 0, 4096)),
        (big_size, shuffle_bytes(shuffle, map_id, 1, small_size)),
    ]
    with open(mo.data_path, "wb") as f:
        f.truncate(big_size + small_size)
        for off, b in islands:
            f.seek(off)
            f.write(b)
    ex.write_file(name + ".index", struct.pack(">3q", *mo.offsets))
    return mo, islands


def file_digests(path: str, offset: int, length: int, chunk: int = 8 << 20,
                 want_sha: bool = True) -> tuple[int, str | None]:
    """CRC32 (and SHA-256 unless want_sha=False) of a file segment, read in bounded chunks."""
    c = 0
    h = hashlib.sha256() if want_sha else None
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            b = f.read(min(chunk, left))
            if not b:
                raise IOError(f"{path}: short read at {offset + length - left}")
            c = zlib.crc32(b, c)
            if h is not None:
                h.update(b)
            left -= len(b)
    return c & 0xFFFFFFFF, (h.hexdigest() if h is not None else None)
