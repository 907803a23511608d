//! What the wiring asks of the core beyond rollouts: a deleted deployment releasing its pins,
//! failures the planner never sees becoming conditions, source ids in the status, and the
//! reaction times behind the controller's histograms.

use std::collections::BTreeMap;

use autocrane_api::crd::condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::builders::*;
use crate::conditions::reason;
use crate::model::{Action, AppVersions, DataSourceInfo, Failure, Input, Reaction, ReactionKind};
use crate::plan::{failed, failure_is_new, plan};

/// 4 pods of v1 with data source `d` (canary 25%, bake 60 s) on LKG `a`, with `b` canaried.
fn mid_data_rollout() -> World {
    let mut world = World::running(deployment().pinned("v1").data_source("d").canary(25, 60));
    world.data.insert("d".into(), vec!["a".into()]);
    world.settle(40);
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.step();
    world.kubelet();
    let d = &world.status().data[0];
    assert_eq!(
        (d.lkg.as_deref(), d.target.as_deref()),
        (Some("a"), Some("b"))
    );
    world
}

fn unpin(version: &str) -> Action {
    Action::UnpinData {
        source: "d".into(),
        version: version.into(),
    }
}

#[test]
fn a_deleted_deployment_unpins_every_version_it_holds_and_does_nothing_else() {
    let mut world = mid_data_rollout();
    let before = world.status();
    world.acd.metadata.deletion_timestamp = Some(Time(world.now));
    world.pod_mut(&world.pods[0].name.clone()).phase = crate::model::PodPhase::Failed;
    let plan = world.plan();
    assert_eq!(plan.actions, vec![unpin("a"), unpin("b")]);
    assert!(plan.events.is_empty());
    assert_eq!(plan.status, before, "the status is left as it is");
    assert!(
        !plan.holds_pins,
        "the finalizer may go once the unpins are done"
    );
    assert_eq!(plan.requeue_after, None);
    // Until the finalizer goes, planning again asks for the same (idempotent) unpins.
    world.apply(&plan);
    assert_eq!(world.plan().actions, plan.actions);
}

#[test]
fn a_deleted_deployment_with_a_broken_spec_still_releases_its_pins() {
    let acd = deployment()
        .surge(IntOrString::String("lots".into()))
        .deleting()
        .status(|s| {
            s.data.push(autocrane_api::crd::DataSourceStatus {
                name: "d".into(),
                current: Some("c".into()),
                ..Default::default()
            })
        })
        .build();
    let plan = plan_for(&acd, &[pod("a").build()], &[], t(0));
    assert_eq!(plan.actions, vec![unpin("c")]);
}

#[test]
fn a_deployment_holds_pins_while_it_has_data_sources() {
    let world = mid_data_rollout();
    assert!(world.plan().holds_pins);
    let plain = World::running(deployment().pinned("v1"));
    assert!(!plain.plan().holds_pins);
    // Data sources in the spec but no version synced yet: nothing pinned, yet the finalizer must
    // be in place before the first pin is made.
    let fresh = World::running(deployment().pinned("v1").data_source("d"));
    assert!(
        fresh
            .status()
            .data
            .iter()
            .all(|d| d.lkg.is_none() && d.target.is_none())
    );
    assert!(fresh.plan().holds_pins);
    // Its data sources gone, the deployment unpins them and holds nothing afterwards.
    let mut world = world;
    world.acd.spec.data.clear();
    let plan = world.plan();
    assert!(plan.actions.contains(&unpin("a")) && plan.actions.contains(&unpin("b")));
    assert!(!plan.holds_pins);
}

