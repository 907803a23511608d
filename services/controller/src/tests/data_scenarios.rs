//! Data rollout scenarios beyond the original's oracle: the full canary → promote → LKG path,
//! reverts, quarantine, pins, independence of sources.

use autocrane_api::crd::DataStage;

use super::builders::*;
use crate::conditions::reason;
use crate::model::{Action, Plan, PodPhase};

/// 8 pods of v1 using sources `d` and `e`, canary 25% (2 pods), bake 300 s, `a` LKG for both.
fn world() -> World {
    let mut world = World::running(
        deployment()
            .replicas(8)
            .pinned("v1")
            .data_source("d")
            .data_source("e")
            .canary(25, 300),
    );
    world.data.insert("d".into(), vec!["a".into()]);
    world.data.insert("e".into(), vec!["a".into()]);
    world.settle(40);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("a"));
    assert_eq!(world.status().data[1].lkg.as_deref(), Some("a"));
    world
}

#[test]
fn first_version_goes_to_every_pod_then_becomes_lkg() {
    let world = world();
    assert!(
        world
            .event_reasons()
            .contains(&reason::DATA_ROLLOUT_STARTED)
    );
    assert!(
        world
            .event_reasons()
            .contains(&reason::DATA_LAST_KNOWN_GOOD)
    );
    assert!(world.actions.contains(&Action::PinData {
        source: "d".into(),
        version: "a".into()
    }));
    assert_eq!(world.status().data[0].current.as_deref(), Some("a"));
}

#[test]
fn canary_then_promotion_then_lkg() {
    let mut world = world();
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    let plan = world.step();
    assert_eq!(data_sets(&plan).len(), 2, "25% of 8");
    assert!(world.event_reasons().contains(&reason::DATA_CANARY_STARTED));
    assert!(plan.actions.contains(&Action::PinData {
        source: "d".into(),
        version: "b".into()
    }));
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Canary));
    world.kubelet();
    world.tick(299);
    assert_eq!(
        world.step().status.data[0].stage,
        Some(DataStage::Canary),
        "still baking"
    );
    world.tick(1);
    let plan = world.step();
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Promoted));
    assert_eq!(data_sets(&plan).len(), 6);
    world.kubelet();
    world.tick(299);
    assert_eq!(
        world.step().status.data[0].lkg.as_deref(),
        Some("a"),
        "LKG waits for every pod's bake"
    );
    world.tick(1);
    let plan = world.step();
    assert_eq!(plan.status.data[0].lkg.as_deref(), Some("b"));
    assert!(plan.actions.contains(&Action::UnpinData {
        source: "d".into(),
        version: "a".into()
    }));
    assert_eq!(
        plan.status.data[1].lkg.as_deref(),
        Some("a"),
        "sources are independent"
    );
}

#[test]
fn failed_apply_reverts_canaries_and_marks_the_version_bad() {
    let mut world = world();
    world.broken_data.insert("b".into());
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.step();
    world.kubelet();
    let plan = world.step();
    assert_eq!(
        plan.status.data[0].stage, None,
        "no pod runs b: the revert is done once asked for"
    );
    assert_eq!(plan.status.data[0].target, None);
    assert_eq!(plan.status.data[0].bad[0].version, "b");
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::QuarantineDataVersion { version, .. } if version == "b"))
    );
    assert_eq!(
        data_sets(&plan).iter().filter(|s| s.2 == "a").count(),
        2,
        "both canaries back to LKG"
    );
    assert!(world.event_reasons().contains(&reason::DATA_VERSION_FAILED));
    world.settle(10);
    assert_eq!(world.desiring("d", "b"), 0);
    assert_eq!(world.status().data[0].stage, None);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("a"));
}

/// 4 pods of v1 using source `d` with `a` as LKG, canary 25%, the given bake and data deadline.
fn with_data_deadline(bake: u64, deadline: u64) -> World {
    let mut world = World::running(
        deployment()
            .replicas(4)
            .pinned("v1")
            .data_source("d")
            .canary(25, bake)
            .data_deadline(deadline),
    );
    world.data.insert("d".into(), vec!["a".into()]);
    world.settle(40);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("a"));
    world
}

