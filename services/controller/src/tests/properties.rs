//! Property tests: random deployments driven through random event sequences (pods failing and
//! recovering, readiness flapping, new app and data versions — some broken — and time passing),
//! checking after every planning pass the promises the controller makes.

use std::collections::BTreeSet;

use autocrane_api::crd::{DataStage, RolloutStep};
use autocrane_api::duration::Duration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use super::builders::*;
use super::oracles::{Ledger, check_deletion, check_plan_by_oracles, oracle_min_available};
use crate::data_oracle::canary_count;
use crate::failing::in_flight;
use crate::model::{Action, DeleteReason, Plan, PodPhase, PodView, after, elapsed};
use crate::revision::BadSet;
use crate::rollout::Budget;

#[derive(Clone, Debug)]
enum Ev {
    Tick(i64),
    Kubelet,
    NewAppVersion { broken: bool },
    NewDataVersion { source: usize, broken: bool },
    Break(usize),
    Heal(usize),
    Unready(usize),
    Ready(usize),
    Scale(i32),
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (1i64..120).prop_map(Ev::Tick),
        4 => Just(Ev::Kubelet),
        1 => any::<bool>().prop_map(|broken| Ev::NewAppVersion { broken }),
        1 => (0usize..2, any::<bool>()).prop_map(|(source, broken)| Ev::NewDataVersion { source, broken }),
        2 => (0usize..16).prop_map(Ev::Break),
        2 => (0usize..16).prop_map(Ev::Heal),
        1 => (0usize..16).prop_map(Ev::Unready),
        1 => (0usize..16).prop_map(Ev::Ready),
        1 => (0i32..10).prop_map(Ev::Scale),
    ]
}

fn int_or_percent() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        (0i32..3).prop_map(IntOrString::Int),
        (0i32..60).prop_map(|p| IntOrString::String(format!("{p}%")))
    ]
}

prop_compose! {
    fn world()(
        replicas in 1i32..10,
        first_step in 1i32..100,
        bake in 0u64..120,
        steps in 1usize..4,
        surge in int_or_percent(),
        unavailable in int_or_percent(),
        deadline in 60u64..600,
        canary in 1i32..100,
        data_bake in 0u64..120,
        exclusive in any::<bool>(),
        threshold in 0u64..120,
        concurrent in 0i32..3,
        per_pod in 1i32..4,
        window in 60u64..1000,
    ) -> World {
        let mut acd = deployment()
            .replicas(replicas)
            .pinned("v0")
            .surge(surge)
            .max_unavailable(unavailable)
            .deadline(deadline)
            .data_source("d")
            .data_source("e")
            .canary(canary, data_bake)
            .exclusive(exclusive)
            .failing(threshold, concurrent, per_pod, window);
        let mut list = Vec::new();
        let mut percent = first_step.min(100);
        for _ in 1..steps {
            if percent < 100 {
                list.push(RolloutStep { percent, bake: Duration::from_secs(bake) });
                percent = (percent * 2).min(100);
            }
        }
        list.push(RolloutStep { percent: 100, bake: Duration::from_secs(bake) });
        acd.0.spec.rollout.steps = list;
        let mut world = World::new(acd);
        world.data.insert("d".into(), vec!["d0".into()]);
        world.data.insert("e".into(), vec!["e0".into()]);
        world.settle(30);
        world
    }
}

