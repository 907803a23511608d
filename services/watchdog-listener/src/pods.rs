//! Kubernetes I/O: reading and patching pods, listing them, the one pod watch that feeds the
//! [`PodIndex`] ([`feed_index`]), counting the watches the process opens ([`count_watches`]), and
//! turning a pod into its [`PodHealth`]. Writes are JSON merge patches that carry only `status.autocrane.io/*`
//! annotations, the health label and a resourceVersion precondition, so other writers' keys are
//! never touched and a concurrent change of our own keys is retried rather than overwritten (W12).
//! The readiness condition `autocrane.io/healthy` goes through the `pods/status` subresource as a
//! strategic-merge patch (see [`Pods::patch_condition`]).

use std::sync::Arc;

use autocrane_api::keys::{FIELD_MANAGER, HEALTH_LABEL};
use autocrane_api::watchdog::{PodHealth, rollup};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value, json};

use crate::{Error, coalesce::Plan, index::PodIndex, validate::Invalid};

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
pub fn pod_health(pod: &Pod, now: Timestamp) -> PodHealth {
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

/// The strategic-merge-patch body of `pods/status` setting one condition, with a resourceVersion
/// precondition. `status.conditions` merges by `type` under a strategic merge (its
/// `patchMergeKey`), so only this condition changes; a JSON merge patch would replace the whole
/// list and drop the kubelet's conditions written meanwhile.
pub fn condition_patch_body(condition: &PodCondition, resource_version: &str) -> Value {
    json!({
        "metadata": { "resourceVersion": resource_version },
        "status": { "conditions": [condition] },
    })
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

    /// Writes `condition` to the pod's `pods/status` as one strategic-merge patch, conditional on
    /// `resource_version`: the transition time was decided from that version of the condition.
    pub async fn patch_condition(
        &self,
        key: &PodKey,
        condition: &PodCondition,
        resource_version: &str,
    ) -> Result<Pod, kube::Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api(&key.namespace)
            .patch_status(
                &key.name,
                &params,
                &Patch::Strategic(condition_patch_body(condition, resource_version)),
            )
            .await
    }

    /// Reads one pod for a caller: [`Error::PodNotFound`] when it does not exist.
    pub async fn read(&self, key: &PodKey) -> Result<Pod, Error> {
        match self.get(key).await {
            Ok(Some(pod)) => Ok(pod),
            Ok(None) => Err(Error::PodNotFound {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            }),
            Err(err) => Err(Error::ReadPod {
                pod: key.to_string(),
                source: Arc::new(err),
            }),
        }
    }

    /// One page of the pods of `namespace` matching `selector`, and the continue token of the next
    /// page (empty on the last). A selector the API server rejects is the caller's mistake.
    pub async fn list(
        &self,
        namespace: &str,
        selector: &str,
        limit: u32,
        continue_token: &str,
    ) -> Result<(Vec<Pod>, String), Error> {
        let mut params = ListParams::default().limit(limit);
        if !selector.is_empty() {
            params = params.labels(selector);
        }
        if !continue_token.is_empty() {
            params = params.continue_token(continue_token);
        }
        match self.api(namespace).list(&params).await {
            Ok(list) => Ok((list.items, list.metadata.continue_.unwrap_or_default())),
            Err(kube::Error::Api(status)) if status.code == 400 => Err(Error::Invalid(Invalid {
                field: "label_selector",
                reason: status.message,
            })),
            Err(source) => Err(Error::ListPods {
                namespace: namespace.to_string(),
                source,
            }),
        }
    }
}

/// Feeds `index` from one watch of the pods of its namespace (or all namespaces) until the watch
/// stream ends; the watcher re-watches and re-lists by itself, with backoff.
pub async fn feed_index(client: Client, index: PodIndex) {
    let api: Api<Pod> = match index.namespace() {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => index.apply(event),
            Err(err) => tracing::warn!(error = %err, "Pod watch failed; retrying"),
        }
    }
}

/// Whether a request to the API server opens a watch (`?watch=true` or `?watch=1`).
pub fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    })
}

/// `client`, counting in `watches` every watch request it sends (the
/// `autocrane_watchdog_kube_watches_started` metric: re-watches and re-lists included).
pub fn count_watches(client: Client, watches: Counter) -> Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        if is_watch(request.uri()) {
            watches.inc();
        }
        let client = client.clone();
        async move { client.send(request).await }
    });
    Client::new(service, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use autocrane_api::watchdog::Health;
    use std::collections::BTreeMap;

    #[test]
    fn watch_requests_are_recognised_by_their_query() {
        let uri = |text: &str| text.parse::<http::Uri>().unwrap();
        assert!(is_watch(&uri(
            "/api/v1/pods?allowWatchBookmarks=true&resourceVersion=5&watch=true"
        )));
        assert!(!is_watch(&uri("/api/v1/pods?limit=500")));
        assert!(!is_watch(&uri("/api/v1/namespaces/shop/pods/watch-me")));
    }

    #[test]
    fn the_condition_patch_carries_one_condition_and_the_precondition() {
        let condition = PodCondition {
            type_: "autocrane.io/healthy".into(),
            status: "False".into(),
            reason: Some("WatchdogError".into()),
            message: Some("watchdogs in error: http".into()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-18T11:06:40Z".parse().unwrap(),
            )),
            ..PodCondition::default()
        };
        assert_eq!(
            condition_patch_body(&condition, "42"),
            json!({
                "metadata": {"resourceVersion": "42"},
                "status": {"conditions": [{
                    "type": "autocrane.io/healthy",
                    "status": "False",
                    "reason": "WatchdogError",
                    "message": "watchdogs in error: http",
                    "lastTransitionTime": "2026-11-18T11:06:40Z",
                }]},
            })
        );
    }

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
