//! Shuffle index files (spec §4.3) and the byte-bounded cache of parsed indexes (spec §3.4).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::confine::{open_confined, OpenFailure};
use super::{ExecutorDirs, StoreError};

/// Weight Spark gives each cached index on top of its offsets (object and map overhead).
const ENTRY_OVERHEAD_BYTES: u64 = 176;

/// Index files larger than this are refused before anything is allocated for them. It allows
/// 32 Mi partitions, far past what Spark jobs use; a bigger file is garbage, not an index.
const MAX_INDEX_FILE_BYTES: u64 = 256 << 20;

/// A parsed index: `numPartitions + 1` non-decreasing offsets into the data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShuffleIndex {
    offsets: Vec<u64>,
}

impl ShuffleIndex {
    /// Parses the big-endian i64s of an index file. `path` only names the file in errors.
    ///
    /// Java checks nothing here; we refuse what cannot be an index (odd length, fewer than two
    /// offsets, negative or decreasing offsets) so that no nonsense range reaches the socket.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<ShuffleIndex, StoreError> {
        let corrupt = |reason: String| StoreError::CorruptIndex { path: path.to_path_buf(), reason };
        if bytes.len() % 8 != 0 {
            return Err(corrupt(format!("size {} is not a multiple of 8", bytes.len())));
        }
        if bytes.len() < 16 {
            return Err(corrupt(format!("{} offsets, need at least 2", bytes.len() / 8)));
        }
        let mut offsets = Vec::with_capacity(bytes.len() / 8);
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut be = [0u8; 8];
            be.copy_from_slice(chunk);
            let value = i64::from_be_bytes(be);
            let offset = u64::try_from(value).map_err(|_| corrupt(format!("offset {i} is negative ({value})")))?;
            if let Some(&previous) = offsets.last() {
                if offset < previous {
                    return Err(corrupt(format!("offset {i} ({offset}) is below offset {} ({previous})", i - 1)));
                }
            }
            offsets.push(offset);
        }
        Ok(ShuffleIndex { offsets })
    }

    /// `(offset, len)` of reduce partitions `[start, end_exclusive)` in the data file.
    ///
    /// Java reads `index[start]` and `index[end]` and throws IndexOutOfBoundsException when
    /// either is out of range; a reversed range would give it a negative length, which we
    /// refuse the same way.
    pub fn range(&self, start: i32, end_exclusive: i32) -> Result<(u64, u64), StoreError> {
        let out_of_bounds = || StoreError::IndexOutOfBounds { start, end_exclusive, partitions: self.len_partitions() };
        let at = |i: i32| usize::try_from(i).ok().and_then(|i| self.offsets.get(i).copied());
        match (at(start), at(end_exclusive)) {
            (Some(from), Some(to)) if from <= to && start <= end_exclusive => Ok((from, to - from)),
            _ => Err(out_of_bounds()),
        }
    }

    /// Number of reduce partitions (offsets minus one).
    pub fn len_partitions(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The raw offsets.
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// Cache weight, as Spark counts it: 8 bytes per offset plus a fixed overhead.
    pub fn weight(&self) -> u64 {
        8 * self.offsets.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Reads and parses the index at `path`, which must lie inside `dirs`. One read of the whole
/// file: index files are small and written by rename, so a reader sees a whole file.
pub(crate) fn read_index(path: &Path, dirs: &ExecutorDirs) -> Result<ShuffleIndex, StoreError> {
    let open_failed = |source| StoreError::IndexOpen { path: path.to_path_buf(), source };
    let confined = match open_confined(path, dirs) {
        Ok(confined) => confined,
        Err(OpenFailure::Io(e)) => return Err(open_failed(e)),
        Err(OpenFailure::NotRegular) => return Err(open_failed(std::io::Error::other("not a regular file"))),
        Err(OpenFailure::Refused(e)) => return Err(e),
    };
    if confined.len > MAX_INDEX_FILE_BYTES {
        return Err(StoreError::CorruptIndex {
            path: path.to_path_buf(),
            reason: format!("size {} is above the {MAX_INDEX_FILE_BYTES}-byte limit", confined.len),
        });
    }
    // The size was checked just above, so it fits in usize on any supported target.
    let mut bytes = Vec::with_capacity(usize::try_from(confined.len).unwrap_or(0));
    // `take` stops at the size fstat reported, so a file growing under us cannot blow the limit.
    (&confined.file).take(confined.len).read_to_end(&mut bytes).map_err(open_failed)?;
    ShuffleIndex::parse(&bytes, path)
}

/// Counters of an [`IndexCache`], for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub entries: usize,
    pub weight_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// Parsed indexes keyed by index file path, bounded by total weight, least recently used out
/// first. Sharded by path, each shard with an equal part of the capacity, so fetches on
/// different cores rarely meet on one lock; the shards' capacities add up to the configured
/// one, so the byte bound holds. A lock is held only for map operations, never while a file is
/// read.
#[derive(Debug)]
pub struct IndexCache {
    capacity_bytes: u64,
    shard_capacity: u64,
    shards: Vec<Mutex<CacheState>>,
    hasher: std::collections::hash_map::RandomState,
}

/// Most shards a cache is split into.
const MAX_SHARDS: u64 = 16;
/// Least capacity a shard gets: small caches are split less, so an index that fits the whole
/// capacity still fits its shard.
const MIN_SHARD_BYTES: u64 = 4 << 20;

#[derive(Debug, Default)]
struct CacheState {
    /// Keyed by the path's hash, computed once per lookup (it also picks the shard); the entry
    /// keeps its path, so a collision is a miss, never a wrong index.
    entries: HashMap<u64, Entry, BuildHasherDefault<Prehashed>>,
    /// Last-use tick -> key; the first entry is the least recently used.
    recency: BTreeMap<u64, u64>,
    next_tick: u64,
    weight_bytes: u64,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    index: Arc<ShuffleIndex>,
    tick: u64,
}

/// The keys are hashes already: use them as they are.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl IndexCache {
    /// A cache holding at most `capacity_bytes` of index weight
    /// (`spark.shuffle.service.index.cache.size`).
    pub fn new(capacity_bytes: u64) -> IndexCache {
        let shards = (capacity_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        IndexCache {
            capacity_bytes,
            shard_capacity: capacity_bytes / shards,
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    /// The cached index for `path`, marking it most recently used.
    pub fn get(&self, path: &Path) -> Option<Arc<ShuffleIndex>> {
        let (key, mut state) = self.shard(path);
        let state = &mut *state;
        let tick = state.next_tick;
        let Some(entry) = state.entries.get_mut(&key).filter(|e| e.path == path) else {
            state.misses += 1;
            return None;
        };
        if state.recency.remove(&entry.tick).is_some() {
            state.recency.insert(tick, key);
        }
        entry.tick = tick;
        state.next_tick += 1;
        state.hits += 1;
        Some(Arc::clone(&entry.index))
    }

    /// Caches `index` under `path`, evicting least recently used entries of its shard to stay
    /// within the shard's capacity. An index heavier than a shard is not cached at all.
    pub fn insert(&self, path: PathBuf, index: Arc<ShuffleIndex>) {
        let weight = index.weight();
        if weight > self.shard_capacity {
            return;
        }
        let (key, mut state) = self.shard(&path);
        state.remove(key);
        while state.weight_bytes + weight > self.shard_capacity {
            let Some((_, oldest)) = state.recency.pop_first() else {
                break;
            };
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.weight_bytes = state.weight_bytes.saturating_sub(evicted.index.weight());
            }
        }
        let tick = state.next_tick;
        state.next_tick += 1;
        state.recency.insert(tick, key);
        state.entries.insert(key, Entry { path, index, tick });
        state.weight_bytes += weight;
    }

    /// Drops the entry for `path`, if any (its file was deleted).
    pub fn remove(&self, path: &Path) {
        let (key, mut state) = self.shard(path);
        if state.entries.get(&key).is_some_and(|e| e.path == path) {
            state.remove(key);
        }
    }

    /// Drops every entry whose path lies under one of `dirs` (an executor went away).
    pub fn remove_under(&self, dirs: &[PathBuf]) {
        for shard in &self.shards {
            let mut state = crate::sync::lock(shard);
            let doomed: Vec<u64> = state
                .entries
                .iter()
                .filter(|(_, e)| dirs.iter().any(|dir| e.path.starts_with(dir)))
                .map(|(key, _)| *key)
                .collect();
            for key in doomed {
                state.remove(key);
            }
        }
    }

    /// Entries, weight and hit counters right now, summed over the shards.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for shard in &self.shards {
            let state = crate::sync::lock(shard);
            stats.entries += state.entries.len();
            stats.weight_bytes += state.weight_bytes;
            stats.hits += state.hits;
            stats.misses += state.misses;
        }
        stats
    }

    /// The configured capacity in bytes of weight.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The path's hash (of its bytes, not `Path`'s component walk: half the cost), and its shard.
    fn shard(&self, path: &Path) -> (u64, MutexGuard<'_, CacheState>) {
        let key = self.hasher.hash_one(path.as_os_str().as_bytes());
        let i = (key % self.shards.len() as u64) as usize;
        (key, crate::sync::lock(&self.shards[i]))
    }
}

impl CacheState {
    fn remove(&mut self, key: u64) {
        if let Some(old) = self.entries.remove(&key) {
            self.recency.remove(&old.tick);
            self.weight_bytes = self.weight_bytes.saturating_sub(old.index.weight());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_bytes(offsets: &[i64]) -> Vec<u8> {
        offsets.iter().flat_map(|o| o.to_be_bytes()).collect()
    }

    fn index(offsets: &[i64]) -> ShuffleIndex {
        ShuffleIndex::parse(&index_bytes(offsets), Path::new("/x.index")).expect("valid index")
    }

    #[test]
    fn ranges_are_index_start_to_index_end() {
        let idx = index(&[0, 13, 13, 42, 49]);
        assert_eq!(idx.len_partitions(), 4);
        assert_eq!(idx.range(0, 1).ok(), Some((0, 13)));
        assert_eq!(idx.range(1, 2).ok(), Some((13, 0)));
        assert_eq!(idx.range(2, 3).ok(), Some((13, 29)));
        assert_eq!(idx.range(0, 4).ok(), Some((0, 49)));
        assert_eq!(idx.range(3, 3).ok(), Some((42, 0)));
        assert_eq!(idx.weight(), 5 * 8 + 176);
    }

    #[test]
    fn out_of_range_reduce_ids_give_the_bare_index_out_of_bounds_text() {
        let idx = index(&[0, 13, 13, 42, 49]);
        for (start, end) in [(4, 5), (9, 10), (-1, 0), (0, -1), (3, 2), (0, 5), (i32::MIN, i32::MAX)] {
            let err = idx.range(start, end).expect_err("out of range");
            assert_eq!(
                crate::protocol::JavaError::from(&err).to_string(),
                "java.lang.IndexOutOfBoundsException",
                "[{start}, {end})"
            );
        }
    }

    #[test]
    fn malformed_index_bytes_are_reported_as_corrupt_with_the_reason() {
        let path = Path::new("/d/38/shuffle_0_0_0.index");
        let cases: [(Vec<u8>, &str); 4] = [
            (vec![0; 12], "not a multiple of 8"),
            (index_bytes(&[0]), "need at least 2"),
            (index_bytes(&[0, 10, 5]), "is below offset 1"),
            (index_bytes(&[-8, 10]), "negative"),
        ];
        for (bytes, reason) in cases {
            let text = ShuffleIndex::parse(&bytes, path)
                .map_err(|e| crate::protocol::JavaError::from(e).to_string())
                .expect_err("corrupt");
            assert!(
                text.starts_with(
                    "java.lang.RuntimeException: Shuffle index file /d/38/shuffle_0_0_0.index is corrupt: "
                ),
                "{text}"
            );
            assert!(text.contains(reason), "{text}");
        }
    }

    #[test]
    fn eviction_keeps_the_total_weight_under_capacity_and_drops_the_least_recent() {
        let each = index(&[0, 1, 2]).weight(); // 200
        let cache = IndexCache::new(3 * each + 10);
        for name in ["a", "b", "c"] {
            cache.insert(PathBuf::from(name), Arc::new(index(&[0, 1, 2])));
        }
        assert!(cache.get(Path::new("a")).is_some()); // "b" is now the least recent
        cache.insert(PathBuf::from("d"), Arc::new(index(&[0, 1, 2])));
        assert!(cache.get(Path::new("b")).is_none());
        for name in ["a", "c", "d"] {
            assert!(cache.get(Path::new(name)).is_some(), "{name}");
        }
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.weight_bytes), (3, 3 * each));
        assert!(stats.weight_bytes <= cache.capacity_bytes());

        // A heavier entry pushes out as many as needed.
        cache.insert(PathBuf::from("big"), Arc::new(index(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])));
        assert!(cache.stats().weight_bytes <= cache.capacity_bytes());
        assert!(cache.get(Path::new("big")).is_some());
    }

    #[test]
    fn a_large_cache_is_sharded_and_its_shards_hold_the_byte_bound_together() {
        let each = index(&[0, 1, 2]).weight();
        let capacity = 64 << 20;
        let cache = IndexCache::new(capacity);
        assert_eq!(cache.shards.len(), 16);
        assert!(cache.shard_capacity * cache.shards.len() as u64 <= capacity);
        let n = (capacity / each) * 2;
        for i in 0..n {
            cache.insert(PathBuf::from(format!("/d/{i}.index")), Arc::new(index(&[0, 1, 2])));
        }
        let stats = cache.stats();
        assert!(stats.weight_bytes <= capacity, "{stats:?}");
        assert!(stats.entries as u64 >= n / 3, "every shard holds its part: {stats:?}");
    }

    #[test]
    fn an_index_heavier_than_the_whole_cache_is_not_cached() {
        let cache = IndexCache::new(100);
        cache.insert(PathBuf::from("a"), Arc::new(index(&[0, 1])));
        assert_eq!(cache.stats().entries, 0);
        assert!(cache.get(Path::new("a")).is_none());
    }

    #[test]
    fn entries_under_forgotten_dirs_are_dropped() {
        let cache = IndexCache::new(1 << 20);
        for path in ["/ld0/38/x.index", "/ld1/07/y.index", "/ld10/07/z.index"] {
            cache.insert(PathBuf::from(path), Arc::new(index(&[0, 1])));
        }
        cache.remove_under(&[PathBuf::from("/ld1")]);
        assert!(cache.get(Path::new("/ld1/07/y.index")).is_none());
        assert!(cache.get(Path::new("/ld10/07/z.index")).is_some());
        cache.remove(Path::new("/ld0/38/x.index"));
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(cache.stats().weight_bytes, index(&[0, 1]).weight());
    }
}