#[test]
fn a_failure_sets_progressing_false_and_keeps_what_was_observed() {
    let mut world = World::running(deployment().pinned("v1"));
    let available = world.condition(condition::AVAILABLE);
    world.acd.metadata.generation = Some(2);
    world.tick(30);
    let failure = Failure {
        reason: reason::TEMPLATE_REJECTED,
        message: "the API server rejected pod web-0: spec.containers[1].image: Required value"
            .into(),
    };
    assert!(failure_is_new(&world.acd, &failure));
    let status = failed(&world.acd, &failure, world.now);
    world.acd.status = Some(status.clone());
    let progressing = world.condition(condition::PROGRESSING);
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", reason::TEMPLATE_REJECTED)
    );
    assert_eq!(progressing.message, failure.message);
    assert_eq!(progressing.last_transition_time, Time(world.now));
    assert_eq!(world.condition(condition::AVAILABLE), available);
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.conditions.len(), 4);
    assert_eq!(
        status.conditions[1].type_,
        condition::PROGRESSING,
        "order kept"
    );

    // The same failure again: nothing new to write or to tell.
    assert!(!failure_is_new(&world.acd, &failure));
    // News is judged on the whole condition: another message, or the same reason and message on
    // another condition type, is news.
    let reworded = Failure {
        reason: failure.reason,
        message: format!("{} (again, worded differently)", failure.message),
    };
    assert!(failure_is_new(&world.acd, &reworded));
    let mut elsewhere = world.acd.clone();
    if let Some(status) = elsewhere.status.as_mut() {
        for c in &mut status.conditions {
            if c.type_ == condition::PROGRESSING {
                c.type_ = condition::DEGRADED.into();
            }
        }
    }
    assert!(failure_is_new(&elsewhere, &failure));
    world.tick(60);
    assert_eq!(failed(&world.acd, &failure, world.now), status);
    // Another failure while Progressing stays False keeps the transition time.
    let other = Failure {
        reason: reason::UPSTREAM_UNAVAILABLE,
        message: "spec.data needs --data-repository".into(),
    };
    assert!(failure_is_new(&world.acd, &other));
    let next = failed(&world.acd, &other, world.now);
    let c = next
        .conditions
        .iter()
        .find(|c| c.type_ == condition::PROGRESSING)
        .unwrap();
    assert_eq!(c.reason, reason::UPSTREAM_UNAVAILABLE);
    assert_eq!(c.last_transition_time, progressing.last_transition_time);
}

#[test]
fn a_failure_of_a_deployment_never_planned_is_its_only_condition() {
    let acd = deployment().build();
    let failure = Failure {
        reason: reason::INVALID_SPEC,
        message: "invalid spec.rollout.steps: must not be empty".into(),
    };
    let status = failed(&acd, &failure, t(5));
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(status.conditions[0].reason, reason::INVALID_SPEC);
    assert_eq!(status.observed_generation, Some(1));
}

#[test]
fn an_invalid_spec_is_a_failure_naming_the_field() {
    let acd = deployment()
        .surge(IntOrString::String("lots".into()))
        .build();
    let err = plan(Input {
        deployment: &acd,
        pods: &[],
        app_versions: &AppVersions::default(),
        data_versions: &BTreeMap::new(),
        data_sources: &BTreeMap::new(),
        now: t(0),
    })
    .unwrap_err();
    let failure = err.failure();
    assert_eq!(failure.reason, reason::INVALID_SPEC);
    assert!(
        failure.message.contains("spec.rollout.maxSurge"),
        "{}",
        failure.message
    );
}

#[test]
fn data_sources_show_their_source_ids() {
    let mut world = mid_data_rollout();
    assert_eq!(world.status().data[0].source_id, None, "unknown yet");
    world.sources.insert(
        "d".into(),
        DataSourceInfo {
            source_id: Some("git-7f3a".into()),
            ..Default::default()
        },
    );
    world.step();
    assert_eq!(
        world.status().data[0].source_id.as_deref(),
        Some("git-7f3a")
    );
    // Forgotten by the wiring (a restart), the id last written stays.
    world.sources.clear();
    world.step();
    assert_eq!(
        world.status().data[0].source_id.as_deref(),
        Some("git-7f3a")
    );
}

fn reactions(world: &World, kind: ReactionKind) -> Vec<Reaction> {
    world
        .reactions
        .iter()
        .filter(|r| r.kind == kind)
        .cloned()
        .collect()
}

#[test]
fn a_rollback_reports_since_when_the_new_pod_was_in_error() {
    let mut world = World::running(deployment().pinned("v1").failing(30, 1, 3, 3600));
    world.broken_versions.insert("v2".into());
    world.acd.spec.version.as_mut().unwrap().pinned = Some("v2".into());
    world.step();
    world.tick(5);
    world.kubelet();
    let erred = world.now;
    world.settle(20);
    assert_eq!(world.on_version("v2"), 0, "rolled back");
    let seen = reactions(&world, ReactionKind::ErrorToRollback);
    assert_eq!(seen.len(), 1, "{:?}", world.reactions);
    assert_eq!(seen[0].since, erred);
    assert!(seen[0].seconds() >= 30.0, "not before the threshold");
}

