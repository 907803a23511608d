//! The `autocrane.version.v1.VersionWatcher` gRPC service: request validation, proto ↔ domain
//! conversion, and the one place where errors become `Status`es.

use std::{collections::HashSet, pin::Pin, sync::Arc, time::Duration};

use autocrane_api::keys::{GROUP, VERSIONS_RESOURCE};
use autocrane_api::proto::version_v1::{self as pb, version_watcher_server::VersionWatcher};
use autocrane_runtime::{
    auth::{self, Authorizer, Resource, Verb},
    upstream::{egress::EgressPolicy, git::parse_remote, local_dirs::AllowedDirectories},
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::{
    hub::{Hub, HubError, SourceView, Subscription},
    spec::{self, Policy, RegexOrder, Spec, SpecError, Upstream},
    state::{Event, EventKind, Health, Seq, VersionView},
};

/// How long GetSource and WatchVersions wait for the first probe of a source they just added.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(10);
/// Most specs per WatchVersions call.
const MAX_WATCHED: usize = 1000;
/// Longest quarantine reason, in bytes.
const MAX_REASON_BYTES: usize = 1024;

/// The RBAC resource every call is checked against: `versions.autocrane.io`, cluster-wide (a
/// source is not namespaced).
pub const VERSIONS: Resource = Resource {
    group: GROUP,
    resource: VERSIONS_RESOURCE,
};

/// The RBAC verb of each RPC. GetSource and WatchVersions start watching a source they do not
/// know yet, but that is what reading it means here (the spec is the name), so they are reads;
/// Probe only refreshes what a read returns (the unauthenticated webhook does the same), so it is
/// a `get`; quarantines change what the policy may choose, so they are `update`s.
pub fn verb(rpc: Rpc) -> Verb {
    match rpc {
        Rpc::GetSource | Rpc::Probe => Verb::Get,
        Rpc::ListSources | Rpc::ListVersions => Verb::List,
        Rpc::WatchVersions => Verb::Watch,
        Rpc::QuarantineVersion | Rpc::LiftQuarantine => Verb::Update,
    }
}

/// The RPCs of the service, for [`verb`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Rpc {
    GetSource,
    ListSources,
    ListVersions,
    WatchVersions,
    Probe,
    QuarantineVersion,
    LiftQuarantine,
}

/// The service.
#[derive(Clone, Debug)]
pub struct Service {
    hub: Arc<Hub>,
    directories: AllowedDirectories,
    egress: EgressPolicy,
    auth: Arc<Authorizer>,
}

impl Service {
    /// A service over `hub`, its callers checked by `auth`.
    pub fn new(
        hub: Arc<Hub>,
        directories: AllowedDirectories,
        egress: EgressPolicy,
        auth: Authorizer,
    ) -> Self {
        Self {
            hub,
            directories,
            egress,
            auth: Arc::new(auth),
        }
    }

    /// Checks the caller of `request` before anything else runs (no validation error, no new
    /// source and no probe for a caller who may not call).
    async fn authorize<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<(), Status> {
        self.auth
            .check(auth::bearer(request.metadata()), verb(rpc), None)
            .await
            .map_err(|err| auth::status(&err).unwrap_or_else(|| Status::internal(err.to_string())))
    }

    /// What the server's own limits refuse (`field` names the spec): a directory source outside
    /// the `--allow-directory` list, an upstream whose host can never be reached under the
    /// egress policy (an IP literal or `localhost`; names are judged when connecting).
    fn check_local(&self, spec: &Spec, field: &str) -> Result<(), Status> {
        match &spec.upstream {
            Upstream::Directory { path, .. } => {
                self.directories
                    .check(std::path::Path::new(path))
                    .map_err(|why| {
                        Status::invalid_argument(format!("{field}.directory.path: {why}"))
                    })?;
            }
            Upstream::Oci { registry, .. } => {
                check_url_host(&self.egress, registry, &format!("{field}.oci.registry"))?;
            }
            Upstream::Http { url, .. } => {
                check_url_host(&self.egress, url, &format!("{field}.http.url"))?;
            }
            Upstream::Git { url, .. } => {
                let remote = parse_remote(url)
                    .map_err(|e| Status::invalid_argument(format!("{field}.git.url: {e}")))?;
                self.egress.check_host(&remote.host).map_err(|refused| {
                    Status::invalid_argument(format!("{field}.git.url: {refused}"))
                })?;
            }
        }
        Ok(())
    }
}

/// The request-time egress check of an `http(s)://host[:port]/…` URL (validated by `spec`).
fn check_url_host(egress: &EgressPolicy, url: &str, field: &str) -> Result<(), Status> {
    let host = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_string))
        .unwrap_or_default();
    egress
        .check_host(&host)
        .map_err(|refused| Status::invalid_argument(format!("{field}: {refused}")))
}

