//! The tonic service: proto ↔ domain conversion, the handlers, and the one place where errors
//! become gRPC statuses ([`status`]).

use std::{pin::Pin, sync::Arc};

use autocrane_api::{
    proto::watchdog_v1::{self as pb, watchdog_listener_server::WatchdogListener},
    runtime::shutdown::Shutdown,
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    Error,
    annotation::{Level, Watchdog},
    auth::{Authorizer, Verb},
    coalesce::Op,
    kube::{PodKey, Pods, is_status, pod_health},
    rollup::{Health, PodHealth},
    validate::{self, Invalid},
    watch::{StreamState, Update},
    writer::Writer,
};

/// Maps an error to the status the caller sees; the only place that chooses codes.
pub fn status(err: Error) -> Status {
    match &err {
        Error::Invalid(_) => Status::invalid_argument(err.to_string()),
        Error::PodNotFound { .. } => Status::not_found(err.to_string()),
        Error::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
        Error::PermissionDenied { .. } => Status::permission_denied(err.to_string()),
        Error::ShuttingDown => Status::unavailable(err.to_string()),
        Error::ReadPod { .. }
        | Error::WritePod { .. }
        | Error::ListPods { .. }
        | Error::ReviewToken(_)
        | Error::ReviewAccess(_) => {
            tracing::warn!(error = %err, cause = ?std::error::Error::source(&err).map(ToString::to_string), "Kubernetes API call failed");
            Status::unavailable(format!("{err}: the Kubernetes API is unavailable"))
        }
        _ => Status::internal(err.to_string()),
    }
}

/// The bearer token of a call, if any.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: 0,
    }
}

fn level_to_proto(level: Level) -> pb::Level {
    match level {
        Level::Info => pb::Level::Info,
        Level::Warning => pb::Level::Warning,
        Level::Error => pb::Level::Error,
    }
}

fn health_to_proto(health: Health) -> pb::Health {
    match health {
        Health::Unknown => pb::Health::Unknown,
        Health::Info => pb::Health::Info,
        Health::Warning => pb::Health::Warning,
        Health::Error => pb::Health::Error,
    }
}

fn watchdog_to_proto(watchdog: &Watchdog) -> pb::Watchdog {
    pb::Watchdog {
        name: watchdog.name.clone(),
        level: level_to_proto(watchdog.level) as i32,
        message: watchdog.message.clone(),
        updated_at: Some(timestamp(watchdog.updated_at)),
        expires_at: watchdog.expires_at.map(timestamp),
    }
}

/// The proto form of a pod's health.
pub fn pod_health_to_proto(pod: &PodHealth) -> pb::PodHealth {
    pb::PodHealth {
        pod: Some(pb::PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        }),
        health: health_to_proto(pod.health) as i32,
        watchdogs: pod.watchdogs.iter().map(watchdog_to_proto).collect(),
        resource_version: pod.resource_version.clone(),
    }
}

fn update_to_proto(namespace: &str, update: Update) -> pb::WatchPodHealthResponse {
    pb::WatchPodHealthResponse {
        snapshot: update.snapshot,
        pods: update.pods.iter().map(pod_health_to_proto).collect(),
        removed: update
            .removed
            .into_iter()
            .map(|name| pb::PodRef {
                namespace: namespace.to_string(),
                name,
            })
            .collect(),
        resume_token: update.resume_token,
    }
}

/// The validated pod of a request.
fn pod_key(pod: Option<&pb::PodRef>) -> Result<PodKey, Error> {
    let pod = pod.ok_or_else(validate::pod_missing)?;
    validate::pod_ref(&pod.namespace, &pod.name)?;
    Ok(PodKey::new(pod.namespace.clone(), pod.name.clone()))
}

fn level_from_proto(value: i32) -> Result<Level, Invalid> {
    match pb::Level::try_from(value) {
        Ok(pb::Level::Info) => Ok(Level::Info),
        Ok(pb::Level::Warning) => Ok(Level::Warning),
        Ok(pb::Level::Error) => Ok(Level::Error),
        Ok(pb::Level::Unspecified) => Err(validate::level_unspecified()),
        Err(_) => Err(validate::level_unknown(value)),
    }
}

