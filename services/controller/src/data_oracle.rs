//! The data oracle: which pod holds which version of each data source.
//!
//! Per source, independently: a newly synced version goes to a canary share of the running pods
//! (at least one); once every canary's DataDeployer has reported it applied and the canaries stayed
//! Ready and out of `error` for the bake time, every pod gets it; once every pod has applied it and
//! baked, it becomes last-known-good (LKG). A pod that reports a failed apply, or goes `error` after
//! applying, sends every pod back to LKG and the version is marked bad for good.
//!
//! Differences from the original's oracle (reference §3.6, weaknesses W16/W17), on purpose:
//! probation counts from the DataDeployer's *applied* report, not from when the annotation was
//! written; canaries are rolled back on their own watchdogs; LKG is computed over this
//! deployment's pods only; the canary share and bake are configurable; canaries are chosen by
//! name among available Running pods, not by API list order; and a single-replica deployment is
//! a canary of one (it still bakes before the version becomes LKG).

use std::collections::BTreeSet;
use std::time::Duration as StdDuration;

use autocrane_api::crd::{BadVersion, DataRollout, DataSourceStatus, DataStage};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::reason;
use crate::model::{Event, Health, PodPhase, PodView, Timestamp, Wakeup, after};

/// Canary pods for `running` Running pods: `percent` of them rounded down, at least one.
pub fn canary_count(percent: i32, running: usize) -> usize {
    let percent = usize::try_from(percent.clamp(1, 100)).unwrap_or(100);
    (running * percent / 100).max(1).min(running)
}

/// The version a pod of this source should hold, given no other information (a new pod).
pub fn initial_version(status: &DataSourceStatus) -> Option<String> {
    match status.stage {
        Some(DataStage::Promoted) => status.target.clone().or_else(|| status.lkg.clone()),
        _ => status.lkg.clone(),
    }
}

/// What happened to one source in this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceDecision {
    /// The new status of the source.
    pub status: DataSourceStatus,
    /// `(pod, version)` annotations to set.
    pub set: Vec<(String, String)>,
    /// Pods whose annotation must go (nothing to fall back to).
    pub clear: Vec<String>,
    /// `(version, reason)` to quarantine.
    pub quarantine: Option<(String, String)>,
    /// Events.
    pub events: Vec<Event>,
}

fn applied_ok<'a>(
    pod: &'a PodView,
    source: &str,
    version: &str,
) -> Option<&'a crate::model::Applied> {
    pod.data
        .get(source)?
        .applied
        .as_ref()
        .filter(|a| a.ok && a.version == version)
}

fn desired<'a>(pod: &'a PodView, source: &str) -> Option<&'a str> {
    pod.data.get(source)?.desired.as_deref()
}

/// Applied `version` and stayed available for `bake` since then.
fn baked(
    pod: &PodView,
    source: &str,
    version: &str,
    bake: StdDuration,
    now: Timestamp,
    wake: &mut Wakeup,
) -> bool {
    let (Some(applied), Some(good)) = (applied_ok(pod, source, version), pod.good_since()) else {
        return false;
    };
    let done = after(good.max(applied.at), bake);
    wake.at(done);
    done <= now
}

/// The app sees a new version when its DataDeployer swaps the live link, a moment before the
/// DataDeployer's report is written, and both moments are known to the second: an error that
/// began up to this long before the report is an error on the new version.
const REPORT_LAG: StdDuration = StdDuration::from_secs(1);

/// A pod that was switched to `version` and reported failure, or went `error` afterwards.
fn failed_on(pod: &PodView, source: &str, version: &str) -> bool {
    let Some(applied) = pod.data.get(source).and_then(|d| d.applied.as_ref()) else {
        return false;
    };
    applied.version == version
        && desired(pod, source) == Some(version)
        && (!applied.ok
            || (pod.health == Health::Error && after(pod.health_since, REPORT_LAG) >= applied.at))
}

/// A Running pod that holds `version` as desired, has not reported it (applied or failed), and
/// has had `deadline` to do so since the stage started (or since it was created, if later). The
/// stage clock restarts whenever canaries are added (see [`start_and_assign`]), so it is never
/// earlier than the moment the pod was asked.
fn silent_past_deadline(
    pod: &PodView,
    source: &str,
    version: &str,
    stage_started_at: Timestamp,
    deadline: StdDuration,
    now: Timestamp,
    wake: &mut Wakeup,
) -> bool {
    let reported = pod
        .data
        .get(source)
        .and_then(|d| d.applied.as_ref())
        .is_some_and(|a| a.version == version);
    if reported || pod.phase != PodPhase::Running || desired(pod, source) != Some(version) {
        return false;
    }
    let due = after(stage_started_at.max(pod.created_at), deadline);
    wake.at(due);
    due <= now
}

