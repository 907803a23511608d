//! The `AutoCraneDeployment` custom resource (`autocrane.io/v1alpha1`, short name `acd`).
//!
//! The schema is derived from these types (kube-derive + schemars) and carries the validation the
//! API server enforces, so nonsense is rejected at `kubectl apply` time rather than discovered by
//! the controller: bounds on numbers, enums, duration patterns and CEL rules where bounds are not
//! enough (exactly one upstream per source, rollout steps ending at 100%).
//! `autocrane crd` prints the CRD (the `autocrane` binary renders it as YAML);
//! `deploy/crds/autocranedeployment.yaml` is that output and a test fails when it drifts.

// kube's `KubeSchema` derive re-declares every struct that carries `x_kube` validation rules in a
// private scope, with the original's span; `unreachable_pub` then flags the public types
// themselves, which are this crate's API.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::PodTemplateSpec,
    apimachinery::pkg::{apis::meta::v1::Condition, util::intstr::IntOrString},
};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// The desired state of an AutoCraneDeployment: a set of identical pods whose app version and data
/// versions AutoCrane rolls out safely.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "autocrane.io",
    version = "v1alpha1",
    kind = "AutoCraneDeployment",
    plural = "autocranedeployments",
    singular = "autocranedeployment",
    shortname = "acd",
    category = "autocrane",
    namespaced,
    status = "AutoCraneDeploymentStatus",
    derive = "PartialEq",
    doc = "AutoCraneDeployment runs a set of identical pods and ships new app and data versions to them safely: in steps gated on watchdogs, with automatic rollback and restarts within a failing limit.",
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas","description":"Desired number of pods"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas","description":"Pods that are Ready"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthyReplicas","description":"Ready pods whose watchdog rollup is not error"}"#,
    printcolumn = r#"{"name":"Current","type":"string","jsonPath":".status.currentVersion","description":"App version running on the stable pods"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetVersion","description":"App version being rolled out"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Rollout phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AutoCraneDeploymentSpec {
    /// Number of pods to run, 0 to 10000.
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,

    /// The pod template. AutoCrane adds its labels, the data annotations and, when `data` is not
    /// empty, the data-deployer init container and sidecar.
    #[schemars(schema_with = "embedded_object")]
    pub template: PodTemplateSpec,

    /// The app version: pinned, or followed from a source. Absent means the template's image as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<AppVersion>,

    /// Data sources whose files are deployed into the running pods without restarting them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.all(d, self.exists_one(e, e.name == d.name))").message("data source names must be unique"))]
    pub data: Vec<DataSource>,

    /// How a new app version is rolled out.
    #[serde(default)]
    pub rollout: Rollout,

    /// How a new data version is rolled out.
    #[serde(default)]
    pub data_rollout: DataRollout,

    /// When failing pods are restarted, and how many at most.
    #[serde(default)]
    pub failing_limit: FailingLimit,
}

/// The app version of the pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.pinned) != has(self.source)").message("set exactly one of version.pinned and version.source"))]
pub struct AppVersion {
    /// A fixed version (the image tag), for example `1.4.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub pinned: Option<String>,

    /// Follow this source (usually the image's OCI repository); the policy picks the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,

    /// The container whose image tag is set to the version; default: the first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// One data source deployed into the pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    /// The source name, a DNS-1123 label; it names the `data.autocrane.io/<name>` annotation and
    /// the `data-<name>` watchdog.
    #[schemars(
        length(min = 1, max = 57),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Where the versions come from.
    pub source: SourceSpec,

    /// The absolute directory in the app containers under which `<name>/current` points at the live
    /// version.
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub mount_path: String,
}

/// Where versions come from and how the current one is chosen (mirrors
/// `autocrane.version.v1.SourceSpec`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.oci), has(self.git), has(self.http), has(self.directory)].filter(x, x).size() == 1").message("set exactly one of oci, git, http and directory"))]
pub struct SourceSpec {
    /// An OCI registry repository; versions are tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciSource>,
    /// A git repository; versions are commits of a branch, or tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// An HTTP resource; versions are its validators or a JSON field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// A directory on the VersionWatcher's file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySource>,
    /// How the current version is chosen; default `newest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<VersionPolicy>,
    /// Poll interval when no notification arrives; default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<Duration>,
}

