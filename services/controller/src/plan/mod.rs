//! One planning pass: everything the controller does for one AutoCraneDeployment.
//!
//! The order matters and is the only place the parts meet. Each step is a method of [`Pass`]:
//! 1. [`Pass::finish`]: finished pods go; the target revision is chosen, skipping bad versions;
//! 2. [`Pass::rollback`]: an unfinished rollout whose new pods fail (or that missed its deadline)
//!    is rolled back, the version marked bad and the target chosen again;
//! 3. [`Pass::data`]: data rollouts in progress move (fail, promote, become LKG), so the app
//!    rollout sees whether one is still running;
//! 4. [`Pass::converge`]: the app rollout moves through its steps and pods converge within the
//!    surge/unavailability budget; data rollouts are moved again over the pods that remain, and a
//!    held app rollout is released at once if that finished the data rollout;
//! 5. [`Pass::restart`]: the failing limit picks restarts among the stable pods convergence
//!    keeps (chosen inside step 4, which they feed back into), and each restarted pod is replaced
//!    in its slot in the same pass;
//! 6. [`Pass::data_start`]: data rollouts start (unless held by an app rollout) and pods get their
//!    data versions; [`Pass::create_pods`] names the new pods with their initial data versions,
//!    and [`Pass::pin_data`] pins the versions that became LKG or a target;
//! 7. [`Pass::status`]: status and conditions follow from the decisions.
//!
//! A deployment being deleted (`metadata.deletionTimestamp`) is not planned at all: see
//! [`release`]. A pass that cannot plan (or whose plan the wiring cannot carry out) ends in
//! [`failed`].
//!
//! Each decision that could enable another is taken before it in this order (or taken again once
//! the later one is known), so applying a plan's actions and planning again at the same instant
//! yields no further action and no Event (a property test).

mod app;
mod data;
mod status;

use std::collections::{BTreeMap, BTreeSet};

use autocrane_api::crd::{
    AutoCraneDeployment, AutoCraneDeploymentSpec, AutoCraneDeploymentStatus, DataSourceStatus,
};

use crate::conditions;
use crate::data_oracle::SourceDecision;
use crate::failing::FailingDecision;
use crate::model::{
    Action, AppVersions, DataSourceInfo, Event, Failure, Input, Plan, PlanError, PodView, Reaction,
    Timestamp, Wakeup,
};
use crate::revision::{BadSet, Target};
use crate::rollout::{Budget, RolloutDecision, Wanted};

/// Decides everything for one deployment at `input.now`; a deployment being deleted gets
/// [`release`] instead.
pub fn plan(input: Input<'_>) -> Result<Plan, PlanError> {
    if input.deployment.metadata.deletion_timestamp.is_some() {
        return Ok(release(input.deployment));
    }
    let mut pass = Pass::new(input)?;
    pass.finish()?;
    pass.rollback()?;
    pass.data();
    pass.converge();
    pass.restart();
    pass.data_start();
    pass.create_pods();
    pass.pin_data();
    pass.status();
    Ok(pass.into_plan())
}

/// The plan of a deployment being deleted: unpin every data version its status says it holds
/// (last-known-good, target, current) and nothing else — no pod is created, deleted or
/// annotated (the garbage collector removes the pods through their owner references), and the
/// status is left as it is. Unpinning is idempotent, so the plan is the same until the wiring,
/// having carried it out, drops its finalizer ([`Plan::holds_pins`] is `false`) and the
/// deployment goes. Needs no valid spec: a deployment with a broken spec can still be deleted.
pub fn release(deployment: &AutoCraneDeployment) -> Plan {
    let status = deployment.status.clone().unwrap_or_default();
    let held: BTreeSet<(String, String)> = status
        .data
        .iter()
        .flat_map(|d| {
            [&d.lkg, &d.target, &d.current]
                .into_iter()
                .flatten()
                .map(|v| (d.name.clone(), v.clone()))
        })
        .collect();
    Plan {
        actions: held
            .into_iter()
            .map(|(source, version)| Action::UnpinData { source, version })
            .collect(),
        status,
        events: Vec::new(),
        requeue_after: None,
        reactions: Vec::new(),
        holds_pins: false,
    }
}

/// The status after a pass that could not plan, or whose plan could not be carried out, for a
/// reason a person must fix (`failure`): `Progressing=False` with the failure's reason and
/// message, every other condition and field as last written (what was observed then still
/// stands), transition times kept, `observedGeneration` of this spec. Writing it again while the
/// failure lasts changes nothing, so retries do not write.
pub fn failed(
    deployment: &AutoCraneDeployment,
    failure: &Failure,
    now: Timestamp,
) -> AutoCraneDeploymentStatus {
    let mut status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation;
    status.conditions = conditions::failed(
        &status.conditions,
        failure.reason,
        &failure.message,
        now,
        generation,
    );
    status.observed_generation = generation;
    status
}

