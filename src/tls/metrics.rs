//! TLS's series, read from the acceptor's [`TlsStats`] at each scrape. Registered only with
//! `spark.ssl.rpc.enabled`, so an agent without TLS exports none of them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use super::TlsAcceptor;
use crate::metrics::{sync, Series, Source};

pub struct TlsSource {
    acceptor: Arc<TlsAcceptor>,
    series: Series,
    not_after: IntGauge,
    reloads: IntCounter,
    reload_failures: IntCounter,
}

impl TlsSource {
    pub fn new(acceptor: Arc<TlsAcceptor>) -> TlsSource {
        let mut s = Series::new();
        TlsSource {
            acceptor,
            not_after: s.gauge(
                "spark_shuffle_agent_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate new TLS connections are served with (Unix time; 0 = unreadable).",
            ),
            reloads: s.counter(
                "spark_shuffle_agent_tls_reloads_total",
                "Times the TLS key files changed and were read again (a rotated certificate).",
            ),
            reload_failures: s.counter(
                "spark_shuffle_agent_tls_reload_failures_total",
                "Times the TLS key files changed but could not be used; the keys in force stayed.",
            ),
            series: s,
        }
    }
}

impl Source for TlsSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        let stats = &self.acceptor.stats;
        self.not_after.set(stats.not_after_unix_secs.load(Ordering::Relaxed));
        sync(&self.reloads, stats.reloads.load(Ordering::Relaxed));
        sync(&self.reload_failures, stats.reload_failures.load(Ordering::Relaxed));
    }
}
