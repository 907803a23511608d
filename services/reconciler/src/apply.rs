//! The executor: carries out one `Plan` of the decision core.
//!
//! Actions run in plan order (the core puts creates before deletes). Every write is idempotent, so
//! a plan that is carried out twice (a crash, a conflict, a retry) does no harm: `AlreadyExists` on
//! a create and `NotFound` on a delete or patch count as done. Pod annotations are changed with
//! JSON merge patches and the status through the status subresource, all with the one field
//! manager [`FIELD_MANAGER`]. When an action fails the pass stops before the status and Events are
//! written, so the next pass plans again from what really happened.
//!
//! A deployment whose plan [holds pins](autocrane_controller::model::Plan::holds_pins) carries the
//! finalizer [`PINS_FINALIZER`], added before any pin is made and removed once a plan that holds
//! none has been carried out — for a deployment being deleted, once its unpins succeeded, so its
//! deletion never leaks a DataRepository pin. (Its pods go by owner-reference GC either way.)

use std::collections::BTreeMap;

use autocrane_api::{
    crd::AutoCraneDeployment,
    keys::{FIELD_MANAGER, data_annotation},
};
use autocrane_controller::model::{Action, EventType, Plan};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{
    Error,
    events::{EventPublisher, NewEvent},
    pod_builder::{Injection, NewPod, build_pod},
    status::status_patch,
    upstream::Upstream,
};

/// The finalizer that keeps a deployment until its DataRepository pins are released.
// The contracts crate's `keys` is where key names live; it moves there with the next change to
// `autocrane-api` (this crate may not edit it now).
pub use autocrane_api::keys::PINS_FINALIZER;

/// Whether `deployment` carries [`PINS_FINALIZER`].
pub fn has_pins_finalizer(deployment: &AutoCraneDeployment) -> bool {
    deployment.finalizers().iter().any(|f| f == PINS_FINALIZER)
}

/// The merge patch that adds (`keep`) or removes [`PINS_FINALIZER`], other finalizers kept;
/// `None` when it is already so. It carries the `resourceVersion` it was computed from, so a
/// concurrent change of the list makes it fail (409) instead of dropping someone's finalizer.
pub fn finalizer_patch(deployment: &AutoCraneDeployment, keep: bool) -> Option<serde_json::Value> {
    if has_pins_finalizer(deployment) == keep {
        return None;
    }
    let mut list: Vec<String> = deployment
        .finalizers()
        .iter()
        .filter(|f| *f != PINS_FINALIZER)
        .cloned()
        .collect();
    if keep {
        list.push(PINS_FINALIZER.into());
    }
    Some(json!({"metadata": {
        "finalizers": list,
        "resourceVersion": deployment.resource_version(),
    }}))
}

/// The source ids the plan's actions refer to.
#[derive(Clone, Debug, Default)]
pub struct SourceIds {
    /// The app version source, when the deployment follows one and its id is known.
    pub app: Option<String>,
    /// Data source name → DataRepository source id.
    pub data: BTreeMap<String, String>,
}

/// Carries out plans.
#[derive(Clone)]
pub struct Executor {
    client: kube::Client,
    events: EventPublisher,
    upstream: std::sync::Arc<Upstream>,
    injection: Injection,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("injection", &self.injection)
            .finish_non_exhaustive()
    }
}

/// The DataRepository pin holder of a deployment.
pub fn pin_holder(deployment: &AutoCraneDeployment) -> String {
    format!(
        "acd/{}/{}",
        deployment.namespace().unwrap_or_default(),
        deployment.name_any()
    )
}

/// Merge patches with the one field manager.
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

impl Executor {
    /// An executor writing with `client`, publishing Events with `events`.
    pub fn new(
        client: kube::Client,
        events: EventPublisher,
        upstream: std::sync::Arc<Upstream>,
        injection: Injection,
    ) -> Self {
        Self {
            client,
            events,
            upstream,
            injection,
        }
    }

    /// Carries out `plan` for `deployment`: actions, then Events, then the status. Returns the
    /// deployment's new `resourceVersion` when the status was written.
    pub async fn apply(
        &self,
        deployment: &AutoCraneDeployment,
        plan: &Plan,
        ids: &SourceIds,
    ) -> Result<Option<String>, Error> {
        let namespace = deployment.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        for action in &plan.actions {
            self.act(deployment, &pods, action, ids).await?;
        }
        for event in &plan.events {
            self.publish(deployment, event.type_, event.reason, &event.note)
                .await;
        }
        self.write_status(deployment, &plan.status).await
    }