/// A selector the API server rejected is the caller's mistake.
fn list_error(namespace: &str, err: kube::Error) -> Error {
    if is_status(&err, 400) {
        return Error::Invalid(Invalid {
            field: "label_selector",
            reason: match &err {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            },
        });
    }
    Error::ListPods {
        namespace: namespace.to_string(),
        source: err,
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct State {
    /// Pod reads.
    pub pods: Pods,
    /// The write path.
    pub writer: Writer,
    /// Authentication and authorization.
    pub auth: Authorizer,
    /// Ends watch streams.
    pub shutdown: Shutdown,
}

/// The WatchdogListener service.
#[derive(Clone, Debug)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    /// The service over `state`.
    pub fn new(state: State) -> Self {
        Self {
            state: Arc::new(state),
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPodHealthResponse, Status>> + Send>>;

#[tonic::async_trait]
impl WatchdogListener for Service {
    #[tracing::instrument(name = "PostWatchdog", skip_all, fields(pod, name))]
    async fn post_watchdog(
        &self,
        request: Request<pb::PostWatchdogRequest>,
    ) -> Result<Response<pb::PostWatchdogResponse>, Status> {
        let token = bearer(request.metadata()).map(str::to_string);
        let req = request.into_inner();
        let result = async {
            let key = pod_key(req.pod.as_ref())?;
            tracing::Span::current()
                .record("pod", key.to_string())
                .record("name", &req.name);
            validate::watchdog_name(&req.name)?;
            let level = level_from_proto(req.level)?;
            validate::message(&req.message)?;
            let ttl = req
                .ttl
                .map(|ttl| validate::ttl(ttl.seconds, ttl.nanos))
                .transpose()?;
            self.state
                .auth
                .check(token.as_deref(), Verb::Create, &key.namespace, Some(&key))
                .await?;
            let op = Op::Set {
                name: req.name,
                level,
                message: req.message,
                ttl,
            };
            self.state.writer.submit(key, op).await
        }
        .await;
        let health = result.map_err(status)?;
        Ok(Response::new(pb::PostWatchdogResponse {
            pod_health: Some(pod_health_to_proto(&health)),
        }))
    }

    #[tracing::instrument(name = "GetPodHealth", skip_all, fields(pod))]
    async fn get_pod_health(
        &self,
        request: Request<pb::GetPodHealthRequest>,
    ) -> Result<Response<pb::GetPodHealthResponse>, Status> {
        let token = bearer(request.metadata()).map(str::to_string);
        let req = request.into_inner();
        let result = async {
            let key = pod_key(req.pod.as_ref())?;
            tracing::Span::current().record("pod", key.to_string());
            self.state
                .auth
                .check(token.as_deref(), Verb::Get, &key.namespace, None)
                .await?;
            match self.state.pods.get(&key).await {
                Ok(Some(pod)) => Ok(pod_health(&pod, Utc::now())),
                Ok(None) => Err(Error::PodNotFound {
                    namespace: key.namespace,
                    name: key.name,
                }),
                Err(err) => Err(Error::ReadPod {
                    pod: key.to_string(),
                    source: Arc::new(err),
                }),
            }
        }
        .await;
        let health = result.map_err(status)?;
        Ok(Response::new(pb::GetPodHealthResponse {
            pod_health: Some(pod_health_to_proto(&health)),
        }))
    }

    #[tracing::instrument(name = "ListPodHealth", skip_all, fields(namespace))]
    async fn list_pod_health(
        &self,
        request: Request<pb::ListPodHealthRequest>,
    ) -> Result<Response<pb::ListPodHealthResponse>, Status> {
        let token = bearer(request.metadata()).map(str::to_string);
        let req = request.into_inner();
        let result = async {
            validate::namespace(&req.namespace)?;
            tracing::Span::current().record("namespace", &req.namespace);
            let limit = validate::page_size(req.page_size)?;
            self.state
                .auth
                .check(token.as_deref(), Verb::List, &req.namespace, None)
                .await?;
            let list = self
                .state
                .pods
                .list(&req.namespace, &req.label_selector, limit, &req.page_token)
                .await
                .map_err(|err| list_error(&req.namespace, err))?;
            let now = Utc::now();
            let mut pods: Vec<PodHealth> = list.items.iter().map(|p| pod_health(p, now)).collect();
            pods.sort_by(|a, b| a.name.cmp(&b.name));
            Ok::<_, Error>(pb::ListPodHealthResponse {
                pods: pods.iter().map(pod_health_to_proto).collect(),
                next_page_token: list.metadata.continue_.unwrap_or_default(),
            })
        }
        .await;
        Ok(Response::new(result.map_err(status)?))
    }

    #[tracing::instrument(name = "DeleteWatchdog", skip_all, fields(pod, name))]
    async fn delete_watchdog(
        &self,
        request: Request<pb::DeleteWatchdogRequest>,
    ) -> Result<Response<pb::DeleteWatchdogResponse>, Status> {
        let token = bearer(request.metadata()).map(str::to_string);
        let req = request.into_inner();
        let result = async {
            let key = pod_key(req.pod.as_ref())?;
            tracing::Span::current()
                .record("pod", key.to_string())
                .record("name", &req.name);
            validate::watchdog_name(&req.name)?;
            self.state
                .auth
                .check(token.as_deref(), Verb::Delete, &key.namespace, Some(&key))
                .await?;
            self.state
                .writer
                .submit(key, Op::Delete { name: req.name })
                .await
        }
        .await;
        let health = result.map_err(status)?;
        Ok(Response::new(pb::DeleteWatchdogResponse {
            pod_health: Some(pod_health_to_proto(&health)),
        }))
    }

    #[tracing::instrument(name = "WatchPodHealth", skip_all, fields(namespace, selector))]
    async fn watch_pod_health(
        &self,
        request: Request<pb::WatchPodHealthRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let token = bearer(request.metadata()).map(str::to_string);
        let req = request.into_inner();
        let result = async {
            validate::namespace(&req.namespace)?;
            let span = tracing::Span::current();
            span.record("namespace", &req.namespace)
                .record("selector", &req.label_selector);
            self.state
                .auth
                .check(token.as_deref(), Verb::Watch, &req.namespace, None)
                .await?;
            // Surface a malformed selector now, as INVALID_ARGUMENT, not as a retrying watch.
            self.state
                .pods
                .list(&req.namespace, &req.label_selector, 1, "")
                .await
                .map_err(|err| list_error(&req.namespace, err))?;
            Ok::<_, Error>(())
        }
        .await;
        result.map_err(status)?;
        let (sender, receiver) = mpsc::channel(16);
        let task = feed_watch(
            self.state.pods.client().clone(),
            req,
            sender,
            self.state.shutdown.clone(),
        );
        tokio::spawn(task.instrument(tracing::info_span!("watch_stream")));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Feeds one WatchPodHealth stream from a Kubernetes watch of the namespace's matching pods,
/// until the client goes away or the server shuts down (the stream then ends with OK).
async fn feed_watch(
    client: kube::Client,
    req: pb::WatchPodHealthRequest,
    sender: mpsc::Sender<Result<pb::WatchPodHealthResponse, Status>>,
    shutdown: Shutdown,
) {
    let pb::WatchPodHealthRequest {
        namespace,
        label_selector,
        resume_token,
    } = req;
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut config = watcher::Config::default();
    if !label_selector.is_empty() {
        config = config.labels(&label_selector);
    }
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut state = StreamState::default();
    let mut listing: Option<Vec<PodHealth>> = None;
    let mut started = false;
    loop {
        let event = tokio::select! {
            () = shutdown.wait() => break,
            () = sender.closed() => break,
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
        };
        let update = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(Vec::new());
                None
            }
            Ok(watcher::Event::InitApply(pod)) => {
                listing
                    .get_or_insert_with(Vec::new)
                    .push(pod_health(&pod, Utc::now()));
                None
            }
            Ok(watcher::Event::InitDone) => {
                let observed = listing.take().unwrap_or_default();
                if started {
                    state.relist(observed)
                } else {
                    started = true;
                    Some(state.start(observed, &resume_token))
                }
            }
            Ok(watcher::Event::Apply(pod)) if started => state.apply(pod_health(&pod, Utc::now())),
            Ok(watcher::Event::Delete(pod)) if started => state.remove(&pod.name_any()),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(error = %err, "Pod watch failed; retrying");
                None
            }
        };
        if let Some(update) = update
            && sender
                .send(Ok(update_to_proto(&namespace, update)))
                .await
                .is_err()
        {
            break;
        }
    }
    tracing::debug!("Watch stream ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_read_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer(&metadata), None);
        metadata.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer(&metadata), Some("abc.def"));
        metadata.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&metadata), None);
    }

    #[test]
    fn codes_follow_the_contract() {
        let invalid = status(Error::Invalid(validate::level_unspecified()));
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
        assert!(
            invalid.message().starts_with("level:"),
            "{}",
            invalid.message()
        );
        let denied = status(Error::PermissionDenied {
            verb: "create",
            namespace: "shop".into(),
            reason: "no".into(),
        });
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("create") && denied.message().contains("shop"));
        let missing = status(Error::PodNotFound {
            namespace: "shop".into(),
            name: "web-0".into(),
        });
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(
            status(Error::Unauthenticated("x".into())).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(level_from_proto(7).unwrap_err().field, "level");
    }
}
