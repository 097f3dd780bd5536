//! Shuffle files written exactly as a Spark executor writes them (spec §4): paths hashed with the
//! library's `ExecutorDirs::file_path` (itself checked against layout.txt by the golden tests),
//! index files of big-endian i64 offsets, data bytes by the generator rule of layout.txt, and
//! checksum files of big-endian i64s computed with independent crates.

use std::path::{Path, PathBuf};

use spark_shuffle_agent::protocol::{BlockTransferMessage, ExecutorShuffleInfo};
use spark_shuffle_agent::store::ExecutorDirs;

/// What Spark 4 executors send as their shuffle manager.
pub const SORT_SHUFFLE_MANAGER: &str = "org.apache.spark.shuffle.sort.SortShuffleManager";

/// Shuffle byte `i` of block (s, m, r) = `(s*101 + m*31 + r*17 + i*7) & 0xff`, 64-bit arithmetic.
pub fn shuffle_byte(s: i64, m: i64, r: i64, i: i64) -> u8 {
    (s.wrapping_mul(101).wrapping_add(m.wrapping_mul(31)).wrapping_add(r * 17).wrapping_add(i * 7) & 0xff) as u8
}

/// The `len` bytes of shuffle block (s, m, r).
pub fn partition_bytes(s: i64, m: i64, r: i64, len: u64) -> Vec<u8> {
    (0..len as i64).map(|i| shuffle_byte(s, m, r, i)).collect()
}

/// The `len` bytes of `rdd_<rdd>_<split>`: byte i = `(R*59 + P*23 + i*11 + 3) & 0xff`.
pub fn rdd_bytes(rdd: i64, split: i64, len: u64) -> Vec<u8> {
    (0..len as i64).map(|i| ((rdd * 59 + split * 23 + i * 11 + 3) & 0xff) as u8).collect()
}

/// The checksum algorithms of shuffle checksum files (spec §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    Adler32,
    Crc32,
    Crc32c,
}

impl ChecksumKind {
    /// The name on the wire and in `shuffle_S_M_0.checksum.<NAME>`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumKind::Adler32 => "ADLER32",
            ChecksumKind::Crc32 => "CRC32",
            ChecksumKind::Crc32c => "CRC32C",
        }
    }

    /// java.util.zip.Checksum.getValue() of `bytes`: an unsigned 32-bit value held in a long.
    pub fn of(self, bytes: &[u8]) -> i64 {
        let value = match self {
            ChecksumKind::Adler32 => {
                let mut a = adler2::Adler32::new();
                a.write_slice(bytes);
                a.checksum()
            }
            ChecksumKind::Crc32 => crc32fast::hash(bytes),
            ChecksumKind::Crc32c => crc32c::crc32c(bytes),
        };
        i64::from(value)
    }
}

/// One map output as written: its files and each partition's bytes.
#[derive(Debug, Clone)]
pub struct MapOutput {
    pub shuffle_id: i32,
    pub map_id: i64,
    pub index: PathBuf,
    pub data: PathBuf,
    pub partitions: Vec<Vec<u8>>,
}

impl MapOutput {
    /// Bytes of reduce partitions `[start, end)`, as one contiguous range of the data file.
    pub fn range(&self, start: usize, end: usize) -> Vec<u8> {
        self.partitions[start..end].concat()
    }
}

/// One executor's local dirs, created on disk, and a writer of files at their hashed paths.
#[derive(Debug, Clone)]
pub struct ExecutorFiles {
    pub local_dirs: Vec<String>,
    pub sub_dirs: i32,
    pub dirs: ExecutorDirs,
}

impl ExecutorFiles {
    /// Creates `local_dirs` (if missing) for an executor with `sub_dirs` subdirectories each.
    pub fn new(local_dirs: &[PathBuf], sub_dirs: i32) -> ExecutorFiles {
        for dir in local_dirs {
            std::fs::create_dir_all(dir).expect("create local dir");
        }
        let strings: Vec<String> = local_dirs.iter().map(|d| d.to_str().expect("utf-8 path").to_string()).collect();
        let canonical = local_dirs.iter().map(|d| std::fs::canonicalize(d).expect("canonical")).collect();
        let dirs = ExecutorDirs::new(strings.clone(), sub_dirs, canonical).expect("valid executor dirs");
        ExecutorFiles { local_dirs: strings, sub_dirs, dirs }
    }

    /// Where Spark puts a file of this name (spec §4.1).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dirs.file_path(name)
    }

    /// Writes `bytes` at the hashed path of `name`, creating its subdirectory.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        create_parent(&path);
        std::fs::write(&path, bytes).expect("write block file");
        path
    }

    /// Writes `shuffle_<s>_<m>_0.index` and `.data` for partitions of these sizes.
    pub fn write_map_output(&self, shuffle_id: i32, map_id: i64, sizes: &[u64]) -> MapOutput {
        let partitions: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(r, &len)| partition_bytes(i64::from(shuffle_id), map_id, r as i64, len))
            .collect();
        let index = self.write_file(&format!("shuffle_{shuffle_id}_{map_id}_0.index"), &index_bytes(sizes));
        let data = self.write_file(&format!("shuffle_{shuffle_id}_{map_id}_0.data"), &partitions.concat());
        MapOutput { shuffle_id, map_id, index, data, partitions }
    }

    /// Writes `shuffle_<s>_<m>_0.checksum.<ALG>` holding these values.
    pub fn write_checksum_values(&self, shuffle_id: i32, map_id: i64, kind: ChecksumKind, values: &[i64]) -> PathBuf {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        self.write_file(&format!("shuffle_{shuffle_id}_{map_id}_0.checksum.{}", kind.name()), &bytes)
    }

    /// Writes the true checksum file of a map output; returns the values written.
    pub fn write_checksums(&self, output: &MapOutput, kind: ChecksumKind) -> Vec<i64> {
        let values: Vec<i64> = output.partitions.iter().map(|p| kind.of(p)).collect();
        self.write_checksum_values(output.shuffle_id, output.map_id, kind, &values);
        values
    }

    /// Writes `rdd_<rdd>_<split>` of `len` generator bytes.
    pub fn write_rdd(&self, rdd_id: i32, split_index: i32, len: u64) -> PathBuf {
        let bytes = rdd_bytes(i64::from(rdd_id), i64::from(split_index), len);
        self.write_file(&format!("rdd_{rdd_id}_{split_index}"), &bytes)
    }

    /// The RegisterExecutor message announcing these dirs.
    pub fn register(&self, app_id: &str, exec_id: &str) -> BlockTransferMessage {
        BlockTransferMessage::RegisterExecutor {
            app_id: app_id.to_string(),
            exec_id: exec_id.to_string(),
            info: ExecutorShuffleInfo {
                local_dirs: self.local_dirs.clone(),
                sub_dirs_per_local_dir: self.sub_dirs,
                shuffle_manager: SORT_SHUFFLE_MANAGER.to_string(),
            },
        }
    }
}

/// An index file: `sizes.len() + 1` big-endian i64 offsets, starting at 0.
pub fn index_bytes(sizes: &[u64]) -> Vec<u8> {
    let mut offset = 0i64;
    let mut out = offset.to_be_bytes().to_vec();
    for &size in sizes {
        offset += size as i64;
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out
}

pub fn create_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent dir");
    }
}