    async fn act(
        &self,
        deployment: &AutoCraneDeployment,
        pods: &Api<Pod>,
        action: &Action,
        ids: &SourceIds,
    ) -> Result<(), Error> {
        match action {
            Action::CreatePod { name, .. } => {
                let new = NewPod::from_action(action).expect("a CreatePod action");
                let pod = build_pod(deployment, new, &self.injection, &ids.data)?;
                match pods
                    .create(
                        &PostParams {
                            dry_run: false,
                            field_manager: Some(FIELD_MANAGER.into()),
                        },
                        &pod,
                    )
                    .await
                {
                    Ok(_) => tracing::info!(pod = %name, "Pod created"),
                    Err(e) if is_status(&e, 409) => {
                        tracing::debug!(pod = %name, "Pod exists already")
                    }
                    Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
                        return Err(Error::TemplateRejected {
                            pod: name.clone(),
                            message: status.message,
                        });
                    }
                    Err(source) => {
                        return Err(Error::CreatePod {
                            pod: name.clone(),
                            source,
                        });
                    }
                }
            }
            Action::DeletePod { name, reason } => {
                match pods.delete(name, &DeleteParams::default()).await {
                    Ok(_) => tracing::info!(pod = %name, ?reason, "Pod deleted"),
                    Err(e) if is_status(&e, 404) => {}
                    Err(source) => {
                        return Err(Error::DeletePod {
                            pod: name.clone(),
                            source,
                        });
                    }
                }
            }
            Action::SetPodData {
                pod,
                source,
                version,
            } => {
                self.patch_annotation(pods, pod, &data_annotation(source), Some(version))
                    .await?
            }
            Action::ClearPodData { pod, source } => {
                self.patch_annotation(pods, pod, &data_annotation(source), None)
                    .await?
            }
            Action::QuarantineAppVersion { version, reason } => {
                let id = ids.app.as_deref().ok_or_else(|| {
                    Error::Waiting("the VersionWatcher's id of the app version source".into())
                })?;
                self.upstream.quarantine(id, version, reason).await?;
            }
            Action::QuarantineDataVersion {
                source,
                version,
                reason,
            } => {
                let id = data_id(ids, source)?;
                self.upstream.quarantine(id, version, reason).await?;
            }
            Action::PinData { source, version } => {
                let id = data_id(ids, source)?;
                self.upstream
                    .pin(true, id, version, &pin_holder(deployment))
                    .await?;
            }
            Action::UnpinData { source, version } => {
                let id = data_id(ids, source)?;
                self.upstream
                    .pin(false, id, version, &pin_holder(deployment))
                    .await?;
            }
        }
        Ok(())
    }

    async fn patch_annotation(
        &self,
        pods: &Api<Pod>,
        pod: &str,
        key: &str,
        value: Option<&String>,
    ) -> Result<(), Error> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        match pods
            .patch(pod, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(source) => Err(Error::PatchPod {
                pod: pod.to_string(),
                source,
            }),
        }
    }

    /// Adds (`keep`) or removes [`PINS_FINALIZER`] on `deployment` unless it is already so.
    pub async fn set_pins_finalizer(
        &self,
        deployment: &AutoCraneDeployment,
        keep: bool,
    ) -> Result<(), Error> {
        let Some(patch) = finalizer_patch(deployment, keep) else {
            return Ok(());
        };
        let api: Api<AutoCraneDeployment> = Api::namespaced(
            self.client.clone(),
            &deployment.namespace().unwrap_or_default(),
        );
        match api
            .patch(
                &deployment.name_any(),
                &patch_params(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(
                    keep,
                    "Pins finalizer {}",
                    if keep { "added" } else { "removed" }
                );
                Ok(())
            }
            // Gone already: nothing left to hold.
            Err(e) if is_status(&e, 404) && !keep => Ok(()),
            Err(source) => Err(Error::Finalizer {
                deployment: format!(
                    "{}/{}",
                    deployment.namespace().unwrap_or_default(),
                    deployment.name_any()
                ),
                source,
            }),
        }
    }

    /// Writes `status` unless it is what the deployment already has; returns the deployment's new
    /// `resourceVersion` when it wrote.
    pub async fn write_status(
        &self,
        deployment: &AutoCraneDeployment,
        status: &autocrane_api::crd::AutoCraneDeploymentStatus,
    ) -> Result<Option<String>, Error> {
        let Some(patch) = status_patch(deployment.status.as_ref(), status) else {
            return Ok(None);
        };
        let api: Api<AutoCraneDeployment> = Api::namespaced(
            self.client.clone(),
            &deployment.namespace().unwrap_or_default(),
        );
        match api
            .patch_status(
                &deployment.name_any(),
                &patch_params(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(written) => Ok(written.resource_version()),
            // Deleted meanwhile: nothing left to describe.
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(source) => Err(Error::WriteStatus {
                deployment: format!(
                    "{}/{}",
                    deployment.namespace().unwrap_or_default(),
                    deployment.name_any()
                ),
                source,
            }),
        }
    }

    /// Records an Event on the deployment (`events.k8s.io/v1`); a failure is logged, not fatal:
    /// Events are for people, and the status carries the same facts.
    pub async fn publish(
        &self,
        deployment: &AutoCraneDeployment,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = NewEvent {
            type_: match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            },
            reason,
            note,
            action: "Reconcile",
        };
        if let Err(e) = self
            .events
            .publish(&event, &deployment.object_ref(&()))
            .await
        {
            tracing::warn!(error = %e, reason, "Publishing an Event failed");
        }
    }
}

