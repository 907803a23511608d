//! App rollout scenarios: revisions, steps, budget, rollback paths, superseding, exclusivity.

use std::time::Duration as StdDuration;

use autocrane_api::crd::{Phase, condition};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::builders::*;
use crate::conditions::reason;
use crate::model::{Action, AppVersions, DeleteReason, Input, PlanError};
use crate::plan::plan;
use crate::revision::revision_of;

fn pinned(v: &str) -> AcdB {
    deployment()
        .replicas(4)
        .pinned(v)
        .steps(&[(25, 60), (50, 60), (100, 0)])
        .surge(IntOrString::Int(1))
}

#[test]
fn first_plan_creates_every_pod_of_the_target_at_once() {
    let mut world = World::new(pinned("v1"));
    let plan = world.step();
    assert_eq!(creates(&plan).len(), 4);
    assert!(
        creates(&plan)
            .iter()
            .all(|(_, v)| v.as_deref() == Some("v1"))
    );
    assert_eq!(plan.status.phase, Some(Phase::Pending));
    world.kubelet();
    let plan = world.step();
    assert!(plan.actions.is_empty());
    assert_eq!(plan.status.phase, Some(Phase::Available));
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::ROLLOUT_COMPLETE
    );
    assert_eq!(
        world.condition(condition::AVAILABLE).reason,
        reason::MINIMUM_REPLICAS_AVAILABLE
    );
}

#[test]
fn revision_is_a_stable_hash_of_template_and_version() {
    let a = deployment().build().spec.template;
    let b = deployment().template_image("web2").build().spec.template;
    // Pinned: revisions are pod labels and pod names in running clusters, so a change of the hash
    // (serialisation, algorithm, truncation) would make a controller upgrade replace every pod.
    assert_eq!(revision_of(&a, Some("v0")).unwrap(), "d03572451a");
    assert_eq!(
        revision_of(&a, Some("v1")).unwrap(),
        revision_of(&a, Some("v1")).unwrap()
    );
    assert_ne!(
        revision_of(&a, Some("v1")).unwrap(),
        revision_of(&a, Some("v2")).unwrap()
    );
    assert_ne!(
        revision_of(&a, Some("v1")).unwrap(),
        revision_of(&b, Some("v1")).unwrap()
    );
    assert_eq!(revision_of(&a, None).unwrap().len(), 10);
}

#[test]
fn version_change_rolls_out_in_steps_within_the_budget() {
    let mut world = World::running(pinned("v1"));
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    let plan = world.step();
    assert_eq!(
        creates(&plan),
        [(pinned("v2").rev(Some("v2")), Some("v2".into()))],
        "25% of 4 = 1 new pod, surge 1"
    );
    assert!(
        deletes(&plan).is_empty(),
        "maxUnavailable 0: no old pod goes before a new one is available"
    );
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::ROLLOUT_IN_PROGRESS
    );
    assert_eq!(plan.status.phase, Some(Phase::Progressing));
    world.kubelet();
    let plan = world.step();
    assert_eq!(
        deletes(&plan).len(),
        1,
        "the new pod is available: one old pod goes"
    );
    world.kubelet();
    // Bake: nothing moves until 60 s after the new pod became good.
    let plan = world.step();
    assert!(plan.actions.is_empty());
    assert_eq!(plan.status.rollout_step, Some(0));
    assert_eq!(plan.requeue_after, Some(StdDuration::from_secs(60)));
    world.tick(60);
    let plan = world.step();
    assert_eq!(plan.status.rollout_step, Some(1));
    assert_eq!(creates(&plan).len(), 1, "50% of 4 = 2 new pods");
    world.settle(30);
    assert_eq!(world.on_version("v2"), 4);
    assert_eq!(world.on_version("v1"), 0);
    let status = world.status();
    assert_eq!(status.current_version.as_deref(), Some("v2"));
    assert_eq!(status.rollout_step, None);
    assert!(
        world
            .event_reasons()
            .contains(&reason::ROLLOUT_STEP_ADVANCED)
    );
    assert!(world.event_reasons().contains(&reason::ROLLOUT_COMPLETE));
    assert!(world.event_reasons().contains(&reason::ROLLOUT_STARTED));
}

#[test]
fn template_change_makes_a_new_revision_and_rolls_out() {
    let mut world = World::running(pinned("v1"));
    let old = world.status().current_revision.unwrap();
    world.acd.spec.template.spec.as_mut().unwrap().containers[0].image = Some("web-debug".into());
    world.settle(40);
    let status = world.status();
    assert_ne!(status.current_revision.unwrap(), old);
    assert_eq!(status.current_version.as_deref(), Some("v1"));
    assert_eq!(world.pods.len(), 4);
}

