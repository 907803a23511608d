//! Small scenarios on single decisions, built from pods directly.

use std::collections::BTreeSet;

use autocrane_api::crd::{DataRollout, DataSourceStatus, FailingLimit, RestartRecord};
use autocrane_api::duration::Duration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::builders::*;
use crate::data_oracle;
use crate::failing::{self, in_flight};
use crate::model::{DeleteReason, PodPhase, PodView, Timestamp, Wakeup};
use crate::rollout::{Budget, converge, step_count, step_done};

fn budget(replicas: usize, surge: usize, max_unavailable: usize) -> Budget {
    Budget {
        replicas,
        surge,
        max_unavailable,
    }
}

#[test]
fn a_pod_is_available_when_ready_not_in_error_and_not_deleting() {
    assert!(pod("a").build().available());
    assert!(!pod("a").not_ready().build().available());
    assert!(!pod("a").health(Error, t(0)).build().available());
    assert!(!pod("a").deleting().build().available());
    assert!(
        pod("a").health(Warning, t(0)).build().available(),
        "warnings still serve"
    );
}

#[test]
fn bake_counts_from_the_later_of_ready_and_health_change() {
    let p = pod("a").ready_since(t(10)).health(Info, t(30)).build();
    assert_eq!(p.good_since(), Some(t(30)));
    assert!(
        !p.failing_for(std::time::Duration::ZERO, t(40)),
        "not in error"
    );
    let failing = pod("a").health(Error, t(30)).build();
    assert!(failing.failing_for(std::time::Duration::from_secs(10), t(40)));
    assert!(!failing.failing_for(std::time::Duration::from_secs(11), t(40)));
}

#[test]
fn terminated_pods_are_finished() {
    assert!(pod("a").phase(PodPhase::Failed).build().finished());
    assert!(pod("a").phase(PodPhase::Succeeded).build().finished());
    assert!(!pod("a").phase(PodPhase::Pending).build().finished());
}

#[test]
fn step_counts_round_up_and_keep_at_least_one_pod() {
    assert_eq!(step_count(25, 4), 1);
    assert_eq!(step_count(25, 5), 2);
    assert_eq!(step_count(1, 3), 1);
    assert_eq!(step_count(100, 7), 7);
    assert_eq!(step_count(50, 0), 0);
    // A 0% step still keeps one pod while any is wanted.
    assert_eq!(step_count(0, 4), 1);
}

#[test]
fn budget_rounds_surge_up_and_unavailable_down() {
    let spec = deployment()
        .replicas(10)
        .surge(IntOrString::String("25%".into()))
        .max_unavailable(IntOrString::String("25%".into()))
        .build()
        .spec;
    assert_eq!(Budget::from_spec(&spec).unwrap(), budget(10, 3, 2));
    let zero = deployment()
        .replicas(10)
        .surge(IntOrString::Int(0))
        .max_unavailable(IntOrString::Int(0))
        .build()
        .spec;
    assert_eq!(
        Budget::from_spec(&zero).unwrap().surge,
        1,
        "both zero would deadlock"
    );
}

#[test]
fn converge_deletes_unavailable_pods_first_and_keeps_the_floor() {
    let pods: Vec<PodView> = vec![
        pod("old-1").revision("old").build(),
        pod("old-2").revision("old").build(),
        pod("old-3").revision("old").not_ready().build(),
        pod("new-1").revision("new").created(t(5)).build(),
    ];
    let live: Vec<&PodView> = pods.iter().collect();
    let desired = [("new".to_string(), None, 2), ("old".to_string(), None, 1)];
    let (creates, deletes) = converge(&live, &desired, budget(3, 1, 0));
    assert_eq!(
        deletes[0],
        ("old-3".to_string(), DeleteReason::ScaleDown),
        "the unready pod goes first"
    );
    assert_eq!(
        deletes.len(),
        1,
        "available 3 = floor 3: no available pod may go"
    );
    assert_eq!(creates, [("new".to_string(), None, 1)]);
}

