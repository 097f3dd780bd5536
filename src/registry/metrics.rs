//! The registry's series: registrations, and the journal that makes each one durable.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use super::Registry;
use crate::metrics::{gauge_value, sync, Series, Source};

/// Exports [`Registry`]'s counts and its journal's statistics at each scrape.
pub struct RegistrySource {
    registry: Arc<Registry>,
    series: Series,
    registered_apps: IntGauge,
    registered_executors: IntGauge,
    journal_bytes: IntGauge,
    journal_live_records: IntGauge,
    journal_snapshot_bytes: IntGauge,
    journal_appends: IntCounter,
    journal_append_failures: IntCounter,
    journal_fsyncs: IntCounter,
    journal_compactions: IntCounter,
    journal_queued: IntGauge,
    journal_repair_pending: IntGauge,
}

impl RegistrySource {
    pub fn new(registry: Arc<Registry>) -> RegistrySource {
        let mut s = Series::new();
        RegistrySource {
            registry,
            registered_apps: s
                .gauge("spark_shuffle_agent_registered_apps", "Applications with at least one registered executor."),
            registered_executors: s
                .gauge("spark_shuffle_agent_registered_executors", "Registered (application, executor) pairs."),
            journal_bytes: s.gauge(
                "spark_shuffle_agent_journal_bytes",
                "Size of the registration journal file up to its last durable record.",
            ),
            journal_live_records: s.gauge(
                "spark_shuffle_agent_journal_live_records",
                "Facts in force in the journal: registrations, drivers and pending cleanups.",
            ),
            journal_snapshot_bytes: s.gauge(
                "spark_shuffle_agent_journal_snapshot_bytes",
                "Bytes a compacted journal would take (the live state, encoded).",
            ),
            journal_appends: s
                .counter("spark_shuffle_agent_journal_appends_total", "Journal records made durable and acknowledged."),
            journal_append_failures: s.counter(
                "spark_shuffle_agent_journal_append_failures_total",
                "Journal records answered with an error (the registration or removal was not acknowledged).",
            ),
            journal_fsyncs: s.counter(
                "spark_shuffle_agent_journal_fsyncs_total",
                "Journal group commits: one write and one fdatasync each.",
            ),
            journal_compactions: s.counter("spark_shuffle_agent_journal_compactions_total", "Journal compactions."),
            journal_queued: s
                .gauge("spark_shuffle_agent_journal_queued", "Journal records waiting for the writer thread."),
            journal_repair_pending: s.gauge(
                "spark_shuffle_agent_journal_repair_pending",
                "1 while journal appends fail until the writer recovers from an earlier failure (see the log).",
            ),
            series: s,
        }
    }
}

impl Source for RegistrySource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        self.registered_apps.set(gauge_value(self.registry.app_count() as u64));
        self.registered_executors.set(gauge_value(self.registry.executor_count() as u64));
        if let Some(journal) = self.registry.journal_stats() {
            self.journal_bytes.set(gauge_value(journal.file_bytes));
            self.journal_live_records.set(gauge_value(journal.live_records));
            self.journal_snapshot_bytes.set(gauge_value(journal.snapshot_bytes));
            sync(&self.journal_appends, journal.appended);
            sync(&self.journal_append_failures, journal.failed_appends);
            sync(&self.journal_fsyncs, journal.fsyncs);
            sync(&self.journal_compactions, journal.compactions);
            self.journal_queued.set(gauge_value(journal.queued));
            self.journal_repair_pending.set(i64::from(journal.repair_pending));
        }
    }
}
