//! The original's twelve upgrade-oracle scenarios (reference §6, `UpgradeOracleTests`), with the
//! behaviour this design wants. Unless noted, as in the original: source `d`, LKG `a`, latest `b`.
//! Our annotations hold a plain version (no Path/Hash/timestamp); probation is the data bake,
//! counted from the DataDeployer's applied report (here 600 s, the original's 10 min).

use autocrane_api::crd::{DataSourceStatus, DataStage};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::builders::*;
use crate::model::{Action, PodView};

const BAKE: i64 = 600;

/// A deployment of `n` pods using source `d` whose LKG is `a`.
fn with_lkg(n: i32) -> AcdB {
    deployment()
        .replicas(n)
        .data_source("d")
        .canary(25, 600)
        .status(|s| {
            s.data = vec![DataSourceStatus {
                name: "d".into(),
                lkg: Some("a".into()),
                current: Some("a".into()),
                ..Default::default()
            }];
        })
}

fn on_lkg(name: &str) -> PodView {
    pod(name).on("d", "a", t(0)).build()
}

/// Original: a pod listing `d` with no request gets LKG; asking for an unused source `0` gives
/// null. Ours: the same — new pods are created with LKG, and an existing pod without the
/// annotation gets LKG; a source the deployment does not declare is never written.
#[test]
fn initial_data_request_matches_last_known_good() {
    let acd = with_lkg(1).build();
    let plan = plan_for(&acd, &[pod("p1").build()], &[("d", &["a"])], t(1000));
    assert_eq!(data_sets(&plan), [("p1".into(), "d".into(), "a".into())]);
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetPodData { source, .. } if source == "0"))
    );

    let fresh = plan_for(&with_lkg(1).build(), &[], &[("d", &["a"])], t(1000));
    let Some(Action::CreatePod { data, .. }) = fresh.actions.first() else {
        panic!("creates a pod")
    };
    assert_eq!(
        data.get("d").map(String::as_str),
        Some("a"),
        "new pods start on LKG"
    );
}

/// Original: latest = LKG and the pod is on it → null. Ours: the same, no action and no rollout.
#[test]
fn request_matches_last_known_good() {
    let plan = plan_for(
        &with_lkg(1).build(),
        &[on_lkg("p1")],
        &[("d", &["a"])],
        t(1000),
    );
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.status.data[0].stage, None);
}

/// Original: a pod whose request is fresh (written less than 10 min ago) is in probation → null.
/// Ours: probation is the bake after the DataDeployer *reported* the version applied (W16), so a
/// canary that applied `b` a minute ago holds the rollout in Canary; nobody else gets `b` yet.
#[test]
fn request_recent_upgrade() {
    let acd = with_lkg(4).status(|s| canary_of_b(s, t(0))).build();
    let pods = [
        pod("p1").on("d", "b", t(940)).build(),
        on_lkg("p2"),
        on_lkg("p3"),
        on_lkg("p4"),
    ];
    let plan = plan_for(&acd, &pods, &[("d", &["b", "a"])], t(1000));
    assert!(data_sets(&plan).is_empty());
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Canary));
    assert_eq!(
        plan.requeue_after,
        Some(std::time::Duration::from_secs(540)),
        "looks again when the bake ends"
    );
}

/// Original: one pod on LKG past probation → latest (a single replica upgrades at once).
/// Ours: the single pod is the canary (at least one pod), so it gets `b` too — but `b` becomes
/// LKG only after that pod applied it and baked.
#[test]
fn request_one_pod_upgrade() {
    let plan = plan_for(
        &with_lkg(1).build(),
        &[on_lkg("p1")],
        &[("d", &["b", "a"])],
        t(1000),
    );
    assert_eq!(data_sets(&plan), [("p1".into(), "d".into(), "b".into())]);
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Canary));
    assert_eq!(plan.status.data[0].lkg.as_deref(), Some("a"));
}

/// Original: an undecodable request is reset to LKG. Ours: an annotation naming a version that is
/// neither LKG nor being rolled out (a hand edit, a garbled value) is reset to LKG.
#[test]
fn request_reset_unparsable_to_lkg() {
    let pods = [pod("p1").wants("d", "unparsable").build()];
    let plan = plan_for(&with_lkg(1).build(), &pods, &[("d", &["a"])], t(1000));
    assert_eq!(data_sets(&plan), [("p1".into(), "d".into(), "a".into())]);
}

/// Original: a request for `b` with a null timestamp cannot be trusted and is reset to LKG.
/// Ours: annotations carry no timestamps (W19: a plain, documented value); the request we cannot
/// trust is one for a version marked bad, and it is reset to LKG.
#[test]
fn request_reset_no_timestamp_version_to_lkg() {
    let acd = with_lkg(2)
        .status(|s| {
            s.data[0].bad.push(autocrane_api::crd::BadVersion {
                version: "b".into(),
                reason: "failed".into(),
                at: Time(t(0)),
            })
        })
        .build();
    let pods = [pod("p1").on("d", "b", t(0)).build(), on_lkg("p2")];
    let plan = plan_for(&acd, &pods, &[("d", &["b", "a"])], t(1000));
    assert_eq!(data_sets(&plan), [("p1".into(), "d".into(), "a".into())]);
    assert_eq!(
        plan.status.data[0].stage, None,
        "a bad version is never rolled out again"
    );
}

