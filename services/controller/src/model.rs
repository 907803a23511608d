//! What the decision core sees and what it decides, as plain data.
//!
//! The controller's I/O layer (the next issue) turns Kubernetes objects and gRPC streams into an
//! [`Input`], calls [`crate::plan::plan`], and carries out the [`Plan`]: pod creates/deletes and
//! annotation patches, VersionWatcher quarantines, DataRepository pins, the status write, Events,
//! and a requeue. Keeping these types free of kube clients and clocks is what lets every decision
//! be tested as a scenario and property-checked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration as StdDuration;

use autocrane_api::crd::{AutoCraneDeployment, AutoCraneDeploymentStatus};
use k8s_openapi::jiff::SignedDuration;
pub use k8s_openapi::jiff::Timestamp;

pub use autocrane_api::keys::SLOT_LABEL;

/// The rollup of a pod's watchdogs (`status.autocrane.io/health`), shared with the listener.
pub use autocrane_api::health::Health;

/// The pod's `status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodPhase {
    /// Scheduled or starting (init containers included).
    Pending,
    /// Containers are running.
    Running,
    /// Terminated successfully; a long-running app pod should never get here.
    Succeeded,
    /// Terminated with a failure.
    Failed,
    /// The kubelet stopped reporting.
    Unknown,
}

/// What the DataDeployer reported for one source through its `data-<source>` watchdog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The version the report is about.
    pub version: String,
    /// `true` when the live link points at it (watchdog `info`), `false` when applying failed.
    pub ok: bool,
    /// When the DataDeployer reported it.
    pub at: Timestamp,
}

/// One pod's state for one data source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodData {
    /// `data.autocrane.io/<source>`: the version the controller asked for.
    pub desired: Option<String>,
    /// The DataDeployer's latest report.
    pub applied: Option<Applied>,
}

/// A pod of the deployment, reduced to what decisions depend on.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    /// `metadata.name`.
    pub name: String,
    /// [`SLOT_LABEL`]: stable across restarts of the same replica.
    pub slot: String,
    /// `autocrane.io/revision`.
    pub revision: String,
    /// `autocrane.io/app-version`, when the deployment has versions.
    pub version: Option<String>,
    /// `status.phase`.
    pub phase: PodPhase,
    /// `metadata.creationTimestamp`.
    pub created_at: Timestamp,
    /// Since when the pod is Ready; `None` when it is not.
    pub ready_since: Option<Timestamp>,
    /// The watchdog rollup.
    pub health: Health,
    /// Since when the rollup has had its current value.
    pub health_since: Timestamp,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Per data source.
    pub data: BTreeMap<String, PodData>,
}

impl PodView {
    /// Serving: Ready, not in `error`, not going away.
    pub fn available(&self) -> bool {
        !self.deleting && self.ready_since.is_some() && self.health != Health::Error
    }

    /// Since when the pod has been continuously Ready with its current (non-error) health; `None`
    /// when it is not available. Bake times count from here.
    pub fn good_since(&self) -> Option<Timestamp> {
        if !self.available() {
            return None;
        }
        self.ready_since.map(|r| r.max(self.health_since))
    }

    /// In `error` for at least `threshold` at `now`.
    pub fn failing_for(&self, threshold: StdDuration, now: Timestamp) -> bool {
        self.health == Health::Error && elapsed(now, self.health_since) >= threshold
    }

    /// Since when its `error` counts towards a restart: from its latest data switch when that
    /// came later than the error (an error raised before the data changed says nothing yet about
    /// the data it has now: after a data revert, the app gets the time it needs to report on the
    /// last-known-good version before the failing limit may restart it). `None` when not in
    /// `error`.
    pub fn error_since_for_restart(&self) -> Option<Timestamp> {
        if self.health != Health::Error {
            return None;
        }
        let switched = self
            .data
            .values()
            .filter_map(|d| d.applied.as_ref().map(|a| a.at));
        Some(switched.fold(self.health_since, Timestamp::max))
    }

