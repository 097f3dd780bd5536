//! The store owns the on-disk layout executors write (spec §4): where a block's file is
//! (path hashing), shuffle index files and their cache, checksum files and corruption
//! diagnosis, and the removal of block files.
//!
//! Every file it opens is proven to lie inside the executor's canonical dirs *after* it is
//! opened (spec §13, NOTES D6), so a symlink planted by an executor cannot make the service
//! read or delete anything elsewhere.
//!
//! It must not touch sockets or know about connections: it hands the server a [`Segment`]
//! (an open file and a byte range) and errors that know their Java text. All calls are
//! blocking file I/O; the server decides where to run them.

mod checksum;
pub mod cleanup;
mod confine;
mod diagnose;
mod error;
mod index;
mod layout;
pub mod metrics;
mod open_files;
mod remove;
mod segment;

#[cfg(test)]
mod fixture;

use std::path::Path;
use std::sync::Arc;

pub use checksum::{ChecksumAlgorithm, Checksummer, CorruptionCause};
pub use cleanup::{CleanupStats, KeepServed};
pub use error::StoreError;
pub use index::{CacheStats, IndexCache, ShuffleIndex};
pub use layout::{java_string_hash, non_negative_hash, ExecutorDirs};
pub use metrics::StoreSource;
pub use segment::Segment;

use confine::OpenFailure;
use open_files::{OpenFile, OpenFiles};

/// The store: shared by all connections (wrap in Arc by caller). Holds the index cache.
#[derive(Debug)]
pub struct Store {
    index_cache: IndexCache,
    open_files: OpenFiles,
}

/// Descriptors of block files kept open for reuse (see [`open_files`]); well under the usual
/// 1024 soft limit together with connections.
const OPEN_FILES: usize = 512;

impl Store {
    /// A store whose index cache holds up to `index_cache_bytes` of index weight
    /// (`spark.shuffle.service.index.cache.size`, default 100 MiB).
    pub fn new(index_cache_bytes: u64) -> Store {
        Store { index_cache: IndexCache::new(index_cache_bytes), open_files: OpenFiles::new(OPEN_FILES) }
    }

    /// The index cache, for metrics.
    pub fn index_cache(&self) -> &IndexCache {
        &self.index_cache
    }

    /// Byte range `[index[start], index[end_exclusive])` of `shuffle_<shuffle>_<map>_0.data`,
    /// opened and verified (inside the dirs, a regular file, long enough).
    pub fn shuffle_segment(
        &self,
        dirs: &ExecutorDirs,
        shuffle_id: i32,
        map_id: i64,
        start_reduce: i32,
        end_reduce_exclusive: i32,
    ) -> Result<Segment, StoreError> {
        let index = self.shuffle_index(dirs, shuffle_id, map_id)?;
        // The range is checked before the data file is opened: Java reports a bad reduce id
        // even when the data file is missing too.
        index.range(start_reduce, end_reduce_exclusive)?;
        let path = dirs.file_path(&shuffle_file_name(shuffle_id, map_id, "data"));
        // Opened now, not lazily as Java does (NOTES §5 "lazyFD"): a missing file becomes a
        // ChunkFetchFailure instead of a success header followed by a dropped connection.
        let data = self.open_data(&path, dirs)?;
        MapOutput { index, data, data_path: path.into() }.segment(start_reduce, end_reduce_exclusive)
    }

    /// One map output, index and data file, for serving several of its blocks in a row
    /// without resolving paths again. Errors as [`Store::shuffle_segment`] gives them, except
    /// that a bad reduce id is only seen by [`MapOutput::segment`].
    pub fn map_output(&self, dirs: &ExecutorDirs, shuffle_id: i32, map_id: i64) -> Result<MapOutput, StoreError> {
        let index = self.shuffle_index(dirs, shuffle_id, map_id)?;
        let data_path = dirs.file_path(&shuffle_file_name(shuffle_id, map_id, "data"));
        let data = self.open_data(&data_path, dirs)?;
        Ok(MapOutput { index, data, data_path: data_path.into() })
    }

    /// [`Store::map_output`] when its index and open data file are both cached (nothing to
    /// read or open, so nothing can wait for the disk); None otherwise.
    pub fn cached_map_output(&self, dirs: &ExecutorDirs, shuffle_id: i32, map_id: i64) -> Option<MapOutput> {
        let index = self.index_cache.get(&dirs.file_path(&shuffle_file_name(shuffle_id, map_id, "index")))?;
        let data_path = dirs.file_path(&shuffle_file_name(shuffle_id, map_id, "data"));
        let data = self.open_files.cached(&data_path, dirs)?;
        Some(MapOutput { index, data, data_path: data_path.into() })
    }

