//! How much disk each application uses on this node, and how much is left on each root.
//!
//! Walking executor dirs can take seconds on a node full of shuffle files, so it never happens
//! at scrape time: a [`DiskWatcher`] thread of its own (plain blocking I/O, no async runtime)
//! walks every `walk_interval` and takes `statvfs` of the roots every `space_interval`, and hands
//! each result to [`DiskUsage`], which a scrape and `/status` only read. The walk follows no symlinks and reads
//! only metadata; what it cannot read (a dir deleted mid-walk, a permission error) it skips.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::registry::Registry;
use crate::sync::lock;

mod metrics;
pub use metrics::DiskSource;

/// The last measurements, shared between the watcher thread and their readers.
#[derive(Debug, Default)]
pub struct DiskUsage {
    state: std::sync::Mutex<Measured>,
}

#[derive(Debug, Default)]
struct Measured {
    apps: Arc<AppUsage>,
    roots: Arc<Vec<RootSpace>>,
    /// Bumped at each new walk, so the per-app series are rebuilt only when it changed.
    walks: u64,
}

impl DiskUsage {
    pub fn new() -> DiskUsage {
        DiskUsage::default()
    }

    /// Stores the result of a walk of the application dirs (from [`DiskWatcher`], or a test).
    pub fn set_app_usage(&self, usage: AppUsage) {
        let mut state = lock(&self.state);
        state.apps = Arc::new(usage);
        state.walks += 1;
    }

    /// Stores the free space of the roots (from [`DiskWatcher`], or a test).
    pub fn set_root_space(&self, roots: Vec<RootSpace>) {
        lock(&self.state).roots = Arc::new(roots);
    }

    /// The last walk of the application dirs.
    pub fn app_usage(&self) -> Arc<AppUsage> {
        Arc::clone(&lock(&self.state).apps)
    }

    /// The last statvfs of the roots.
    pub fn root_space(&self) -> Arc<Vec<RootSpace>> {
        Arc::clone(&lock(&self.state).roots)
    }

    /// The last walk, and how many walks came before it.
    fn walk(&self) -> (Arc<AppUsage>, u64) {
        let state = lock(&self.state);
        (Arc::clone(&state.apps), state.walks)
    }
}

/// One application's files on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDisk {
    pub app_id: String,
    /// Apparent size (st_size) of the regular files under its executors' dirs.
    pub bytes: u64,
    pub files: u64,
    /// The app was removed and its files are waiting for (or undergoing) deletion.
    pub removed: bool,
}

/// Space on one root's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSpace {
    pub root: PathBuf,
    /// Bytes an unprivileged writer (an executor) can still write: f_bavail × f_frsize.
    pub free_bytes: u64,
    /// Size of the filesystem: f_blocks × f_frsize.
    pub size_bytes: u64,
    /// Inodes an unprivileged writer can still create (f_favail); many small shuffle files
    /// can exhaust inodes before bytes.
    pub free_inodes: u64,
    /// Why statvfs failed, if it did (the numbers are then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of one walk of every app's dirs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppUsage {
    /// Largest first; apps with the same size by id.
    pub apps: Vec<AppDisk>,
    /// Seconds since the epoch when the walk finished; 0 = no walk yet.
    pub scanned_at_unix: u64,
    pub scan_seconds: f64,
}

/// Walks the dirs of every registered executor and of every removed app still awaiting deletion.
pub fn walk_apps(registry: &Registry) -> AppUsage {
    let started = Instant::now();
    let mut dirs_by_app: BTreeMap<String, (BTreeSet<PathBuf>, bool)> = BTreeMap::new();
    for app_id in registry.app_ids() {
        let dirs: BTreeSet<PathBuf> =
            registry.executors_of(&app_id).iter().flat_map(|e| e.dirs.canonical_dirs().iter().cloned()).collect();
        dirs_by_app.insert(app_id, (dirs, false));
    }
    for (app_id, dirs) in registry.pending_cleanups() {
        let entry = dirs_by_app.entry(app_id).or_insert_with(|| (BTreeSet::new(), true));
        entry.0.extend(dirs);
    }
    let mut apps: Vec<AppDisk> = dirs_by_app
        .into_iter()
        .map(|(app_id, (dirs, removed))| {
            let (bytes, files) = outermost(&dirs).iter().map(|d| walk(d)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            AppDisk { app_id, bytes, files, removed }
        })
        .collect();
    apps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.app_id.cmp(&b.app_id)));
    AppUsage { apps, scanned_at_unix: crate::clock::unix_secs(), scan_seconds: started.elapsed().as_secs_f64() }
}

/// The dirs of `dirs` not inside another one of them, so nothing is counted twice.
fn outermost(dirs: &BTreeSet<PathBuf>) -> Vec<&Path> {
    // Sorted order puts a parent right before its descendants.
    let mut kept: Vec<&Path> = Vec::new();
    for dir in dirs {
        if !kept.last().is_some_and(|k| dir.starts_with(k)) {
            kept.push(dir);
        }
    }
    kept
}

