//! Oracles for the property tests: the harness's own record of what the planner did (a
//! [`Ledger`]) and the promises judged from the spec, the pods and the actions alone — never from
//! the planner's own functions or the status it wrote.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use super::builders::World;
use crate::model::{Action, DeleteReason, Health, Plan, PodPhase, PodView, Timestamp, elapsed};

/// What the harness itself saw the planner do, kept apart from the planner's status so the
/// promises are judged by an independent record: a planner that forgot to record a rollback or a
/// restart in its status is caught here.
#[derive(Clone, Debug, Default)]
pub(super) struct Ledger {
    /// App versions the planner quarantined (rolled back).
    pub rolled_back: BTreeSet<String>,
    /// `(source, version)` data versions the planner quarantined.
    pub data_quarantined: BTreeSet<(String, String)>,
    /// `(slot, when)` of every restart the planner asked for.
    pub restarts: Vec<(String, Timestamp)>,
}

impl Ledger {
    /// Notes what `plan`, planned at `world.now` over `world.pods`, did.
    pub(super) fn record(&mut self, world: &World, plan: &Plan) {
        // Rolled back: quarantined in the VersionWatcher (a followed source) or only listed as
        // bad (a pinned version).
        for bad in &plan.status.bad_versions {
            if !bad
                .version
                .starts_with(crate::revision::BAD_REVISION_PREFIX)
            {
                self.rolled_back.insert(bad.version.clone());
            }
        }
        for action in &plan.actions {
            match action {
                Action::QuarantineAppVersion { version, .. } => {
                    self.rolled_back.insert(version.clone());
                }
                Action::QuarantineDataVersion {
                    source, version, ..
                } => {
                    self.data_quarantined
                        .insert((source.clone(), version.clone()));
                }
                Action::DeletePod {
                    name,
                    reason: DeleteReason::Restart,
                } => {
                    let pod = world.pods.iter().find(|p| &p.name == name).unwrap();
                    self.restarts.push((pod.slot.clone(), world.now));
                }
                _ => {}
            }
        }
    }