    /// Terminated: it will never serve again and only needs deleting.
    pub fn finished(&self) -> bool {
        matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// App versions the VersionWatcher offers for a deployment that follows a source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppVersions {
    /// Versions in the source policy's order of preference, best (newest) first.
    pub candidates: Vec<String>,
    /// Versions the VersionWatcher has quarantined (by this or another deployment).
    pub quarantined: BTreeSet<String>,
    /// When the VersionWatcher first saw a version (its event time), where known: the start of
    /// the version → first-pod reaction time ([`ReactionKind::VersionToFirstPod`]).
    pub published: BTreeMap<String, Timestamp>,
}

/// What the DataRepository says about one data source beyond its version list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataSourceInfo {
    /// The VersionWatcher/DataRepository source id, once known; shown as `status.data[].sourceId`.
    pub source_id: Option<String>,
    /// Version → when the DataRepository finished syncing it, where known: the start of the
    /// synced → applied reaction time ([`ReactionKind::DataSyncedToApplied`]).
    pub synced_at: BTreeMap<String, Timestamp>,
}

/// Everything one planning pass depends on.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The deployment: spec, status as last written, metadata (name, generation, and
    /// `deletionTimestamp`: a deployment being deleted only releases its data pins, see
    /// [`crate::plan::plan`]).
    pub deployment: &'a AutoCraneDeployment,
    /// Its pods (owned by it, any revision, including ones being deleted).
    pub pods: &'a [PodView],
    /// Offered app versions (ignored when the version is pinned or absent).
    pub app_versions: &'a AppVersions,
    /// Per data source name: versions the DataRepository has synced, newest first.
    pub data_versions: &'a BTreeMap<String, Vec<String>>,
    /// Per data source name: its source id and sync times, where known (missing entries are
    /// simply unknown; tests leave this empty).
    pub data_sources: &'a BTreeMap<String, DataSourceInfo>,
    /// The time of this pass.
    pub now: Timestamp,
}

/// Why a pod is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeleteReason {
    /// More pods of its revision than wanted (scale down, or a rollout step moved on).
    ScaleDown,
    /// Its revision was rolled back or superseded.
    Replaced,
    /// It failed for longer than the failing threshold and is restarted within the failing limit.
    Restart,
    /// It terminated (`Succeeded`/`Failed`) and is replaced.
    Finished,
}

/// Something the I/O layer must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a pod from the deployment's template for `revision`.
    CreatePod {
        /// The pod name (unique among existing pods).
        name: String,
        /// [`SLOT_LABEL`] value.
        slot: String,
        /// `autocrane.io/revision`.
        revision: String,
        /// The app version to stamp into the image tag, when the deployment has versions.
        version: Option<String>,
        /// Initial `data.autocrane.io/<source>` annotations.
        data: BTreeMap<String, String>,
    },
    /// Delete a pod.
    DeletePod {
        /// The pod name.
        name: String,
        /// Why.
        reason: DeleteReason,
    },
    /// Set `data.autocrane.io/<source>` on a pod.
    SetPodData {
        /// The pod name.
        pod: String,
        /// The data source.
        source: String,
        /// The version it should hold.
        version: String,
    },
    /// Remove `data.autocrane.io/<source>` from a pod (the source left the spec).
    ClearPodData {
        /// The pod name.
        pod: String,
        /// The data source.
        source: String,
    },
    /// Tell the VersionWatcher never to propose this app version again.
    QuarantineAppVersion {
        /// The version.
        version: String,
        /// Why, for people.
        reason: String,
    },
    /// Tell the VersionWatcher never to propose this data version again.
    QuarantineDataVersion {
        /// The data source.
        source: String,
        /// The version.
        version: String,
        /// Why, for people.
        reason: String,
    },
    /// Ask the DataRepository to keep this version (it is LKG or being rolled out).
    PinData {
        /// The data source.
        source: String,
        /// The version.
        version: String,
    },
    /// The DataRepository may garbage-collect this version again.
    UnpinData {
        /// The data source.
        source: String,
        /// The version.
        version: String,
    },
}

/// Kubernetes Event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Expected progress.
    Normal,
    /// Something a person should look at.
    Warning,
}

/// An Event to record on the AutoCraneDeployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Normal or Warning.
    pub type_: EventType,
    /// A CamelCase reason (see [`crate::conditions::reason`] and [`crate::plan::event_reason`]).
    pub reason: &'static str,
    /// A sentence for people.
    pub note: String,
}

impl Event {
    pub(crate) fn normal(reason: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            note: note.into(),
        }
    }
    pub(crate) fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            reason,
            note: note.into(),
        }
    }
}

