//! Status conditions and the reasons the controller uses for conditions and Events.
//!
//! Conditions are recomputed every pass from the decisions, then merged with the previous ones so
//! `lastTransitionTime` only moves when a condition's status flips (what `kubectl wait` and
//! alerting rely on). Reasons are a fixed CamelCase vocabulary, listed here in one place so tests
//! can show each one.

use autocrane_api::crd::condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::model::Timestamp;

/// Condition and Event reasons.
pub mod reason {
    /// Available=True: at least `replicas - maxUnavailable` pods are Ready and not in error.
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// Available=False: fewer than that.
    pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
    /// Progressing=True: a rollout is moving through its steps.
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    /// Progressing=True: every pod runs the target revision (also an Event).
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// Progressing=True: pods of a bad version are being replaced by stable ones.
    pub const ROLLING_BACK: &str = "RollingBack";
    /// Progressing=False: a new app version waits for a data rollout to finish.
    pub const WAITING_FOR_DATA_ROLLOUT: &str = "WaitingForDataRollout";
    /// Progressing=False: the wanted version (or template) is bad; the deployment stays put.
    pub const VERSION_QUARANTINED: &str = "VersionQuarantined";
    /// Progressing=False: there is no usable version to run at all.
    pub const NO_USABLE_VERSION: &str = "NoUsableVersion";
    /// RolledBack=True: a new-revision pod stayed in error past the failing threshold.
    pub const NEW_PODS_FAILING: &str = "NewPodsFailing";
    /// RolledBack=True: the rollout missed its progress deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// RolledBack=False: no rollout has been rolled back since the last one completed.
    pub const NO_ROLLBACK: &str = "NoRollback";
    /// Degraded=True: a failing pod used up its restarts in the window; nothing more is restarted.
    pub const RESTART_LIMIT_EXCEEDED: &str = "RestartLimitExceeded";
    /// Degraded=True: pods are failing and restarts are disabled (`maxConcurrentRestarts: 0`).
    pub const RESTARTS_DISABLED: &str = "RestartsDisabled";
    /// Degraded=False.
    pub const WITHIN_FAILING_LIMIT: &str = "WithinFailingLimit";
    /// Progressing=False (and a Warning Event): a spec field breaks a rule; nothing is planned
    /// until the spec is fixed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Progressing=False (and a Warning Event): the API server rejected a pod built from
    /// `spec.template`.
    pub const TEMPLATE_REJECTED: &str = "TemplateRejected";
    /// Progressing=False (and a Warning Event): a VersionWatcher or DataRepository the deployment
    /// needs is not configured or not reachable; its pods keep running as they are.
    pub const UPSTREAM_UNAVAILABLE: &str = "UpstreamUnavailable";

    /// Event: a rollout started.
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    /// Event: a rollout moved to its next step.
    pub const ROLLOUT_STEP_ADVANCED: &str = "RolloutStepAdvanced";
    /// Event: an unfinished rollout gave way to a newer version.
    pub const ROLLOUT_SUPERSEDED: &str = "RolloutSuperseded";
    /// Event (Warning): a rollout was rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Event (Warning): a failing pod was restarted.
    pub const POD_RESTARTED: &str = "PodRestarted";
    /// Event: the first data version of a source goes to every pod.
    pub const DATA_ROLLOUT_STARTED: &str = "DataRolloutStarted";
    /// Event: a data version went to its canaries.
    pub const DATA_CANARY_STARTED: &str = "DataCanaryStarted";
    /// Event: a data version passed its canaries and goes to every pod.
    pub const DATA_PROMOTED: &str = "DataPromoted";
    /// Event: a data version became last-known-good.
    pub const DATA_LAST_KNOWN_GOOD: &str = "DataLastKnownGood";
    /// Event (Warning): a data version failed and pods return to last-known-good.
    pub const DATA_VERSION_FAILED: &str = "DataVersionFailed";
    /// Event (Warning): a pod did not report a data version within the data progress deadline;
    /// pods return to last-known-good.
    pub const DATA_PROGRESS_DEADLINE_EXCEEDED: &str = "DataProgressDeadlineExceeded";
}

/// One condition as decided in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// One of [`condition`]'s types.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// One of [`reason`].
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Decided {
    /// A condition.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The four conditions in a fixed order, keeping each one's `lastTransitionTime` from `old` when
/// its status did not change.
pub fn merge(
    old: &[Condition],
    decided: [Decided; 4],
    now: Timestamp,
    generation: Option<i64>,
) -> Vec<Condition> {
    decided
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_string();
            let since = old
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.to_string(),
                message: d.message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// The conditions of a pass that could not plan (see [`crate::plan::failed`]): `Progressing`
/// becomes False with `reason`, the others stay as last written (they were observed then and
/// nothing has been decided since); transition times are kept where the status did not flip.
pub fn failed(
    old: &[Condition],
    reason: &'static str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> Vec<Condition> {
    let progressing = Decided::new(condition::PROGRESSING, false, reason, message);
    let mut out: Vec<Condition> = old
        .iter()
        .filter(|c| c.type_ != condition::PROGRESSING)
        .cloned()
        .collect();
    let position = old
        .iter()
        .position(|c| c.type_ == condition::PROGRESSING)
        .unwrap_or(out.len().min(1));
    let merged = Condition {
        type_: progressing.type_.to_string(),
        status: "False".into(),
        reason: progressing.reason.to_string(),
        message: progressing.message,
        last_transition_time: old
            .iter()
            .find(|c| c.type_ == condition::PROGRESSING && c.status == "False")
            .map_or(Time(now), |c| c.last_transition_time.clone()),
        observed_generation: generation,
    };
    out.insert(position.min(out.len()), merged);
    out
}

/// The RolledBack condition: set by a rollback, kept until a later rollout completes.
pub fn rolled_back(
    old: &[Condition],
    rollback: Option<(&'static str, String)>,
    completed: bool,
) -> Decided {
    if let Some((why, message)) = rollback {
        return Decided::new(condition::ROLLED_BACK, true, why, message);
    }
    let previous = old
        .iter()
        .find(|c| c.type_ == condition::ROLLED_BACK && c.status == "True");
    match previous {
        Some(c) if !completed => {
            let why = [reason::NEW_PODS_FAILING, reason::PROGRESS_DEADLINE_EXCEEDED]
                .into_iter()
                .find(|r| *r == c.reason)
                .unwrap_or(reason::NEW_PODS_FAILING);
            Decided::new(condition::ROLLED_BACK, true, why, c.message.clone())
        }
        _ => Decided::new(
            condition::ROLLED_BACK,
            false,
            reason::NO_ROLLBACK,
            "no rollout has been rolled back",
        ),
    }
}