/// Marks `target` bad for `why` (never retried, quarantined), starts the revert to LKG and emits
/// the Warning `event`.
fn fail_target(
    status: &mut DataSourceStatus,
    decision: &mut SourceDecision,
    target: String,
    why: String,
    event: &'static str,
    now: Timestamp,
) {
    status.bad.push(BadVersion {
        version: target.clone(),
        reason: why.clone(),
        at: Time(now),
    });
    status.stage = Some(DataStage::Reverting);
    status.stage_started_at = Some(Time(now));
    decision.events.push(Event::warning(
        event,
        format!(
            "{why}; reverting to {}",
            status.lkg.as_deref().unwrap_or("nothing")
        ),
    ));
    decision.quarantine = Some((target, why));
}

/// Moves a rollout already in progress: detects failures, promotes canaries, declares LKG, ends a
/// revert. `live` are the deployment's pods that are not being deleted.
pub fn advance(
    config: &DataRollout,
    old: &DataSourceStatus,
    live: &[&PodView],
    now: Timestamp,
    wake: &mut Wakeup,
) -> SourceDecision {
    let source = old.name.as_str();
    let mut status = old.clone();
    let mut decision = SourceDecision::default();
    let bake = config.bake.as_std();
    // A stage change can enable the next one at once (a single canary that already baked is also
    // every pod), so step until the stage holds; that keeps re-planning a no-op. No stage is
    // entered twice in a pass, so that takes as many steps as there are stages at most.
    for _ in 0..3 {
        let (Some(target), Some(stage)) = (status.target.clone(), status.stage) else {
            break;
        };
        match stage {
            DataStage::Reverting => {
                // Every pod is sent back to LKG in this same pass (see `start_and_assign`), so the
                // revert is over once no pod still runs the bad version (with no LKG to return
                // to, clearing the annotation is all that can be undone).
                let lingering = status.lkg.is_some()
                    && live
                        .iter()
                        .any(|p| applied_ok(p, source, &target).is_some());
                if !lingering {
                    status.target = None;
                    status.stage = None;
                    status.stage_started_at = None;
                }
            }
            _ if let Some(pod) = live.iter().find(|p| failed_on(p, source, &target)) => {
                let why = format!("pod {} failed on {source} version {target}", pod.name);
                fail_target(
                    &mut status,
                    &mut decision,
                    target,
                    why,
                    reason::DATA_VERSION_FAILED,
                    now,
                );
            }
            DataStage::Canary | DataStage::Promoted
                if let Some(pod) = status.stage_started_at.as_ref().and_then(|started| {
                    live.iter().find(|p| {
                        silent_past_deadline(
                            p,
                            source,
                            &target,
                            started.0,
                            config.progress_deadline.as_std(),
                            now,
                            wake,
                        )
                    })
                }) =>
            {
                let why = format!(
                    "pod {} did not report {source} version {target} within the data progress deadline ({})",
                    pod.name, config.progress_deadline,
                );
                fail_target(
                    &mut status,
                    &mut decision,
                    target,
                    why,
                    reason::DATA_PROGRESS_DEADLINE_EXCEEDED,
                    now,
                );
            }
            DataStage::Canary => {
                let running = live.iter().filter(|p| p.phase == PodPhase::Running).count();
                let canaries: Vec<&&PodView> = live
                    .iter()
                    .filter(|p| desired(p, source) == Some(&target))
                    .collect();
                let enough =
                    running > 0 && canaries.len() >= canary_count(config.canary_percent, running);
                // Every canary is looked at (no short-circuit) so each bake end is noted for the requeue.
                let all_baked = canaries
                    .iter()
                    .filter(|p| !baked(p, source, &target, bake, now, wake))
                    .count()
                    == 0;
                if enough && all_baked {
                    status.stage = Some(DataStage::Promoted);
                    status.stage_started_at = Some(Time(now));
                    decision.events.push(Event::normal(reason::DATA_PROMOTED, format!("{source} version {target} passed its {} canaries; deploying to all pods", canaries.len())));
                }
            }
            DataStage::Promoted => {
                let unbaked = live
                    .iter()
                    .filter(|p| {
                        !(desired(p, source) == Some(&target)
                            && baked(p, source, &target, bake, now, wake))
                    })
                    .count();
                let all_baked = !live.is_empty() && unbaked == 0;
                if all_baked {
                    status.lkg = Some(target.clone());
                    status.target = None;
                    status.stage = None;
                    status.stage_started_at = None;
                    decision.events.push(Event::normal(reason::DATA_LAST_KNOWN_GOOD, format!("{source} version {target} applied and baked on all {} pods; it is now last-known-good", live.len())));
                }
            }
        }
        if status.stage == Some(stage) {
            break;
        }
    }
    let first = live
        .first()
        .and_then(|p| p.data.get(source)?.applied.as_ref())
        .filter(|a| a.ok)
        .map(|a| a.version.clone());
    if first.is_some()
        && live.iter().all(|p| {
            p.data
                .get(source)
                .and_then(|d| d.applied.as_ref())
                .is_some_and(|a| a.ok && Some(&a.version) == first.as_ref())
        })
    {
        status.current = first;
    }
    decision.status = status;
    decision
}

