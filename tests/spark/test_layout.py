"""The Python layout generator agrees with Spark: paths with ExecutorDiskUtils.getFilePath (run in the real
jars through the driver's `filepath` step) and with spec/vectors/layout.txt; checksums with layout.txt.
These need no server: if they fail, every other test's expectations are suspect."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shuffle_layout import ExecutorDirs, adler32, crc32, file_path, java_string_hashcode, shuffle_bytes

HERE = Path(__file__).resolve().parent
# The repository's copy of the capture's layout (spec/vectors/layout.txt).
LAYOUT = next((p for p in (HERE.parent / "vectors" / "layout.txt", Path("/work/shared/spec/vectors/layout.txt"))
               if p.exists()), HERE.parent / "vectors" / "layout.txt")

NAMES = [
    "shuffle_0_0_0.data", "shuffle_0_0_0.index", "shuffle_0_0_0.checksum.ADLER32", "rdd_1_0",
    "shuffle_0_4294967301_0.index", "shuffle_123456_9876543210123_0.data", "shuffle_7_3_0.checksum.CRC32C",
    "polygenelubricants",  # String.hashCode() == Integer.MIN_VALUE -> nonNegativeHash 0
    "../victim", "sub/rdd_1_0", ".", "..", "", "a\\b", "caf\u00e9", "\U0001F600-rdd",  # non-BMP: UTF-16 pairs
]


def test_java_string_hashcode_known_values():
    assert java_string_hashcode("shuffle_0_0_0.data") == 581811660
    assert java_string_hashcode("shuffle_0_0_0.checksum.ADLER32") == -103986100
    assert java_string_hashcode("polygenelubricants") == -(2**31)


@pytest.mark.parametrize("dirs,subdirs", [(["/r/a"], 64), (["/r/a", "/r/b"], 64), (["/r/a", "/r/b"], 5),
                                          (["/r/a", "/r/b", "/r/c"], 7), (["/r/a/", "/r//b"], 64)])
def test_paths_match_executor_disk_utils(java_driver, dirs, subdirs):
    step = ["filepath", "--subdirs", subdirs]
    for d in dirs:
        step += ["--dir", d]
    for n in NAMES:
        step += ["--name", n]
    r = java_driver.run([step])
    got = {x["name"]: x for x in r.lines}
    assert set(got) == set(NAMES)
    for n in NAMES:
        assert got[n]["hash"] == java_string_hashcode(n), n
        assert got[n]["path"] == file_path(dirs, subdirs, n), n


def test_paths_checksums_and_sizes_match_layout_txt():
    text = LAYOUT.read_text()
    ex = ExecutorDirs(["/tmp/shuffle-vectors/ld0", "/tmp/shuffle-vectors/ld1"], 64)
    paths = re.findall(r"^\s+(/tmp/shuffle-vectors/ld[01]/[0-9a-f]{2}/(\S+?))\s", text, re.M)
    assert len(paths) >= 15
    for full, name in paths:
        assert ex.path(name) == full, name
    outs = re.findall(r"map output shuffle=(\d+) map=(\d+) partitions=\d+ sizes=\[([\d, ]+)\]", text)
    for s, m, sizes in outs:
        s, m = int(s), int(m)
        sizes = [int(x) for x in sizes.split(",")]
        block = re.search(rf"shuffle={s} map={m} .*?\n\n", text, re.S).group(0)
        for alg, fn in (("ADLER32", adler32), ("CRC32", crc32)):
            mm = re.search(rf"checksum\.{alg}\s+\(\d+ bytes\) values=\[([\d, ]+)\](.*)", block)
            if not mm:
                continue
            want = [int(x) for x in mm.group(1).split(",")]
            have = [fn(shuffle_bytes(s, m, r, n)) for r, n in enumerate(sizes)]
            if "deliberately corrupted" in mm.group(2):
                r = int(re.search(r"entry r=(\d+)", mm.group(2)).group(1))
                have[r] ^= 1
            assert have == want, (s, m, alg)
