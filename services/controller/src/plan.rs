//! One planning pass: everything the controller does for one AutoCraneDeployment.
//!
//! The order matters and is the only place the parts meet:
//! 1. finished pods go; the target revision is chosen, skipping bad versions;
//! 2. an unfinished rollout whose new pods fail (or that missed its deadline) is rolled back, the
//!    version marked bad and the target chosen again;
//! 3. data rollouts in progress move (fail, promote, become LKG), so the app rollout sees whether
//!    one is still running;
//! 4. the app rollout moves through its steps and pods converge within the surge/unavailability
//!    budget; data rollouts are moved again over the pods that remain, and a held app rollout is
//!    released at once if that finished the data rollout;
//! 5. the failing limit picks restarts among the stable pods convergence keeps, and each
//!    restarted pod is replaced in its slot in the same pass;
//! 6. data rollouts start (unless held by an app rollout) and pods get their data versions;
//! 7. status, conditions and pins follow from the decisions.
//!
//! Each decision that could enable another is taken before it in this order (or taken again once
//! the later one is known), so applying a plan's actions and planning again at the same instant
//! yields no further action and no Event (a property test).

use std::collections::{BTreeMap, BTreeSet};

use autocrane_api::crd::{
    AutoCraneDeploymentStatus, BadVersion, DataSourceStatus, DataStage, Phase, condition,
};
use autocrane_api::keys::DEPLOYMENT_LABEL;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::{self, Decided, reason};
use crate::data_oracle::{self, SourceDecision};
use crate::failing;
use crate::model::{Action, DeleteReason, Event, Input, Plan, PlanError, PodView, Wakeup};
use crate::revision::{self, BAD_REVISION_PREFIX, BadSet, Target};
use crate::rollout::{self, Budget};