/// Starts a rollout of the newest usable synced version (unless `hold`), then says which pods
/// must change their desired version. `versions` is newest first.
pub fn start_and_assign(
    config: &DataRollout,
    mut decision: SourceDecision,
    versions: &[String],
    live: &[&PodView],
    hold: bool,
    now: Timestamp,
) -> SourceDecision {
    let status = &mut decision.status;
    let source = status.name.clone();
    // The newest usable version, but never one older than LKG (a version list is newest first);
    // with LKG missing from the list the order is unknown, so nothing new starts.
    let lkg_listed = status.lkg.as_ref().is_none_or(|lkg| versions.contains(lkg));
    let candidate = versions
        .iter()
        .take_while(|v| Some(*v) != status.lkg.as_ref())
        .find(|v| !status.bad.iter().any(|b| &b.version == *v))
        .filter(|_| lkg_listed);
    if status.stage.is_none()
        && let Some(version) = candidate
    {
        // With no LKG there is nothing to canary against: every pod gets the first version.
        let bootstrap = status.lkg.is_none();
        if bootstrap || !hold {
            status.target = Some(version.clone());
            status.stage = Some(if bootstrap {
                DataStage::Promoted
            } else {
                DataStage::Canary
            });
            status.stage_started_at = Some(Time(now));
            let (why, what) = if bootstrap {
                (
                    reason::DATA_ROLLOUT_STARTED,
                    format!(
                        "{source} version {version} deployed to all pods (no last-known-good yet)"
                    ),
                )
            } else {
                (
                    reason::DATA_CANARY_STARTED,
                    format!(
                        "{source} version {version} canaried on {}% of pods",
                        config.canary_percent
                    ),
                )
            };
            decision.events.push(Event::normal(why, what));
        }
    }
    let lkg = decision.status.lkg.clone();
    let target = decision.status.target.clone();
    if let (Some(DataStage::Canary), Some(target)) = (decision.status.stage, target.as_ref()) {
        let running = live.iter().filter(|p| p.phase == PodPhase::Running).count();
        let canaries = live
            .iter()
            .filter(|p| desired(p, &source) == Some(target))
            .count();
        let mut candidates: Vec<&&PodView> = live
            .iter()
            .filter(|p| {
                p.phase == PodPhase::Running && p.available() && desired(p, &source) != Some(target)
            })
            .collect();
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        for pod in candidates
            .into_iter()
            .take(canary_count(config.canary_percent, running).saturating_sub(canaries))
        {
            decision.set.push((pod.name.clone(), target.clone()));
        }
        // A canary added after the stage started (one replacing a canary that went away) is
        // given the version now: the silence deadline counts from here, or the next pass would
        // fail the version for a pod that was asked a moment ago (and ask again forever).
        if !decision.set.is_empty() {
            decision.status.stage_started_at = Some(Time(now));
        }
    }
    let status = &decision.status;
    let chosen: BTreeSet<String> = decision.set.iter().map(|(p, _)| p.clone()).collect();
    for pod in live.iter().filter(|p| !chosen.contains(&p.name)) {
        let have = desired(pod, &source);
        let want = match (status.stage, target.as_deref()) {
            (Some(DataStage::Promoted), Some(t)) => Some(t),
            (Some(DataStage::Canary), Some(t)) if have == Some(t) => Some(t),
            _ => lkg.as_deref(),
        };
        match want {
            Some(want) if have != Some(want) => {
                decision.set.push((pod.name.clone(), want.to_string()))
            }
            None if have.is_some() => decision.clear.push(pod.name.clone()),
            _ => {}
        }
    }
    decision
}
