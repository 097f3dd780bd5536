//! Pod network mode's series, read from the controller's [`PodnetStats`] at each scrape. Only
//! registered in pod network mode, so a host-mode agent exports none of them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use super::PodnetStats;
use crate::metrics::{gauge_value, sync, Series, Source};

pub struct PodnetSource {
    stats: Arc<PodnetStats>,
    series: Series,
    listeners: IntGauge,
    pending: IntGauge,
    redirects: IntGauge,
    adoptions: IntCounter,
    adoption_failures: IntCounter,
    nft_failures: IntCounter,
    last_listener: IntGauge,
}

impl PodnetSource {
    pub fn new(stats: Arc<PodnetStats>) -> PodnetSource {
        let mut s = Series::new();
        PodnetSource {
            stats,
            listeners: s.gauge(
                "spark_shuffle_agent_podnet_listeners",
                "Listeners open inside executor pods' network namespaces (one per address family per pod).",
            ),
            pending: s.gauge(
                "spark_shuffle_agent_podnet_pods_pending",
                "Executor pods of this node with an IP whose network namespace is not found yet.",
            ),
            redirects: s.gauge(
                "spark_shuffle_agent_podnet_redirects",
                "Dead executor IPs redirected to the agent holding their files (the cluster-wide map).",
            ),
            adoptions: s.counter(
                "spark_shuffle_agent_podnet_adoptions_total",
                "Executor pods whose network namespace was found and listened in.",
            ),
            adoption_failures: s.counter(
                "spark_shuffle_agent_podnet_adoption_failures_total",
                "Failed or overdue adoptions: a /proc scan that failed, an IP held by two namespaces, a bind \
                 refused, a pod not found within 10 s. Each pod keeps being looked for.",
            ),
            nft_failures: s.counter(
                "spark_shuffle_agent_podnet_nft_failures_total",
                "nftables updates (pod or node redirect tables) that failed; retried at the next change.",
            ),
            last_listener: s.gauge(
                "spark_shuffle_agent_podnet_last_listener_milliseconds",
                "For the last adopted pod: milliseconds from the watch showing its IP to its listener accepting.",
            ),
            series: s,
        }
    }
}

impl Source for PodnetSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        self.listeners.set(gauge_value(get(&s.listeners_open)));
        self.pending.set(gauge_value(get(&s.pods_pending)));
        self.redirects.set(gauge_value(get(&s.redirects)));
        sync(&self.adoptions, get(&s.adoptions));
        sync(&self.adoption_failures, get(&s.adoption_failures));
        sync(&self.nft_failures, get(&s.nft_failures));
        self.last_listener.set(gauge_value(get(&s.last_listener_millis)));
    }
}