/// An OCI registry repository.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OciSource {
    /// `host[:port]`, optionally with `http://` or `https://` (default https).
    #[schemars(length(min = 1, max = 512))]
    pub registry: String,
    /// The repository path, for example `acme/web`.
    #[schemars(length(min = 1, max = 512))]
    pub repository: String,
}

/// A git repository.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// The clone URL.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// `refs/heads/<branch>` or `refs/tags/<glob>`; default the remote HEAD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// A relative sub-directory holding the data; default the whole tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^/]"))]
    pub path: Option<String>,
}

/// An HTTP resource.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// The URL.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// A JSON pointer to the version field of a JSON body; default the ETag/Last-Modified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
}

/// A directory on the VersionWatcher's file system.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DirectorySource {
    /// The absolute path.
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub path: String,
    /// A file whose first line is the version; default: each sub-directory is a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_file: Option<String>,
}

/// How the current version is chosen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.semver), has(self.regex), has(self.newest), has(self.pin)].filter(x, x).size() == 1").message("set exactly one of semver, regex, newest and pin"))]
pub struct VersionPolicy {
    /// The highest semantic version within a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<SemverPolicy>,
    /// The versions matching a regular expression, ordered by a capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexPolicy>,
    /// The most recently published version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<NewestPolicy>,
    /// Exactly one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// The highest semantic version within a range.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SemverPolicy {
    /// A requirement such as `>=1.2, <2` or `^1.4`; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Whether pre-releases may be chosen.
    #[serde(default)]
    pub include_prereleases: bool,
}

/// The versions matching a regular expression.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegexPolicy {
    /// The pattern a version name must match entirely.
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
    /// The capture group that orders the versions; default the whole name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// How captures compare.
    #[serde(default)]
    pub order: RegexOrder,
}

/// How captured texts compare.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RegexOrder {
    /// As unsigned integers.
    #[default]
    Numeric,
    /// As text.
    Lexical,
    /// As semantic versions.
    Semver,
}

/// The newest version wins.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NewestPolicy {}

/// How a new app version is rolled out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Steps of (percent of pods on the new revision, bake time). The last step must be 100%.
    /// Default: 25% for 2m, 50% for 2m, 100%.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = kube::core::Rule::new("self[size(self) - 1].percent == 100").message("the last rollout step must be 100 percent"))]
    pub steps: Vec<RolloutStep>,
    /// Pods above `replicas` that may exist during a rollout (a number or a percentage); default 25%.
    #[serde(default = "default_quarter")]
    pub max_surge: IntOrString,
    /// Pods that may be unavailable during a rollout (a number or a percentage); default 0.
    #[serde(default = "default_zero")]
    pub max_unavailable: IntOrString,
    /// A rollout that makes no progress for this long is rolled back; default 10m.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
}

/// One rollout step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Percent of the pods on the new revision at this step, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub percent: i32,
    /// How long the step's pods must stay Ready with no `error` watchdog before the next step;
    /// default 0s.
    #[serde(default)]
    pub bake: Duration,
}

/// How a new data version is rolled out.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataRollout {
    /// Percent of pods (at least one) that get a new data version first, 1 to 100; default 25.
    #[serde(default = "default_canary_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub canary_percent: i32,
    /// How long canaries (then all pods) must stay healthy after applying before the version is
    /// promoted (then becomes last-known-good); default 5m.
    #[serde(default = "default_data_bake")]
    pub bake: Duration,
    /// Hold data rollouts while an app rollout is in progress (and app rollouts while a data
    /// rollout is); default true.
    #[serde(default = "default_true")]
    pub exclusive_with_app_rollout: bool,
    /// A running pod that was given the version being rolled out and whose DataDeployer has not
    /// reported it applied (or failed) within this time fails the version, like a failed apply:
    /// every pod returns to last-known-good and the version is quarantined; default 10m.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
}

