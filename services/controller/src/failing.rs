//! The failing limit: which long-failing stable pods to restart, and when to stop restarting.
//!
//! The original evicted any pod labelled `health=error` on its fourth consecutive 60 s sighting,
//! with no cap, from an in-memory history (weaknesses W7, W2). Here the threshold is time-based
//! (from the rollup's own transition time), restarts are capped per deployment (concurrency) and
//! per pod slot (count in a window), the history lives in `status.restarts` so a new leader sees
//! it, and past the cap the deployment is Degraded and nothing more is killed: restarting does not
//! fix a systemic failure, and killing more would only lose capacity.
//!
//! Only pods of the stable revision are restarted, their error counted from their latest data
//! switch when that came later (see [`PodView::error_since_for_restart`]). A failing pod of a
//! revision being rolled out is the rollout's business (it triggers a rollback, not a restart),
//! and pods of a revision being rolled back are deleted by the rollback — so no failure is
//! counted twice.

use std::collections::BTreeSet;
use std::time::Duration as StdDuration;

use autocrane_api::crd::{FailingLimit, RestartRecord};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::reason;
use crate::model::{Event, Health, PodView, Timestamp, Wakeup, after, elapsed};

/// A pod created within this much before a restart record still counts as its replacement:
/// `creationTimestamp` has whole seconds, the record's time may not.
const CLOCK_GRAIN: StdDuration = StdDuration::from_secs(1);

/// What the failing limit decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailingDecision {
    /// Pods to delete now (their slot is recreated by the rollout's convergence).
    pub restart: Vec<String>,
    /// `status.restarts`: pruned to the window, plus this pass's restarts.
    pub records: Vec<RestartRecord>,
    /// Degraded reason and message, when a failing pod may not be restarted.
    pub degraded: Option<(&'static str, String)>,
    /// Events.
    pub events: Vec<Event>,
}

/// Decides restarts among `live` pods (not being deleted) of the `stable` revision.
/// `all` is every pod of the deployment, including ones being deleted, to follow restarts in flight;
/// pods named in `gone` are being deleted by this pass.
#[allow(clippy::too_many_arguments)] // each input is a distinct piece of observed state
pub fn decide(
    limit: &FailingLimit,
    stable: &str,
    live: &[&PodView],
    all: &[PodView],
    gone: &BTreeSet<String>,
    records: &[RestartRecord],
    now: Timestamp,
    wake: &mut Wakeup,
) -> FailingDecision {
    let window = limit.window.as_std();
    let threshold = limit.error_threshold.as_std();
    let mut records: Vec<RestartRecord> = records
        .iter()
        .filter(|r| elapsed(now, r.at.0) < window)
        .cloned()
        .collect();
    for record in &records {
        wake.at(after(record.at.0, window));
    }
    let max_concurrent = usize::try_from(limit.max_concurrent_restarts.max(0)).unwrap_or(0);
    let per_pod = usize::try_from(limit.max_restarts_per_pod.max(0)).unwrap_or(0);

    let mut failing: Vec<&PodView> = Vec::new();
    for pod in live.iter().filter(|p| p.revision == stable) {
        let Some(since) = pod.error_since_for_restart() else {
            continue;
        };
        if elapsed(now, since) >= threshold {
            failing.push(pod);
        } else {
            wake.at(after(since, threshold));
        }
    }
    failing.sort_by(|a, b| {
        a.health_since
            .cmp(&b.health_since)
            .then(a.name.cmp(&b.name))
    });
    let mut decision = FailingDecision::default();
    if failing.is_empty() {
        decision.records = records;
        return decision;
    }
    if max_concurrent == 0 {
        decision.degraded = Some((
            reason::RESTARTS_DISABLED,
            format!(
                "{} pod(s) failing and failingLimit.maxConcurrentRestarts is 0",
                failing.len()
            ),
        ));
        decision.records = records;
        return decision;
    }
    let used =
        |records: &[RestartRecord], slot: &str| records.iter().filter(|r| r.pod == slot).count();
    if let Some(pod) = failing.iter().find(|p| used(&records, &p.slot) >= per_pod) {
        decision.degraded = Some((
            reason::RESTART_LIMIT_EXCEEDED,
            format!(
                "pod {} was restarted {} times within {}; no more pods are restarted until the window passes",
                pod.name,
                used(&records, &pod.slot),
                limit.window
            ),
        ));
        decision.records = records;
        return decision;
    }
    // Concurrency counts pod slots: restarting a pod whose slot is still in flight takes nothing
    // more down. Whatever the slots, one pass never deletes more pods than the limit.
    let mut down: BTreeSet<String> = in_flight_slots(&records, all, gone)
        .into_iter()
        .map(str::to_string)
        .collect();
    for pod in failing {
        if decision.restart.len() >= max_concurrent {
            break;
        }
        if !down.contains(&pod.slot) {
            if down.len() >= max_concurrent {
                continue;
            }
            down.insert(pod.slot.clone());
        }
        let count = used(&records, &pod.slot) + 1;
        decision.restart.push(pod.name.clone());
        decision.events.push(Event::warning(
            reason::POD_RESTARTED,
            format!(
                "restarting pod {}: in error since {} ({} of {} restarts in {})",
                pod.name, pod.health_since, count, per_pod, limit.window
            ),
        ));
        records.push(RestartRecord {
            pod: pod.slot.clone(),
            at: Time(now),
        });
        wake.at(after(now, window));
    }
    decision.records = records;
    decision
}

/// Pod slots with a restart in flight (a slot restarted twice in quick succession is one pod
/// down, not two).
pub fn in_flight(records: &[RestartRecord], all: &[PodView]) -> usize {
    in_flight_slots(records, all, &BTreeSet::new()).len()
}

fn in_flight_slots<'a>(
    records: &'a [RestartRecord],
    all: &[PodView],
    gone: &BTreeSet<String>,
) -> BTreeSet<&'a str> {
    records
        .iter()
        .filter(|r| restart_in_flight(r, all, gone))
        .map(|r| r.pod.as_str())
        .collect()
}

/// A restart is in flight while its replacement (a pod in the slot created after it) is starting
/// (not yet Ready, and not reporting errors), or while no replacement exists yet and the restarted
/// pod is terminating. A slot left empty (scaled down), or whose replacement is itself going away,
/// holds nothing. A replacement in error has started: a Ready pod that goes unready while it
/// fails looks like one still starting, and if such pods held their slots in flight, several slots
/// could seem down at once and their failing pods be restarted together beyond the limit (found by
/// the property test). Whether a failing replacement is restarted again is the limit's own call.
fn restart_in_flight(record: &RestartRecord, all: &[PodView], gone: &BTreeSet<String>) -> bool {
    let mut replacements = 0;
    let mut starting = 0;
    let mut originals = 0;
    for pod in all.iter().filter(|p| p.slot == record.pod) {
        let deleting = pod.deleting || gone.contains(&pod.name);
        if after(pod.created_at, CLOCK_GRAIN) > record.at.0 {
            replacements += 1;
            if !deleting {
                if pod.ready_since.is_some() || pod.health == Health::Error {
                    return false;
                }
                starting += 1;
            }
        } else {
            originals += 1;
        }
    }
    if replacements == 0 {
        originals > 0
    } else {
        starting > 0
    }
}