#[test]
fn converge_replaces_pods_of_unwanted_revisions() {
    let pods = [
        pod("bad")
            .revision("bad")
            .version("v2")
            .slot("s")
            .health(Error, t(0))
            .build(),
        pod("ok").revision("good").build(),
    ];
    let live: Vec<&PodView> = pods.iter().collect();
    let (creates, deletes) = converge(&live, &[("good".to_string(), None, 2)], budget(2, 0, 0));
    assert_eq!(deletes, [("bad".to_string(), DeleteReason::Replaced)]);
    assert_eq!(creates, [("good".to_string(), None, 1)]);
}

#[test]
fn a_wakeup_keeps_the_earliest_instant_still_to_come() {
    let secs = std::time::Duration::from_secs;
    let mut wake = Wakeup::new(t(10));
    wake.at(t(10));
    wake.at(t(5));
    assert_eq!(wake.after(), None, "now and the past are not waited for");
    wake.at(t(30));
    assert_eq!(wake.after(), Some(secs(20)));
    wake.at(t(40));
    assert_eq!(
        wake.after(),
        Some(secs(20)),
        "a later instant does not replace it"
    );
    wake.at(t(20));
    assert_eq!(wake.after(), Some(secs(10)), "an earlier one does");
    wake.at(t(11));
    assert_eq!(wake.after(), Some(secs(1)));
}

#[test]
fn surge_is_only_forced_to_one_when_both_limits_are_zero() {
    let spec = |surge: i32, unavailable: i32| {
        deployment()
            .replicas(4)
            .surge(IntOrString::Int(surge))
            .max_unavailable(IntOrString::Int(unavailable))
            .build()
            .spec
    };
    assert_eq!(Budget::from_spec(&spec(0, 1)).unwrap(), budget(4, 0, 1));
    assert_eq!(Budget::from_spec(&spec(2, 0)).unwrap(), budget(4, 2, 0));
    assert_eq!(Budget::from_spec(&spec(0, 0)).unwrap(), budget(4, 1, 0));
    let negative = deployment().replicas(-3).build().spec;
    assert_eq!(Budget::from_spec(&negative).unwrap().replicas, 0);
    assert_eq!(budget(4, 0, 1).min_available(), 3);
    assert_eq!(budget(1, 0, 3).min_available(), 0, "never below zero");
}

/// A restart record of slot `s` at `at`, and whether it is in flight among `pods`.
fn in_flight_of(at: Timestamp, pods: &[PodView]) -> usize {
    let record = RestartRecord {
        pod: "s".into(),
        at: Time(at),
    };
    in_flight(&[record.clone(), record], pods)
}

#[test]
fn a_restart_is_in_flight_until_its_replacement_is_ready() {
    let t100 = t(100);
    let original = || pod("s").created(t(0));
    assert_eq!(in_flight_of(t100, &[]), 0, "an empty slot holds nothing");
    assert_eq!(
        in_flight_of(t100, &[original().deleting().build()]),
        1,
        "the restarted pod is terminating, no replacement yet (two records, one slot)"
    );
    let replacement = || pod("s-1").slot("s").created(t100);
    assert_eq!(
        in_flight_of(
            t100,
            &[
                original().deleting().build(),
                replacement().not_ready().build()
            ]
        ),
        1,
        "the replacement is starting"
    );
    assert_eq!(
        in_flight_of(
            t100,
            &[original().deleting().build(), replacement().build()]
        ),
        0,
        "the replacement is Ready"
    );
    assert_eq!(
        in_flight_of(
            t100,
            &[
                original().deleting().build(),
                replacement().not_ready().health(Error, t100).build()
            ]
        ),
        0,
        "the replacement reports errors: it has started (a Ready pod gone unready looks the same)"
    );
    assert_eq!(
        in_flight_of(t100, &[replacement().not_ready().deleting().build()]),
        0,
        "the replacement itself is going away"
    );
    assert_eq!(
        in_flight_of(
            t100,
            &[
                replacement().not_ready().build(),
                pod("s-2").slot("s").created(t100).build()
            ]
        ),
        0,
        "one Ready replacement ends it"
    );
    // `creationTimestamp` has whole seconds: a pod created in the second before the record is
    // still the restarted one, not its replacement.
    let before = pod("s").created(t(99)).not_ready().deleting().build();
    assert_eq!(in_flight_of(t100, std::slice::from_ref(&before)), 1);
    let half = t100
        .checked_add(k8s_openapi::jiff::SignedDuration::from_millis(500))
        .unwrap();
    let same_second = pod("s").created(t100).not_ready().deleting().build();
    assert_eq!(
        in_flight_of(half, &[same_second]),
        0,
        "created within the record's second: a replacement, going away"
    );
    assert_eq!(
        in_flight_of(t(98), &[before]),
        0,
        "created after the restart"
    );
}

