//! Steps 1, 2, 4 and 5: finished pods, rollback, the app rollout's convergence and restarts.

use std::collections::BTreeSet;

use autocrane_api::crd::BadVersion;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Pass, stable_of, without};
use crate::conditions::reason;
use crate::data_oracle::{self, SourceDecision};
use crate::failing::{self, FailingDecision};
use crate::model::{Action, DeleteReason, Event, PlanError, PodView, Reaction, ReactionKind};
use crate::revision::{self, BAD_REVISION_PREFIX, BadSet, Target};
use crate::rollout::{self, RolloutDecision};

impl Pass<'_> {
    /// Step 1: finished pods only need deleting; the target skips bad versions.
    pub(super) fn finish(&mut self) -> Result<(), PlanError> {
        for pod in self.pods.iter().filter(|p| !p.deleting && p.finished()) {
            self.actions.push(Action::DeletePod {
                name: pod.name.clone(),
                reason: DeleteReason::Finished,
            });
        }
        self.live = self
            .pods
            .iter()
            .filter(|p| !p.deleting && !p.finished())
            .collect();
        self.bad = BadSet::new(&self.old, self.app_versions);
        self.target = self.choose(&self.old)?;
        self.stable = stable_of(&self.old, &self.live, self.target.as_ref());
        Ok(())
    }

    /// Step 2: an unfinished rollout whose new pods fail, or that missed its deadline, is rolled
    /// back: the version (or, for a template change, the revision) is marked bad and quarantined,
    /// and the target is chosen again.
    pub(super) fn rollback(&mut self) -> Result<(), PlanError> {
        if let (Some(t), Some(stable)) = (&self.target, &self.stable)
            && let Some(rb) = rollout::check_rollback(
                self.spec,
                &self.old,
                t,
                &self.live,
                self.now,
                &mut self.wake,
            )
        {
            let marker = match &t.version {
                Some(v) if Some(v) != stable.1.as_ref() => v.clone(),
                _ => format!("{BAD_REVISION_PREFIX}{}", t.revision),
            };
            // Only a version that came from the VersionWatcher is quarantined there; a pinned
            // one has no source to tell (the status's bad list keeps it from being retried).
            let from_source = self
                .spec
                .version
                .as_ref()
                .is_some_and(|v| v.source.is_some());
            if from_source && !marker.starts_with(BAD_REVISION_PREFIX) {
                self.actions.push(Action::QuarantineAppVersion {
                    version: marker.clone(),
                    reason: rb.message.clone(),
                });
            }
            self.events.push(Event::warning(
                reason::ROLLED_BACK,
                format!("rolled back {marker}: {}", rb.message),
            ));
            if let Some(since) = rb.error_since {
                self.reactions.push(Reaction {
                    kind: ReactionKind::ErrorToRollback,
                    since,
                    at: self.now,
                });
            }
            self.status.bad_versions.push(BadVersion {
                version: marker,
                reason: rb.message.clone(),
                at: Time(self.now),
            });
            self.bad = BadSet::new(&self.status, self.app_versions);
            self.target = self.choose(&self.status.clone())?;
            self.rollout_status.target_revision = None;
            self.rollback = Some((rb.reason, rb.message));
        }
        // Without a target the deployment stays on its stable revision as it is.
        self.stable_target = self.stable.clone().map(|stable| {
            let target = self.target.clone().unwrap_or_else(|| Target {
                revision: stable.0.clone(),
                version: stable.1.clone(),
                refused: None,
            });
            (stable, target)
        });
        Ok(())
    }

    fn choose(
        &self,
        status: &autocrane_api::crd::AutoCraneDeploymentStatus,
    ) -> Result<Option<Target>, PlanError> {
        revision::choose(
            &self.spec.template,
            self.spec.version.as_ref(),
            self.app_versions,
            &self.bad,
            status,
        )
    }

    /// Steps 4 and 5 decided together: the app rollout and convergence, then the failing limit on
    /// the stable pods that convergence keeps. A pod that convergence removes anyway (a failing
    /// pod beyond a scale-down) is not also restarted, and a restarted pod is replaced in its own
    /// slot in this same pass, so the pod counts convergence decided on hold either way.
    ///
    /// Deletions and restarts can complete a data rollout (the last pod that had not baked goes),
    /// and a data rollout that completes releases a held app rollout: that is decided again, once
    /// (nothing is held then), so the next pass finds nothing left to do.
    pub(super) fn converge(&mut self) {
        let before = self.sources.clone();
        let mut attempt = self.attempt(busy(&self.sources));
        if attempt.released {
            // Decided again from the data rollouts as they were: the second attempt keeps other
            // pods, and a data rollout may only be complete over the pods that stay. If over
            // those it is not (the pods that had baked it are the ones the app rollout now
            // replaces), the first attempt stands: its deletions complete the data rollout, and
            // the app rollout starts on the next pass.
            let held = std::mem::replace(&mut self.sources, before);
            let unheld = self.attempt(false);
            if busy(&self.sources) {
                self.sources = held;
            } else {
                attempt = unheld;
            }
        }
        let Attempt {
            decision,
            restarts,
            gone,
            released: _,
        } = attempt;
        self.live = without(&self.live, &gone);
        if let Some(decision) = &decision {
            for (pod, why) in decision.deletes.iter().cloned() {
                self.actions.push(Action::DeletePod {
                    name: pod,
                    reason: why,
                });
            }
            self.creates = decision.creates.clone();
            self.events.extend(decision.events.iter().cloned());
        }
        self.decision = decision;
        self.restarts = restarts;
    }

    /// Steps 4 and 5 once, the app rollout held for data or not, moving the data rollouts over
    /// the pods that stay. Stops early (`released`) when the deletions or restarts complete the
    /// data rollout that held a new app rollout.
    fn attempt(&mut self, hold: bool) -> Attempt {
        let decision = self.decide_rollout(hold);
        let mut gone: BTreeSet<String> = decision
            .iter()
            .flat_map(|d| d.deletes.iter().map(|(n, _)| n.clone()))
            .collect();
        self.readvance(&gone);
        let released = |sources: &[SourceDecision]| {
            decision.as_ref().is_some_and(|d| d.held_for_data) && !busy(sources)
        };
        let mut restarts = FailingDecision::default();
        if !released(&self.sources) {
            restarts = self.choose_restarts(&gone);
            gone.extend(restarts.restart.iter().cloned());
            if !restarts.restart.is_empty() {
                self.readvance(&gone);
            }
        }
        Attempt {
            released: released(&self.sources),
            decision,
            restarts,
            gone,
        }
    }

    /// Step 5: restarted pods are deleted and each is replaced (in its slot, by
    /// [`Pass::create_pods`]) as a pod of the stable revision; the restart history is kept.
    pub(super) fn restart(&mut self) {
        for pod in &self.restarts.restart {
            self.actions.push(Action::DeletePod {
                name: pod.clone(),
                reason: DeleteReason::Restart,
            });
        }
        let count = self.restarts.restart.len();
        if let Some((stable, _)) = &self.stable_target
            && !self.restarts.restart.is_empty()
        {
            match self.creates.iter_mut().find(|c| c.0 == stable.0) {
                Some(entry) => entry.2 += count,
                None => self
                    .creates
                    .insert(0, (stable.0.clone(), stable.1.clone(), count)),
            }
        }
        self.events.extend(self.restarts.events.iter().cloned());
        self.status.restarts = self.restarts.records.clone();
    }

    fn decide_rollout(&mut self, hold: bool) -> Option<RolloutDecision> {
        let (stable, target) = self.stable_target.as_ref()?;
        Some(rollout::decide(
            self.spec,
            &self.rollout_status,
            stable.clone(),
            target,
            &self.live,
            self.budget,
            hold,
            self.now,
            &mut self.wake,
        ))
    }

    /// The failing limit over the stable pods that stay after `gone`.
    fn choose_restarts(&mut self, gone: &BTreeSet<String>) -> FailingDecision {
        let stable: &str = self
            .stable_target
            .as_ref()
            .map_or("", |((revision, _), _)| revision.as_str());
        failing::decide(
            &self.spec.failing_limit,
            stable,
            &without(&self.live, gone),
            self.pods,
            gone,
            &self.old.restarts,
            self.now,
            &mut self.wake,
        )
    }

    /// Moves the data rollouts again over the pods that stay after `gone`.
    fn readvance(&mut self, gone: &BTreeSet<String>) {
        let pods: Vec<&PodView> = without(&self.live, gone);
        for d in &mut self.sources {
            let again = data_oracle::advance(
                &self.spec.data_rollout,
                &d.status,
                &pods,
                self.now,
                &mut self.wake,
            );
            d.status = again.status;
            d.events.extend(again.events);
            d.quarantine = d.quarantine.take().or(again.quarantine);
        }
    }
}

/// A data rollout is in progress (a canary or a promoted version not yet LKG).
pub(super) fn busy(sources: &[SourceDecision]) -> bool {
    use autocrane_api::crd::DataStage;
    sources.iter().any(|d| {
        matches!(
            d.status.stage,
            Some(DataStage::Canary | DataStage::Promoted)
        )
    })
}

/// One attempt at steps 4 and 5 (see [`Pass::converge`]).
#[derive(Debug)]
struct Attempt {
    /// The app rollout's decision (`None` without a stable revision).
    decision: Option<RolloutDecision>,
    /// The failing limit's decision (none when `released`).
    restarts: FailingDecision,
    /// Pods this attempt deletes or restarts.
    gone: BTreeSet<String>,
    /// The app rollout was held for a data rollout that this attempt completed.
    released: bool,
}