/// When failing pods are restarted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailingLimit {
    /// How long a pod must be in `error` before it is restarted (or, on a new revision, before the
    /// rollout is rolled back); default 3m.
    #[serde(default = "default_error_threshold")]
    pub error_threshold: Duration,
    /// At most this many pods of the deployment are being restarted at once, 0 to 1000 (0 disables
    /// restarts); default 1.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_concurrent_restarts: i32,
    /// At most this many restarts per pod slot within `window`, 1 to 100; default 3. Past it the
    /// deployment is Degraded and nothing more is restarted.
    #[serde(default = "default_three")]
    #[schemars(range(min = 1, max = 100))]
    pub max_restarts_per_pod: i32,
    /// The window `maxRestartsPerPod` counts in; default 1h.
    #[serde(default = "default_window")]
    pub window: Duration,
}

/// The observed state of an AutoCraneDeployment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoCraneDeploymentStatus {
    /// The `metadata.generation` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that exist and are not being deleted.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Ready pods whose watchdog rollup is not `error`.
    #[serde(default)]
    pub healthy_replicas: i32,
    /// Pods on the target revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The label selector of the pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The app version of the stable revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The app version being rolled out (equal to current when none is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// The revision of the stable pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// The index of the rollout step in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_step: Option<i32>,
    /// When the current rollout step (or the rollout's last progress) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// App versions that were rolled back and are never retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_versions: Vec<BadVersion>,
    /// Per data source: current, target, last-known-good and bad versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataSourceStatus>,
    /// Recent restarts made because of the failing limit, newest last (pruned to the window).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<RestartRecord>,
    /// Conditions: Available, Progressing, Degraded, RolledBack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The rollout phase.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No pod is Ready yet.
    Pending,
    /// A rollout is in progress.
    Progressing,
    /// Every pod runs the target revision and is Ready.
    Available,
    /// A bad version is being rolled back.
    RollingBack,
    /// Pods keep failing past the failing limit.
    Degraded,
}

/// A version that was rolled back.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BadVersion {
    /// The version.
    pub version: String,
    /// Why it was marked bad.
    pub reason: String,
    /// When.
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// The state of one data source.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceStatus {
    /// The data source name.
    pub name: String,
    /// The VersionWatcher/DataRepository source id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// The version every pod has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// The version being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The last known good version: applied by every pod and healthy for the bake time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lkg: Option<String>,
    /// The rollout stage of `target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<DataStage>,
    /// When the stage started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Versions that failed and are never retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad: Vec<BadVersion>,
}

/// The stage of a data rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataStage {
    /// Canary pods have (or are getting) the target version.
    Canary,
    /// Every pod has (or is getting) the target version.
    Promoted,
    /// The target failed and pods are being returned to LKG.
    Reverting,
}

/// One restart made because of the failing limit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestartRecord {
    /// The pod slot (the pod's name) that was restarted.
    pub pod: String,
    /// When.
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// The condition types of an AutoCraneDeployment.
pub mod condition {
    /// Enough pods are Ready and healthy to serve.
    pub const AVAILABLE: &str = "Available";
    /// A rollout is in progress (or finished: reason `RolloutComplete`).
    pub const PROGRESSING: &str = "Progressing";
    /// Pods keep failing beyond the failing limit.
    pub const DEGRADED: &str = "Degraded";
    /// The last rollout was rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// An object whose schema the API server does not prune or check field by field (the pod template
/// is validated when the controller creates pods from it). Embedding the full PodTemplateSpec
/// schema would make the CRD larger than the 256 KiB `kubectl apply` annotation limit.
fn embedded_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "A pod template (metadata and spec), as in a Deployment."
    })
}

/// The standard `conditions` list: a list-map keyed by `type`, so server-side apply merges
/// conditions by type and `kubectl` shows them as the built-in workloads do.
fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "description": "Conditions: Available, Progressing, Degraded, RolledBack."
    })
}