/// The promises one plan keeps, given the pods it saw.
fn check_plan(world: &World, plan: &Plan) -> Result<(), TestCaseError> {
    let spec = &world.acd.spec;
    let budget = Budget::from_spec(spec).unwrap();
    let now = world.now;
    let deleted: BTreeSet<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();

    // Unavailability: the controller's own deletions never take availability below
    // replicas - maxUnavailable (pods that fail on their own are not its doing).
    let before = world.pods.iter().filter(|p| p.available()).count();
    let after_deletes = world
        .pods
        .iter()
        .filter(|p| p.available() && !deleted.contains(p.name.as_str()))
        .count();
    prop_assert!(
        after_deletes >= before.min(budget.min_available()),
        "available {before} -> {after_deletes}, floor {}",
        budget.min_available()
    );

    // Restarts within budget.
    let limit = &spec.failing_limit;
    let restarts = plan
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::DeletePod {
                    reason: DeleteReason::Restart,
                    ..
                }
            )
        })
        .count();
    prop_assert!(
        restarts <= usize::try_from(limit.max_concurrent_restarts).unwrap(),
        "{restarts} restarts in one pass, maxConcurrentRestarts {}; pods {:#?}; records {:#?}; actions {:#?}",
        limit.max_concurrent_restarts,
        world.pods,
        world.acd.status.as_ref().map(|s| &s.restarts),
        plan.actions
    );
    for record in &plan.status.restarts {
        let same = plan
            .status
            .restarts
            .iter()
            .filter(|r| r.pod == record.pod)
            .count();
        prop_assert!(
            same <= usize::try_from(limit.max_restarts_per_pod).unwrap(),
            "slot {} restarted {same} times",
            record.pod
        );
        prop_assert!(elapsed(now, record.at.0) < limit.window.as_std());
    }

    // Data: canaries stay within their share until promotion; LKG only after every pod
    // applied and baked.
    let live: Vec<&PodView> = world
        .pods
        .iter()
        .filter(|p| !p.deleting && !p.finished())
        .collect();
    // The pods that stay after this pass's deletions.
    let staying: Vec<&PodView> = live
        .iter()
        .copied()
        .filter(|p| !deleted.contains(p.name.as_str()))
        .collect();
    let running = staying
        .iter()
        .filter(|p| p.phase == PodPhase::Running)
        .count();
    let old = world.status();
    for source in &plan.status.data {
        let name = source.name.as_str();
        let wants = |pod: &PodView, version: &str| {
            pod.data.get(name).and_then(|d| d.desired.as_deref()) == Some(version)
        };
        if let (Some(DataStage::Canary), Some(target)) = (source.stage, source.target.as_deref()) {
            let before = staying.iter().filter(|p| wants(p, target)).count();
            let set_now = plan.actions.iter().filter(|a| matches!(a, Action::SetPodData { source, version, .. } if source == name && version == target)).count();
            let cap = canary_count(spec.data_rollout.canary_percent, running).max(before);
            prop_assert!(
                before + set_now <= cap,
                "{name}: {before}+{set_now} canaries, cap {cap}"
            );
        }
        let previous = old
            .data
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.lkg.clone());
        if source.lkg != previous {
            let lkg = source.lkg.as_deref().unwrap();
            // Every pod that stays: pods this pass deletes no longer count.
            for pod in &staying {
                let applied = pod.data.get(name).and_then(|d| d.applied.as_ref());
                let applied = applied.filter(|a| a.ok && a.version == lkg);
                prop_assert!(
                    applied.is_some(),
                    "{name}={lkg} LKG but {} has not applied it\npods: {:#?}\nstatus before: {:#?}\nplan: {:#?}",
                    pod.name,
                    world.pods,
                    old.data,
                    plan
                );
                let good = pod.good_since().unwrap();
                prop_assert!(
                    after(
                        good.max(applied.unwrap().at),
                        spec.data_rollout.bake.as_std()
                    ) <= now
                );
            }
        }
    }

    // No pod of a bad version is ever created.
    let bad = BadSet::new(&plan.status, &world.offered);
    for action in &plan.actions {
        if let Action::CreatePod {
            revision, version, ..
        } = action
        {
            prop_assert!(
                !bad.contains(revision, version.as_deref()),
                "created a pod of bad {version:?}"
            );
        }
    }
    Ok(())
}