#[test]
fn new_pod_in_error_past_threshold_rolls_back_and_quarantines() {
    let mut world = World::running(pinned("v1").failing(30, 1, 3, 3600));
    world.broken_versions.insert("v2".into());
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    world.step();
    world.kubelet();
    let plan = world.step();
    assert!(
        plan.actions.is_empty(),
        "in error for 0 s: wait for the threshold"
    );
    assert_eq!(plan.requeue_after, Some(StdDuration::from_secs(30)));
    world.tick(30);
    let plan = world.step();
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::QuarantineAppVersion { .. })),
        "a pinned version has no VersionWatcher source to quarantine it in"
    );
    assert!(plan.actions.iter().any(|a| matches!(
        a,
        Action::DeletePod {
            reason: DeleteReason::Replaced,
            ..
        }
    )));
    assert_eq!(plan.status.bad_versions[0].version, "v2");
    assert_eq!(plan.status.phase, Some(Phase::RollingBack));
    assert_eq!(
        world.condition(condition::ROLLED_BACK).reason,
        reason::NEW_PODS_FAILING
    );
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::ROLLING_BACK
    );
    assert!(world.event_reasons().contains(&reason::ROLLED_BACK));
    world.settle(20);
    assert_eq!(world.on_version("v2"), 0);
    assert_eq!(world.on_version("v1"), 4);
    // Never retried: the spec still pins v2.
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::VERSION_QUARANTINED
    );
    assert!(world.plan().actions.is_empty());
}

#[test]
fn missed_progress_deadline_rolls_back() {
    let mut world = World::running(pinned("v1").deadline(120));
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    world.step();
    // The new pod never becomes Ready (image pull backoff, say).
    world.tick(119);
    let waiting = world.step();
    assert!(waiting.status.bad_versions.is_empty());
    // Nothing else changes before the deadline, so the plan asks to look again no later than it.
    assert!(
        waiting
            .requeue_after
            .is_some_and(|after| after <= std::time::Duration::from_secs(1)),
        "{:?}",
        waiting.requeue_after
    );
    world.tick(1);
    let plan = world.step();
    assert_eq!(plan.status.bad_versions[0].version, "v2");
    assert_eq!(
        world.condition(condition::ROLLED_BACK).reason,
        reason::PROGRESS_DEADLINE_EXCEEDED
    );
    assert_eq!(deletes(&plan).len(), 1);
    world.settle(10);
    assert_eq!(world.on_version("v2"), 0);
}

#[test]
fn rolled_back_template_change_is_not_retried() {
    let mut world = World::running(pinned("v1").failing(10, 1, 3, 3600));
    world.acd.spec.template.spec.as_mut().unwrap().containers[0].image = Some("web-broken".into());
    world.step();
    world.kubelet();
    let new = world
        .pods
        .iter()
        .find(|p| p.phase == crate::model::PodPhase::Running && p.created_at == world.now)
        .unwrap()
        .name
        .clone();
    world.pod_mut(&new).health = Error;
    world.tick(10);
    let plan = world.step();
    assert!(
        plan.status.bad_versions[0]
            .version
            .starts_with(crate::revision::BAD_REVISION_PREFIX)
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::QuarantineAppVersion { .. })),
        "the version is fine, the template is not"
    );
    world.settle(10);
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::VERSION_QUARANTINED
    );
    assert!(world.plan().actions.is_empty());
}

#[test]
fn a_failing_version_from_the_source_is_quarantined_in_the_version_watcher() {
    let mut world = World::running(deployment().replicas(2).followed().failing(30, 1, 3, 3600));
    world.offered.candidates = vec!["v1".into()];
    world.settle(10);
    assert_eq!(world.on_version("v1"), 2);
    world.broken_versions.insert("v2".into());
    world.offered.candidates = vec!["v2".into(), "v1".into()];
    world.step();
    world.kubelet();
    world.step();
    world.tick(30);
    let plan = world.step();
    assert!(
        plan.actions.contains(&Action::QuarantineAppVersion {
            version: "v2".into(),
            reason: plan.status.bad_versions[0].reason.clone()
        }),
        "{:?}",
        plan.actions
    );
    world.settle(20);
    assert_eq!(world.on_version("v2"), 0);
    assert_eq!(world.on_version("v1"), 2);
}

#[test]
fn followed_source_skips_bad_and_quarantined_versions() {
    let mut world = World::new(deployment().replicas(2).followed());
    world.offered = AppVersions {
        candidates: vec!["v3".into(), "v2".into()],
        quarantined: ["v3".into()].into(),
        ..Default::default()
    };
    world.settle(5);
    assert_eq!(world.on_version("v2"), 2);
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::ROLLOUT_COMPLETE
    );
}

#[test]
fn no_usable_version_creates_nothing() {
    let mut world = World::new(deployment().replicas(2).followed());
    world.offered = AppVersions {
        candidates: vec!["v1".into()],
        quarantined: ["v1".into()].into(),
        ..Default::default()
    };
    let plan = world.step();
    assert!(plan.actions.is_empty());
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::NO_USABLE_VERSION
    );
}