/// Whether `failure` is news: the status does not say it yet, so the wiring records a Warning
/// Event for it (a retry of the same failure records none, even across controller restarts).
pub fn failure_is_new(deployment: &AutoCraneDeployment, failure: &Failure) -> bool {
    !deployment.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == autocrane_api::crd::condition::PROGRESSING
                && c.status == "False"
                && c.reason == failure.reason
                && c.message == failure.message
        })
    })
}

/// The stable revision and version: what runs when no rollout is in progress.
type Revision = (String, Option<String>);

/// The state of one pass: its inputs, what earlier steps decided, and the plan being built.
#[derive(Debug)]
struct Pass<'a> {
    spec: &'a AutoCraneDeploymentSpec,
    /// `metadata.name`.
    name: &'a str,
    /// `metadata.generation`.
    generation: Option<i64>,
    /// Every pod, including ones being deleted.
    pods: &'a [PodView],
    app_versions: &'a AppVersions,
    data_versions: &'a BTreeMap<String, Vec<String>>,
    data_sources: &'a BTreeMap<String, DataSourceInfo>,
    now: Timestamp,
    /// The status as last written.
    old: AutoCraneDeploymentStatus,
    budget: Budget,

    /// Pods that stay: not being deleted, not finished, and (from step 4) not deleted by this pass.
    live: Vec<&'a PodView>,
    /// Bad app versions and revisions, including one this pass rolls back.
    bad: BadSet,
    /// What the deployment should run (`None`: no usable version at all).
    target: Option<Target>,
    /// The stable revision (`None`: nothing runs and there is nothing to run).
    stable: Option<Revision>,
    /// The stable revision with the target it moves to (the stable one when there is no target).
    stable_target: Option<(Revision, Target)>,
    /// The status the rollout decides against: a rollback forgets the rolled-back target.
    rollout_status: AutoCraneDeploymentStatus,
    /// `(reason, message)` of this pass's rollback.
    rollback: Option<(&'static str, String)>,
    /// Per data source, in spec order.
    sources: Vec<SourceDecision>,
    /// The app rollout's decision (`None` without a stable revision).
    decision: Option<RolloutDecision>,
    /// The failing limit's decision.
    restarts: FailingDecision,
    /// `(revision, version, count)` of pods to create.
    creates: Vec<Wanted>,

    status: AutoCraneDeploymentStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    reactions: Vec<Reaction>,
    wake: Wakeup,
}

impl<'a> Pass<'a> {
    fn new(input: Input<'a>) -> Result<Self, PlanError> {
        let Input {
            deployment,
            pods,
            app_versions,
            data_versions,
            data_sources,
            now,
        } = input;
        let spec = &deployment.spec;
        let budget = Budget::from_spec(spec)?;
        if spec.rollout.steps.is_empty() {
            return Err(PlanError::InvalidSpec {
                field: "spec.rollout.steps",
                rule: "must not be empty".into(),
            });
        }
        let old = deployment.status.clone().unwrap_or_default();
        Ok(Self {
            spec,
            name: deployment.metadata.name.as_deref().unwrap_or("autocrane"),
            generation: deployment.metadata.generation,
            pods,
            app_versions,
            data_versions,
            data_sources,
            now,
            budget,
            live: Vec::new(),
            bad: BadSet::default(),
            target: None,
            stable: None,
            stable_target: None,
            rollout_status: old.clone(),
            rollback: None,
            sources: Vec::new(),
            decision: None,
            restarts: FailingDecision::default(),
            creates: Vec::new(),
            status: old.clone(),
            old,
            actions: Vec::new(),
            events: Vec::new(),
            reactions: Vec::new(),
            wake: Wakeup::new(now),
        })
    }

    fn into_plan(self) -> Plan {
        // A source that leaves the spec is unpinned and dropped from the status in the same pass
        // (`data::pins`), so after planning only the spec's sources can hold pins; a failed unpin
        // fails the pass before the finalizer goes, and the next pass plans the unpins again.
        let holds_pins = !self.spec.data.is_empty();
        debug_assert!(
            holds_pins || !self.status.data.iter().any(pinned),
            "a source outside the spec still holds a pin after planning"
        );
        Plan {
            actions: self.actions,
            status: self.status,
            events: self.events,
            requeue_after: self.wake.after(),
            reactions: self.reactions,
            holds_pins,
        }
    }

    /// An app rollout is in progress (the target differs from the stable revision).
    fn app_busy(&self) -> bool {
        self.decision
            .as_ref()
            .is_some_and(|d| d.target.0 != d.stable.0)
    }
}

/// The source holds a pin (see `data::pins`).
fn pinned(d: &DataSourceStatus) -> bool {
    d.lkg.is_some() || d.target.is_some()
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
) -> Option<Revision> {
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