#[test]
fn a_canary_that_never_reports_fails_the_version_at_the_data_progress_deadline() {
    let mut world = with_data_deadline(60, 600);
    world.silent_data.insert("b".into());
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    let plan = world.step();
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Canary));
    world.kubelet();
    world.tick(599);
    let plan = world.step();
    assert_eq!(
        plan.status.data[0].stage,
        Some(DataStage::Canary),
        "still within the deadline"
    );
    assert_eq!(
        plan.requeue_after,
        Some(std::time::Duration::from_secs(1)),
        "wakes up at the deadline"
    );
    world.tick(1);
    let plan = world.step();
    assert_eq!(plan.status.data[0].bad[0].version, "b");
    assert!(
        plan.status.data[0].bad[0]
            .reason
            .contains("did not report d version b within the data progress deadline (10m)"),
        "{}",
        plan.status.data[0].bad[0].reason
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::QuarantineDataVersion { version, .. } if version == "b"))
    );
    assert!(
        world
            .event_reasons()
            .contains(&reason::DATA_PROGRESS_DEADLINE_EXCEEDED)
    );
    world.settle(10);
    assert_eq!(
        world.desiring("d", "b"),
        0,
        "the silent canary is back on LKG"
    );
    assert_eq!(world.status().data[0].stage, None);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("a"));
}

/// A canary that goes away once the data progress deadline has passed is replaced, and the
/// replacement has the whole deadline from the moment it is asked. (It used to be judged against
/// the stage's start: failed by the very next pass, which then asked for the same quarantine and
/// reverts on every pass after applying them.)
#[test]
fn a_canary_replaced_after_the_data_deadline_gets_a_deadline_of_its_own() {
    let mut world = with_data_deadline(900, 600);
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.step();
    world.kubelet();
    assert_eq!(world.desiring("d", "b"), 1, "one canary");
    let wants_b = |plan: &Plan| -> Vec<String> {
        data_sets(plan)
            .into_iter()
            .filter(|(_, _, v)| v == "b")
            .map(|(p, _, _)| p)
            .collect()
    };
    let first = world
        .pods
        .iter()
        .find(|p| p.data["d"].desired.as_deref() == Some("b"))
        .unwrap()
        .name
        .clone();
    world.tick(600);
    let plan = world.step();
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Canary), "baking");

    // The canary is evicted at the deadline, and `b` stops reporting from now on.
    world.pod_mut(&first).deleting = true;
    world.silent_data.insert("b".into());
    let plan = world.step();
    let replacement = wants_b(&plan);
    assert_eq!(
        replacement.len(),
        1,
        "one replacement canary: {:?}",
        plan.actions
    );
    assert_ne!(replacement[0], first);
    assert!(plan.status.data[0].bad.is_empty(), "nothing failed yet");
    let again = world.plan();
    assert!(
        again.actions.is_empty(),
        "re-plan wants {:?}",
        again.actions
    );
    assert!(again.events.is_empty(), "re-plan emits {:?}", again.events);

    world.kubelet();
    world.tick(599);
    let plan = world.step();
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Canary));
    assert!(
        plan.status.data[0].bad.is_empty(),
        "within its own deadline"
    );
    world.tick(1);
    let plan = world.step();
    assert_eq!(plan.status.data[0].bad.len(), 1);
    assert!(
        plan.status.data[0].bad[0].reason.contains(&replacement[0]),
        "{}",
        plan.status.data[0].bad[0].reason
    );
    let quarantines = |plan: &Plan| {
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::QuarantineDataVersion { .. }))
            .count()
    };
    assert_eq!(quarantines(&plan), 1);
    let again = world.plan();
    assert!(
        again.actions.is_empty(),
        "re-plan wants {:?}",
        again.actions
    );
    world.settle(10);
    assert_eq!(world.desiring("d", "b"), 0, "back on LKG");
    assert_eq!(quarantines(&world.plan()), 0, "quarantined once");
}

