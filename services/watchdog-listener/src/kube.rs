//! Kubernetes I/O: reading and patching pods, listing them, and turning a pod into its
//! [`PodHealth`]. Writes are JSON merge patches that carry only `status.autocrane.io/*`
//! annotations, the health label and a resourceVersion precondition, so other writers' keys are
//! never touched and a concurrent change of our own keys is retried rather than overwritten (W12).

use autocrane_api::keys::{FIELD_MANAGER, HEALTH_LABEL};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectList, Patch, PatchParams},
};
use serde_json::{Map, Value, json};

use crate::{
    coalesce::Plan,
    rollup::{PodHealth, rollup},
};

/// A pod's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PodKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a pod object.
    pub fn of(pod: &Pod) -> Self {
        Self::new(pod.namespace().unwrap_or_default(), pod.name_any())
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The health of `pod` at `now`, computed from its annotations (not from its label).
pub fn pod_health(pod: &Pod, now: DateTime<Utc>) -> PodHealth {
    let rollup = rollup(pod.annotations(), now);
    PodHealth {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        health: rollup.health,
        watchdogs: rollup.watchdogs,
        resource_version: pod.resource_version().unwrap_or_default(),
    }
}

/// The health label of `pod`, if set.
pub fn health_label(pod: &Pod) -> Option<&str> {
    pod.labels().get(HEALTH_LABEL).map(String::as_str)
}

/// The merge-patch body of `plan`, with a resourceVersion precondition when given.
pub fn patch_body(plan: &Plan, resource_version: Option<&str>) -> Value {
    let mut metadata = Map::new();
    if !plan.annotations.is_empty() {
        let annotations: Map<String, Value> = plan
            .annotations
            .iter()
            .map(|(key, value)| {
                (
                    key.clone(),
                    value.clone().map_or(Value::Null, Value::String),
                )
            })
            .collect();
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    if let Some(health) = plan.label {
        metadata.insert(
            "labels".into(),
            json!({ HEALTH_LABEL: health.label_value() }),
        );
    }
    if let Some(rv) = resource_version {
        metadata.insert("resourceVersion".into(), Value::String(rv.into()));
    }
    json!({ "metadata": metadata })
}

/// Whether `err` is an API error with HTTP `code`.
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

/// The pod API calls the listener makes.
#[derive(Clone)]
pub struct Pods {
    client: Client,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods").finish_non_exhaustive()
    }
}

impl Pods {
    /// Pod access through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Reads one pod; `None` when it does not exist.
    pub async fn get(&self, key: &PodKey) -> Result<Option<Pod>, kube::Error> {
        self.api(&key.namespace).get_opt(&key.name).await
    }

    /// Applies `plan` to the pod as one merge patch, conditional on `resource_version`.
    pub async fn patch(
        &self,
        key: &PodKey,
        plan: &Plan,
        resource_version: Option<&str>,
    ) -> Result<Pod, kube::Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api(&key.namespace)
            .patch(
                &key.name,
                &params,
                &Patch::Merge(patch_body(plan, resource_version)),
            )
            .await
    }

    /// One page of the pods of `namespace` matching `selector`.
    pub async fn list(
        &self,
        namespace: &str,
        selector: &str,
        limit: u32,
        continue_token: &str,
    ) -> Result<ObjectList<Pod>, kube::Error> {
        let mut params = ListParams::default().limit(limit);
        if !selector.is_empty() {
            params = params.labels(selector);
        }
        if !continue_token.is_empty() {
            params = params.continue_token(continue_token);
        }
        self.api(namespace).list(&params).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::Health;
    use std::collections::BTreeMap;

    #[test]
    fn patch_touches_only_our_keys_and_removes_with_null() {
        let plan = Plan {
            annotations: BTreeMap::from([
                (
                    "status.autocrane.io/http".to_string(),
                    Some("info/2026-11-18T11:06:40Z//ok".to_string()),
                ),
                ("status.autocrane.io/old".to_string(), None),
            ]),
            label: Some(Health::Info),
            outcomes: vec![],
        };
        assert_eq!(
            patch_body(&plan, Some("42")),
            json!({"metadata": {
                "annotations": {"status.autocrane.io/http": "info/2026-11-18T11:06:40Z//ok", "status.autocrane.io/old": null},
                "labels": {"status.autocrane.io/health": "info"},
                "resourceVersion": "42",
            }})
        );
    }
}
