//! The lifecycle engine: what happens to registrations and files when executors and
//! applications go away. Spark sends no such events to a shuffle service over the wire (spec
//! §5); the triggers come from outside (the Kubernetes watcher, an operator, the periodic sweep)
//! and all end up here.
//!
//! * executor removed: its unserved files (spill, broadcast, temp) are deleted; its shuffle
//!   files and its registration stay, because they are still being served;
//! * application removed: its registrations are dropped (persisted first) and its executors'
//!   dirs deleted in the background; a crash mid-way resumes from the journal;
//! * sweep: apps whose every local dir has vanished (e.g. a standalone Worker deleted them) are
//!   dropped, and with a retention limit, apps idle for longer are removed.
//!
//! Deletion runs on one blocking worker, off the data path, and never leaves the roots
//! ([`crate::store::cleanup`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod metrics;
pub use metrics::LifecycleSource;

use crate::registry::Registry;
use crate::store::{cleanup, KeepServed, Store};

/// How the engine behaves.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// Keep `rdd_*` files of removed executors (`spark.shuffle.service.fetch.rdd.enabled`).
    pub keep_rdd: bool,
    /// Remove apps with no registration or fetch for this long; None = never.
    pub app_retention: Option<Duration>,
    /// How often the sweep runs.
    pub sweep_interval: Duration,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct LifecycleCounters {
    pub executors_cleaned: AtomicU64,
    pub apps_cleaned: AtomicU64,
    pub files_deleted: AtomicU64,
    pub bytes_deleted: AtomicU64,
    /// Requests not done now: the queue was full or the journal could not record them.
    pub deferred: AtomicU64,
    pub errors: AtomicU64,
    /// Sweeps completed (tests wait on it instead of sleeping).
    pub sweeps: AtomicU64,
}

/// Executor removals waiting for the worker. Bounded: past it, removals are counted as
/// deferred (their files go when the app is removed).
const QUEUE: usize = 4096;

/// The handle triggers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    store: Arc<Store>,
    settings: LifecycleSettings,
    executors: mpsc::Sender<(String, String)>,
    wake: Notify,
    counters: LifecycleCounters,
}

/// The worker half, run by [`Worker::run`].
#[derive(Debug)]
pub struct Worker {
    inner: Arc<Inner>,
    executors: mpsc::Receiver<(String, String)>,
}

impl Lifecycle {
    pub fn new(registry: Arc<Registry>, store: Arc<Store>, settings: LifecycleSettings) -> (Lifecycle, Worker) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            registry,
            store,
            settings,
            executors: tx,
            wake: Notify::new(),
            counters: LifecycleCounters::default(),
        });
        (Lifecycle { inner: Arc::clone(&inner) }, Worker { inner, executors: rx })
    }

    pub fn counters(&self) -> &LifecycleCounters {
        &self.inner.counters
    }

    /// An executor is gone: delete its unserved files in the background. Returns false when the
    /// executor is unknown or the queue is full (counted as deferred).
    pub fn executor_removed(&self, app_id: &str, exec_id: &str) -> bool {
        if self.inner.registry.executor(app_id, exec_id).is_none() {
            debug!(app = %app_id, exec = %exec_id, "executor removed, but it never registered here");
            return false;
        }
        match self.inner.executors.try_send((app_id.to_string(), exec_id.to_string())) {
            Ok(()) => true,
            Err(_) => {
                self.inner.counters.deferred.fetch_add(1, Ordering::Relaxed);
                warn!(app = %app_id, exec = %exec_id, "cleanup queue full; executor files stay until the app is removed");
                false
            }
        }
    }

    /// An application is gone: drop its registrations now (persisted) and delete its dirs in
    /// the background. Returns false when the app was unknown.
    pub async fn application_removed(&self, app_id: &str) -> bool {
        let executors = self.inner.registry.executors_of(app_id);
        let had_driver = self.inner.registry.driver(app_id).is_some();
        match self.inner.registry.remove_app(app_id).await {
            Ok(dirs) => {
                // Cached indexes and descriptors of files about to be deleted (by the agent, or
                // by Kubernetes with a PersistentVolume) would only hold cache and disk space.
                executors.iter().for_each(|e| self.inner.store.forget(&e.dirs));
                if !dirs.is_empty() {
                    self.inner.wake.notify_one();
                }
                !executors.is_empty() || had_driver
            }
            Err(e) => {
                // Not recorded, so nothing was dropped: the next trigger or sweep tries again.
                self.inner.counters.deferred.fetch_add(1, Ordering::Relaxed);
                warn!(app = %app_id, error = %e, "cannot record the application's removal; will retry");
                false
            }
        }
    }
}