#[test]
fn a_slow_but_reporting_rollout_is_not_failed_by_the_deadline() {
    // The bake (15m) is longer than the deadline (10m): only silence counts, not baking.
    let mut world = with_data_deadline(900, 600);
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.settle(200);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("b"));
    assert!(world.status().data[0].bad.is_empty());
    assert!(
        !world
            .event_reasons()
            .contains(&reason::DATA_PROGRESS_DEADLINE_EXCEEDED)
    );
}

#[test]
fn canary_going_error_after_the_switch_reverts() {
    let mut world = world();
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.step();
    world.kubelet();
    world.tick(10);
    let now = world.now;
    let canary = world
        .pods
        .iter_mut()
        .find(|p| p.data["d"].desired.as_deref() == Some("b"))
        .unwrap();
    canary.health = Error;
    canary.health_since = now;
    let plan = world.step();
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Reverting));
}

/// The app sees new data when the link is swapped, a moment before the DataDeployer's report:
/// an error that began in the second before the report is on the new version; one from earlier
/// is not (that pod was failing already).
#[test]
fn an_error_up_to_a_second_before_the_apply_report_fails_the_canary() {
    for (error_before_report, reverted) in [(1, true), (2, false)] {
        let mut world = world();
        world.data.insert("d".into(), vec!["b".into(), "a".into()]);
        world.step();
        world.kubelet();
        world.tick(10);
        let now = world.now;
        let canary = world
            .pods
            .iter_mut()
            .find(|p| p.data["d"].desired.as_deref() == Some("b"))
            .unwrap();
        let applied = canary.data.get_mut("d").unwrap().applied.as_mut().unwrap();
        applied.at = now;
        canary.health = Error;
        canary.health_since = now
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(
                error_before_report,
            ))
            .unwrap();
        let plan = world.step();
        assert_eq!(
            plan.status.data[0].stage == Some(DataStage::Reverting),
            reverted,
            "error {error_before_report} s before the report"
        );
    }
}

#[test]
fn bad_data_version_is_skipped_for_the_next_one() {
    let mut world = world();
    world.broken_data.insert("b".into());
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.settle(10);
    world
        .data
        .insert("d".into(), vec!["c".into(), "b".into(), "a".into()]);
    world.settle(40);
    assert_eq!(world.status().data[0].lkg.as_deref(), Some("c"));
    world
        .data
        .insert("d".into(), vec!["b".into(), "c".into(), "a".into()]);
    let plan = world.step();
    assert_eq!(plan.status.data[0].target, None, "b is never retried");
    world.data.insert("d".into(), vec!["a".into()]);
    assert_eq!(
        world.step().status.data[0].target,
        None,
        "nor is an older version, nor anything while LKG is unlisted"
    );
}

#[test]
fn new_pods_start_on_lkg_during_a_canary() {
    let mut world = world();
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    world.step();
    world.acd.spec.replicas = 9;
    let plan = world.step();
    let Some(Action::CreatePod { data, .. }) = plan
        .actions
        .iter()
        .find(|a| matches!(a, Action::CreatePod { .. }))
    else {
        panic!("scaled up")
    };
    assert_eq!(data["d"], "a");
}

#[test]
fn pending_pods_are_not_canaries() {
    let mut world = world();
    for pod in &mut world.pods {
        pod.phase = PodPhase::Pending;
    }
    world.data.insert("d".into(), vec!["b".into(), "a".into()]);
    let plan = world.step();
    assert!(data_sets(&plan).is_empty());
}

#[test]
fn removed_source_annotations_are_cleared() {
    let mut world = world();
    world.acd.spec.data.retain(|d| d.name != "e");
    let plan = world.step();
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::ClearPodData { source, .. } if source == "e"))
            .count(),
        8
    );
    assert!(plan.actions.contains(&Action::UnpinData {
        source: "e".into(),
        version: "a".into()
    }));
}
