//! Test fixture: an executor with two local dirs in a temp dir, a directory outside them, and
//! writers for map outputs built by the byte rule of vectors/layout.txt.

use std::path::{Path, PathBuf};

use super::{ChecksumAlgorithm, ExecutorDirs};

/// Shuffle byte i of block (s, m, r) = `(s*101 + m*31 + r*17 + i*7) & 0xff` (layout.txt).
pub(crate) fn partition_bytes(s: i64, m: i64, r: i64, len: u64) -> Vec<u8> {
    (0..len as i64)
        .map(|i| (s.wrapping_mul(101) + m.wrapping_mul(31) + r * 17 + i * 7) & 0xff)
        .map(|b| b as u8)
        .collect()
}

pub(crate) struct Fixture {
    /// Keeps the temp dir alive for the test.
    _tmp: tempfile::TempDir,
    /// The executor's two local dirs, as sent.
    pub ld: Vec<PathBuf>,
    /// A directory outside the executor's dirs.
    pub outside: PathBuf,
    pub dirs: ExecutorDirs,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ld: Vec<PathBuf> = ["ld0", "ld1"].iter().map(|d| tmp.path().join(d)).collect();
        let outside = tmp.path().join("outside");
        for dir in ld.iter().chain([&outside]) {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        let canonical = ld.iter().map(|d| std::fs::canonicalize(d).expect("canonical")).collect();
        let local = ld.iter().map(|d| d.to_string_lossy().into_owned()).collect();
        let dirs = ExecutorDirs::new(local, 64, canonical).expect("dirs");
        Fixture { _tmp: tmp, ld, outside, dirs }
    }

    pub fn mkdir_parent(&self, path: &Path) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir parent");
        }
    }

    /// Writes `bytes` at the hashed path of `name`; returns that path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dirs.file_path(name);
        self.mkdir_parent(&path);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    /// Writes `bytes` to `outside/name`; returns that path.
    pub fn write_outside(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.outside.join(name);
        std::fs::write(&path, bytes).expect("write outside");
        path
    }

    /// Writes the index and data files of map output (s, m) with these partition sizes and
    /// returns each partition's bytes.
    pub fn write_map_output(&self, s: i32, m: i64, sizes: &[u64]) -> Vec<Vec<u8>> {
        let parts: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(r, &len)| partition_bytes(i64::from(s), m, r as i64, len)).collect();
        let mut offsets = vec![0i64];
        for part in &parts {
            offsets.push(offsets[offsets.len() - 1] + part.len() as i64);
        }
        let index: Vec<u8> = offsets.iter().flat_map(|o| o.to_be_bytes()).collect();
        self.write(&format!("shuffle_{s}_{m}_0.index"), &index);
        self.write(&format!("shuffle_{s}_{m}_0.data"), &parts.concat());
        parts
    }

    /// Writes the checksum file of map output (s, m) with these raw values.
    pub fn write_checksums(&self, s: i32, m: i64, alg: ChecksumAlgorithm, values: &[i64]) -> PathBuf {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        self.write(&format!("shuffle_{s}_{m}_0.checksum.{}", alg.name()), &bytes)
    }
}
