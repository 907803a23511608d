//! The tonic service: proto ↔ domain conversion, the handlers, and the one place where errors
//! become gRPC statuses ([`status`]).

use std::{pin::Pin, sync::Arc};

use autocrane_api::{
    proto::watchdog_v1::{self as pb, watchdog_listener_server::WatchdogListener},
    watchdog::{Health, Level, PodHealth, Watchdog},
};
use autocrane_runtime::shutdown::Shutdown;
use futures::Stream;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    Error,
    auth::{self, Authorizer, Verb},
    coalesce::Op,
    index::PodIndex,
    pods::{PodKey, Pods, pod_health},
    selector::LabelSelector,
    validate::{self, Invalid},
    watch::{Scope, StreamState, Update},
    writer::Writer,
};

/// Maps an error to the status the caller sees; the only place that chooses codes.
pub fn status(err: Error) -> Status {
    match &err {
        Error::Invalid(_) => Status::invalid_argument(err.to_string()),
        Error::PodNotFound { .. } => Status::not_found(err.to_string()),
        Error::Auth(auth) => autocrane_runtime::auth::status(auth)
            .unwrap_or_else(|| Status::internal(err.to_string())),
        Error::ShuttingDown => Status::unavailable(err.to_string()),
        Error::ReadPod { .. } | Error::WritePod { .. } | Error::ListPods { .. } => {
            tracing::warn!(error = %err, cause = ?std::error::Error::source(&err).map(ToString::to_string), "Kubernetes API call failed");
            Status::unavailable(format!("{err}: the Kubernetes API is unavailable"))
        }
        _ => Status::internal(err.to_string()),
    }
}

pub use autocrane_runtime::auth::bearer;

fn timestamp(time: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.as_second(),
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

/// Shared state of the handlers.
#[derive(Debug)]
pub struct State {
    /// Pod reads (GetPodHealth, ListPodHealth: straight from the API server).
    pub pods: Pods,
    /// The pod index the watch streams are fed from.
    pub index: PodIndex,
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
            auth::check(
                &self.state.auth,
                token.as_deref(),
                Verb::Create,
                &key.namespace,
                Some(&key),
            )
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
            auth::check(
                &self.state.auth,
                token.as_deref(),
                Verb::Get,
                &key.namespace,
                None,
            )
            .await?;
            let pod = self.state.pods.read(&key).await?;
            Ok(pod_health(&pod, Timestamp::now()))
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
            auth::check(
                &self.state.auth,
                token.as_deref(),
                Verb::List,
                &req.namespace,
                None,
            )
            .await?;
            let (items, next_page_token) = self
                .state
                .pods
                .list(&req.namespace, &req.label_selector, limit, &req.page_token)
                .await?;
            let now = Timestamp::now();
            let mut pods: Vec<PodHealth> = items.iter().map(|p| pod_health(p, now)).collect();
            pods.sort_by(|a, b| a.name.cmp(&b.name));
            Ok::<_, Error>(pb::ListPodHealthResponse {
                pods: pods.iter().map(pod_health_to_proto).collect(),
                next_page_token,
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
            auth::check(
                &self.state.auth,
                token.as_deref(),
                Verb::Delete,
                &key.namespace,
                Some(&key),
            )
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
            auth::check(
                &self.state.auth,
                token.as_deref(),
                Verb::Watch,
                &req.namespace,
                None,
            )
            .await?;
            // A malformed selector is INVALID_ARGUMENT now, not a stream that never matches.
            let selector = LabelSelector::parse(&req.label_selector)?;
            if !self.state.index.covers(&req.namespace) {
                return Err(Error::Invalid(Invalid {
                    field: "namespace",
                    reason: format!(
                        "this listener follows only namespace {:?} (--watch-namespace)",
                        self.state.index.namespace().unwrap_or_default()
                    ),
                }));
            }
            Ok::<_, Error>(selector)
        }
        .await;
        let selector = result.map_err(status)?;
        let pb::WatchPodHealthRequest {
            namespace,
            label_selector,
            resume_token,
        } = req;
        let span = tracing::info_span!("watch_stream", %namespace, selector = %label_selector);
        let scope = Scope {
            namespace,
            selector,
        };
        let (sender, receiver) = mpsc::channel(16);
        let task = feed_watch(
            self.state.index.clone(),
            scope,
            resume_token,
            sender,
            self.state.shutdown.clone(),
        );
        tokio::spawn(task.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Feeds one WatchPodHealth stream from the pod index: the current state of the scope first, then
/// its changes, until the client goes away or the server shuts down (the stream then ends with OK).
async fn feed_watch(
    index: PodIndex,
    scope: Scope,
    resume_token: String,
    sender: mpsc::Sender<Result<pb::WatchPodHealthResponse, Status>>,
    shutdown: Shutdown,
) {
    tokio::select! {
        () = shutdown.wait() => return,
        () = sender.closed() => return,
        () = index.ready() => {}
    }
    let (pods, mut changes) = index.subscribe(Some(&scope.namespace));
    let mut state = StreamState::default();
    let mut update = Some(state.start(scope.observe(&pods, Timestamp::now()), &resume_token));
    loop {
        if let Some(update) = update.take()
            && sender
                .send(Ok(update_to_proto(&scope.namespace, update)))
                .await
                .is_err()
        {
            break;
        }
        let event = tokio::select! {
            () = shutdown.wait() => break,
            () = sender.closed() => break,
            event = changes.next() => match event {
                Some(event) => event,
                None => break,
            },
        };
        update = state.on_event(&scope, event, Timestamp::now());
    }
    tracing::debug!("Watch stream ended");
}

#[cfg(test)]
mod tests {
    use autocrane_runtime::RuntimeError;

    use super::*;

    #[test]
    fn codes_follow_the_contract() {
        let invalid = status(Error::Invalid(validate::level_unspecified()));
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
        assert!(
            invalid.message().starts_with("level:"),
            "{}",
            invalid.message()
        );
        let denied = status(Error::Auth(RuntimeError::PermissionDenied(Box::new(
            autocrane_runtime::auth::Denial {
                user: "system:serviceaccount:shop:prober".into(),
                verb: "create",
                resource: "watchdogs.autocrane.io".into(),
                namespace: Some("shop".into()),
                reason: "no".into(),
            },
        ))));
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("create") && denied.message().contains("shop"));
        let missing = status(Error::PodNotFound {
            namespace: "shop".into(),
            name: "web-0".into(),
        });
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(
            status(Error::Auth(RuntimeError::Unauthenticated("x".into()))).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(level_from_proto(7).unwrap_err().field, "level");
    }
}