fn data_id<'a>(ids: &'a SourceIds, source: &str) -> Result<&'a str, Error> {
    ids.data
        .get(source)
        .map(String::as_str)
        .ok_or_else(|| Error::Waiting(format!("the DataRepository's id of data source {source}")))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use autocrane_api::crd::DataSourceStatus;
    use autocrane_api::proto::version_v1 as pb;
    use autocrane_controller::plan::release;
    use autocrane_runtime::shutdown::Shutdown;
    use futures::future::BoxFuture;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use tonic::Status;

    use super::*;
    use crate::upstream::{DataCalls, Follower, SyncedVersion};

    /// A DataRepository that records pin calls (`(call, source id, version, holder)`).
    #[derive(Debug, Default)]
    struct FakeData {
        calls: Mutex<Vec<(&'static str, String, String, String)>>,
    }

    impl FakeData {
        fn record(
            &self,
            call: &'static str,
            id: String,
            version: String,
            holder: String,
        ) -> BoxFuture<'static, Result<(), Status>> {
            self.calls.lock().unwrap().push((call, id, version, holder));
            Box::pin(async { Ok(()) })
        }
    }

    impl DataCalls for FakeData {
        fn track(&self, _: pb::SourceSpec) -> BoxFuture<'static, Result<String, Status>> {
            Box::pin(async { Ok("src-d".to_string()) })
        }
        fn follow(&self, _: String, _: Shutdown) -> Follower<Vec<SyncedVersion>> {
            unreachable!("releasing pins follows nothing")
        }
        fn pin(&self, id: String, v: String, h: String) -> BoxFuture<'static, Result<(), Status>> {
            self.record("pin", id, v, h)
        }
        fn unpin(
            &self,
            id: String,
            v: String,
            h: String,
        ) -> BoxFuture<'static, Result<(), Status>> {
            self.record("unpin", id, v, h)
        }
    }

    /// `web` in `shop` with data source `d` (LKG `a`, canary `b`), being deleted, with the
    /// pins finalizer.
    fn deleting() -> AutoCraneDeployment {
        let mut acd: AutoCraneDeployment = serde_json::from_value(json!({
            "apiVersion": "autocrane.io/v1alpha1", "kind": "AutoCraneDeployment",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                         "finalizers": ["example.com/other", PINS_FINALIZER]},
            "spec": {"replicas": 2, "template": {}, "data": [
                {"name": "d", "source": {"directory": {"path": "/d"}}, "mountPath": "/etc/d"}
            ]}
        }))
        .unwrap();
        acd.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        acd.status = Some(autocrane_api::crd::AutoCraneDeploymentStatus {
            data: vec![DataSourceStatus {
                name: "d".into(),
                lkg: Some("a".into()),
                target: Some("b".into()),
                current: Some("a".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        acd
    }

    #[tokio::test]
    async fn a_deleted_deployment_releases_its_pins_through_the_data_repository() {
        // No API request is made: nothing but unpins to do, and the status is unchanged.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let events = EventPublisher::new(client.clone(), "test", "test");
        let data = Arc::new(FakeData::default());
        let (_stop, shutdown) = Shutdown::new();
        let upstream = Upstream::new(None, Some(data.clone()), shutdown);
        let executor = Executor::new(
            client,
            events,
            Arc::new(upstream),
            crate::pod_builder::Injection {
                image: "autocrane:test".into(),
                repository: None,
                watchdog_listener: None,
                token_audience: "aud".into(),
                data_repository_audience: "aud".into(),
                tls_secret: None,
            },
        );
        let acd = deleting();
        let plan = release(&acd);
        assert!(!plan.holds_pins);
        let ids = SourceIds {
            app: None,
            data: [("d".to_string(), "src-d".to_string())].into(),
        };
        let written = executor.apply(&acd, &plan, &ids).await.unwrap();
        assert_eq!(written, None, "no status write");
        let holder = "acd/shop/web".to_string();
        assert_eq!(
            *data.calls.lock().unwrap(),
            vec![
                ("unpin", "src-d".into(), "a".into(), holder.clone()),
                ("unpin", "src-d".into(), "b".into(), holder),
            ]
        );
        // Then the finalizer goes, the other one stays.
        assert_eq!(
            finalizer_patch(&acd, plan.holds_pins),
            Some(
                json!({"metadata": {"finalizers": ["example.com/other"], "resourceVersion": "7"}})
            )
        );
    }

    #[test]
    fn the_pins_finalizer_is_added_once_and_kept_beside_others() {
        let mut acd = deleting();
        assert_eq!(finalizer_patch(&acd, true), None, "already there");
        acd.metadata.finalizers = None;
        assert_eq!(
            finalizer_patch(&acd, true),
            Some(json!({"metadata": {"finalizers": [PINS_FINALIZER], "resourceVersion": "7"}}))
        );
        assert_eq!(finalizer_patch(&acd, false), None, "nothing to remove");
    }
}
