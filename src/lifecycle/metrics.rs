//! The lifecycle engine's series: executor and application cleanups.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use super::Lifecycle;
use crate::metrics::{gauge_value, sync, Series, Source};
use crate::registry::Registry;

/// Exports what the cleanups did, and what is still to be deleted, at each scrape.
pub struct LifecycleSource {
    lifecycle: Lifecycle,
    registry: Arc<Registry>,
    series: Series,
    executor_cleanups: IntCounter,
    app_cleanups: IntCounter,
    cleanups_deferred: IntCounter,
    cleanups_pending: IntGauge,
    cleanup_files: IntCounter,
    cleanup_bytes: IntCounter,
    cleanup_errors: IntCounter,
}

impl LifecycleSource {
    pub fn new(lifecycle: Lifecycle, registry: Arc<Registry>) -> LifecycleSource {
        let mut s = Series::new();
        LifecycleSource {
            lifecycle,
            registry,
            executor_cleanups: s.counter(
                "spark_shuffle_agent_executor_cleanups_total",
                "Executors whose unserved files (spill, broadcast, temp) were deleted after they went away.",
            ),
            app_cleanups: s.counter(
                "spark_shuffle_agent_app_cleanups_total",
                "Removed applications whose directories were deleted.",
            ),
            cleanups_deferred: s.counter(
                "spark_shuffle_agent_cleanups_deferred_total",
                "Cleanup requests not done when asked (queue full or journal write failed); they are retried or \
                 folded into the app's removal.",
            ),
            cleanups_pending: s.gauge(
                "spark_shuffle_agent_cleanups_pending",
                "Removed applications whose directories are still to be deleted.",
            ),
            cleanup_files: s.counter("spark_shuffle_agent_cleanup_deleted_files_total", "Files deleted by cleanups."),
            cleanup_bytes: s
                .counter("spark_shuffle_agent_cleanup_deleted_bytes_total", "Bytes of the files deleted by cleanups."),
            cleanup_errors: s.counter(
                "spark_shuffle_agent_cleanup_errors_total",
                "Files or directories a cleanup could not delete.",
            ),
            series: s,
        }
    }
}

impl Source for LifecycleSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        let c = self.lifecycle.counters();
        sync(&self.executor_cleanups, c.executors_cleaned.load(Ordering::Relaxed));
        sync(&self.app_cleanups, c.apps_cleaned.load(Ordering::Relaxed));
        sync(&self.cleanups_deferred, c.deferred.load(Ordering::Relaxed));
        sync(&self.cleanup_files, c.files_deleted.load(Ordering::Relaxed));
        sync(&self.cleanup_bytes, c.bytes_deleted.load(Ordering::Relaxed));
        sync(&self.cleanup_errors, c.errors.load(Ordering::Relaxed));
        self.cleanups_pending.set(gauge_value(self.registry.pending_cleanups().len() as u64));
    }
}