    /// [`Store::rdd_segment`] when its file is open in the cache; None otherwise.
    pub fn cached_rdd_segment(&self, dirs: &ExecutorDirs, rdd_id: i32, split_index: i32) -> Option<Segment> {
        let path = dirs.file_path(&format!("rdd_{rdd_id}_{split_index}"));
        let data = self.open_files.cached(&path, dirs)?;
        Some(Segment { file: data.file, offset: 0, len: data.len, path: path.into() })
    }

    /// Whole file `rdd_<rdd>_<split>`; `Ok(None)` when the file does not exist (the server
    /// answers "Chunk was not found", spec §3.4).
    pub fn rdd_segment(
        &self,
        dirs: &ExecutorDirs,
        rdd_id: i32,
        split_index: i32,
    ) -> Result<Option<Segment>, StoreError> {
        let path = dirs.file_path(&format!("rdd_{rdd_id}_{split_index}"));
        match self.open_data(&path, dirs) {
            Ok(data) => Ok(Some(Segment { file: data.file, offset: 0, len: data.len, path: path.into() })),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Closes cached descriptors of files under these dirs, keeping their parsed indexes (an
    /// executor's unserved files are about to be deleted; its shuffle files stay served).
    pub fn close_files(&self, dirs: &ExecutorDirs) {
        self.open_files.remove_under(dirs.normalised_dirs());
    }

    /// Forgets cached indexes and descriptors under these dirs (an application is removed).
    pub fn forget(&self, dirs: &ExecutorDirs) {
        self.index_cache.remove_under(dirs.normalised_dirs());
        self.close_files(dirs);
    }

    /// The parsed index of one map output, from the cache or from disk.
    ///
    /// A cache hit does not reopen the index file: offsets alone expose nothing, and the data
    /// file they point into is opened and verified on every read.
    fn shuffle_index(
        &self,
        dirs: &ExecutorDirs,
        shuffle_id: i32,
        map_id: i64,
    ) -> Result<Arc<ShuffleIndex>, StoreError> {
        let path = dirs.file_path(&shuffle_file_name(shuffle_id, map_id, "index"));
        if let Some(index) = self.index_cache.get(&path) {
            return Ok(index);
        }
        // Read outside the cache lock; two racing misses both read, which is harmless.
        let index = Arc::new(index::read_index(&path, dirs)?);
        self.index_cache.insert(path, Arc::clone(&index));
        Ok(index)
    }
}

/// A map output's parsed index and open data file.
#[derive(Debug, Clone)]
pub struct MapOutput {
    index: Arc<ShuffleIndex>,
    data: OpenFile,
    /// Shared with every segment served from it: no path allocation per block.
    data_path: Arc<Path>,
}

impl MapOutput {
    /// Byte range `[index[start], index[end_exclusive])` of the data file, checked to lie
    /// within the file as it was opened, so a success header promising it can be completed.
    pub fn segment(&self, start_reduce: i32, end_reduce_exclusive: i32) -> Result<Segment, StoreError> {
        let (offset, len) = self.index.range(start_reduce, end_reduce_exclusive)?;
        let end = offset.saturating_add(len);
        if self.data.len < end {
            return Err(StoreError::TruncatedData {
                path: self.data_path.to_path_buf(),
                expected: end,
                actual: self.data.len,
            });
        }
        Ok(Segment { file: Arc::clone(&self.data.file), offset, len, path: Arc::clone(&self.data_path) })
    }
}

/// `shuffle_<shuffle>_<map>_0.<suffix>` (spec §4.2; the 0 is NOOP_REDUCE_ID).
fn shuffle_file_name(shuffle_id: i32, map_id: i64, suffix: &str) -> String {
    format!("shuffle_{shuffle_id}_{map_id}_0.{suffix}")
}

impl Store {
    /// Opens (or reuses) a data or rdd file that must exist, with the errors Java gives for it.
    fn open_data(&self, path: &Path, dirs: &ExecutorDirs) -> Result<OpenFile, StoreError> {
        self.open_files.open(path, dirs).map_err(|failure| open_error(path, failure))
    }

    /// Closes cached block files nobody asked for in `idle` (the lifecycle sweep calls this).
    pub fn purge_idle_files(&self, idle: std::time::Duration) {
        self.open_files.purge_idle(idle);
    }

    /// Hit and miss counts of the open-file cache, for metrics.
    pub fn open_file_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.open_files.hits.load(Relaxed), self.open_files.misses.load(Relaxed))
    }
}

fn open_error(path: &Path, failure: OpenFailure) -> StoreError {
    match failure {
        OpenFailure::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            StoreError::NotFound { path: path.to_path_buf() }
        }
        OpenFailure::Io(source) => StoreError::Io { what: "Failed to open", path: path.to_path_buf(), source },
        OpenFailure::NotRegular => StoreError::NotRegularFile { path: path.to_path_buf() },
        OpenFailure::Refused(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{partition_bytes, Fixture};
    use super::*;
    use std::os::unix::fs::{symlink, FileExt};

    fn read_segment(segment: &Segment) -> Vec<u8> {
        let mut buf = vec![0; usize::try_from(segment.len).expect("small")];
        segment.file.read_exact_at(&mut buf, segment.offset).expect("read segment");
        buf
    }

    #[test]
    fn shuffle_segments_are_the_ranges_the_index_names() {
        let fx = Fixture::new();
        fx.write_map_output(0, 0, &[13, 0, 29, 7]);
        let store = Store::new(1 << 20);
        let seg = store.shuffle_segment(&fx.dirs, 0, 0, 2, 3).expect("segment");
        assert_eq!((seg.offset, seg.len), (13, 29));
        assert_eq!(*seg.path, *fx.dirs.file_path("shuffle_0_0_0.data"));
        assert_eq!(read_segment(&seg), partition_bytes(0, 0, 2, 29));
        let batch = store.shuffle_segment(&fx.dirs, 0, 0, 0, 4).expect("batch");
        assert_eq!((batch.offset, batch.len), (0, 49));
        let empty = store.shuffle_segment(&fx.dirs, 0, 0, 1, 2).expect("empty");
        assert_eq!(empty.len, 0);
        assert_eq!(store.index_cache().stats().entries, 1);
        assert_eq!(store.index_cache().stats().hits, 2);
        let err = store.shuffle_segment(&fx.dirs, 0, 0, 4, 5).expect_err("out of range");
        assert_eq!(crate::protocol::JavaError::from(&err).to_string(), "java.lang.IndexOutOfBoundsException");
    }

    #[test]
    fn a_large_map_id_is_part_of_the_file_name() {
        let fx = Fixture::new();
        fx.write_map_output(0, 4294967301, &[8, 9, 10, 11]);
        let seg = Store::new(1 << 20).shuffle_segment(&fx.dirs, 0, 4294967301, 3, 4).expect("segment");
        assert_eq!(read_segment(&seg), partition_bytes(0, 4294967301, 3, 11));
    }

    #[test]
    fn a_missing_index_fails_to_open_with_the_hashed_path() {
        let fx = Fixture::new();
        let err = Store::new(1 << 20).shuffle_segment(&fx.dirs, 0, 7, 0, 1).expect_err("missing");
        let index = fx.dirs.file_path("shuffle_0_7_0.index");
        assert_eq!(
            crate::protocol::JavaError::from(&err).to_string(),
            format!("java.lang.RuntimeException: Failed to open file: {}", index.display())
        );
    }

    #[test]
    fn a_truncated_index_file_is_a_clear_error() {
        let fx = Fixture::new();
        fx.write("shuffle_0_0_0.index", &[0; 20]);
        let text = Store::new(1 << 20)
            .shuffle_segment(&fx.dirs, 0, 0, 0, 1)
            .map_err(|e| crate::protocol::JavaError::from(e).to_string())
            .expect_err("corrupt");
        assert!(text.starts_with("java.lang.RuntimeException: Shuffle index file "), "{text}");
        assert!(text.contains("shuffle_0_0_0.index is corrupt: size 20 is not a multiple of 8"), "{text}");
    }

    #[test]
    fn a_missing_data_file_is_file_not_found() {
        let fx = Fixture::new();
        fx.write_map_output(3, 0, &[6, 6]);
        let data = fx.dirs.file_path("shuffle_3_0_0.data");
        std::fs::remove_file(&data).expect("remove data");
        let err = Store::new(1 << 20).shuffle_segment(&fx.dirs, 3, 0, 0, 1).expect_err("missing data");
        assert_eq!(
            crate::protocol::JavaError::from(&err).to_string(),
            format!("java.io.FileNotFoundException: {} (No such file or directory)", data.display())
        );
    }

    #[test]
    fn a_data_file_shorter_than_the_index_says_is_refused_before_sending() {
        let fx = Fixture::new();
        fx.write_map_output(2, 0, &[4, 4]);
        let data = fx.dirs.file_path("shuffle_2_0_0.data");
        std::fs::write(&data, [0u8; 6]).expect("truncate");
        let store = Store::new(1 << 20);
        assert!(store.shuffle_segment(&fx.dirs, 2, 0, 0, 1).is_ok());
        let err = store.shuffle_segment(&fx.dirs, 2, 0, 1, 2).expect_err("truncated");
        assert_eq!(
            crate::protocol::JavaError::from(&err).to_string(),
            format!(
                "java.lang.RuntimeException: Shuffle data file {} is truncated: index expects 8 bytes, file has 6",
                data.display()
            )
        );
    }

    #[test]
    fn rdd_blocks_are_whole_files_and_a_missing_one_is_none() {
        let fx = Fixture::new();
        let bytes: Vec<u8> = (0..200u32).map(|i| ((59 + i * 11 + 3) & 0xff) as u8).collect();
        fx.write("rdd_1_0", &bytes);
        let store = Store::new(1 << 20);
        let seg = store.rdd_segment(&fx.dirs, 1, 0).expect("ok").expect("present");
        assert_eq!((seg.offset, seg.len), (0, 200));
        assert_eq!(read_segment(&seg), bytes);
        assert!(store.rdd_segment(&fx.dirs, 1, 99).expect("ok").is_none());
    }

    #[test]
    fn index_symlink_outside_the_dirs_is_refused() {
        let fx = Fixture::new();
        let target = fx.write_outside("shuffle_5_0_0.index", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        let link = fx.dirs.file_path("shuffle_5_0_0.index");
        fx.mkdir_parent(&link);
        symlink(&target, &link).expect("symlink");
        let err = Store::new(1 << 20).shuffle_segment(&fx.dirs, 5, 0, 0, 1).expect_err("escape");
        assert_eq!(
            crate::protocol::JavaError::from(&err).to_string(),
            format!("java.lang.RuntimeException: Block file {} resolves outside the executor's registered local directories", link.display())
        );
    }

    #[test]
    fn data_and_rdd_symlinks_outside_the_dirs_are_refused() {
        let fx = Fixture::new();
        fx.write_map_output(5, 0, &[5, 6]);
        let data = fx.dirs.file_path("shuffle_5_0_0.data");
        let target = fx.write_outside("shuffle_5_0_0.data", &[7; 11]);
        std::fs::remove_file(&data).expect("remove");
        symlink(&target, &data).expect("symlink");
        let store = Store::new(1 << 20);
        let err = store.shuffle_segment(&fx.dirs, 5, 0, 0, 1).expect_err("escape");
        assert!(matches!(err, StoreError::OutsideDirs { ref path } if *path == data), "{err}");

        let rdd = fx.dirs.file_path("rdd_2_0");
        fx.mkdir_parent(&rdd);
        symlink(fx.write_outside("rdd", b"secret"), &rdd).expect("symlink");
        assert!(matches!(store.rdd_segment(&fx.dirs, 2, 0), Err(StoreError::OutsideDirs { .. })));
    }

    #[test]
    fn a_symlinked_subdir_leading_outside_is_refused() {
        let fx = Fixture::new();
        let index = fx.dirs.file_path("shuffle_0_0_0.index");
        let subdir = index.parent().expect("subdir");
        let outside_dir = fx.outside.join("sub");
        std::fs::create_dir_all(&outside_dir).expect("mkdir");
        std::fs::create_dir_all(subdir.parent().expect("local dir")).expect("mkdir");
        symlink(&outside_dir, subdir).expect("symlink subdir");
        std::fs::write(outside_dir.join("shuffle_0_0_0.index"), [0u8; 16]).expect("write");
        let err = Store::new(1 << 20).shuffle_segment(&fx.dirs, 0, 0, 0, 1).expect_err("escape");
        assert!(matches!(err, StoreError::OutsideDirs { .. }), "{err}");
    }

    #[test]
    fn a_symlink_that_stays_inside_the_dirs_is_served() {
        let fx = Fixture::new();
        fx.write_map_output(0, 1, &[5, 17, 64, 100]);
        // Move the real data file to another subdir of the same executor and link to it.
        let data = fx.dirs.file_path("shuffle_0_1_0.data");
        let moved = fx.ld[0].join("00").join("moved.data");
        fx.mkdir_parent(&moved);
        std::fs::rename(&data, &moved).expect("move");
        symlink(&moved, &data).expect("symlink");
        let seg = Store::new(1 << 20).shuffle_segment(&fx.dirs, 0, 1, 2, 3).expect("inside");
        assert_eq!(read_segment(&seg), partition_bytes(0, 1, 2, 64));
    }

    #[test]
    fn forgetting_an_executor_drops_its_cached_indexes() {
        let fx = Fixture::new();
        fx.write_map_output(0, 0, &[13, 0, 29, 7]);
        let store = Store::new(1 << 20);
        store.shuffle_segment(&fx.dirs, 0, 0, 0, 1).expect("segment");
        assert_eq!(store.index_cache().stats().entries, 1);
        store.forget(&fx.dirs);
        assert_eq!(store.index_cache().stats().entries, 0);
    }
}