/// On first sight (no status yet) the stable revision is the one most pods run; a tie goes to the
/// target, then to the first revision by name; with no pods it is the target itself.
#[test]
fn on_first_sight_the_stable_revision_is_the_one_most_pods_run() {
    let acd = deployment().replicas(3).build();
    let target = deployment().rev(None);
    let stable = |pods: &[PodView]| {
        let status = plan_for(&acd, pods, &[], t(0)).status;
        (status.current_revision.unwrap(), status.current_version)
    };
    let on = |name: &str, revision: &str| pod(name).revision(revision).build();
    assert_eq!(stable(&[]), (target.clone(), None));
    assert_eq!(
        stable(&[on("a", "x"), on("b", "x"), on("c", &target)]),
        ("x".to_string(), None)
    );
    assert_eq!(
        stable(&[on("a", "x"), on("c", &target)]),
        (target.clone(), None),
        "a tie goes to the target"
    );
    assert_eq!(stable(&[on("a", "y"), on("b", "x")]).0, "x");
    assert_eq!(stable(&[on("a", "x"), on("b", "y")]).0, "x");
    let versioned = [pod("a").revision("x").version("v7").build()];
    assert_eq!(
        stable(&versioned),
        ("x".to_string(), Some("v7".to_string())),
        "with the version its pods run"
    );
}

/// A restart whose replacement this same pass deletes (a scale-down) holds no slot down any more,
/// so another failing pod may be restarted within a limit of one.
#[test]
fn a_replacement_deleted_by_this_pass_frees_its_restart_slot() {
    let limit = FailingLimit {
        error_threshold: Duration::from_secs(0),
        max_concurrent_restarts: 1,
        max_restarts_per_pod: 3,
        window: Duration::from_secs(3600),
    };
    let records = [RestartRecord {
        pod: "s".into(),
        at: Time(t(100)),
    }];
    let pods = [
        pod("s-1").slot("s").created(t(100)).not_ready().build(),
        pod("f").health(Error, t(0)).build(),
    ];
    let stable = pods[1].revision.clone();
    let decide = |gone: &BTreeSet<String>| {
        let live: Vec<&PodView> = pods.iter().filter(|p| !gone.contains(&p.name)).collect();
        let mut wake = Wakeup::new(t(110));
        failing::decide(
            &limit,
            &stable,
            &live,
            &pods,
            gone,
            &records,
            t(110),
            &mut wake,
        )
        .restart
    };
    assert!(decide(&BTreeSet::new()).is_empty(), "slot s is still down");
    assert_eq!(decide(&BTreeSet::from(["s-1".to_string()])), ["f"]);
}

/// Restarting a pod whose slot is already down takes nothing more down, yet one pass never
/// deletes more pods than the limit: here two slots are in flight (their replacements starting)
/// and their restarted pods, still seen live, fail on.
#[test]
fn one_pass_restarts_at_most_the_limit_even_in_slots_already_down() {
    let limit = FailingLimit {
        error_threshold: Duration::from_secs(0),
        max_concurrent_restarts: 1,
        max_restarts_per_pod: 3,
        window: Duration::from_secs(3600),
    };
    let records = ["s", "u"].map(|slot| RestartRecord {
        pod: slot.into(),
        at: Time(t(100)),
    });
    let pods = [
        pod("s").created(t(0)).health(Error, t(0)).build(),
        pod("s-1").slot("s").created(t(100)).not_ready().build(),
        pod("u").created(t(0)).health(Error, t(0)).build(),
        pod("u-1").slot("u").created(t(100)).not_ready().build(),
    ];
    let live: Vec<&PodView> = pods.iter().collect();
    let mut wake = Wakeup::new(t(110));
    let decision = failing::decide(
        &limit,
        &pods[0].revision,
        &live,
        &pods,
        &BTreeSet::new(),
        &records,
        t(110),
        &mut wake,
    );
    assert_eq!(decision.restart, ["s"]);
}