#[test]
fn a_new_version_reports_when_its_first_pod_was_created() {
    let mut world = World::new(deployment().followed().steps(&[(50, 10), (100, 0)]));
    world.offered = AppVersions {
        candidates: vec!["v1".into()],
        published: [("v1".to_string(), t(-3600))].into(),
        ..Default::default()
    };
    world.settle(20);
    assert!(
        world.reactions.is_empty(),
        "a first bring-up is no reaction"
    );
    world.tick(7);
    world.offered.candidates.insert(0, "v2".into());
    world.offered.published.insert("v2".into(), t(-2));
    let published = world.offered.published["v2"];
    let created = world.now;
    world.settle(30);
    assert_eq!(world.on_version("v2"), 4);
    let seen = reactions(&world, ReactionKind::VersionToFirstPod);
    assert_eq!(
        seen,
        vec![Reaction {
            kind: ReactionKind::VersionToFirstPod,
            since: published,
            at: created
        }]
    );
}

#[test]
fn a_data_rollout_reports_synced_to_applied_once() {
    let mut world = mid_data_rollout();
    let synced = t(-1);
    world.sources.insert(
        "d".into(),
        DataSourceInfo {
            source_id: Some("d-1".into()),
            synced_at: [("b".to_string(), synced), ("a".to_string(), t(-100))].into(),
        },
    );
    world.settle(60);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("b"));
    let seen = reactions(&world, ReactionKind::DataSyncedToApplied);
    assert_eq!(seen.len(), 1, "{:?}", world.reactions);
    assert_eq!(seen[0].since, synced);
    let last_applied = world
        .pods
        .iter()
        .filter_map(|p| p.data["d"].applied.as_ref().map(|a| a.at))
        .max()
        .unwrap();
    assert_eq!(seen[0].at, last_applied);
}

/// The synced → applied reaction comes in the pass that sees the last pod apply the new version,
/// and in no other.
#[test]
fn synced_to_applied_is_reported_when_the_last_pod_applies() {
    let mut world = mid_data_rollout();
    world.sources.insert(
        "d".into(),
        DataSourceInfo {
            source_id: None,
            synced_at: [("b".to_string(), t(-1))].into(),
        },
    );
    let mut reported = 0;
    for _ in 0..60 {
        let before = world.status().data[0].current.clone();
        let plan = world.step();
        let now_current = plan.status.data[0].current.clone();
        let seen = plan
            .reactions
            .iter()
            .filter(|r| r.kind == ReactionKind::DataSyncedToApplied)
            .count();
        let completes = before.as_deref() != Some("b") && now_current.as_deref() == Some("b");
        assert_eq!(seen, usize::from(completes), "at {:?}", world.now);
        reported += seen;
        world.kubelet();
        world.tick(5);
    }
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("b"));
    assert_eq!(reported, 1);
}

/// A version that failed earlier does not keep a later good rollout from being reported.
#[test]
fn synced_to_applied_is_reported_after_an_earlier_version_failed() {
    let mut world = World::running(deployment().pinned("v1").data_source("d").canary(25, 60));
    world.data.insert("d".into(), vec!["a".into()]);
    world.settle(40);
    world.broken_data.insert("c".into());
    world.data.insert("d".into(), vec!["c".into(), "a".into()]);
    world.settle(40);
    assert_eq!(world.status().data[0].bad[0].version, "c");
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("a"));
    world.sources.insert(
        "d".into(),
        DataSourceInfo {
            source_id: None,
            synced_at: [("b".to_string(), t(-1))].into(),
        },
    );
    world
        .data
        .insert("d".into(), vec!["b".into(), "c".into(), "a".into()]);
    world.settle(60);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("b"));
    let seen = reactions(&world, ReactionKind::DataSyncedToApplied);
    assert_eq!(seen.len(), 1, "{:?}", world.reactions);
    assert_eq!(seen[0].since, t(-1));
}