/// Decides everything for one deployment at `input.now`.
pub fn plan(input: Input<'_>) -> Result<Plan, PlanError> {
    let Input {
        deployment,
        pods,
        app_versions,
        data_versions,
        now,
    } = input;
    let spec = &deployment.spec;
    let name = deployment.metadata.name.as_deref().unwrap_or("autocrane");
    let old = deployment.status.clone().unwrap_or_default();
    let budget = Budget::from_spec(spec)?;
    if spec.rollout.steps.is_empty() {
        return Err(PlanError::InvalidSpec {
            field: "spec.rollout.steps",
            rule: "must not be empty".into(),
        });
    }
    let mut wake = Wakeup::new(now);
    let mut actions = Vec::new();
    let mut events = Vec::new();
    let mut status = old.clone();

    // 1. Finished pods only need deleting; the target skips bad versions.
    for pod in pods.iter().filter(|p| !p.deleting && p.finished()) {
        actions.push(Action::DeletePod {
            name: pod.name.clone(),
            reason: DeleteReason::Finished,
        });
    }
    let mut live: Vec<&PodView> = pods
        .iter()
        .filter(|p| !p.deleting && !p.finished())
        .collect();
    let mut bad = BadSet::new(&old, app_versions);
    let mut target = revision::choose(
        &spec.template,
        spec.version.as_ref(),
        app_versions,
        &bad,
        &old,
    )?;
    let stable = stable_of(&old, &live, target.as_ref());

    // 2. Rollback.
    let mut rollback = None;
    let mut rollout_status = old.clone();
    if let (Some(t), Some(stable)) = (&target, &stable)
        && let Some(rb) = rollout::check_rollback(spec, &old, t, &live, now, &mut wake)
    {
        let marker = match &t.version {
            Some(v) if Some(v) != stable.1.as_ref() => v.clone(),
            _ => format!("{BAD_REVISION_PREFIX}{}", t.revision),
        };
        if !marker.starts_with(BAD_REVISION_PREFIX) {
            actions.push(Action::QuarantineAppVersion {
                version: marker.clone(),
                reason: rb.message.clone(),
            });
        }
        events.push(Event::warning(
            reason::ROLLED_BACK,
            format!("rolled back {marker}: {}", rb.message),
        ));
        status.bad_versions.push(BadVersion {
            version: marker,
            reason: rb.message.clone(),
            at: Time(now),
        });
        bad = BadSet::new(&status, app_versions);
        target = revision::choose(
            &spec.template,
            spec.version.as_ref(),
            app_versions,
            &bad,
            &status,
        )?;
        rollout_status.target_revision = None;
        rollback = Some((rb.reason, rb.message));
    }

    // 3. Data rollouts in progress.
    let mut data: Vec<SourceDecision> = spec
        .data
        .iter()
        .map(|source| {
            let previous = old.data.iter().find(|d| d.name == source.name).cloned();
            let previous = previous.unwrap_or_else(|| DataSourceStatus {
                name: source.name.clone(),
                ..Default::default()
            });
            data_oracle::advance(&spec.data_rollout, &previous, &live, now, &mut wake)
        })
        .collect();
    let data_busy = data.iter().any(|d| {
        matches!(
            d.status.stage,
            Some(DataStage::Canary | DataStage::Promoted)
        )
    });

    // 4. The app rollout and convergence, then 5. the failing limit on the stable pods that
    // convergence keeps. A pod that convergence removes anyway (a failing pod beyond a scale-down)
    // is not also restarted, and a restarted pod is replaced in its own slot in this same pass, so
    // the pod counts convergence decided on hold either way.
    let stable_target = stable.map(|stable| {
        let target = target.clone().unwrap_or_else(|| Target {
            revision: stable.0.clone(),
            version: stable.1.clone(),
            refused: None,
        });
        (stable, target)
    });
    let decide = |busy: bool, wake: &mut Wakeup| {
        stable_target.as_ref().map(|(stable, target)| {
            rollout::decide(
                spec,
                &rollout_status,
                stable.clone(),
                target,
                &live,
                budget,
                busy,
                now,
                wake,
            )
        })
    };
    let deletes = |decision: &Option<rollout::RolloutDecision>| -> BTreeSet<String> {
        decision
            .iter()
            .flat_map(|d| d.deletes.iter().map(|(n, _)| n.clone()))
            .collect()
    };
    // Deletions and restarts can complete a data rollout (the last pod that had not baked goes),
    // and a data rollout that completes releases a held app rollout: both are followed here, at
    // most once, so the next pass finds nothing left to do.
    let readvance = |data: &mut Vec<SourceDecision>, pods: &[&PodView], wake: &mut Wakeup| {
        for d in data.iter_mut() {
            let again = data_oracle::advance(&spec.data_rollout, &d.status, pods, now, wake);
            d.status = again.status;
            d.events.extend(again.events);
            d.quarantine = d.quarantine.take().or(again.quarantine);
        }
    };
    let busy = |data: &[SourceDecision]| {
        data.iter().any(|d| {
            matches!(
                d.status.stage,
                Some(DataStage::Canary | DataStage::Promoted)
            )
        })
    };
    let stable_rev = stable_target
        .as_ref()
        .map_or(String::new(), |(s, _)| s.0.clone());
    let mut hold_app = data_busy;
    let (decision, restarts, gone) = loop {
        let decision = decide(hold_app, &mut wake);
        let mut gone = deletes(&decision);
        readvance(&mut data, &without(&live, &gone), &mut wake);
        let released = |data: &[SourceDecision]| {
            decision.as_ref().is_some_and(|d| d.held_for_data) && !busy(data)
        };
        if released(&data) {
            hold_app = false;
            continue;
        }
        let restarts = failing::decide(
            &spec.failing_limit,
            &stable_rev,
            &without(&live, &gone),
            pods,
            &gone,
            &old.restarts,
            now,
            &mut wake,
        );
        gone.extend(restarts.restart.iter().cloned());
        if !restarts.restart.is_empty() {
            readvance(&mut data, &without(&live, &gone), &mut wake);
            if released(&data) {
                hold_app = false;
                continue;
            }
        }
        break (decision, restarts, gone);
    };
    live = without(&live, &gone);
    let mut creates = Vec::new();
    if let Some(decision) = &decision {
        for (pod, why) in decision.deletes.iter().cloned() {
            actions.push(Action::DeletePod {
                name: pod,
                reason: why,
            });
        }
        creates = decision.creates.clone();
        events.extend(decision.events.iter().cloned());
    }
    for pod in &restarts.restart {
        actions.push(Action::DeletePod {
            name: pod.clone(),
            reason: DeleteReason::Restart,
        });
    }
    if let (Some((stable, _)), false) = (&stable_target, restarts.restart.is_empty()) {
        match creates.iter_mut().find(|c| c.0 == stable.0) {
            Some(entry) => entry.2 += restarts.restart.len(),
            None => creates.insert(
                0,
                (stable.0.clone(), stable.1.clone(), restarts.restart.len()),
            ),
        }
    }
    events.extend(restarts.events.iter().cloned());
    status.restarts = restarts.records.clone();

    // 6. Data rollouts start and pods get their versions.
    let app_busy = decision.as_ref().is_some_and(|d| d.target.0 != d.stable.0);
    let hold = app_busy && spec.data_rollout.exclusive_with_app_rollout;
    let empty = Vec::new();
    data = data
        .into_iter()
        .map(|d| {
            let versions = data_versions.get(&d.status.name).unwrap_or(&empty);
            data_oracle::start_and_assign(&spec.data_rollout, d, versions, &live, hold, now)
        })
        .collect();
    for d in &mut data {
        if let Some((version, why)) = d.quarantine.take() {
            actions.push(Action::QuarantineDataVersion {
                source: d.status.name.clone(),
                version,
                reason: why,
            });
        }
        for (pod, version) in d.set.drain(..) {
            actions.push(Action::SetPodData {
                pod,
                source: d.status.name.clone(),
                version,
            });
        }
        for pod in d.clear.drain(..) {
            actions.push(Action::ClearPodData {
                pod,
                source: d.status.name.clone(),
            });
        }
        events.append(&mut d.events);
    }
    let sources: BTreeSet<&str> = spec.data.iter().map(|d| d.name.as_str()).collect();
    for pod in &live {
        for source in pod.data.keys().filter(|s| !sources.contains(s.as_str())) {
            if pod.data[source].desired.is_some() {
                actions.push(Action::ClearPodData {
                    pod: pod.name.clone(),
                    source: source.clone(),
                });
            }
        }
    }
    let initial: BTreeMap<String, String> = data
        .iter()
        .filter_map(|d| {
            Some((
                d.status.name.clone(),
                data_oracle::initial_version(&d.status)?,
            ))
        })
        .collect();
    actions.extend(name_pods(
        name,
        pods,
        &restarts.restart,
        &status.restarts,
        creates,
        &initial,
    ));
    let new_data: Vec<DataSourceStatus> = data.into_iter().map(|d| d.status).collect();
    actions.extend(pins(&old.data, &new_data));
    status.data = new_data;

    // 7. Status.
    if let Some(d) = &decision {
        status.current_revision = Some(d.stable.0.clone());
        status.current_version = d.stable.1.clone();
        status.target_revision = Some(d.target.0.clone());
        status.target_version = d.target.1.clone();
        status.rollout_step = d.step.map(|s| i32::try_from(s).unwrap_or(i32::MAX));
        status.step_started_at = d.step_started_at.map(Time);
    }
    fill_status(
        &mut status,
        deployment.metadata.generation,
        name,
        pods,
        &budget,
        &bad,
    );
    let rolling_back = pods
        .iter()
        .any(|p| !p.deleting && bad.contains(&p.revision, p.version.as_deref()));
    let progressing = match (&decision, &target) {
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
                spec.rollout.steps.len()
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
    };
    let available = pods.iter().filter(|p| p.available()).count();
    let avail = if available >= budget.min_available() {
        Decided::new(
            condition::AVAILABLE,
            true,
            reason::MINIMUM_REPLICAS_AVAILABLE,
            format!("{available} of {} pods available", budget.replicas),
        )
    } else {
        Decided::new(
            condition::AVAILABLE,
            false,
            reason::MINIMUM_REPLICAS_UNAVAILABLE,
            format!("{available} of {} pods available", budget.replicas),
        )
    };
    let degraded = match &restarts.degraded {
        Some((why, message)) => Decided::new(condition::DEGRADED, true, why, message.clone()),
        None => Decided::new(
            condition::DEGRADED,
            false,
            reason::WITHIN_FAILING_LIMIT,
            "failing pods are within the failing limit",
        ),
    };
    let was_degraded = old
        .conditions
        .iter()
        .any(|c| c.type_ == condition::DEGRADED && c.status == "True");
    if degraded.status && !was_degraded {
        events.push(Event::warning(degraded.reason, degraded.message.clone()));
    }
    let completed = decision.as_ref().is_some_and(|d| {
        d.events
            .iter()
            .any(|e| e.reason == reason::ROLLOUT_COMPLETE)
    });
    let rolled_back = conditions::rolled_back(&old.conditions, rollback, completed);
    status.phase = Some(if rolling_back {
        Phase::RollingBack
    } else if degraded.status {
        Phase::Degraded
    } else if app_busy {
        Phase::Progressing
    } else if budget.replicas > 0 && status.ready_replicas == 0 {
        Phase::Pending
    } else {
        Phase::Available
    });
    status.conditions = conditions::merge(
        &old.conditions,
        [avail, progressing, degraded, rolled_back],
        now,
        deployment.metadata.generation,
    );
    Ok(Plan {
        actions,
        status,
        events,
        requeue_after: wake.after(),
    })
}

