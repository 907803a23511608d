//! The watcher's Prometheus metrics: probes, events, sources, and the commit path.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

use crate::{commit::CommitCounters, state::EventKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    kind: String,
}

/// The watcher's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    probes: Family<ProbeLabels, Counter>,
    pub(crate) probe_seconds: Histogram,
    events: Family<EventLabels, Counter>,
    pub(crate) sources: Gauge,
    pub(crate) persist_failures: Counter,
    pub(crate) commits: CommitCounters,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &autocrane_runtime::admin::SharedRegistry) -> Self {
        let metrics = Self {
            probes: Family::default(),
            probe_seconds: Histogram::new(autocrane_runtime::admin::latency_buckets()),
            events: Family::default(),
            sources: Gauge::default(),
            persist_failures: Counter::default(),
            commits: CommitCounters::default(),
        };
        let mut registry = registry.lock().expect("metrics registry poisoned");
        registry.register(
            "version_watcher_probes",
            "Probes by source kind and outcome",
            metrics.probes.clone(),
        );
        registry.register(
            "version_watcher_probe_seconds",
            "Duration of one probe",
            metrics.probe_seconds.clone(),
        );
        registry.register(
            "version_watcher_events",
            "Version events by kind",
            metrics.events.clone(),
        );
        registry.register(
            "version_watcher_sources",
            "Sources watched",
            metrics.sources.clone(),
        );
        registry.register(
            "version_watcher_persist_failures",
            "Batches of source state writes that failed",
            metrics.persist_failures.clone(),
        );
        registry.register(
            "version_watcher_state_commits",
            "Group commits of source state (one journal write and fsync each)",
            metrics.commits.batches.clone(),
        );
        registry.register(
            "version_watcher_state_records",
            "Source states written by the group commits",
            metrics.commits.records.clone(),
        );
        registry.register(
            "version_watcher_state_syncs",
            "fsync calls of the commit path",
            metrics.commits.syncs.clone(),
        );
        metrics
    }
}

impl Metrics {
    /// Counts a probe of a `kind` source with `outcome` (`ok`, `error`).
    pub(crate) fn probe(&self, kind: &str, outcome: &str) {
        self.probes
            .get_or_create(&ProbeLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts an event.
    pub(crate) fn event(&self, kind: EventKind) {
        self.events
            .get_or_create(&EventLabels {
                kind: event_kind_label(kind).to_string(),
            })
            .inc();
    }
}

fn event_kind_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Discovered => "discovered",
        EventKind::CurrentChanged => "current_changed",
        EventKind::Quarantined => "quarantined",
        EventKind::Released => "released",
        EventKind::Removed => "removed",
        EventKind::Failing => "failing",
        EventKind::Recovered => "recovered",
    }
}
