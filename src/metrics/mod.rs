//! Prometheus plumbing, and nothing else: it knows no other layer of the agent.
//!
//! Every component that has numbers to export defines its own series in a [`Series`] and
//! implements [`Source`] for them: the server for its connections and latencies, the registry
//! for registrations and the journal, the store for the index cache, the lifecycle engine for
//! cleanups, the Kubernetes side for its watches, the disk walker for per-app use. The
//! composition root (src/app.rs) hands each source to one [`Exporter`], the agent's one
//! registry (no global). Nothing here reaches into a component; components reach down to here.
//!
//! Most values are plain atomics that their owner already keeps for itself; a [`Source`] copies
//! them into its series when a scrape asks ([`Source::refresh`]), so the data path pays nothing
//! for being observed. Histograms are observed where the event happens (lock-free atomics).

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::sync::lock;

/// A component's series: the metric handles it updates, and the names they export.
#[derive(Default)]
pub struct Series {
    collectors: Vec<Box<dyn Collector>>,
    names: Vec<String>,
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series").field("names", &self.names).finish()
    }
}

/// A component's numbers, exported through an [`Exporter`].
pub trait Source: Send + Sync {
    /// The series this source exports.
    fn series(&self) -> &Series;
    /// Copies the component's current values into its series. Called before each scrape with
    /// the source's own lock held, so two scrapes never interleave their updates.
    fn refresh(&self) {}
}

impl Series {
    pub fn new() -> Series {
        Series::default()
    }

    /// Names are literals of the component defining them, unique across the agent (the
    /// exporter's test builds the whole set), so creating them cannot fail at run time.
    fn add(&mut self, c: impl Collector + 'static, suffixes: &[&str]) {
        for desc in c.desc() {
            if suffixes.is_empty() {
                self.names.push(desc.fq_name.clone());
            }
            self.names.extend(suffixes.iter().map(|s| format!("{}{s}", desc.fq_name)));
        }
        self.collectors.push(Box::new(c));
    }

    pub fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric name");
        self.add(c.clone(), &[]);
        c
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric name");
        self.add(g.clone(), &[]);
        g
    }

    pub fn float_gauge(&mut self, name: &str, help: &str) -> Gauge {
        let g = Gauge::with_opts(Opts::new(name, help)).expect("valid metric name");
        self.add(g.clone(), &[]);
        g
    }

    pub fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.add(c.clone(), &[]);
        c
    }

    pub fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.add(g.clone(), &[]);
        g
    }

    /// A histogram with the given bucket bounds (seconds).
    pub fn histogram(&mut self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let h = histogram(name, help, buckets);
        self.include_histogram(h.clone());
        h
    }

    /// Exports a histogram made with [`histogram`] by a component that observes it before its
    /// source exists (the server's latencies live in its shared state).
    pub fn include_histogram(&mut self, h: Histogram) {
        self.add(h, &["_bucket", "_sum", "_count"]);
    }

    /// A series maintained elsewhere (the process collector).
    pub fn collector(&mut self, c: impl Collector + 'static) {
        self.add(c, &[]);
    }

    /// The name of every series (histograms as `_bucket`, `_sum`, `_count`).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A histogram not yet in any [`Series`]; see [`Series::include_histogram`].
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid buckets")
}

/// A [`Source`] as the prometheus registry sees it: refreshed, under a lock, at each collect.
struct Refreshed<S> {
    source: S,
    lock: Mutex<()>,
}

impl<S: Source> Collector for Refreshed<S> {
    fn desc(&self) -> Vec<&Desc> {
        self.source.series().collectors.iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _refreshing = lock(&self.lock);
        self.source.refresh();
        self.source.series().collectors.iter().flat_map(|c| c.collect()).collect()
    }
}

/// The agent's one registry: every source's series, the process collector and `build_info`.
pub struct Exporter {
    registry: prometheus::Registry,
    names: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("series", &lock(&self.names).len()).finish()
    }
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter::new()
    }
}

/// The exporter's own series: which build runs, and the process (memory, descriptors, CPU).
struct Process {
    series: Series,
}

impl Source for Process {
    fn series(&self) -> &Series {
        &self.series
    }
}

impl Exporter {
    /// A registry holding `build_info` and, on Linux, the standard `process_*` series.
    pub fn new() -> Exporter {
        let exporter = Exporter { registry: prometheus::Registry::new(), names: Mutex::default() };
        let mut series = Series::new();
        let build = series.gauge_vec(
            "spark_shuffle_agent_build_info",
            "Always 1; the labels say which build runs.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        series.collector(prometheus::process_collector::ProcessCollector::for_self());
        exporter.add(Process { series });
        exporter
    }

    /// Exports `source`'s series from now on. Components are added as they come up (the
    /// metrics port answers while registrations are still being recovered).
    pub fn add(&self, source: impl Source + 'static) {
        lock(&self.names).extend(source.series().names().iter().cloned());
        if let Err(e) = self.registry.register(Box::new(Refreshed { source, lock: Mutex::new(()) })) {
            // Only a name defined twice gets here, which the exporter's test rules out.
            tracing::error!(error = %e, "a metric could not be registered");
        }
    }

    /// Every metric in the Prometheus text format (version 0.0.4), as `/metrics` serves it.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 << 10);
        // Encoding into a Vec only fails on a malformed family, which this registry cannot hold.
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The name of every series the added sources can export (histograms as `_bucket`, `_sum`,
    /// `_count`), whether or not it has a value yet. The dashboard test checks against these.
    pub fn exported_names(&self) -> Vec<String> {
        lock(&self.names).clone()
    }
}

/// Advances a mirrored counter to `value`. Only a [`Source::refresh`] (under its lock) writes
/// these counters, so the difference is exact.
pub fn sync(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

/// A count as a gauge value, saturating instead of wrapping.
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counted {
        series: Series,
        total: IntCounter,
        source: std::sync::atomic::AtomicU64,
    }

    impl Source for Counted {
        fn series(&self) -> &Series {
            &self.series
        }
        fn refresh(&self) {
            sync(&self.total, self.source.load(std::sync::atomic::Ordering::Relaxed));
        }
    }

    #[test]
    fn a_source_is_refreshed_at_each_scrape() {
        let mut series = Series::new();
        let total = series.counter("test_things_total", "Things.");
        let h = series.histogram("test_latency_seconds", "Latency.", &[0.1, 1.0]);
        let exporter = Exporter::new();
        exporter.add(Counted { series, total, source: std::sync::atomic::AtomicU64::new(3) });
        h.observe(0.5);
        let text = exporter.render();
        assert!(text.contains("test_things_total 3"), "{text}");
        assert!(text.contains("test_latency_seconds_count 1"), "{text}");
        assert!(text.contains("spark_shuffle_agent_build_info{version="), "{text}");
        let names = exporter.exported_names();
        assert!(names.iter().any(|n| n == "test_latency_seconds_bucket"));
        assert!(names.iter().any(|n| n == "test_things_total"));
    }

    #[test]
    fn a_mirrored_counter_moves_to_the_source_value() {
        let c = IntCounter::new("x_total", "x").unwrap();
        sync(&c, 5);
        sync(&c, 5);
        assert_eq!(c.get(), 5);
        sync(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