fn without<'a>(pods: &[&'a PodView], gone: &BTreeSet<String>) -> Vec<&'a PodView> {
    pods.iter()
        .copied()
        .filter(|p| !gone.contains(&p.name))
        .collect()
}

/// The stable revision: from the status, or on first sight the revision most live pods run
/// (the target when there are none, so a new deployment starts all its pods at once).
fn stable_of(
    old: &AutoCraneDeploymentStatus,
    live: &[&PodView],
    target: Option<&Target>,
) -> Option<(String, Option<String>)> {
    if let Some(revision) = &old.current_revision {
        return Some((revision.clone(), old.current_version.clone()));
    }
    let mut counts: BTreeMap<&str, (usize, Option<&String>)> = BTreeMap::new();
    for pod in live {
        let entry = counts
            .entry(&pod.revision)
            .or_insert((0, pod.version.as_ref()));
        entry.0 += 1;
    }
    let is_target = |r: &str| target.is_some_and(|t| t.revision == r);
    counts
        .into_iter()
        .max_by(|a, b| {
            a.1.0
                .cmp(&b.1.0)
                .then(is_target(a.0).cmp(&is_target(b.0)))
                .then(b.0.cmp(a.0))
        })
        .map(|(r, (_, v))| (r.to_string(), v.cloned()))
        .or_else(|| target.map(|t| (t.revision.clone(), t.version.clone())))
}

