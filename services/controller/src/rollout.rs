//! App rollout: steps, surge/unavailability budget, progress deadline, rollback triggers.
//!
//! The rollout is recomputed from the pods every pass (like a Deployment controller, not a
//! workflow engine), so a restarted controller continues where the last one stopped. Status keeps
//! only what pods cannot tell: which revision is stable, the step index and when it started.
//! Pod counts move within `maxSurge`/`maxUnavailable` in both directions, so rolling back a bad
//! version and superseding an unfinished rollout are the same safe convergence as rolling forward.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration as StdDuration;

use autocrane_api::crd::{AutoCraneDeploymentSpec, AutoCraneDeploymentStatus, RolloutStep};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::conditions::reason;
use crate::model::{DeleteReason, Event, Health, PlanError, PodView, Timestamp, Wakeup, after};
use crate::revision::Target;

/// How many pods a rollout may add above `replicas` and take below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// `spec.replicas`.
    pub replicas: usize,
    /// Extra pods allowed (`maxSurge`, rounded up).
    pub surge: usize,
    /// Pods allowed to be unavailable (`maxUnavailable`, rounded down).
    pub max_unavailable: usize,
}

impl Budget {
    /// Resolves `maxSurge`/`maxUnavailable` against `replicas`. Both zero would deadlock a rollout,
    /// so surge becomes 1 then (as Deployments do).
    pub fn from_spec(spec: &AutoCraneDeploymentSpec) -> Result<Self, PlanError> {
        let replicas = usize::try_from(spec.replicas.max(0)).unwrap_or(0);
        let surge = resolve(
            &spec.rollout.max_surge,
            replicas,
            true,
            "spec.rollout.maxSurge",
        )?;
        let max_unavailable = resolve(
            &spec.rollout.max_unavailable,
            replicas,
            false,
            "spec.rollout.maxUnavailable",
        )?;
        let surge = if surge == 0 && max_unavailable == 0 {
            1
        } else {
            surge
        };
        Ok(Self {
            replicas,
            surge,
            max_unavailable,
        })
    }

    /// The fewest available pods the controller's own deletions may leave.
    pub fn min_available(&self) -> usize {
        self.replicas.saturating_sub(self.max_unavailable)
    }
}

fn resolve(
    value: &IntOrString,
    total: usize,
    round_up: bool,
    field: &'static str,
) -> Result<usize, PlanError> {
    match value {
        IntOrString::Int(n) => Ok(usize::try_from(*n).unwrap_or(0)),
        IntOrString::String(text) => {
            let percent: usize = text
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| PlanError::InvalidSpec {
                    field,
                    rule: format!("{text:?} is not an integer or a percentage such as \"25%\""),
                })?;
            let scaled = total * percent;
            Ok(if round_up {
                scaled.div_ceil(100)
            } else {
                scaled / 100
            })
        }
    }
}

/// Pods of `percent` of `replicas`, at least one while any pod is wanted.
pub fn step_count(percent: i32, replicas: usize) -> usize {
    let percent = usize::try_from(percent.clamp(0, 100)).unwrap_or(100);
    (replicas * percent)
        .div_ceil(100)
        .clamp(usize::from(replicas > 0), replicas)
}

/// Pods of a revision: `(revision, app version, count)`.
pub type Wanted = (String, Option<String>, usize);

/// Why a rollout is being rolled back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    /// [`reason::NEW_PODS_FAILING`] or [`reason::PROGRESS_DEADLINE_EXCEEDED`].
    pub reason: &'static str,
    /// For people.
    pub message: String,
    /// Since when the failing pod that triggered it has been in `error` (none for a missed
    /// deadline): the start of the error → rollback reaction time.
    pub error_since: Option<Timestamp>,
}

/// Whether the rollout of `target` that is in progress must be rolled back.
pub fn check_rollback(
    spec: &AutoCraneDeploymentSpec,
    status: &AutoCraneDeploymentStatus,
    target: &Target,
    live: &[&PodView],
    now: Timestamp,
    wake: &mut Wakeup,
) -> Option<Rollback> {
    let in_progress = status.target_revision.as_deref() == Some(target.revision.as_str())
        && status.current_revision.as_deref() != Some(target.revision.as_str());
    if !in_progress {
        return None;
    }
    let threshold = spec.failing_limit.error_threshold.as_std();
    let name = target
        .version
        .clone()
        .unwrap_or_else(|| target.revision.clone());
    let new_pods = live.iter().filter(|p| p.revision == target.revision);
    for pod in new_pods.clone() {
        if pod.failing_for(threshold, now) {
            return Some(Rollback {
                reason: reason::NEW_PODS_FAILING,
                message: format!(
                    "pod {} of {name} has been in error for {}s or more",
                    pod.name,
                    threshold.as_secs()
                ),
                error_since: Some(pod.health_since),
            });
        }
        if pod.health == Health::Error {
            wake.at(after(pod.health_since, threshold));
        }
    }
    let started = status.step_started_at.as_ref().map(|t| t.0)?;
    let deadline = after(started, spec.rollout.progress_deadline.as_std());
    let step = step_index(status, spec);
    let wanted = step_count(
        spec.rollout.steps[step].percent,
        usize::try_from(spec.replicas.max(0)).unwrap_or(0),
    );
    let ready = new_pods.clone().filter(|p| p.available()).count() >= wanted;
    if !ready && now >= deadline {
        return Some(Rollback {
            reason: reason::PROGRESS_DEADLINE_EXCEEDED,
            message: format!(
                "{name} made no progress for {}",
                spec.rollout.progress_deadline
            ),
            error_since: None,
        });
    }
    if !ready {
        wake.at(deadline);
    }
    None
}

