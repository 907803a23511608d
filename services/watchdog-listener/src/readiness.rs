//! Readiness follows watchdogs, sans-IO: the pod condition `autocrane.io/healthy` that the
//! readiness gate of the pods the controller creates waits for, computed from the watchdog rollup.
//!
//! - rollup `error` → `False`, reason `WatchdogError`, the message names the watchdogs in error;
//! - `warning`, `info` → `True`, reason `WatchdogsHealthy`;
//! - `unknown` (no unexpired watchdog) → `True`, reason `NoWatchdogs`: many apps never post, and a
//!   pod must not stay out of its Services because nothing reported on it yet.
//!
//! Only pods whose `spec.readinessGates` name the condition get it; any other pod is left alone
//! (least surprise). `lastTransitionTime` changes only when the status flips; a new reason or
//! message keeps it. The write is a strategic-merge patch of `status.conditions`, which the API
//! server merges by `type` (see [`crate::pods::Pods::patch_condition`]), so the kubelet's own
//! conditions are never touched.

use autocrane_api::watchdog::{Health, Level, Rollup, rollup};
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{Pod, PodCondition},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;

/// The pod condition type of the readiness gate (the controller's pod builder adds the gate).
// Shared vocabulary with `services/reconciler`'s pod builder; belongs in `autocrane_api::keys`.
pub use autocrane_api::keys::HEALTHY_CONDITION;

/// Reason of `False`: at least one watchdog is in error.
pub const REASON_ERROR: &str = "WatchdogError";
/// Reason of `True` with watchdogs at `info` or `warning`.
pub const REASON_HEALTHY: &str = "WatchdogsHealthy";
/// Reason of `True` with no unexpired watchdog.
pub const REASON_NONE: &str = "NoWatchdogs";

/// How many watchdogs in error the message names; the rest are counted.
const NAMED_IN_MESSAGE: usize = 5;
/// How many characters of each watchdog's message the condition message repeats.
const QUOTED_CHARS: usize = 200;

/// Whether `pod` carries the readiness gate `autocrane.io/healthy`.
pub fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.readiness_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.condition_type == HEALTHY_CONDITION))
}

/// The pod's current `autocrane.io/healthy` condition, if any.
pub fn current(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == HEALTHY_CONDITION)
}

/// The condition the rollup calls for (status, reason, message), without times.
pub fn wanted(rollup: &Rollup) -> (bool, &'static str, String) {
    match rollup.health {
        Health::Error => {
            let failing: Vec<_> = rollup
                .watchdogs
                .iter()
                .filter(|w| w.level == Level::Error)
                .collect();
            let mut named: Vec<String> = failing
                .iter()
                .take(NAMED_IN_MESSAGE)
                .map(|w| {
                    if w.message.is_empty() {
                        w.name.clone()
                    } else {
                        format!("{} ({})", w.name, quote(&w.message))
                    }
                })
                .collect();
            if failing.len() > NAMED_IN_MESSAGE {
                named.push(format!("and {} more", failing.len() - NAMED_IN_MESSAGE));
            }
            let message = format!("watchdogs in error: {}", named.join(", "));
            (false, REASON_ERROR, message)
        }
        Health::Warning | Health::Info => (
            true,
            REASON_HEALTHY,
            format!(
                "no watchdog in error (worst level: {})",
                rollup.health.label_value()
            ),
        ),
        Health::Unknown => (
            true,
            REASON_NONE,
            "no watchdog has reported; ready until one reports error".to_string(),
        ),
    }
}

fn quote(message: &str) -> String {
    match message.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}

fn status_value(ready: bool) -> &'static str {
    if ready { "True" } else { "False" }
}

