//! The files of `tests/vectors/layout.txt`, written into a fresh temp dir instead of
//! `/tmp/shuffle-vectors`: the fixture the captured conversations assume, and a realistic one
//! for every other test. The golden tests check the result against layout.txt line by line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::shuffle_files::{create_parent, index_bytes, ChecksumKind, ExecutorFiles, MapOutput};

/// The application id of every capture.
pub const APP_ID: &str = "app-20260101000000-0000";

/// Where the captures had their files; replaced by [`VectorLayout::root`] everywhere.
pub const CAPTURE_ROOT: &str = "/tmp/shuffle-vectors";

/// Subdirectories per local dir, as in the captures.
pub const SUB_DIRS: i32 = 64;

pub struct VectorLayout {
    _tmp: tempfile::TempDir,
    /// Canonical path standing in for `/tmp/shuffle-vectors`; the agent's only root.
    pub root: PathBuf,
    /// `[root/ld0, root/ld1]`, 64 subdirs: the executor holding every file.
    pub exec0: ExecutorFiles,
    /// `[root/ld2]`, no files.
    pub exec1: ExecutorFiles,
    /// `root/outside`: where the escaping symlinks point.
    pub outside: PathBuf,
    /// Map outputs by (shuffle, map).
    pub maps: BTreeMap<(i32, i64), MapOutput>,
}

impl VectorLayout {
    /// Writes every file of layout.txt under a new temp dir.
    pub fn new() -> VectorLayout {
        let tmp = tempfile::Builder::new().prefix("shuffle-vectors-").tempdir().expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical temp dir");
        let exec0 = ExecutorFiles::new(&[root.join("ld0"), root.join("ld1")], SUB_DIRS);
        let exec1 = ExecutorFiles::new(&[root.join("ld2")], SUB_DIRS);
        let outside = root.join("outside");
        std::fs::create_dir_all(&outside).expect("create outside dir");

        let mut maps = BTreeMap::new();
        let mut put = |output: MapOutput| maps.insert((output.shuffle_id, output.map_id), output);

        let map00 = exec0.write_map_output(0, 0, &[13, 0, 29, 7]);
        exec0.write_checksums(&map00, ChecksumKind::Adler32);
        exec0.write_checksums(&map00, ChecksumKind::Crc32);
        put(map00);

        let map01 = exec0.write_map_output(0, 1, &[5, 17, 64, 100]);
        // layout.txt: entry r=2 of the ADLER32 file deliberately corrupted (true value ^ 1).
        let mut adler: Vec<i64> = map01.partitions.iter().map(|p| ChecksumKind::Adler32.of(p)).collect();
        adler[2] ^= 1;
        exec0.write_checksum_values(0, 1, ChecksumKind::Adler32, &adler);
        exec0.write_checksums(&map01, ChecksumKind::Crc32);
        put(map01);

        put(exec0.write_map_output(0, 4294967301, &[8, 9, 10, 11]));
        put(exec0.write_map_output(1, 0, &[3000, 0, 100]));
        put(exec0.write_map_output(2, 0, &[4, 4]));

        // Index present, data file deliberately missing.
        let map30 = exec0.write_map_output(3, 0, &[6, 6]);
        std::fs::remove_file(&map30.data).expect("remove shuffle_3_0_0.data");
        put(map30);

        exec0.write_rdd(1, 0, 200);
        exec0.write_rdd(1, 1, 16);

        // Symlink escape: shuffle 5 map 0, real files outside the executor's dirs.
        for (name, bytes) in [
            ("shuffle_5_0_0.index", index_bytes(&[5, 6])),
            ("shuffle_5_0_0.data", [super::partition_bytes(5, 0, 0, 5), super::partition_bytes(5, 0, 1, 6)].concat()),
        ] {
            let target = outside.join(name);
            std::fs::write(&target, bytes).expect("write outside file");
            let link = exec0.path(name);
            create_parent(&link);
            std::os::unix::fs::symlink(&target, &link).expect("symlink");
        }

        // RemoveBlocks victims: where the path-like ids would land if used as names.
        for id in ["../victim", "sub/rdd_1_0"] {
            let path = exec0.path(id);
            create_parent(&path);
            std::fs::write(&path, b"vic").expect("write victim");
        }

        VectorLayout { _tmp: tmp, root, exec0, exec1, outside, maps }
    }

    /// The roots the agent is started with.
    pub fn roots(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }

    pub fn root_str(&self) -> &str {
        self.root.to_str().expect("utf-8 root")
    }

    /// `text` with the capture's `/tmp/shuffle-vectors` replaced by this layout's root.
    pub fn relocate(&self, text: &str) -> String {
        text.replace(CAPTURE_ROOT, self.root_str())
    }

    pub fn map(&self, shuffle_id: i32, map_id: i64) -> &MapOutput {
        &self.maps[&(shuffle_id, map_id)]
    }
}

impl Default for VectorLayout {
    fn default() -> Self {
        VectorLayout::new()
    }
}

/// FetchShuffleBlocks of `shuffle_0_0_0` (map 0, reduce 0) of executor 0: the one-block fetch
/// tests use to prove a connection serves.
pub fn fetch_map_0_0() -> spark_shuffle_agent::protocol::BlockTransferMessage {
    spark_shuffle_agent::protocol::BlockTransferMessage::FetchShuffleBlocks {
        app_id: APP_ID.into(),
        exec_id: "0".into(),
        shuffle_id: 0,
        map_ids: vec![0],
        reduce_ids: vec![vec![0]],
        batch_fetch_enabled: false,
    }
}