    /// Slots the harness saw restarted within `window` whose replacement has not come up yet:
    /// a replacement (a pod of the slot created since the restart) is starting, or none exists
    /// and the restarted pod is still terminating. A Ready replacement ends it, and so does one
    /// in error: it has started (a Ready pod gone unready while failing looks the same).
    pub(super) fn down(
        &self,
        pods: &[PodView],
        window: std::time::Duration,
        now: Timestamp,
    ) -> usize {
        let mut latest: BTreeMap<&str, Timestamp> = BTreeMap::new();
        for (slot, at) in self
            .restarts
            .iter()
            .filter(|(_, at)| elapsed(now, *at) < window)
        {
            let entry = latest.entry(slot.as_str()).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        latest
            .into_iter()
            .filter(|(slot, at)| {
                let in_slot: Vec<&PodView> = pods.iter().filter(|p| p.slot == *slot).collect();
                let replacements: Vec<&&PodView> =
                    in_slot.iter().filter(|p| p.created_at >= *at).collect();
                if replacements.is_empty() {
                    !in_slot.is_empty()
                } else {
                    let up = |p: &&&PodView| {
                        !p.deleting && (p.ready_since.is_some() || p.health == Health::Error)
                    };
                    let starting = |p: &&&PodView| !p.deleting && !up(p);
                    !replacements.iter().any(up) && replacements.iter().any(starting)
                }
            })
            .count()
    }
}

/// The data versions the harness saw pinned and not unpinned, from every action carried out.
pub(super) fn held_pins(world: &World) -> BTreeSet<(String, String)> {
    let mut held = BTreeSet::new();
    for action in &world.actions {
        match action {
            Action::PinData { source, version } => {
                held.insert((source.clone(), version.clone()));
            }
            Action::UnpinData { source, version } => {
                held.remove(&(source.clone(), version.clone()));
            }
            _ => {}
        }
    }
    held
}

/// A deployment being deleted: no pod is created (nor anything else done) and every version
/// still pinned — by the harness's record and by the status — is unpinned.
pub(super) fn check_deletion(world: &World, plan: &Plan) -> Result<(), TestCaseError> {
    let mut unpinned = BTreeSet::new();
    for action in &plan.actions {
        match action {
            Action::UnpinData { source, version } => {
                unpinned.insert((source.clone(), version.clone()));
            }
            other => prop_assert!(false, "a deleting deployment plans {other:?}"),
        }
    }
    let mut held = held_pins(world);
    for d in &world.status().data {
        for v in [&d.lkg, &d.target, &d.current].into_iter().flatten() {
            held.insert((d.name.clone(), v.clone()));
        }
    }
    prop_assert!(
        held.is_subset(&unpinned),
        "held {held:?}, unpinned {unpinned:?}"
    );
    prop_assert!(!plan.holds_pins, "the finalizer would never go");
    prop_assert!(plan.events.is_empty() && plan.reactions.is_empty());
    Ok(())
}

/// `replicas - maxUnavailable` (a percentage of replicas rounded down), from the spec alone.
pub(super) fn oracle_min_available(spec: &autocrane_api::crd::AutoCraneDeploymentSpec) -> usize {
    let replicas = usize::try_from(spec.replicas).unwrap_or(0);
    let unavailable = match &spec.rollout.max_unavailable {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(0),
        IntOrString::String(p) => {
            replicas * p.trim_end_matches('%').parse::<usize>().unwrap() / 100
        }
    };
    replicas.saturating_sub(unavailable)
}

/// The canary share: `percent` (1..=100) of the Running pods rounded down, but at least one.
fn oracle_canary_cap(percent: i32, running: usize) -> usize {
    if running == 0 {
        return 0;
    }
    let percent = usize::try_from(percent.clamp(1, 100)).unwrap();
    (running * percent / 100).max(1)
}

/// The harness's own judgement of a plan, from the inputs, the actions and its [`Ledger`].
pub(super) fn check_plan_by_oracles(
    world: &World,
    plan: &Plan,
    ledger: &Ledger,
) -> Result<(), TestCaseError> {
    let spec = &world.acd.spec;
    let now = world.now;
    let deleted: BTreeSet<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();

    // Availability floor, from the spec.
    let before = world.pods.iter().filter(|p| p.available()).count();
    let after_deletes = world
        .pods
        .iter()
        .filter(|p| p.available() && !deleted.contains(p.name.as_str()))
        .count();
    let floor = oracle_min_available(spec);
    prop_assert!(
        after_deletes >= before.min(floor),
        "oracle: available {before} -> {after_deletes}, floor {floor}"
    );

    // Restarts per slot within the window, counted from the restarts the harness saw.
    let limit = &spec.failing_limit;
    let mut per_slot: BTreeMap<String, usize> = BTreeMap::new();
    let mut ledger_now = ledger.clone();
    ledger_now.record(world, plan);
    for (slot, at) in &ledger_now.restarts {
        if elapsed(now, *at) < limit.window.as_std() {
            *per_slot.entry(slot.clone()).or_default() += 1;
        }
    }
    for (slot, count) in &per_slot {
        prop_assert!(
            *count <= usize::try_from(limit.max_restarts_per_pod).unwrap(),
            "oracle: slot {slot} restarted {count} times within {}",
            limit.window
        );
    }

    // Nothing of a version the harness saw rolled back is created again, and nothing is
    // quarantined twice (a quarantine that repeats is a write loop).
    let mut quarantined_now = BTreeSet::new();
    for action in &plan.actions {
        match action {
            Action::QuarantineAppVersion { version, .. } => {
                prop_assert!(
                    !ledger.rolled_back.contains(version),
                    "{version} quarantined again"
                );
                quarantined_now.insert(version.clone());
            }
            Action::QuarantineDataVersion {
                source, version, ..
            } => {
                prop_assert!(
                    !ledger
                        .data_quarantined
                        .contains(&(source.clone(), version.clone())),
                    "{source} {version} quarantined again"
                );
            }
            _ => {}
        }
    }
    for action in &plan.actions {
        if let Action::CreatePod {
            version: Some(version),
            ..
        } = action
        {
            prop_assert!(
                !ledger.rolled_back.contains(version) && !quarantined_now.contains(version),
                "oracle: created a pod of rolled-back {version}"
            );
        }
    }

    // Canaries: after this plan, a data version newer than the oldest one the staying pods want
    // is a canary, held to its share of the Running pods (or to what it already had).
    let staying: Vec<&PodView> = world
        .pods
        .iter()
        .filter(|p| !p.deleting && !p.finished() && !deleted.contains(p.name.as_str()))
        .collect();
    let running = staying
        .iter()
        .filter(|p| p.phase == PodPhase::Running)
        .count();
    for source in &spec.data {
        let name = source.name.as_str();
        let order = &world.data[name];
        let age = |v: &str| order.iter().position(|o| o == v).unwrap_or(usize::MAX);
        let wanted_before = |pod: &PodView| -> Option<String> {
            pod.data.get(name).and_then(|d| d.desired.clone())
        };
        let wanted_after = |pod: &PodView| -> Option<String> {
            let mut want = wanted_before(pod);
            for action in &plan.actions {
                match action {
                    Action::SetPodData {
                        pod: p,
                        source,
                        version,
                    } if *p == pod.name && source == name => want = Some(version.clone()),
                    Action::ClearPodData { pod: p, source } if *p == pod.name && source == name => {
                        want = None
                    }
                    _ => {}
                }
            }
            want
        };
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for pod in &staying {
            if let Some(v) = wanted_before(pod) {
                counts.entry(v).or_default().0 += 1;
            }
            if let Some(v) = wanted_after(pod) {
                counts.entry(v).or_default().1 += 1;
            }
        }
        let in_use: Vec<&String> = counts
            .iter()
            .filter(|(_, c)| c.1 > 0)
            .map(|(v, _)| v)
            .collect();
        let oldest = in_use.iter().copied().max_by_key(|v| age(v));
        let cap = oracle_canary_cap(spec.data_rollout.canary_percent, running);
        for (version, (had, has)) in &counts {
            if Some(version) == oldest || *has == 0 || *has == staying.len() {
                continue;
            }
            prop_assert!(
                *has <= cap.max(*had),
                "oracle: {name} {version} on {has} of {} pods (had {had}), canary cap {cap}",
                staying.len()
            );
        }
    }
    Ok(())
}