fn step_index(status: &AutoCraneDeploymentStatus, spec: &AutoCraneDeploymentSpec) -> usize {
    let last = spec.rollout.steps.len().saturating_sub(1);
    usize::try_from(status.rollout_step.unwrap_or(0))
        .unwrap_or(0)
        .min(last)
}

/// The rollout part of the new status and the pod counts each revision should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutDecision {
    /// Stable revision and version after this pass.
    pub stable: (String, Option<String>),
    /// Revision and version being rolled out (equal to `stable` when none is).
    pub target: (String, Option<String>),
    /// The step in progress, when rolling out.
    pub step: Option<usize>,
    /// When that step started.
    pub step_started_at: Option<Timestamp>,
    /// Wanted pods per revision, most important first (creation order).
    pub desired: Vec<(String, Option<String>, usize)>,
    /// A new rollout waits for a data rollout to finish.
    pub held_for_data: bool,
    /// Pods to create: `(revision, version, count)`.
    pub creates: Vec<(String, Option<String>, usize)>,
    /// Pods to delete.
    pub deletes: Vec<(String, DeleteReason)>,
    /// Events.
    pub events: Vec<Event>,
}

/// Moves the rollout of `target` along as far as the pods allow.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    spec: &AutoCraneDeploymentSpec,
    status: &AutoCraneDeploymentStatus,
    stable: (String, Option<String>),
    target: &Target,
    live: &[&PodView],
    budget: Budget,
    data_busy: bool,
    now: Timestamp,
    wake: &mut Wakeup,
) -> RolloutDecision {
    let replicas = usize::try_from(spec.replicas.max(0)).unwrap_or(0);
    let target_pair = (target.revision.clone(), target.version.clone());
    let mut events = Vec::new();
    let steady = |stable: (String, Option<String>), events, held_for_data| {
        let desired = vec![(stable.0.clone(), stable.1.clone(), replicas)];
        let (creates, deletes) = converge(live, &desired, budget);
        RolloutDecision {
            desired,
            target: stable.clone(),
            stable,
            step: None,
            step_started_at: None,
            held_for_data,
            creates,
            deletes,
            events,
        }
    };
    if target.revision == stable.0 {
        return steady(stable, events, false);
    }
    let label = |pair: &(String, Option<String>)| {
        pair.1
            .clone()
            .unwrap_or_else(|| format!("revision {}", pair.0))
    };
    let continuing = status.target_revision.as_deref() == Some(target.revision.as_str());
    let (first, mut started) = if continuing {
        (
            step_index(status, spec),
            status.step_started_at.as_ref().map_or(now, |t| t.0),
        )
    } else {
        if data_busy && spec.data_rollout.exclusive_with_app_rollout {
            return steady(stable, events, true);
        }
        if let Some(old) = status.target_revision.as_ref().filter(|r| **r != stable.0) {
            events.push(Event::normal(
                reason::ROLLOUT_SUPERSEDED,
                format!(
                    "rollout of revision {old} superseded by {}",
                    label(&target_pair)
                ),
            ));
        }
        events.push(Event::normal(
            reason::ROLLOUT_STARTED,
            format!(
                "rolling out {} over {}",
                label(&target_pair),
                label(&stable)
            ),
        ));
        (0, now)
    };
    let steps = &spec.rollout.steps;
    // From the step in progress on, each step this pass completes starts the next one now.
    let mut rest = steps.iter().enumerate().skip(first).peekable();
    while let Some((step, RolloutStep { percent, bake })) = rest.next() {
        let wanted = step_count(*percent, replicas);
        let desired = vec![
            (target.revision.clone(), target.version.clone(), wanted),
            (stable.0.clone(), stable.1.clone(), replicas - wanted),
        ];
        // Judge the step on the pods as they will be after this pass's deletions, so a step
        // that these deletions complete advances now rather than on the next pass.
        let (creates, deletes) = converge(live, &desired, budget);
        let gone: BTreeSet<&str> = deletes.iter().map(|(n, _)| n.as_str()).collect();
        let remaining: Vec<&PodView> = live
            .iter()
            .copied()
            .filter(|p| !gone.contains(p.name.as_str()))
            .collect();
        if !step_done(
            &remaining,
            &target.revision,
            &stable.0,
            wanted,
            replicas,
            bake.as_std(),
            now,
            wake,
        ) {
            return RolloutDecision {
                desired,
                stable,
                target: target_pair,
                step: Some(step),
                step_started_at: Some(started),
                held_for_data: false,
                creates,
                deletes,
                events,
            };
        }
        if let Some((_, next)) = rest.peek() {
            started = now;
            events.push(Event::normal(
                reason::ROLLOUT_STEP_ADVANCED,
                format!(
                    "{}: step {} of {} ({}%)",
                    label(&target_pair),
                    step + 2,
                    steps.len(),
                    next.percent
                ),
            ));
        }
    }
    events.push(Event::normal(
        reason::ROLLOUT_COMPLETE,
        format!("{} runs on all {replicas} pods", label(&target_pair)),
    ));
    steady(target_pair, events, false)
}