// ---- errors -------------------------------------------------------------------------------

fn status_of(error: HubError) -> Status {
    match &error {
        HubError::SourceNotFound(_)
        | HubError::VersionNotFound { .. }
        | HubError::NotQuarantined { .. } => Status::not_found(error.to_string()),
        HubError::Persist(source) => {
            tracing::error!(error = %source, "Persisting failed");
            Status::internal(format!("{error}: {source}"))
        }
    }
}

fn invalid(error: SpecError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    Ok(())
}

/// The page size of a List call: 0 means 100, at most 1000.
fn page_size(size: u32) -> Result<usize, Status> {
    match size {
        0 => Ok(100),
        1..=1000 => Ok(size as usize),
        _ => Err(Status::invalid_argument("page_size: must be at most 1000")),
    }
}

// ---- resume tokens --------------------------------------------------------------------------

fn token_of(seq: Seq) -> String {
    format!("v1.{seq}")
}

fn parse_token(token: &str) -> Result<Option<Seq>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("v1.")
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(
                "resume_token: malformed; pass a token from a previous response",
            )
        })
}

/// The client's `grpc-timeout`, if any (to bound waits inside a call).
fn client_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn first_probe_wait<T>(request: &Request<T>) -> Duration {
    client_deadline(request).map_or(FIRST_PROBE_WAIT, |d| FIRST_PROBE_WAIT.min(d.mul_f64(0.8)))
}

// ---- domain → proto -------------------------------------------------------------------------