/// Original: a pod on an intermediate version `c` goes straight to latest. Ours: a pod only moves
/// to the version being rolled out when the rollout says so — once promoted it gets `b`, during
/// the canary it returns to LKG (an unvalidated version is not a canary nobody chose).
#[test]
fn request_upgrade_middle_version_to_latest() {
    let promoted = with_lkg(2).status(|s| {
        canary_of_b(s, t(0));
        s.data[0].stage = Some(DataStage::Promoted);
    });
    let pods = [
        pod("p1").on("d", "b", t(0)).build(),
        pod("p2").on("d", "c", t(0)).build(),
    ];
    let plan = plan_for(&promoted.build(), &pods, &[("d", &["b", "a"])], t(1000));
    assert_eq!(data_sets(&plan), [("p2".into(), "d".into(), "b".into())]);

    let canary = with_lkg(4).status(|s| canary_of_b(s, t(0))).build();
    let pods = [
        pod("p1").on("d", "b", t(900)).build(),
        pod("p2").on("d", "c", t(0)).build(),
        on_lkg("p3"),
        on_lkg("p4"),
    ];
    let plan = plan_for(&canary, &pods, &[("d", &["b", "a"])], t(1000));
    assert_eq!(data_sets(&plan), [("p2".into(), "d".into(), "a".into())]);
}

/// Original: no LKG → null (in practice its LKG store then jumps to the newest version, W17).
/// Ours: with nothing known good there is nothing to canary against, so the first version goes to
/// every pod (stage Promoted) and becomes LKG only once all applied it and baked.
#[test]
fn request_no_lkg() {
    let acd = deployment()
        .replicas(2)
        .data_source("d")
        .canary(25, 600)
        .build();
    let pods = [pod("p1").build(), pod("p2").build()];
    let plan = plan_for(&acd, &pods, &[("d", &["b"])], t(1000));
    assert_eq!(data_sets(&plan).len(), 2);
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Promoted));
    assert_eq!(plan.status.data[0].lkg, None);
}

/// Original: no latest → null. Ours: nothing synced, nothing assigned, nothing started.
#[test]
fn request_no_latest() {
    let acd = deployment().replicas(1).data_source("d").build();
    let plan = plan_for(&acd, &[pod("p1").build()], &[], t(1000));
    assert!(data_sets(&plan).is_empty());
    assert_eq!(plan.status.data[0].target, None);
}

/// Original: a `deps` pod with an error watchdog holds the upgrade of all three users.
/// Ours: there is no `deps` annotation (a deployment's pods are its consumers); canaries are
/// chosen only among available pods, so users that are themselves in error get nothing new.
#[test]
fn watchdogs_failing_do_not_upgrade() {
    let pods: Vec<PodView> = ["pod1", "pod2", "pod3"]
        .iter()
        .map(|n| pod(n).on("d", "a", t(0)).health(Error, t(10)).build())
        .collect();
    let plan = plan_for(&with_lkg(3).build(), &pods, &[("d", &["b", "a"])], t(1000));
    assert!(data_sets(&plan).is_empty(), "{:?}", data_sets(&plan));
}

/// Original: 3 users on LKG → keep floor(0.75×3)=2, so pod3 (last in API list order) gets latest.
/// Ours: canary count floor(25%×3) but at least 1 = 1, chosen by name, not list order (W17): pod1.
#[test]
fn put_some_pods_on_latest() {
    let pods = [on_lkg("pod3"), on_lkg("pod1"), on_lkg("pod2")];
    let plan = plan_for(&with_lkg(3).build(), &pods, &[("d", &["b", "a"])], t(1000));
    assert_eq!(data_sets(&plan), [("pod1".into(), "d".into(), "b".into())]);
}

/// Original: pod3 on latest past probation (1/3 ≥ 25%) → pod1 and pod2 get latest.
/// Ours: the same once pod3 — the canary — has *reported* `b` applied and baked; a canary that
/// never reported (the original counted it anyway, W16) holds the promotion, and once the data
/// progress deadline has passed it fails the version instead.
#[test]
fn finish_upgrade_to_latest() {
    let acd = with_lkg(3)
        .data_deadline(BAKE as u64 + 1)
        .status(|s| canary_of_b(s, t(0)))
        .build();
    let pods = [
        on_lkg("pod1"),
        on_lkg("pod2"),
        pod("pod3").on("d", "b", t(0)).build(),
    ];
    let plan = plan_for(&acd, &pods, &[("d", &["b", "a"])], t(BAKE));
    assert_eq!(
        data_sets(&plan),
        [
            ("pod1".into(), "d".into(), "b".into()),
            ("pod2".into(), "d".into(), "b".into())
        ]
    );
    assert_eq!(plan.status.data[0].stage, Some(DataStage::Promoted));

    let silent = [
        on_lkg("pod1"),
        on_lkg("pod2"),
        pod("pod3").wants("d", "b").build(),
    ];
    let plan = plan_for(&acd, &silent, &[("d", &["b", "a"])], t(BAKE));
    assert!(data_sets(&plan).is_empty());
    let plan = plan_for(&acd, &silent, &[("d", &["b", "a"])], t(BAKE + 1));
    assert_eq!(
        plan.status.data[0].bad[0].version, "b",
        "silent past the deadline"
    );
    assert_eq!(data_sets(&plan), [("pod3".into(), "d".into(), "a".into())]);
}

fn canary_of_b(
    status: &mut autocrane_api::crd::AutoCraneDeploymentStatus,
    at: crate::model::Timestamp,
) {
    status.data[0].target = Some("b".into());
    status.data[0].stage = Some(DataStage::Canary);
    status.data[0].stage_started_at = Some(Time(at));
}