/// A step is done when exactly its share of pods runs the new revision, the rest the stable one,
/// and every new pod has been available for the bake time.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_done(
    live: &[&PodView],
    target: &str,
    stable: &str,
    wanted: usize,
    replicas: usize,
    bake: StdDuration,
    now: Timestamp,
    wake: &mut Wakeup,
) -> bool {
    let mut new = 0;
    let mut old = 0;
    let mut baked = true;
    for pod in live {
        if pod.revision == target {
            new += 1;
            match pod.good_since() {
                Some(since) if after(since, bake) <= now => {}
                Some(since) => {
                    wake.at(after(since, bake));
                    baked = false;
                }
                None => baked = false,
            }
        } else if pod.revision == stable {
            old += 1;
        } else {
            return false;
        }
    }
    baked && new >= wanted && old <= replicas - wanted
}

/// Pods to create per revision, and pods to delete, so each revision moves towards its wanted
/// count without exceeding `replicas + surge` pods (not counting pods in `error`) or the
/// controller deleting an available pod when that would leave fewer than
/// `replicas - maxUnavailable` available.
pub fn converge(
    live: &[&PodView],
    desired: &[Wanted],
    budget: Budget,
) -> (Vec<Wanted>, Vec<(String, DeleteReason)>) {
    let mut by_revision: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for pod in live {
        by_revision
            .entry(pod.revision.as_str())
            .or_default()
            .push(pod);
    }
    let wanted = |revision: &str| desired.iter().find(|d| d.0 == revision).map(|d| d.2);
    let mut available = live.iter().filter(|p| p.available()).count();
    let mut excess: Vec<(&PodView, DeleteReason)> = Vec::new();
    for (revision, pods) in &mut by_revision {
        let keep = wanted(revision);
        // Unavailable pods go first — failing ones before starting ones, so a scale-down takes a
        // failing pod rather than the replacement of a restart — then the newest (the least
        // proven).
        pods.sort_by(|a, b| {
            let failing = |p: &PodView| p.health != Health::Error;
            a.available()
                .cmp(&b.available())
                .then(failing(a).cmp(&failing(b)))
                .then(b.created_at.cmp(&a.created_at))
                .then(b.name.cmp(&a.name))
        });
        let reason = if keep.is_some() {
            DeleteReason::ScaleDown
        } else {
            DeleteReason::Replaced
        };
        let extra = pods.len().saturating_sub(keep.unwrap_or(0));
        excess.extend(pods[..extra].iter().map(|p| (*p, reason)));
    }
    // Free deletions first, across revisions, then available ones within the budget.
    excess.sort_by_key(|(p, _)| p.available());
    let mut deletes = Vec::new();
    for (pod, reason) in excess {
        if pod.available() {
            if available <= budget.min_available() {
                break;
            }
            available -= 1;
        }
        deletes.push((pod.name.clone(), reason));
    }
    // Pods in `error` do not use surge room: they serve nothing and the failing limit or a
    // rollback deals with them. Counting them would let one failing pod of the wanted revision
    // (with restarts exhausted) block both the replacement of bad pods and their removal.
    let gone: BTreeSet<&str> = deletes.iter().map(|(n, _)| n.as_str()).collect();
    let counted = live
        .iter()
        .filter(|p| p.health != Health::Error && !gone.contains(p.name.as_str()))
        .count();
    let mut room = (budget.replicas + budget.surge).saturating_sub(counted);
    let mut creates = Vec::new();
    for (revision, version, count) in desired {
        let have = by_revision.get(revision.as_str()).map_or(0, Vec::len);
        let n = count.saturating_sub(have).min(room);
        if n > 0 {
            room -= n;
            creates.push((revision.clone(), version.clone(), n));
        }
    }
    (creates, deletes)
}