fn timestamp(time: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// The canonical spec as a proto message.
pub fn spec_to_proto(spec: &Spec) -> pb::SourceSpec {
    use pb::source_spec::Upstream as U;
    use pb::version_policy::Policy as P;
    let upstream = match &spec.upstream {
        Upstream::Oci {
            registry,
            repository,
            resolve_digests,
        } => U::Oci(pb::OciSource {
            registry: registry.clone(),
            repository: repository.clone(),
            resolve_digests: Some(*resolve_digests),
        }),
        Upstream::Git { url, git_ref, path } => U::Git(pb::GitSource {
            url: url.clone(),
            r#ref: git_ref.clone(),
            path: path.clone(),
        }),
        Upstream::Http { url, json_pointer } => U::Http(pb::HttpSource {
            url: url.clone(),
            json_pointer: json_pointer.clone(),
        }),
        Upstream::Directory { path, version_file } => U::Directory(pb::DirectorySource {
            path: path.clone(),
            version_file: version_file.clone(),
        }),
    };
    let policy = match &spec.policy {
        Policy::Semver {
            range,
            include_prereleases,
            allow_v_prefix,
        } => P::Semver(pb::SemverPolicy {
            range: range.clone(),
            include_prereleases: *include_prereleases,
            allow_v_prefix: *allow_v_prefix,
        }),
        Policy::Regex {
            pattern,
            capture,
            order,
        } => P::Regex(pb::RegexPolicy {
            pattern: pattern.clone(),
            capture: capture.clone(),
            order: match order {
                RegexOrder::Numeric => pb::RegexOrder::Numeric,
                RegexOrder::Lexical => pb::RegexOrder::Lexical,
                RegexOrder::Semver => pb::RegexOrder::Semver,
            } as i32,
        }),
        Policy::Newest => P::Newest(pb::NewestPolicy {}),
        Policy::Pin { version } => P::Pin(pb::PinPolicy {
            version: version.clone(),
        }),
    };
    let interval = spec.poll_interval();
    pb::SourceSpec {
        upstream: Some(upstream),
        policy: Some(pb::VersionPolicy {
            policy: Some(policy),
        }),
        poll_interval: Some(prost_types::Duration {
            seconds: interval.as_secs() as i64,
            nanos: interval.subsec_nanos() as i32,
        }),
    }
}

fn version_to_proto(view: &VersionView) -> pb::Version {
    pb::Version {
        name: view.record.name.clone(),
        digest: view.record.digest.clone(),
        published_at: view.record.published_at.map(timestamp),
        discovered_at: Some(timestamp(view.record.discovered_at)),
        quarantine: view.quarantine.as_ref().map(|q| pb::Quarantine {
            reason: q.reason.clone(),
            quarantined_at: Some(timestamp(q.quarantined_at)),
        }),
    }
}

fn state_to_proto(view: &SourceView) -> pb::SourceState {
    let status = &view.status;
    pb::SourceState {
        source_id: view.id.clone(),
        spec: Some(spec_to_proto(&view.spec)),
        current: view.current.as_ref().map(version_to_proto),
        version_count: view.version_count as u32,
        status: Some(pb::SourceStatus {
            health: match status.health {
                Health::Pending => pb::SourceHealth::Pending,
                Health::Ok => pb::SourceHealth::Ok,
                Health::Failing => pb::SourceHealth::Failing,
            } as i32,
            last_error: status.last_error.clone(),
            last_probe_at: status.last_probe_at.map(timestamp),
            next_probe_at: status.next_probe_at.map(timestamp),
            consecutive_failures: status.consecutive_failures,
        }),
    }
}

fn event_to_proto(source_id: &str, event: &Event) -> pb::VersionEvent {
    pb::VersionEvent {
        source_id: source_id.to_string(),
        kind: match event.kind {
            EventKind::Discovered => pb::VersionEventKind::Discovered,
            EventKind::CurrentChanged => pb::VersionEventKind::CurrentChanged,
            EventKind::Quarantined => pb::VersionEventKind::Quarantined,
            EventKind::Released => pb::VersionEventKind::Released,
            EventKind::Removed => pb::VersionEventKind::Removed,
            EventKind::Failing => pb::VersionEventKind::Failing,
            EventKind::Recovered => pb::VersionEventKind::Recovered,
        } as i32,
        version: event.version.as_ref().map(version_to_proto),
        previous: event.previous.as_ref().map(version_to_proto),
        error: event.error.clone(),
    }
}

fn snapshot_message(subscription: &Subscription) -> pb::WatchVersionsResponse {
    pb::WatchVersionsResponse {
        snapshot: true,
        sources: subscription.views.iter().map(state_to_proto).collect(),
        events: subscription
            .events
            .iter()
            .map(|(id, event)| event_to_proto(id, event))
            .collect(),
        resume_token: token_of(subscription.through),
    }
}

// ---- the service ----------------------------------------------------------------------------

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchVersionsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl VersionWatcher for Service {
    async fn get_source(
        &self,
        request: Request<pb::GetSourceRequest>,
    ) -> Result<Response<pb::GetSourceResponse>, Status> {
        self.authorize(&request, Rpc::GetSource).await?;
        let wait = first_probe_wait(&request);
        let spec = spec::validate(request.get_ref().source.as_ref(), "source").map_err(invalid)?;
        self.check_local(&spec, "source")?;
        let id = self.hub.ensure(spec).await.map_err(status_of)?;
        // A source nobody probed yet (just added, by this call or a concurrent one, or restored
        // after a restart) gets its first probe before the answer; others answer at once.
        self.hub.wait_probed(&id, wait).await.map_err(status_of)?;
        let view = self.hub.view(&id).map_err(status_of)?;
        Ok(Response::new(pb::GetSourceResponse {
            source: Some(state_to_proto(&view)),
        }))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        self.authorize(&request, Rpc::ListSources).await?;
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        let (page, more) = self.hub.list(&request.page_token, limit);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSourcesResponse {
            sources: page.iter().map(state_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        self.authorize(&request, Rpc::ListVersions).await?;
        let request = request.into_inner();
        required("source_id", &request.source_id)?;
        let limit = page_size(request.page_size)?;
        // The token is an offset into the policy order; versions appearing between pages shift it,
        // which a lister sees as a repeated or skipped entry, never as an error.
        let offset: usize = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token: malformed"))?
        };
        let versions = self.hub.versions(&request.source_id).map_err(status_of)?;
        let end = offset.saturating_add(limit).min(versions.len());
        let page = versions.get(offset.min(end)..end).unwrap_or_default();
        let next_page_token = if end < versions.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListVersionsResponse {
            versions: page.iter().map(version_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn watch_versions(
        &self,
        request: Request<pb::WatchVersionsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.authorize(&request, Rpc::WatchVersions).await?;
        let wait = first_probe_wait(&request);
        let request = request.into_inner();
        if request.sources.is_empty() || request.sources.len() > MAX_WATCHED {
            return Err(Status::invalid_argument(format!(
                "sources: must hold 1 to {MAX_WATCHED} specs"
            )));
        }
        let token = parse_token(&request.resume_token)?;
        let specs = request
            .sources
            .iter()
            .enumerate()
            .map(|(i, spec)| spec::validate(Some(spec), &format!("sources[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        for (i, spec) in specs.iter().enumerate() {
            self.check_local(spec, &format!("sources[{i}]"))?;
        }
        // All new sources are written as one group: one fsync, however many there are.
        let ids = self.hub.ensure_all(specs).await.map_err(status_of)?;
        let hub = self.hub.clone();
        // As in GetSource: sources never probed yet are probed before the snapshot (bounded).
        futures::future::join_all(ids.iter().map(|id| hub.wait_probed(id, wait))).await;
        let subscription = hub.subscribe(&ids, token).await.map_err(status_of)?;
        tracing::debug!(
            sources = ids.len(),
            resumed = token.is_some(),
            "Watch started"
        );
        Ok(Response::new(Box::pin(watch_stream(
            hub,
            ids,
            subscription,
        ))))
    }

    async fn probe(
        &self,
        request: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        self.authorize(&request, Rpc::Probe).await?;
        let request = request.into_inner();
        required("source_id", &request.source_id)?;
        let view = self
            .hub
            .probe_now(&request.source_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ProbeResponse {
            source: Some(state_to_proto(&view)),
        }))
    }

    async fn quarantine_version(
        &self,
        request: Request<pb::QuarantineVersionRequest>,
    ) -> Result<Response<pb::QuarantineVersionResponse>, Status> {
        self.authorize(&request, Rpc::QuarantineVersion).await?;
        let request = request.into_inner();
        required("source_id", &request.source_id)?;
        required("version", &request.version)?;
        required("reason", &request.reason)?;
        if request.reason.len() > MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "reason: must be at most {MAX_REASON_BYTES} bytes"
            )));
        }
        let view = self
            .hub
            .quarantine(&request.source_id, &request.version, &request.reason)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::QuarantineVersionResponse {
            source: Some(state_to_proto(&view)),
        }))
    }

    async fn lift_quarantine(
        &self,
        request: Request<pb::LiftQuarantineRequest>,
    ) -> Result<Response<pb::LiftQuarantineResponse>, Status> {
        self.authorize(&request, Rpc::LiftQuarantine).await?;
        let request = request.into_inner();
        required("source_id", &request.source_id)?;
        required("version", &request.version)?;
        let view = self
            .hub
            .lift(&request.source_id, &request.version)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::LiftQuarantineResponse {
            source: Some(state_to_proto(&view)),
        }))
    }
}