/// A pod in error is restarted only when its error is its own: counted from its latest data
/// switch when that came later (a data revert gives the app time to report on last-known-good).
#[test]
fn an_error_counts_towards_a_restart_from_the_latest_data_switch() {
    let erring = || pod("p").health(Error, t(10));
    assert_eq!(
        pod("p").build().error_since_for_restart(),
        None,
        "not in error"
    );
    assert_eq!(erring().build().error_since_for_restart(), Some(t(10)));
    assert_eq!(
        erring()
            .on("d", "lkg", t(20))
            .on("e", "x", t(15))
            .build()
            .error_since_for_restart(),
        Some(t(20)),
        "switched after the error began: counted from the latest switch"
    );
    assert_eq!(
        erring()
            .wants("d", "v")
            .applied("d", "v", false, t(5))
            .build()
            .error_since_for_restart(),
        Some(t(10)),
        "a switch before the error does not move it"
    );
}

#[test]
fn restart_records_leave_the_window_at_its_end() {
    let limit = FailingLimit {
        window: Duration::from_secs(3600),
        ..FailingLimit::default()
    };
    let records = [
        RestartRecord {
            pod: "old".into(),
            at: Time(t(0)),
        },
        RestartRecord {
            pod: "recent".into(),
            at: Time(t(1)),
        },
    ];
    let mut wake = Wakeup::new(t(3600));
    let kept = failing::decide(
        &limit,
        "r",
        &[],
        &[],
        &BTreeSet::new(),
        &records,
        t(3600),
        &mut wake,
    );
    assert_eq!(kept.records, records[1..]);
}

/// `status.current` is the version every pod has applied, and only then.
#[test]
fn the_current_data_version_is_the_one_every_pod_applied() {
    let old = DataSourceStatus {
        name: "d".into(),
        current: Some("a".into()),
        lkg: Some("a".into()),
        ..Default::default()
    };
    let current = |pods: &[PodView]| {
        let live: Vec<&PodView> = pods.iter().collect();
        let mut wake = Wakeup::new(t(10));
        data_oracle::advance(&DataRollout::default(), &old, &live, t(10), &mut wake)
            .status
            .current
    };
    let b = || pod("p1").on("d", "b", t(1)).build();
    assert_eq!(
        current(&[b(), pod("p2").on("d", "b", t(1)).build()]),
        Some("b".into())
    );
    assert_eq!(
        current(&[b(), pod("p2").on("d", "a", t(0)).build()]),
        Some("a".into())
    );
    let failed = pod("p2")
        .wants("d", "b")
        .applied("d", "b", false, t(1))
        .build();
    assert_eq!(
        current(&[b(), failed]),
        Some("a".into()),
        "a failed apply is not applied"
    );
}

/// With nothing to fall back to (no LKG, nothing synced), annotations are cleared, and pods
/// without one are left alone.
#[test]
fn with_nothing_to_hold_annotations_are_cleared() {
    let status = DataSourceStatus {
        name: "d".into(),
        ..Default::default()
    };
    let pods = [pod("p1").wants("d", "x").build(), pod("p2").build()];
    let live: Vec<&PodView> = pods.iter().collect();
    let decision = data_oracle::start_and_assign(
        &DataRollout::default(),
        data_oracle::SourceDecision {
            status,
            ..Default::default()
        },
        &[],
        &live,
        false,
        t(0),
    );
    assert_eq!(decision.clear, ["p1"]);
    assert!(decision.set.is_empty());
}

