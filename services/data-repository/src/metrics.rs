//! The repository's Prometheus metrics, served on the admin listener's `/metrics`.

use autocrane_runtime::admin::{SharedRegistry, latency_buckets};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

/// Counters and timings of syncs and fetches.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Versions synced (stored and announced).
    pub synced: Counter,
    /// Sync attempts that failed (rejected content, origin errors).
    pub sync_failures: Counter,
    /// Time from "the VersionWatcher says a new version is current" to "stored and announced".
    pub sync_seconds: Histogram,
    /// Fetch streams started.
    pub fetches: Counter,
    /// Content bytes sent by Fetch streams.
    pub fetch_bytes: Counter,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &SharedRegistry) -> Self {
        let metrics = Self {
            synced: Counter::default(),
            sync_failures: Counter::default(),
            sync_seconds: Histogram::new(latency_buckets()),
            fetches: Counter::default(),
            fetch_bytes: Counter::default(),
        };
        let mut registry = registry.lock().expect("metrics registry poisoned");
        registry.register(
            "data_repository_synced_versions",
            "Versions synced",
            metrics.synced.clone(),
        );
        registry.register(
            "data_repository_sync_failures",
            "Sync attempts that failed",
            metrics.sync_failures.clone(),
        );
        registry.register(
            "data_repository_sync_seconds",
            "Duration of one version sync",
            metrics.sync_seconds.clone(),
        );
        registry.register(
            "data_repository_fetches",
            "Fetch streams started",
            metrics.fetches.clone(),
        );
        registry.register(
            "data_repository_fetch_bytes",
            "Content bytes sent by Fetch streams",
            metrics.fetch_bytes.clone(),
        );
        metrics
    }
}