/// The condition to write to `pod` at `now`, or `None` when the pod has no gate or its condition
/// already says what the rollup of its annotations calls for. The transition time is kept unless
/// the status flips (or there was none).
pub fn plan(pod: &Pod, now: Timestamp) -> Option<PodCondition> {
    if !has_gate(pod) {
        return None;
    }
    let (ready, reason, message) = wanted(&rollup(pod.annotations(), now));
    let status = status_value(ready);
    let old = current(pod);
    if let Some(old) = old
        && old.status == status
        && old.reason.as_deref() == Some(reason)
        && old.message.as_deref() == Some(message.as_str())
    {
        return None;
    }
    let last_transition_time = match old {
        Some(old) if old.status == status && old.last_transition_time.is_some() => {
            old.last_transition_time.clone()
        }
        // `metav1.Time` holds whole seconds.
        _ => Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now))),
    };
    Some(PodCondition {
        type_: HEALTHY_CONDITION.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time,
        ..PodCondition::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodReadinessGate, PodSpec, PodStatus};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_795_000_000 + secs).unwrap()
    }

    /// A pod with the gate, or without it.
    fn pod(gated: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.spec = Some(PodSpec {
            readiness_gates: gated.then(|| {
                vec![PodReadinessGate {
                    condition_type: HEALTHY_CONDITION.into(),
                }]
            }),
            ..PodSpec::default()
        });
        pod
    }

    fn with_watchdog(mut pod: Pod, name: &str, value: &str) -> Pod {
        pod.annotations_mut()
            .insert(format!("status.autocrane.io/{name}"), value.into());
        pod
    }

    /// `pod` as the API server holds it after `condition` was written.
    fn written(mut pod: Pod, condition: PodCondition) -> Pod {
        pod.status = Some(PodStatus {
            conditions: Some(vec![condition]),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn a_gated_pod_without_watchdogs_becomes_ready() {
        let condition = plan(&pod(true), at(0)).expect("a write");
        assert_eq!(condition.status, "True");
        assert_eq!(condition.reason.as_deref(), Some(REASON_NONE));
        assert_eq!(condition.last_transition_time, Some(Time(at(0))));
    }

    #[test]
    fn a_pod_without_the_gate_is_left_alone() {
        let pod = with_watchdog(pod(false), "http", "error/2026-11-18T11:06:40Z//down");
        assert_eq!(plan(&pod, at(0)), None);
    }

    #[test]
    fn an_error_makes_it_false_naming_the_watchdogs_in_error() {
        let pod = with_watchdog(pod(true), "http", "error/2026-11-18T11:06:40Z//refused");
        let pod = with_watchdog(pod, "db", "error/2026-11-18T11:06:40Z//");
        let pod = with_watchdog(pod, "disk", "warning/2026-11-18T11:06:40Z//80%");
        let condition = plan(&pod, at(0)).unwrap();
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason.as_deref(), Some(REASON_ERROR));
        assert_eq!(
            condition.message.as_deref(),
            Some("watchdogs in error: db, http (refused)")
        );
    }

    #[test]
    fn a_warning_is_still_ready() {
        let pod = with_watchdog(pod(true), "disk", "warning/2026-11-18T11:06:40Z//80%");
        let condition = plan(&pod, at(0)).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_deref()),
            ("True", Some(REASON_HEALTHY))
        );
    }

    #[test]
    fn nothing_is_written_when_the_condition_is_in_step() {
        let pod = pod(true);
        let condition = plan(&pod, at(0)).unwrap();
        assert_eq!(plan(&written(pod, condition), at(60)), None);
    }

    #[test]
    fn the_transition_time_changes_only_on_a_flip() {
        let failing = with_watchdog(pod(true), "http", "error/2026-11-18T11:06:40Z//refused");
        let first = plan(&failing, at(0)).unwrap();

        // Another message, same status: the time stays.
        let failing = written(failing, first.clone());
        let failing = with_watchdog(failing, "http", "error/2026-11-18T11:06:50Z//timeout");
        let second = plan(&failing, at(10)).unwrap();
        assert_eq!(
            second.message.as_deref(),
            Some("watchdogs in error: http (timeout)")
        );
        assert_eq!(second.last_transition_time, first.last_transition_time);

        // Back to info: a flip, a new time.
        let healed = with_watchdog(
            written(failing, second),
            "http",
            "info/2026-11-18T11:07:00Z//ok",
        );
        let third = plan(&healed, at(20)).unwrap();
        assert_eq!(third.status, "True");
        assert_eq!(third.last_transition_time, Some(Time(at(20))));
    }

    #[test]
    fn an_expired_error_no_longer_counts() {
        let pod = with_watchdog(
            pod(true),
            "boot",
            "error/2026-11-18T11:06:40Z/2026-11-18T11:06:50Z/starting",
        );
        assert_eq!(plan(&pod, at(0)).unwrap().status, "False");
        assert_eq!(plan(&pod, at(10)).unwrap().status, "True");
    }

    #[test]
    fn a_long_list_of_failures_is_cut_short() {
        let mut failing = pod(true);
        for i in 0..8 {
            failing = with_watchdog(
                failing,
                &format!("w{i}"),
                &format!("error/2026-11-18T11:06:40Z//{}", "x".repeat(500)),
            );
        }
        let message = plan(&failing, at(0)).unwrap().message.unwrap();
        assert!(message.ends_with(", and 3 more"), "{message}");
        assert!(
            message.chars().count() < 6 * (QUOTED_CHARS + 10),
            "{message}"
        );
    }
}
