//! Step 7: status, phase and conditions follow from the decisions of the pass.

use autocrane_api::crd::{AutoCraneDeploymentStatus, Phase, condition};
use autocrane_api::keys::DEPLOYMENT_LABEL;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Pass;
use crate::conditions::{self, Decided, reason};
use crate::model::{Event, PodView};
use crate::revision::{BadSet, Target};

impl Pass<'_> {
    /// Step 7: revisions and counts, the four conditions (transition times kept), the phase,
    /// and a Warning Event when the deployment becomes Degraded.
    pub(super) fn status(&mut self) {
        if let Some(d) = &self.decision {
            self.status.current_revision = Some(d.stable.0.clone());
            self.status.current_version = d.stable.1.clone();
            self.status.target_revision = Some(d.target.0.clone());
            self.status.target_version = d.target.1.clone();
            self.status.rollout_step = d.step.map(|s| i32::try_from(s).unwrap_or(i32::MAX));
            self.status.step_started_at = d.step_started_at.map(Time);
        }
        fill_status(
            &mut self.status,
            self.generation,
            self.name,
            self.pods,
            &self.bad,
        );
        let rolling_back = self
            .pods
            .iter()
            .any(|p| !p.deleting && self.bad.contains(&p.revision, p.version.as_deref()));
        let progressing = self.progressing(rolling_back);
        let available = self.pods.iter().filter(|p| p.available()).count();
        let message = format!("{available} of {} pods available", self.budget.replicas);
        let avail = if available >= self.budget.min_available() {
            Decided::new(
                condition::AVAILABLE,
                true,
                reason::MINIMUM_REPLICAS_AVAILABLE,
                message,
            )
        } else {
            Decided::new(
                condition::AVAILABLE,
                false,
                reason::MINIMUM_REPLICAS_UNAVAILABLE,
                message,
            )
        };
        let degraded = match &self.restarts.degraded {
            Some((why, message)) => Decided::new(condition::DEGRADED, true, why, message.clone()),
            None => Decided::new(
                condition::DEGRADED,
                false,
                reason::WITHIN_FAILING_LIMIT,
                "failing pods are within the failing limit",
            ),
        };
        let was_degraded = self
            .old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::DEGRADED && c.status == "True");
        if degraded.status && !was_degraded {
            self.events
                .push(Event::warning(degraded.reason, degraded.message.clone()));
        }
        let completed = self.decision.as_ref().is_some_and(|d| {
            d.events
                .iter()
                .any(|e| e.reason == reason::ROLLOUT_COMPLETE)
        });
        let rolled_back =
            conditions::rolled_back(&self.old.conditions, self.rollback.take(), completed);
        self.status.phase = Some(if rolling_back {
            Phase::RollingBack
        } else if degraded.status {
            Phase::Degraded
        } else if self.app_busy() {
            Phase::Progressing
        } else if self.budget.replicas > 0 && self.status.ready_replicas == 0 {
            Phase::Pending
        } else {
            Phase::Available
        });
        self.status.conditions = conditions::merge(
            &self.old.conditions,
            [avail, progressing, degraded, rolled_back],
            self.now,
            self.generation,
        );
    }

    /// The Progressing condition: rolling back, held for data, stepping, refused, or done.
    fn progressing(&self, rolling_back: bool) -> Decided {
        match (&self.decision, &self.target) {
            _ if rolling_back => Decided::new(
                condition::PROGRESSING,
                true,
                reason::ROLLING_BACK,
                "replacing pods of a bad version",
            ),
            (Some(d), _) if d.held_for_data => Decided::new(
                condition::PROGRESSING,
                false,
                reason::WAITING_FOR_DATA_ROLLOUT,
                "a new revision waits for a data rollout to finish",
            ),
            (Some(d), _) if d.target.0 != d.stable.0 => Decided::new(
                condition::PROGRESSING,
                true,
                reason::ROLLOUT_IN_PROGRESS,
                format!(
                    "step {} of {}",
                    d.step.unwrap_or(0) + 1,
                    self.spec.rollout.steps.len()
                ),
            ),
            (
                _,
                Some(Target {
                    refused: Some(refused),
                    ..
                }),
            ) => Decided::new(
                condition::PROGRESSING,
                false,
                reason::VERSION_QUARANTINED,
                format!("{refused} is bad; staying on the current revision"),
            ),
            (None, _) => Decided::new(
                condition::PROGRESSING,
                false,
                reason::NO_USABLE_VERSION,
                "no app version that is not quarantined",
            ),
            _ => Decided::new(
                condition::PROGRESSING,
                true,
                reason::ROLLOUT_COMPLETE,
                "every pod runs the target revision",
            ),
        }
    }
}

/// Counts of the pods present (not being deleted, not finished), the selector, and the observed
/// generation. Pods of a bad version never count as updated, even on the target revision.
fn fill_status(
    status: &mut AutoCraneDeploymentStatus,
    generation: Option<i64>,
    name: &str,
    pods: &[PodView],
    bad: &BadSet,
) {
    let present: Vec<&PodView> = pods
        .iter()
        .filter(|p| !p.deleting && !p.finished())
        .collect();
    let count = |f: &dyn Fn(&PodView) -> bool| {
        i32::try_from(present.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    status.observed_generation = generation;
    status.replicas = count(&|_| true);
    status.ready_replicas = count(&|p| p.ready_since.is_some());
    status.healthy_replicas = count(&|p| p.available());
    let target = status.target_revision.clone();
    status.updated_replicas = count(&|p| {
        Some(&p.revision) == target.as_ref() && !bad.contains(&p.revision, p.version.as_deref())
    });
    status.selector = Some(format!("{DEPLOYMENT_LABEL}={name}"));
}
