//! The store's series: the index cache.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use super::Store;
use crate::metrics::{gauge_value, sync, Series, Source};

/// Exports the index cache's size and hit counts at each scrape.
pub struct StoreSource {
    store: Arc<Store>,
    series: Series,
    index_cache_bytes: IntGauge,
    index_cache_entries: IntGauge,
    index_cache_hits: IntCounter,
    index_cache_misses: IntCounter,
}

impl StoreSource {
    pub fn new(store: Arc<Store>) -> StoreSource {
        let mut s = Series::new();
        StoreSource {
            store,
            index_cache_bytes: s
                .gauge("spark_shuffle_agent_index_cache_bytes", "Weight of the parsed index files in the cache."),
            index_cache_entries: s.gauge("spark_shuffle_agent_index_cache_entries", "Index files in the cache."),
            index_cache_hits: s.counter("spark_shuffle_agent_index_cache_hits_total", "Index cache hits."),
            index_cache_misses: s.counter(
                "spark_shuffle_agent_index_cache_misses_total",
                "Index cache misses (the index file was read from disk).",
            ),
            series: s,
        }
    }
}

impl Source for StoreSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        let cache = self.store.index_cache().stats();
        self.index_cache_bytes.set(gauge_value(cache.weight_bytes));
        self.index_cache_entries.set(gauge_value(cache.entries as u64));
        sync(&self.index_cache_hits, cache.hits);
        sync(&self.index_cache_misses, cache.misses);
    }
}