/// Which reaction time a [`Reaction`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReactionKind {
    /// A new-revision pod in `error` (since its `health_since`) → the rollback started.
    ErrorToRollback,
    /// The VersionWatcher first saw a version → the first pod of it created (a rollout of a
    /// deployment that already ran another version; not its first bring-up).
    VersionToFirstPod,
    /// The DataRepository synced a data version → every pod has applied it (a rollout over a
    /// last-known-good version; not the first version of a source, and not a revert).
    DataSyncedToApplied,
}

/// A reaction time the controller achieved, known to this pass: the wiring observes it once the
/// plan has been carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    /// What is measured.
    pub kind: ReactionKind,
    /// When the triggering observation happened.
    pub since: Timestamp,
    /// When the reaction happened (this pass, or for data the last pod's applied report).
    pub at: Timestamp,
}

impl Reaction {
    /// `at - since` in seconds, zero when the clocks disagree.
    pub fn seconds(&self) -> f64 {
        elapsed(self.at, self.since).as_secs_f64()
    }
}

/// The outcome of one planning pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// What to do, in order (creates before deletes is safe; the I/O layer may parallelise).
    pub actions: Vec<Action>,
    /// The status to write.
    pub status: AutoCraneDeploymentStatus,
    /// Events to record.
    pub events: Vec<Event>,
    /// Look again after this long even if nothing changes (a bake or threshold ends then);
    /// `None`: only on change.
    pub requeue_after: Option<StdDuration>,
    /// Reaction times this pass completes, for the wiring's histograms.
    pub reactions: Vec<Reaction>,
    /// After this plan's actions the deployment holds DataRepository pins, or may pin at any
    /// time (it has data sources): the wiring keeps a finalizer on it so that deleting it
    /// releases the pins first. `false` once there is nothing to release — in particular for a
    /// deployment being deleted, whose plan is its unpins: the finalizer goes after them.
    pub holds_pins: bool,
}

/// Input the planner cannot act on.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A spec field breaks a rule the CRD schema cannot express.
    #[error("invalid {field}: {rule}")]
    InvalidSpec {
        /// The field path, for example `spec.rollout.maxSurge`.
        field: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    /// The pod template could not be hashed into a revision.
    #[error("hashing the pod template")]
    HashTemplate(#[source] serde_json::Error),
}

impl PlanError {
    /// The user-visible failure this error is: the condition and Warning Event of
    /// [`crate::plan::failed`].
    pub fn failure(&self) -> Failure {
        Failure {
            reason: crate::conditions::reason::INVALID_SPEC,
            message: match self {
                // The only variant with a cause: say it on the same line.
                PlanError::HashTemplate(cause) => format!("{self}: {cause}"),
                PlanError::InvalidSpec { .. } => self.to_string(),
            },
        }
    }
}

/// A failure the planner never sees or cannot plan past, which a person must fix: an invalid
/// spec, a template the API server rejects, an upstream that is missing or unreachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// [`crate::conditions::reason::INVALID_SPEC`], [`crate::conditions::reason::TEMPLATE_REJECTED`]
    /// or [`crate::conditions::reason::UPSTREAM_UNAVAILABLE`].
    pub reason: &'static str,
    /// For people: names the field or the service and what is wrong.
    pub message: String,
}

/// `now - since`, zero when `since` is in the future.
pub fn elapsed(now: Timestamp, since: Timestamp) -> StdDuration {
    StdDuration::try_from(now.duration_since(since)).unwrap_or(StdDuration::ZERO)
}

/// `t + d`, saturating.
pub fn after(t: Timestamp, d: StdDuration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.saturating_add(d).unwrap_or(Timestamp::MAX)
}

/// Collects the earliest future instant at which a decision could change.
#[derive(Clone, Copy, Debug)]
pub struct Wakeup {
    now: Timestamp,
    at: Option<Timestamp>,
}

impl Wakeup {
    /// Nothing scheduled yet.
    pub fn new(now: Timestamp) -> Self {
        Self { now, at: None }
    }
    /// Note that something changes at `t` (ignored unless in the future).
    pub fn at(&mut self, t: Timestamp) {
        if t > self.now && self.at.is_none_or(|a| t < a) {
            self.at = Some(t);
        }
    }
    /// How long until the earliest noted instant.
    pub fn after(self) -> Option<StdDuration> {
        self.at.map(|t| elapsed(t, self.now))
    }
}