#[test]
fn newer_version_supersedes_an_unfinished_rollout() {
    let mut world = World::running(
        deployment()
            .replicas(4)
            .followed()
            .steps(&[(50, 600), (100, 0)]),
    );
    world.offered.candidates = vec!["v1".into()];
    world.settle(10);
    world.offered.candidates = vec!["v2".into(), "v1".into()];
    world.settle(3);
    assert_eq!(world.on_version("v2"), 2, "baking at 50%");
    world.offered.candidates = vec!["v3".into(), "v2".into(), "v1".into()];
    let plan = world.step();
    assert_eq!(plan.status.target_version.as_deref(), Some("v3"));
    assert!(world.event_reasons().contains(&reason::ROLLOUT_SUPERSEDED));
    world.settle(60);
    assert_eq!(world.on_version("v3"), 4);
    assert_eq!(world.on_version("v2"), 0);
    assert!(
        world.status().bad_versions.is_empty(),
        "superseded is not bad"
    );
}

#[test]
fn a_source_not_heard_from_yet_leaves_the_rollout_in_progress_alone() {
    let mut world = World::running(
        deployment()
            .replicas(4)
            .followed()
            .steps(&[(50, 600), (100, 0)]),
    );
    world.offered.candidates = vec!["v1".into()];
    world.settle(10);
    world.offered.candidates = vec!["v2".into(), "v1".into()];
    world.settle(3);
    assert_eq!(world.on_version("v2"), 2, "baking at 50%");
    let step_started = world.status().step_started_at.clone();
    let started = |world: &World| {
        world
            .event_reasons()
            .iter()
            .filter(|r| **r == reason::ROLLOUT_STARTED)
            .count()
    };
    let rollouts = started(&world);
    // A restarted controller: its follower of the source has no versions yet.
    world.offered.candidates.clear();
    let plan = world.step();
    assert!(
        plan.actions.is_empty(),
        "nothing new, nothing done: {:?}",
        plan.actions
    );
    assert_eq!(plan.status.target_version.as_deref(), Some("v2"));
    assert_eq!(
        plan.status.step_started_at, step_started,
        "the bake goes on"
    );
    world.settle(3);
    assert_eq!(world.on_version("v2"), 2);
    // The versions arrive: the same rollout continues, not a new one.
    world.offered.candidates = vec!["v2".into(), "v1".into()];
    world.step();
    assert!(!world.event_reasons().contains(&reason::ROLLOUT_SUPERSEDED));
    assert_eq!(started(&world), rollouts, "no rollout started over");
    world.settle(700);
    assert_eq!(world.on_version("v2"), 4);
}

#[test]
fn scale_down_keeps_max_unavailable() {
    let mut world = World::running(
        pinned("v1")
            .replicas(6)
            .max_unavailable(IntOrString::String("50%".into())),
    );
    world.acd.spec.replicas = 2;
    let plan = world.step();
    assert_eq!(deletes(&plan).len(), 4);
    let mut world = World::running(
        pinned("v1")
            .replicas(4)
            .max_unavailable(IntOrString::Int(1)),
    );
    // A rollout with maxUnavailable 1 and surge 1 may replace one old pod at once.
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    let plan = world.step();
    assert_eq!(creates(&plan).len(), 1);
    assert_eq!(
        deletes(&plan).len(),
        1,
        "25% step: 3 old kept, and one may be unavailable meanwhile"
    );
}

#[test]
fn invalid_int_or_string_is_an_error_naming_the_field() {
    let acd = pinned("v1")
        .surge(IntOrString::String("lots".into()))
        .build();
    let err = plan(Input {
        deployment: &acd,
        pods: &[],
        app_versions: &AppVersions::default(),
        data_versions: &Default::default(),
        data_sources: &Default::default(),
        now: t(0),
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::InvalidSpec {
                field: "spec.rollout.maxSurge",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn app_rollout_waits_for_a_data_rollout() {
    let mut world = World::running(pinned("v1").data_source("d").canary(25, 600));
    world.data.insert("d".into(), vec!["a".into()]);
    world.settle(30);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("a"));
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.step();
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    let plan = world.step();
    assert!(creates(&plan).is_empty());
    assert_eq!(
        world.condition(condition::PROGRESSING).reason,
        reason::WAITING_FOR_DATA_ROLLOUT
    );
    world.settle(80);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("b"));
    assert_eq!(
        world.on_version("v2"),
        4,
        "the app rollout ran after the data rollout"
    );
}

#[test]
fn data_rollout_waits_for_an_app_rollout_unless_not_exclusive() {
    for exclusive in [true, false] {
        let mut world = World::running(
            pinned("v1")
                .data_source("d")
                .canary(25, 60)
                .exclusive(exclusive),
        );
        world.data.insert("d".into(), vec!["a".into()]);
        world.settle(30);
        world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
        world.step();
        world.data.insert("d".into(), vec!["b".into(), "a".into()]);
        let plan = world.step();
        assert_eq!(
            plan.status.data[0].target.is_some(),
            !exclusive,
            "exclusive={exclusive}"
        );
    }
}

#[test]
fn available_condition_flips_and_keeps_its_transition_time() {
    let mut world = World::running(pinned("v1"));
    let since = world.condition(condition::AVAILABLE).last_transition_time;
    world.tick(100);
    world.step();
    assert_eq!(
        world.condition(condition::AVAILABLE).last_transition_time,
        since,
        "unchanged status keeps its time"
    );
    world.pods[0].ready_since = None;
    world.step();
    let c = world.condition(condition::AVAILABLE);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reason::MINIMUM_REPLICAS_UNAVAILABLE)
    );
    assert_eq!(c.last_transition_time.0, world.now);
}