/// (bytes, files) of the regular files under `dir`, symlinks not followed.
fn walk(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            // DirEntry::file_type comes from readdir (no stat) and does not follow symlinks.
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                if let Ok(meta) = entry.metadata() {
                    bytes += meta.len();
                    files += 1;
                }
            }
        }
    }
    (bytes, files)
}

/// statvfs of each root.
pub fn root_space(roots: &[PathBuf]) -> Vec<RootSpace> {
    roots
        .iter()
        .map(|root| match rustix::fs::statvfs(root) {
            Ok(s) => RootSpace {
                root: root.clone(),
                free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
                size_bytes: s.f_blocks.saturating_mul(s.f_frsize),
                free_inodes: s.f_favail,
                error: None,
            },
            Err(e) => RootSpace {
                root: root.clone(),
                free_bytes: 0,
                size_bytes: 0,
                free_inodes: 0,
                error: Some(io::Error::from(e).to_string()),
            },
        })
        .collect()
}

/// How often the watcher measures.
#[derive(Debug, Clone, Copy)]
pub struct DiskSettings {
    /// Walk of every app's dirs (the expensive one).
    pub walk_interval: Duration,
    /// statvfs of the roots (one syscall per root).
    pub space_interval: Duration,
}

impl Default for DiskSettings {
    fn default() -> Self {
        DiskSettings { walk_interval: Duration::from_secs(60), space_interval: Duration::from_secs(10) }
    }
}

/// The background thread measuring disk use. [`DiskWatcher::stop`] stops and joins it; dropping
/// the handle only tells it to stop at its next wait (a walk in progress is not waited for).
#[derive(Debug)]
pub struct DiskWatcher {
    /// Dropping the sender wakes the thread's wait with `Disconnected`.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatcher {
    /// Starts measuring now (the first walk and statvfs happen immediately), then on the intervals.
    pub fn spawn(usage: Arc<DiskUsage>, registry: Arc<Registry>, settings: DiskSettings) -> io::Result<DiskWatcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("disk-usage".into()).spawn(move || {
            // Bookkeeping: it must never take a core from serving or registering.
            crate::thread_priority::lower_this_thread(19);
            watch(&usage, &registry, settings, &stopped)
        })?;
        Ok(DiskWatcher { stop: Some(stop), thread: Some(thread) })
    }

    /// Stops the thread and waits for it (at most the end of a walk in progress).
    pub fn stop(mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("the disk-usage thread panicked");
            }
        }
    }
}

fn watch(disk: &DiskUsage, registry: &Registry, settings: DiskSettings, stopped: &mpsc::Receiver<()>) {
    let roots = registry.roots().dirs().to_vec();
    let mut next_walk = Instant::now();
    loop {
        disk.set_root_space(root_space(&roots));
        if Instant::now() >= next_walk {
            let usage = walk_apps(registry);
            debug!(apps = usage.apps.len(), seconds = usage.scan_seconds, "disk usage walked");
            disk.set_app_usage(usage);
            next_walk = Instant::now() + settings.walk_interval;
        }
        // Sleeps until the next measurement, or returns at once when the sender is dropped.
        match stopped.recv_timeout(settings.space_interval.min(settings.walk_interval)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_dirs_are_counted_once() {
        let dirs: BTreeSet<PathBuf> = ["/r/a", "/r/a/b", "/r/ab", "/r/c/d", "/r/c"].iter().map(PathBuf::from).collect();
        let kept: Vec<&Path> = outermost(&dirs);
        assert_eq!(kept, vec![Path::new("/r/a"), Path::new("/r/ab"), Path::new("/r/c")]);
    }

    #[test]
    fn a_walk_counts_regular_files_and_follows_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0u8; 10_000]).unwrap();
        std::fs::create_dir_all(dir.path().join("0c")).unwrap();
        std::fs::write(dir.path().join("0c/shuffle_0_0_0.data"), vec![1u8; 300]).unwrap();
        std::fs::write(dir.path().join("0c/shuffle_0_0_0.index"), vec![0u8; 16]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), dir.path().join("0c/filelink")).unwrap();
        assert_eq!(walk(dir.path()), (316, 2));
        assert_eq!(walk(&dir.path().join("missing")), (0, 0), "a vanished dir counts as empty");
    }

    #[test]
    fn root_space_reports_a_filesystem_and_an_error_per_root() {
        let dir = tempfile::tempdir().unwrap();
        let spaces = root_space(&[dir.path().to_path_buf(), PathBuf::from("/nonexistent/root")]);
        assert!(spaces[0].size_bytes > 0 && spaces[0].size_bytes >= spaces[0].free_bytes, "{spaces:?}");
        assert!(spaces[0].error.is_none());
        assert!(spaces[1].error.is_some());
        assert_eq!(spaces[1].size_bytes, 0);
    }
}
