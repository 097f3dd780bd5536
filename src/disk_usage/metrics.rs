//! The disk walker's series: bytes and files per application, free space per root.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{Gauge, IntGauge, IntGaugeVec};

use super::DiskUsage;
use crate::metrics::{gauge_value, Series, Source};

/// Per-app disk series are kept for this many apps (largest first); the rest are summed into
/// one series labelled [`OTHER_APPS`], so the label's cardinality stays bounded on busy nodes.
pub const TOP_APPS: usize = 20;

/// The `app` label value of the apps beyond [`TOP_APPS`]. Parentheses cannot clash with a
/// Spark application id.
pub const OTHER_APPS: &str = "(other)";

/// Exports the last walk and the last statvfs at each scrape.
pub struct DiskSource {
    usage: Arc<DiskUsage>,
    series: Series,
    /// The walk the per-app series show (`u64::MAX`: none yet).
    shown_walk: AtomicU64,
    app_disk_bytes: IntGaugeVec,
    app_disk_files: IntGaugeVec,
    disk_scan_seconds: Gauge,
    disk_scan_timestamp: IntGauge,
    root_free_bytes: IntGaugeVec,
    root_size_bytes: IntGaugeVec,
    root_free_inodes: IntGaugeVec,
}

impl DiskSource {
    pub fn new(usage: Arc<DiskUsage>) -> DiskSource {
        let mut s = Series::new();
        DiskSource {
            usage,
            shown_walk: AtomicU64::new(u64::MAX),
            app_disk_bytes: s.gauge_vec(
                "spark_shuffle_agent_app_disk_bytes",
                "Bytes of files under the application's executor dirs, from the last background walk. The 20 \
                 largest apps have their own series, the rest are summed under app=\"(other)\".",
                &["app"],
            ),
            app_disk_files: s.gauge_vec(
                "spark_shuffle_agent_app_disk_files",
                "Files under the application's executor dirs, from the last background walk (same apps as \
                 spark_shuffle_agent_app_disk_bytes).",
                &["app"],
            ),
            disk_scan_seconds: s.float_gauge(
                "spark_shuffle_agent_disk_scan_duration_seconds",
                "How long the last walk of the application dirs took.",
            ),
            disk_scan_timestamp: s.gauge(
                "spark_shuffle_agent_disk_scan_timestamp_seconds",
                "When the last walk of the application dirs finished (Unix time; 0 = none yet).",
            ),
            root_free_bytes: s.gauge_vec(
                "spark_shuffle_agent_root_free_bytes",
                "Bytes executors can still write on the root's filesystem (statvfs f_bavail).",
                &["root"],
            ),
            root_size_bytes: s.gauge_vec(
                "spark_shuffle_agent_root_size_bytes",
                "Size of the root's filesystem (statvfs f_blocks).",
                &["root"],
            ),
            root_free_inodes: s.gauge_vec(
                "spark_shuffle_agent_root_free_inodes",
                "Inodes executors can still create on the root's filesystem (statvfs f_favail).",
                &["root"],
            ),
            series: s,
        }
    }

    fn refresh_roots(&self) {
        self.root_free_bytes.reset();
        self.root_size_bytes.reset();
        self.root_free_inodes.reset();
        for space in self.usage.root_space().iter().filter(|s| s.error.is_none()) {
            let root = space.root.to_string_lossy();
            let root = [root.as_ref()];
            self.root_free_bytes.with_label_values(&root).set(gauge_value(space.free_bytes));
            self.root_size_bytes.with_label_values(&root).set(gauge_value(space.size_bytes));
            self.root_free_inodes.with_label_values(&root).set(gauge_value(space.free_inodes));
        }
    }
}

impl Source for DiskSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        self.refresh_roots();
        let (usage, walk) = self.usage.walk();
        if self.shown_walk.swap(walk, Ordering::Relaxed) == walk {
            return;
        }
        self.app_disk_bytes.reset();
        self.app_disk_files.reset();
        if usage.scanned_at_unix == 0 {
            return;
        }
        for app in usage.apps.iter().take(TOP_APPS) {
            self.app_disk_bytes.with_label_values(&[app.app_id.as_str()]).set(gauge_value(app.bytes));
            self.app_disk_files.with_label_values(&[app.app_id.as_str()]).set(gauge_value(app.files));
        }
        if usage.apps.len() > TOP_APPS {
            let rest = &usage.apps[TOP_APPS..];
            let bytes = rest.iter().map(|a| a.bytes).sum::<u64>();
            let files = rest.iter().map(|a| a.files).sum::<u64>();
            self.app_disk_bytes.with_label_values(&[OTHER_APPS]).set(gauge_value(bytes));
            self.app_disk_files.with_label_values(&[OTHER_APPS]).set(gauge_value(files));
        }
        self.disk_scan_seconds.set(usage.scan_seconds);
        self.disk_scan_timestamp.set(gauge_value(usage.scanned_at_unix));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AppDisk, AppUsage};
    use super::*;
    use crate::metrics::Exporter;

    #[test]
    fn disk_series_keep_the_top_apps_and_sum_the_rest() {
        let usage = Arc::new(DiskUsage::new());
        let exporter = Exporter::new();
        exporter.add(DiskSource::new(Arc::clone(&usage)));
        let apps = (0..TOP_APPS as u64 + 3)
            .map(|i| AppDisk { app_id: format!("app-{i:02}"), bytes: 1000 - i, files: 1, removed: false })
            .collect();
        usage.set_app_usage(AppUsage { apps, scanned_at_unix: 1_700_000_000, scan_seconds: 0.5 });
        let text = exporter.render();
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"app-00\"} 1000"));
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"app-19\"} 981"));
        assert!(!text.contains("app=\"app-20\""), "app-20 is beyond the top {TOP_APPS}");
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"(other)\"} 2937"), "{text}");
        assert!(text.contains("spark_shuffle_agent_app_disk_files{app=\"(other)\"} 3"));
        assert!(text.contains("spark_shuffle_agent_disk_scan_timestamp_seconds 1700000000"));
        usage.set_app_usage(AppUsage {
            apps: vec![AppDisk { app_id: "app-new".into(), bytes: 5, files: 1, removed: false }],
            scanned_at_unix: 1_700_000_060,
            scan_seconds: 0.1,
        });
        let text = exporter.render();
        assert!(!text.contains("app=\"app-00\""), "apps gone from the walk lose their series");
        assert!(!text.contains("{app=\"(other)\"}"), "no other bucket when all apps fit");
        assert!(text.contains("spark_shuffle_agent_app_disk_bytes{app=\"app-new\"} 5"));
    }
}