impl Worker {
    /// Runs until `shutdown`: executor cleanups as they come, app cleanups when woken, and the
    /// sweep on its interval (and once at start, which resumes cleanups a crash interrupted).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(self.inner.settings.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some((app, exec)) = self.executors.recv() => self.clean_executor(app, exec).await,
                _ = self.inner.wake.notified() => self.clean_apps().await,
                _ = sweep.tick() => {
                    self.sweep().await;
                    self.inner.counters.sweeps.fetch_add(1, Ordering::Relaxed);
                    self.clean_apps().await;
                }
            }
        }
    }

    async fn clean_executor(&self, app_id: String, exec_id: String) {
        let Some(executor) = self.inner.registry.executor(&app_id, &exec_id) else { return };
        // Cached descriptors of files about to be deleted would hold their space.
        self.inner.store.close_files(&executor.dirs);
        let roots = self.inner.registry.roots().dirs().to_vec();
        let keep = KeepServed { rdd: self.inner.settings.keep_rdd };
        // Dirs on PersistentVolumes are Kubernetes' to delete, with their claims.
        let dirs: Vec<PathBuf> = executor.deletable_dirs().cloned().collect();
        let result = tokio::task::spawn_blocking(move || {
            let mut total = cleanup::CleanupStats::default();
            for dir in &dirs {
                match cleanup::remove_unserved_files(dir, &roots, keep) {
                    Ok(stats) => total += stats,
                    Err(e) => {
                        warn!(dir = %dir.display(), error = %e, "executor cleanup refused");
                        total.errors += 1;
                    }
                }
            }
            total
        })
        .await;
        if let Ok(stats) = result {
            self.record(&stats);
            self.inner.counters.executors_cleaned.fetch_add(1, Ordering::Relaxed);
            info!(app = %app_id, exec = %exec_id, files = stats.files, bytes = stats.bytes, "executor files cleaned");
        }
    }

    /// Deletes the dirs of every removed app, then records each as done.
    async fn clean_apps(&self) {
        for (app_id, dirs) in self.inner.registry.pending_cleanups() {
            let roots = self.inner.registry.roots().dirs().to_vec();
            let work = dirs.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut total = cleanup::CleanupStats::default();
                let mut refused = 0;
                for dir in &work {
                    match cleanup::remove_tree(dir, &roots) {
                        Ok(stats) => total += stats,
                        Err(e) => {
                            warn!(dir = %dir.display(), error = %e, "app cleanup refused");
                            refused += 1;
                        }
                    }
                }
                (total, refused)
            })
            .await;
            let Ok((stats, refused)) = result else { continue };
            self.record(&stats);
            for dirs_of in dirs.iter().filter_map(|d| d.to_str()) {
                debug!(app = %app_id, dir = dirs_of, "app dir deleted");
            }
            // A refused dir (now outside the roots) will never become deletable: done either way.
            match self.inner.registry.cleanup_done(&app_id, &dirs).await {
                Ok(true) => {}
                Ok(false) => {
                    // The app was removed again meanwhile; the next pass covers its new dirs.
                    self.inner.wake.notify_one();
                    continue;
                }
                Err(e) => {
                    self.inner.counters.deferred.fetch_add(1, Ordering::Relaxed);
                    warn!(app = %app_id, error = %e, "cannot record the cleanup; it will run again");
                    continue;
                }
            }
            self.inner.counters.apps_cleaned.fetch_add(1, Ordering::Relaxed);
            info!(app = %app_id, files = stats.files, bytes = stats.bytes, refused, "application files deleted");
        }
    }

    /// Drops apps whose dirs have all vanished, and apps idle past the retention limit.
    async fn sweep(&self) {
        self.inner.store.purge_idle_files(self.inner.settings.sweep_interval);
        let now = crate::clock::unix_secs();
        for app_id in self.inner.registry.app_ids() {
            let executors = self.inner.registry.executors_of(&app_id);
            if executors.is_empty() {
                continue; // a driver-only (2.2 fork) app: its driver pod decides.
            }
            let vanished = executors.iter().all(|e| e.dirs.canonical_dirs().iter().all(|d| !d.exists()));
            let idle = self.inner.settings.app_retention.is_some_and(|limit| {
                executors.iter().all(|e| now.saturating_sub(e.last_used_secs()) > limit.as_secs())
            });
            if vanished || idle {
                info!(app = %app_id, vanished, idle, "sweep removes application");
                let lifecycle = Lifecycle { inner: Arc::clone(&self.inner) };
                lifecycle.application_removed(&app_id).await;
            }
        }
    }

    fn record(&self, stats: &cleanup::CleanupStats) {
        let c = &self.inner.counters;
        c.files_deleted.fetch_add(stats.files, Ordering::Relaxed);
        c.bytes_deleted.fetch_add(stats.bytes, Ordering::Relaxed);
        c.errors.fetch_add(stats.errors, Ordering::Relaxed);
    }
}
