//! Prometheus metrics of the controllers (served at `/metrics`, DESIGN §4 and issue 5).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Outcome of one cache build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum BuildOutcome {
    /// The build succeeded: the cache is Ready.
    Ready,
    /// A first build failed: the cache is Failed.
    Failed,
    /// A rebuild failed: the cache is UpdateFailed.
    UpdateFailed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: BuildOutcome,
}

/// Whether a pod started from a cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CacheUse {
    /// The pod's images came from an image cache.
    Hit,
    /// The pod started without an image cache.
    Miss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: CacheUse,
}

/// Every metric imc exports. Cheap to share (`Arc<Metrics>`); all updates are lock-free.
pub struct Metrics {
    registry: Registry,
    cache_hits: Counter,
    cache_misses: Counter,
    builds: Family<OutcomeLabels, Counter>,
    downloaded_bytes: Counter,
    cache_served_bytes: Counter,
    pod_start: Family<CacheLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("imc");
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let builds = Family::<OutcomeLabels, Counter>::default();
        let downloaded_bytes = Counter::default();
        let cache_served_bytes = Counter::default();
        let pod_start = Family::<CacheLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
        });
        registry.register(
            "cache_hits",
            "Pods started from an image cache",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Pods that asked for a cache and found none",
            cache_misses.clone(),
        );
        registry.register("cache_builds", "Cache builds by outcome", builds.clone());
        registry.register(
            "downloaded_bytes",
            "Layer bytes downloaded from registries",
            downloaded_bytes.clone(),
        );
        registry.register(
            "cache_served_bytes",
            "Layer bytes served from cache disks instead of downloaded",
            cache_served_bytes.clone(),
        );
        registry.register(
            "pod_start_seconds",
            "Pod start latency (API create to container started) by cache hit or miss",
            pod_start.clone(),
        );
        Self {
            registry,
            cache_hits,
            cache_misses,
            builds,
            downloaded_bytes,
            cache_served_bytes,
            pod_start,
        }
    }

    /// Counts a pod started from an image cache (`cache_hits`).
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }
    /// Counts a pod that asked for a cache and found none (`cache_misses`).
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }
    /// Counts a finished cache build under its outcome (`cache_builds`).
    pub fn build_finished(&self, outcome: BuildOutcome) {
        self.builds.get_or_create(&OutcomeLabels { outcome }).inc();
    }
    /// Adds layer bytes downloaded from a registry (`downloaded_bytes`).
    pub fn downloaded(&self, bytes: u64) {
        self.downloaded_bytes.inc_by(bytes);
    }
    /// Adds layer bytes a pod took from a cache disk instead of downloading (`cache_served_bytes`).
    pub fn served_from_cache(&self, bytes: u64) {
        self.cache_served_bytes.inc_by(bytes);
    }
    /// Records a pod's start latency, from API create to container started (`pod_start_seconds`).
    pub fn pod_started(&self, cache: CacheUse, seconds: f64) {
        self.pod_start
            .get_or_create(&CacheLabels { cache })
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.cache_hit();
        m.build_finished(BuildOutcome::Ready);
        m.downloaded(10);
        m.pod_started(CacheUse::Hit, 0.2);
        let text = m.encode();
        for needle in [
            "imc_cache_hits_total 1",
            "imc_cache_misses_total 0",
            "imc_cache_builds_total{outcome=\"Ready\"} 1",
            "imc_downloaded_bytes_total 10",
            "imc_cache_served_bytes_total 0",
            "imc_pod_start_seconds_count{cache=\"Hit\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