/// Names and slots for new pods. A pod restarted in this pass is replaced in its own slot, so the
/// slot's restart history carries over; any other new pod takes a fresh slot (one no pod and no
/// restart record uses), so refilling a slot later is never mistaken for a restart in flight.
fn name_pods(
    deployment: &str,
    all: &[PodView],
    restarted: &[String],
    records: &[autocrane_api::crd::RestartRecord],
    creates: Vec<(String, Option<String>, usize)>,
    data: &BTreeMap<String, String>,
) -> Vec<Action> {
    let mut used: BTreeSet<String> = all
        .iter()
        .map(|p| p.slot.clone())
        .chain(records.iter().map(|r| r.pod.clone()))
        .collect();
    let mut names: BTreeSet<String> = all.iter().map(|p| p.name.clone()).collect();
    let mut out = Vec::new();
    for (revision, version, count) in creates {
        let mut reuse: Vec<String> = all
            .iter()
            .filter(|p| p.revision == revision && restarted.contains(&p.name))
            .map(|p| p.slot.clone())
            .collect();
        reuse.sort();
        reuse.dedup();
        let mut reuse = reuse.into_iter();
        let mut index = 0usize;
        for _ in 0..count {
            let slot = reuse.next().unwrap_or_else(|| {
                loop {
                    let candidate = format!("{deployment}-{revision}-{index}");
                    index += 1;
                    if !used.contains(&candidate) {
                        break candidate;
                    }
                }
            });
            used.insert(slot.clone());
            let mut name = slot.clone();
            let mut k = 1;
            while names.contains(&name) {
                name = format!("{slot}-{k}");
                k += 1;
            }
            names.insert(name.clone());
            out.push(Action::CreatePod {
                name,
                slot,
                revision: revision.clone(),
                version: version.clone(),
                data: data.clone(),
            });
        }
    }
    out
}

/// Versions that became LKG or a target are pinned in the DataRepository; versions that stopped
/// being either are unpinned.
fn pins(old: &[DataSourceStatus], new: &[DataSourceStatus]) -> Vec<Action> {
    let held = |list: &[DataSourceStatus]| -> BTreeSet<(String, String)> {
        list.iter()
            .flat_map(|d| {
                [d.lkg.clone(), d.target.clone()]
                    .into_iter()
                    .flatten()
                    .map(|v| (d.name.clone(), v))
            })
            .collect()
    };
    let (before, after) = (held(old), held(new));
    let pin = after
        .difference(&before)
        .map(|(source, version)| Action::PinData {
            source: source.clone(),
            version: version.clone(),
        });
    let unpin = before
        .difference(&after)
        .map(|(source, version)| Action::UnpinData {
            source: source.clone(),
            version: version.clone(),
        });
    pin.chain(unpin).collect()
}

fn fill_status(
    status: &mut AutoCraneDeploymentStatus,
    generation: Option<i64>,
    name: &str,
    pods: &[PodView],
    budget: &Budget,
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
    let _ = budget;
}