#[test]
fn rolled_back_clears_after_a_later_rollout_completes() {
    let mut world = World::running(pinned("v1").failing(10, 1, 3, 3600));
    world.broken_versions.insert("v2".into());
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    world.settle(20);
    assert_eq!(world.condition(condition::ROLLED_BACK).status, "True");
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v3".into());
    world.settle(60);
    assert_eq!(world.on_version("v3"), 4);
    let c = world.condition(condition::ROLLED_BACK);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reason::NO_ROLLBACK)
    );
}

/// A rollout that starts from a steady state supersedes nothing; one that replaces an unfinished
/// rollout says so, in the pass that replaces it.
#[test]
fn only_an_unfinished_rollout_is_reported_superseded() {
    let mut world = World::running(pinned("v1").steps(&[(50, 600), (100, 0)]));
    let reasons =
        |plan: &crate::model::Plan| -> Vec<&str> { plan.events.iter().map(|e| e.reason).collect() };
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    let plan = world.step();
    assert_eq!(reasons(&plan), [reason::ROLLOUT_STARTED]);
    world.kubelet();
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v3".into());
    let plan = world.step();
    assert_eq!(
        reasons(&plan),
        [reason::ROLLOUT_SUPERSEDED, reason::ROLLOUT_STARTED]
    );
}

/// RolledBack stays True while a later rollout runs, and clears only when one completes.
#[test]
fn rolled_back_stays_while_a_later_rollout_is_in_progress() {
    let mut world = World::running(pinned("v1").failing(10, 1, 3, 3600));
    world.broken_versions.insert("v2".into());
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    world.settle(20);
    assert_eq!(world.condition(condition::ROLLED_BACK).status, "True");
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v3".into());
    let plan = world.step();
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == reason::ROLLOUT_STARTED)
    );
    let c = world.condition(condition::ROLLED_BACK);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reason::NEW_PODS_FAILING)
    );
}

/// With no replicas wanted and none running there is nothing to wait for: Available, not Pending.
#[test]
fn a_deployment_of_zero_replicas_is_available() {
    let mut world = World::new(pinned("v1").replicas(0));
    let plan = world.step();
    assert!(plan.actions.is_empty());
    assert_eq!(plan.status.phase, Some(Phase::Available));
}

/// `status.replicas` and its siblings count the pods present: neither terminating nor finished.
#[test]
fn status_counts_only_pods_present() {
    let acd = pinned("v1").build();
    let revision = pinned("v1").rev(Some("v1"));
    let on = |name: &str| pod(name).revision(&revision).version("v1");
    let pods = [
        on("serving").build(),
        on("terminating").deleting().build(),
        on("done").phase(crate::model::PodPhase::Failed).build(),
    ];
    let status = plan_for(&acd, &pods, &[], t(0)).status;
    assert_eq!(
        (
            status.replicas,
            status.ready_replicas,
            status.healthy_replicas
        ),
        (1, 1, 1)
    );
}

/// `status.updatedReplicas` counts the pods of the target revision, and never pods of a bad
/// version (here the running version, quarantined with nothing to move to).
#[test]
fn updated_replicas_are_the_good_pods_of_the_target_revision() {
    let mut world = World::running(pinned("v1"));
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    world.step();
    world.kubelet();
    let status = world.step().status;
    assert_eq!((status.replicas, status.updated_replicas), (5, 1));

    let mut world = World::new(deployment().replicas(2).followed());
    world.offered.candidates = vec!["v1".into()];
    world.settle(10);
    assert_eq!(world.status().updated_replicas, 2);
    world.offered.quarantined = ["v1".into()].into();
    let status = world.step().status;
    assert_eq!(status.target_version.as_deref(), Some("v1"));
    assert_eq!((status.replicas, status.updated_replicas), (2, 0));
}