/// Among unavailable pods a scale-down takes the failing one before one still starting (which may
/// be the replacement of a restart), even when the failing pod is the older.
#[test]
fn converge_removes_a_failing_pod_before_a_starting_one() {
    let pods = [
        pod("failing").health(Error, t(0)).created(t(0)).build(),
        pod("starting").not_ready().created(t(50)).build(),
        pod("serving").build(),
    ];
    let live: Vec<&PodView> = pods.iter().collect();
    let revision = pods[0].revision.clone();
    let (_, deletes) = converge(&live, &[(revision, None, 2)], budget(2, 0, 0));
    assert_eq!(deletes, [("failing".to_string(), DeleteReason::ScaleDown)]);
}

/// Pods in `error` take no surge room: with 3 replicas, surge 1 and three old pods the floor keeps,
/// one new pod may start beside a failing new pod — one, not more.
#[test]
fn pods_in_error_use_no_surge_room() {
    let pods = [
        pod("new-failing")
            .revision("new")
            .health(Error, t(0))
            .build(),
        pod("old-1").revision("old").build(),
        pod("old-2").revision("old").build(),
        pod("old-3").revision("old").build(),
    ];
    let live: Vec<&PodView> = pods.iter().collect();
    let desired = [("new".to_string(), None, 3), ("old".to_string(), None, 0)];
    let (creates, deletes) = converge(&live, &desired, budget(3, 1, 0));
    assert!(deletes.is_empty(), "every old pod is needed for the floor");
    assert_eq!(creates, [("new".to_string(), None, 1)]);
}

/// The surge room goes to the revisions in the order given (the most important first), and what
/// one takes the next cannot.
#[test]
fn surge_room_goes_to_the_most_important_revision_first() {
    let desired = [("new".to_string(), None, 1), ("old".to_string(), None, 4)];
    let (creates, deletes) = converge(&[], &desired, budget(3, 1, 0));
    assert!(deletes.is_empty());
    assert_eq!(
        creates,
        [("new".to_string(), None, 1), ("old".to_string(), None, 3)],
        "4 pods at most: one new, three old"
    );
}

/// A step is done only once the stable pods are down to the rest of the replicas, however well
/// the new pods baked.
#[test]
fn a_step_is_done_when_the_stable_pods_are_down_to_the_rest() {
    let done = |replicas: usize, new: usize, old: usize| {
        let pods: Vec<PodView> = (0..new)
            .map(|i| pod(&format!("new-{i}")).revision("new").build())
            .chain((0..old).map(|i| pod(&format!("old-{i}")).revision("old").build()))
            .collect();
        let live: Vec<&PodView> = pods.iter().collect();
        let wanted = step_count(50, replicas);
        let mut wake = Wakeup::new(t(100));
        step_done(
            &live,
            "new",
            "old",
            wanted,
            replicas,
            std::time::Duration::from_secs(60),
            t(100),
            &mut wake,
        )
    };
    assert!(done(10, 5, 5), "5 new and 5 old of 10 at 50%");
    assert!(!done(10, 5, 6), "one old pod too many");
    assert!(!done(4, 2, 4), "the old pods are still all there");
    assert!(done(4, 2, 2));
}

/// `advance` moves a data rollout through every stage the pods already allow in one call: a
/// canary that is every pod and has baked is promoted and becomes last-known-good at once.
#[test]
fn a_baked_canary_on_every_pod_becomes_lkg_in_one_step() {
    let config = DataRollout {
        canary_percent: 25,
        bake: Duration::from_secs(60),
        ..DataRollout::default()
    };
    let old = DataSourceStatus {
        name: "d".into(),
        lkg: Some("a".into()),
        current: Some("a".into()),
        target: Some("b".into()),
        stage: Some(autocrane_api::crd::DataStage::Canary),
        stage_started_at: Some(Time(t(0))),
        ..Default::default()
    };
    let pods = [pod("only").on("d", "b", t(0)).build()];
    let live: Vec<&PodView> = pods.iter().collect();
    let mut wake = Wakeup::new(t(100));
    let status = data_oracle::advance(&config, &old, &live, t(100), &mut wake).status;
    assert_eq!(
        (status.lkg.as_deref(), status.target, status.stage),
        (Some("b"), None, None)
    );
}