/// The stream after the snapshot: every change of a subscribed source, each once. A stream that
/// falls more than the broadcast's capacity behind ends with RESOURCE_EXHAUSTED (see below).
fn watch_stream(
    hub: Arc<Hub>,
    ids: Vec<String>,
    mut subscription: Subscription,
) -> impl Stream<Item = Result<pb::WatchVersionsResponse, Status>> + Send {
    let shutdown = hub.shutdown().clone();
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    async_stream::stream! {
        yield Ok(snapshot_message(&subscription));
        let mut last = subscription.through;
        loop {
            let received = tokio::select! {
                () = shutdown.wait() => break,
                received = subscription.receiver.recv() => received,
            };
            match received {
                Ok(change) => {
                    if !wanted.contains(&change.source_id) || change.last_seq() <= last {
                        continue;
                    }
                    let events = change
                        .events
                        .iter()
                        .filter(|e| e.seq > last)
                        .map(|e| event_to_proto(&change.source_id, e))
                        .collect();
                    last = change.last_seq();
                    yield Ok(pb::WatchVersionsResponse {
                        snapshot: false,
                        sources: vec![state_to_proto(&change.view)],
                        events,
                        resume_token: token_of(last),
                    });
                }
                Err(RecvError::Lagged(missed)) => {
                    // The contract promises `snapshot = false` after the first message, so a
                    // consumer too slow for the broadcast is cut off with a retryable code; its
                    // reconnect with the last token gets a snapshot plus the missed events.
                    tracing::warn!(missed, "Watch fell behind; ending it");
                    yield Err(Status::resource_exhausted(format!(
                        "the stream fell {missed} changes behind; reconnect with resume_token {}",
                        token_of(last)
                    )));
                    break;
                }
                Err(RecvError::Closed) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        assert_eq!(parse_token(&token_of(42)).unwrap(), Some(42));
        assert_eq!(parse_token("").unwrap(), None);
        assert_eq!(
            parse_token("42").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert!(page_size(1001).is_err());
    }

    #[test]
    fn canonical_specs_convert_back_to_the_same_spec() {
        let spec = Spec {
            upstream: Upstream::Oci {
                registry: "http://127.0.0.1:5000".into(),
                repository: "acme/app".into(),
                resolve_digests: true,
            },
            policy: Policy::Regex {
                pattern: "b-(?P<n>[0-9]+)".into(),
                capture: "n".into(),
                order: RegexOrder::Numeric,
            },
            poll_interval_ms: 1500,
        };
        let again = spec::validate(Some(&spec_to_proto(&spec)), "source").unwrap();
        assert_eq!(again, spec);
    }
}
