//! Open block files kept for reuse, so serving a chunk costs no open, readlink, fstat or close
//! (measured: those four were over half of the agent's CPU per 4 KiB block).
//!
//! An entry is the descriptor of a file that was opened and proven to lie inside an executor's
//! dirs ([`super::confine`]), with the real path that proof found. A hit re-checks that real
//! path against the *requesting* executor's dirs (a string comparison), and once an entry is
//! older than [`REVALIDATE_AFTER`] the path is stat'ed again: a file replaced or deleted behind
//! the agent's back (a re-run map task, a Worker's cleanup) is then reopened or dropped, so a
//! deleted file's space is not held for long. Files the agent deletes itself are dropped at once.
//!
//! The cache is sharded by path so the two data-path threads rarely meet on a lock, and each
//! lock is held only for a map operation, never across I/O.

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::confine::{open_confined, OpenFailure};
use super::layout::is_within;
use super::ExecutorDirs;
use crate::sync::lock;

/// How long an entry is trusted before its path is stat'ed again.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(2);
const SHARDS: usize = 16;

/// An open, verified block file.
#[derive(Debug, Clone)]
pub(crate) struct OpenFile {
    pub file: Arc<File>,
    pub len: u64,
}

#[derive(Debug)]
struct Entry {
    open: OpenFile,
    real: PathBuf,
    dev: u64,
    ino: u64,
    checked: Instant,
    last_used: u64,
}

/// The cache. `capacity` bounds the descriptors it holds.
#[derive(Debug)]
pub(crate) struct OpenFiles {
    shards: Vec<Mutex<HashMap<PathBuf, Entry>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    tick: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl OpenFiles {
    pub fn new(capacity: usize) -> OpenFiles {
        OpenFiles {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: Default::default(),
            tick: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, path: &Path) -> &Mutex<HashMap<PathBuf, Entry>> {
        &self.shards[(self.hasher.hash_one(path) as usize) % SHARDS]
    }

    /// The open file at `path` when the cache has it for `dirs` and it needs no new check:
    /// what can be answered without touching the disk.
    pub fn cached(&self, path: &Path, dirs: &ExecutorDirs) -> Option<OpenFile> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut shard = lock(self.shard(path));
        let entry = shard.get_mut(path)?;
        let fresh = entry.checked.elapsed() < REVALIDATE_AFTER;
        if !fresh || !dirs.canonical_dirs().iter().any(|d| is_within(&entry.real, d)) {
            return None;
        }
        entry.last_used = tick;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.open.clone())
    }

    /// The open file at `path`, from the cache or freshly opened and verified against `dirs`.
    pub fn open(&self, path: &Path, dirs: &ExecutorDirs) -> Result<OpenFile, OpenFailure> {
        let now = Instant::now();
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let stale = {
            let mut shard = lock(self.shard(path));
            match shard.get_mut(path) {
                Some(entry) if dirs.canonical_dirs().iter().any(|d| is_within(&entry.real, d)) => {
                    entry.last_used = tick;
                    if now.duration_since(entry.checked) < REVALIDATE_AFTER {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(entry.open.clone());
                    }
                    Some((entry.dev, entry.ino))
                }
                // Cached for an executor whose dirs this one does not share: verify afresh.
                Some(_) | None => None,
            }
        };
        if let Some(identity) = stale {
            if let Some(len) = same_file(path, identity) {
                let mut shard = lock(self.shard(path));
                if let Some(entry) = shard.get_mut(path) {
                    entry.checked = now;
                    // Truncated (or grown) in place: segments are checked against today's size.
                    entry.open.len = len;
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(entry.open.clone());
                }
            }
            self.remove(path);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let confined = open_confined(path, dirs)?;
        let open = OpenFile { file: Arc::new(confined.file), len: confined.len };
        let entry = Entry {
            open: open.clone(),
            real: confined.real,
            dev: confined.dev,
            ino: confined.ino,
            checked: now,
            last_used: tick,
        };
        let mut shard = lock(self.shard(path));
        if shard.len() >= self.per_shard && !shard.contains_key(path) {
            // Evict the least recently used entry of this shard (shards are small).
            if let Some(victim) = shard.iter().min_by_key(|(_, e)| e.last_used).map(|(p, _)| p.clone()) {
                shard.remove(&victim);
            }
        }
        shard.insert(path.to_path_buf(), entry);
        Ok(open)
    }

    pub fn remove(&self, path: &Path) {
        lock(self.shard(path)).remove(path);
    }

    /// Drops every entry below one of `dirs` (an executor or application going away).
    pub fn remove_under(&self, dirs: &[PathBuf]) {
        for shard in &self.shards {
            lock(shard).retain(|path, _| !dirs.iter().any(|d| path.starts_with(d)));
        }
    }

    /// Drops entries not used for `idle`, so files deleted behind the agent's back do not keep
    /// their disk space while nobody asks for them.
    pub fn purge_idle(&self, idle: Duration) {
        let now = Instant::now();
        for shard in &self.shards {
            lock(shard).retain(|_, e| now.duration_since(e.checked) < idle);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// The current size of the file at `path`, if it is still the inode we hold (following
/// symlinks, as opening it would).
fn same_file(path: &Path, (dev, ino): (u64, u64)) -> Option<u64> {
    rustix::fs::stat(path).ok().filter(|st| st.st_dev == dev && st.st_ino == ino).map(|st| st.st_size as u64)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    #[test]
    fn a_second_open_is_served_from_the_cache() {
        let fx = Fixture::new();
        let path = fx.write("rdd_1_0", b"block");
        let files = OpenFiles::new(64);
        let a = files.open(&path, &fx.dirs).expect("open");
        let b = files.open(&path, &fx.dirs).expect("open again");
        assert!(Arc::ptr_eq(&a.file, &b.file));
        assert_eq!((files.hits.load(Ordering::Relaxed), files.misses.load(Ordering::Relaxed)), (1, 1));
    }

    #[test]
    fn removing_entries_under_dirs_closes_them() {
        let fx = Fixture::new();
        let path = fx.write("rdd_1_0", b"block");
        let files = OpenFiles::new(64);
        files.open(&path, &fx.dirs).expect("open");
        files.remove_under(fx.dirs.canonical_dirs());
        assert_eq!(files.len(), 0);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let fx = Fixture::new();
        let files = OpenFiles::new(SHARDS);
        for i in 0..200 {
            let path = fx.write(&format!("rdd_1_{i}"), b"x");
            files.open(&path, &fx.dirs).expect("open");
        }
        assert!(files.len() <= SHARDS, "{} entries", files.len());
    }

    #[test]
    fn an_entry_cached_for_other_dirs_is_verified_again() {
        let fx = Fixture::new();
        let path = fx.write("rdd_1_0", b"block");
        let files = OpenFiles::new(64);
        files.open(&path, &fx.dirs).expect("open");
        let elsewhere = ExecutorDirs::new(fx.dirs.local_dirs().to_vec(), 64, vec![fx.outside.clone()]).expect("dirs");
        assert!(matches!(files.open(&path, &elsewhere), Err(OpenFailure::Refused(_))));
    }
}