fn default_steps() -> Vec<RolloutStep> {
    vec![
        RolloutStep {
            percent: 25,
            bake: Duration::from_mins(2),
        },
        RolloutStep {
            percent: 50,
            bake: Duration::from_mins(2),
        },
        RolloutStep {
            percent: 100,
            bake: Duration::from_secs(0),
        },
    ]
}
fn default_quarter() -> IntOrString {
    IntOrString::String("25%".into())
}
fn default_zero() -> IntOrString {
    IntOrString::Int(0)
}
fn default_progress_deadline() -> Duration {
    Duration::from_mins(10)
}
fn default_canary_percent() -> i32 {
    25
}
fn default_data_bake() -> Duration {
    Duration::from_mins(5)
}
fn default_true() -> bool {
    true
}
fn default_error_threshold() -> Duration {
    Duration::from_mins(3)
}
fn default_one() -> i32 {
    1
}
fn default_three() -> i32 {
    3
}
fn default_window() -> Duration {
    Duration::from_mins(60)
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            max_surge: default_quarter(),
            max_unavailable: default_zero(),
            progress_deadline: default_progress_deadline(),
        }
    }
}

impl Default for DataRollout {
    fn default() -> Self {
        Self {
            canary_percent: default_canary_percent(),
            bake: default_data_bake(),
            exclusive_with_app_rollout: true,
            progress_deadline: default_progress_deadline(),
        }
    }
}

impl Default for FailingLimit {
    fn default() -> Self {
        Self {
            error_threshold: default_error_threshold(),
            max_concurrent_restarts: default_one(),
            max_restarts_per_pod: default_three(),
            window: default_window(),
        }
    }
}

/// Labels AutoCrane puts on every pod of a deployment, beside the template's own.
pub fn pod_labels(deployment: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            crate::keys::DEPLOYMENT_LABEL.to_string(),
            deployment.to_string(),
        ),
        (
            crate::keys::REVISION_LABEL.to_string(),
            revision.to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    fn crd_json() -> serde_json::Value {
        serde_json::to_value(AutoCraneDeployment::crd()).unwrap()
    }

    #[test]
    fn crd_names_and_scope_are_what_kubectl_users_type() {
        let crd = crd_json();
        assert_eq!(crd["metadata"]["name"], "autocranedeployments.autocrane.io");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["acd"]));
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["subresources"]["status"], json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            [
                "Desired", "Ready", "Healthy", "Current", "Target", "Phase", "Age"
            ]
        );
    }

    #[test]
    fn schema_carries_bounds_and_rules() {
        let text = serde_json::to_string(&crd_json()).unwrap();
        for needle in [
            "the last rollout step must be 100 percent",
            "set exactly one of oci, git, http and directory",
            "set exactly one of version.pinned and version.source",
            "\"x-kubernetes-list-map-keys\":[\"type\"]",
            crate::duration::PATTERN,
        ] {
            assert!(text.contains(needle), "schema lacks {needle}");
        }
        let replicas = &crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(0.0));
        assert_eq!(replicas["maximum"].as_f64(), Some(10000.0));
    }

    #[test]
    fn minimal_spec_gets_documented_defaults() {
        let spec: AutoCraneDeploymentSpec = serde_json::from_value(json!({
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "app", "image": "web:1"}]}}
        }))
        .unwrap();
        assert_eq!(spec.rollout.steps.last().unwrap().percent, 100);
        assert_eq!(spec.data_rollout.canary_percent, 25);
        assert_eq!(spec.failing_limit.max_concurrent_restarts, 1);
        assert_eq!(spec.failing_limit.error_threshold, Duration::from_mins(3));
    }

    #[test]
    fn unparsable_duration_is_rejected_by_the_types_too() {
        let err = serde_json::from_value::<AutoCraneDeploymentSpec>(json!({
            "replicas": 1,
            "template": {},
            "rollout": {"progressDeadline": "ten minutes"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