fn apply_event(world: &mut World, ev: &Ev, versions: &mut usize, data: &mut [usize; 2]) {
    let n = world.pods.len().max(1);
    let now = world.now;
    match *ev {
        Ev::Tick(s) => world.tick(s),
        Ev::Kubelet => world.kubelet(),
        Ev::NewAppVersion { broken } => {
            *versions += 1;
            let v = format!("v{versions}");
            if broken {
                world.broken_versions.insert(v.clone());
            }
            world.acd.spec.version.as_mut().unwrap().pinned = Some(v);
        }
        Ev::NewDataVersion { source, broken } => {
            data[source] += 1;
            let name = ["d", "e"][source];
            let v = format!("{name}{}", data[source]);
            if broken {
                world.broken_data.insert(v.clone());
            }
            world.data.get_mut(name).unwrap().insert(0, v);
        }
        Ev::Break(i) | Ev::Heal(i) | Ev::Unready(i) | Ev::Ready(i) if world.pods.is_empty() => {
            let _ = i;
        }
        Ev::Break(i) => {
            let pod = &mut world.pods[i % n];
            if pod.health != Error {
                pod.health = Error;
                pod.health_since = now;
            }
        }
        Ev::Heal(i) => {
            let pod = &mut world.pods[i % n];
            if pod.health == Error
                && pod
                    .version
                    .as_ref()
                    .is_none_or(|v| !world.broken_versions.contains(v))
            {
                pod.health = Info;
                pod.health_since = now;
            }
        }
        Ev::Unready(i) => world.pods[i % n].ready_since = None,
        Ev::Ready(i) => {
            let pod = &mut world.pods[i % n];
            if pod.phase == PodPhase::Running && pod.ready_since.is_none() {
                pod.ready_since = Some(now);
            }
        }
        Ev::Scale(r) => world.acd.spec.replicas = r,
    }
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise (20000 for a longer search).
    #![proptest_config(ProptestConfig::default())]

    /// Every invariant, after every pass; re-planning right after applying a plan does nothing;
    /// and once the fleet is left alone, no pod runs a version that was rolled back. When the
    /// deployment is deleted at some point (its finalizer kept while events go on, as when the
    /// unpins keep failing), no pod is created for it any more and every pinned version is
    /// unpinned.
    #[test]
    fn plans_keep_their_promises(
        mut world in world(),
        events in prop::collection::vec(event(), 1..40),
        delete_at in prop::option::of(0usize..40),
    ) {
        let mut versions = 0;
        let mut data = [0, 0];
        let mut ledger = Ledger::default();
        let window = world.acd.spec.failing_limit.window.as_std();
        for (i, ev) in events.iter().enumerate() {
            if delete_at == Some(i) {
                world.acd.metadata.deletion_timestamp = Some(Time(world.now));
            }
            let deleting = world.acd.metadata.deletion_timestamp.is_some();
            let down_before = in_flight(&world.status().restarts, &world.pods);
            let oracle_down_before = ledger.down(&world.pods, window, world.now);
            let plan = world.plan();
            if deleting {
                // The status is not written any more (it may describe restarts long past).
                check_deletion(&world, &plan)?;
            } else {
                check_plan(&world, &plan)?;
            }
            check_plan_by_oracles(&world, &plan, &ledger)?;
            ledger.record(&world, &plan);
            let lkg_before: Vec<Option<String>> = world.status().data.iter().map(|d| d.lkg.clone()).collect();
            world.apply(&plan);
            let mut again = world.plan();
            // One exception: when the pods the app rollout would replace are the ones that
            // completed a data rollout holding it, the plan completes the data rollout first
            // and the held app rollout starts on the next pass (see `Pass::converge`).
            let data_completed = plan.status.data.iter().map(|d| d.lkg.clone()).collect::<Vec<_>>() != lkg_before;
            if !deleting && data_completed && world.acd.spec.data_rollout.exclusive_with_app_rollout && !again.actions.is_empty() {
                check_plan(&world, &again)?;
                check_plan_by_oracles(&world, &again, &ledger)?;
                ledger.record(&world, &again);
                world.apply(&again);
                again = world.plan();
            }
            // A deleting deployment's unpins repeat (idempotently) until its finalizer goes.
            let expected = if deleting { plan.actions.clone() } else { Vec::new() };
            prop_assert!(
                again.actions == expected,
                "re-plan after {ev:?} wants {:?}\nfirst: {:?}\ndata: {:?}\nthen: {:?}\npods: {:?}",
                again.actions, plan.actions, plan.status.data, again.status.data, world.pods
            );
            prop_assert!(again.events.is_empty(), "re-plan emits {:?}", again.events);
            prop_assert!(again.reactions.is_empty(), "re-plan reports {:?}", again.reactions);
            // The status describes the pods as observed before the plan's actions, so it may
            // still move once; after a pass with nothing to do it must hold, or the controller
            // would write the status forever.
            world.apply(&again);
            let idle = world.plan();
            prop_assert_eq!(&idle.status, &again.status, "status after {:?} is not a fixpoint", ev);
            // A pass that starts restarts leaves at most maxConcurrentRestarts slots down (or as
            // many as were down already: a replacement can fail again on its own).
            let limit = usize::try_from(world.acd.spec.failing_limit.max_concurrent_restarts).unwrap();
            let status = world.status();
            let in_flight = in_flight(&status.restarts, &world.pods);
            let restarted = plan.actions.iter().any(|a| matches!(a, Action::DeletePod { reason: DeleteReason::Restart, .. }));
            prop_assert!(!restarted || in_flight <= limit.max(down_before), "{in_flight} restarts in flight, limit {limit}\nrecords: {:?}\npods: {:?}\nfirst: {:?}", status.restarts, world.pods, plan.actions);
            let oracle_down = ledger.down(&world.pods, window, world.now);
            prop_assert!(!restarted || oracle_down <= limit.max(oracle_down_before), "oracle: {oracle_down} slots down after restarts, limit {limit}\nrestarts seen: {:?}\npods: {:?}", ledger.restarts, world.pods);
            apply_event(&mut world, ev, &mut versions, &mut data);
        }
        if world.acd.metadata.deletion_timestamp.is_some() {
            // Gone once the wiring drops the finalizer: nothing converges any more.
            return Ok(());
        }
        // Left alone: pods heal unless their version is broken; rollbacks complete.
        for pod in &mut world.pods {
            if pod.version.as_ref().is_none_or(|v| !world.broken_versions.contains(v)) {
                pod.health = Info;
                if pod.phase == PodPhase::Running {
                    pod.ready_since.get_or_insert(world.now);
                }
            }
        }
        // `World::settle`, with the harness noting every plan.
        for _ in 0..200 {
            let plan = world.plan();
            ledger.record(&world, &plan);
            world.apply(&plan);
            let before = world.pods.clone();
            world.kubelet();
            if plan.actions.is_empty() && before == world.pods && plan.requeue_after.is_none() {
                break;
            }
            let wait = plan
                .requeue_after
                .map_or(1, |d| i64::try_from(d.as_secs()).unwrap_or(1).clamp(1, 60));
            world.tick(wait);
        }
        // The one exception is deliberate: an available pod of a rolled-back version stays while
        // removing it would take availability below replicas - maxUnavailable (the stable pods
        // are failing too and cannot replace it).
        let bad = BadSet::new(&world.status(), &world.offered);
        let min_available = Budget::from_spec(&world.acd.spec).unwrap().min_available();
        let good_available = world
            .pods
            .iter()
            .filter(|p| p.available() && !bad.contains(&p.revision, p.version.as_deref()))
            .count();
        // The same judged by the harness: versions it saw rolled back, the floor from the spec.
        let oracle_floor = oracle_min_available(&world.acd.spec);
        let rolled_back = |p: &PodView| p.version.as_ref().is_some_and(|v| ledger.rolled_back.contains(v));
        let oracle_good = world.pods.iter().filter(|p| p.available() && !rolled_back(p)).count();
        for pod in world.pods.iter().filter(|p| !p.deleting) {
            prop_assert!(
                (pod.available() && oracle_good < oracle_floor) || !rolled_back(pod),
                "oracle: {} still runs rolled-back {:?}\npods: {:?}",
                pod.name, pod.version, world.pods
            );
        }
        for pod in world.pods.iter().filter(|p| !p.deleting) {
            let needed = pod.available() && good_available < min_available;
            prop_assert!(
                needed || !bad.contains(&pod.revision, pod.version.as_deref()),
                "{} still runs bad {:?}\nstatus: {:?}\npods: {:?}\nplan: {:?}",
                pod.name, pod.version, world.status(), world.pods, world.plan()
            );
        }
    }
}
