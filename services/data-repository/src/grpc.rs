//! The `autocrane.data.v1.DataRepository` service: proto ↔ store conversion, the two streams
//! (`WatchSynced` from the store's change generation, `Fetch` from blob files), and the one place
//! where errors become gRPC statuses ([`status`]). Request validation is in [`crate::validate`].

use std::{collections::HashSet, pin::Pin, sync::Arc, time::Duration};

use autocrane_api::keys::{DATASOURCES_RESOURCE, GROUP};
use autocrane_api::proto::{
    data_v1::{self as pb, data_repository_server::DataRepository},
    version_v1::GetSourceRequest,
};
use autocrane_runtime::{
    auth::{self, Authorizer, Caller, Resource, Scope, Verb},
    shutdown::Shutdown,
    upstream::{egress::EgressPolicy, local_dirs::AllowedDirectories},
};
use futures::Stream;
use tokio::{io::AsyncReadExt, sync::Semaphore, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::{
    Error,
    follow::Followers,
    metrics::Metrics,
    store::{Store, VersionRecord},
    validate,
};

/// Largest chunk of a `Fetch` stream.
pub const CHUNK_BYTES: usize = 1 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Maps an error to the status the caller sees; the only place that chooses codes.
pub fn status(err: Error) -> Status {
    match err {
        Error::Invalid(_) => Status::invalid_argument(err.to_string()),
        Error::Auth(auth) => {
            auth::status(&auth).unwrap_or_else(|| Status::internal(auth.to_string()))
        }
        Error::UnknownSource { .. }
        | Error::NotTracked { .. }
        | Error::UnknownVersion { .. }
        | Error::BlobGone { .. } => Status::not_found(err.to_string()),
        Error::NotSynced { .. } => Status::failed_precondition(err.to_string()),
        Error::TooManyFetches => Status::resource_exhausted(err.to_string()),
        Error::ShuttingDown => Status::unavailable(err.to_string()),
        // The VersionWatcher's verdict on the source is the caller's to see as is.
        Error::AskVersionWatcher(status)
            if matches!(status.code(), Code::InvalidArgument | Code::NotFound) =>
        {
            status
        }
        Error::AskVersionWatcher(_) => Status::unavailable(err.to_string()),
        Error::VersionWatcherReply(_)
        | Error::ReadBlob { .. }
        | Error::WriteStore(_)
        | Error::Serve(_)
        | Error::OpenStore(_)
        | Error::GitHome(_)
        | Error::SetUpAuth(_)
        | Error::VersionWatcher(_) => Status::internal(err.to_string()),
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        status(err)
    }
}

/// The RBAC resource every call is checked against: `datasources.autocrane.io`, cluster-wide (a
/// source is not namespaced).
pub const DATASOURCES: Resource = Resource {
    group: GROUP,
    resource: DATASOURCES_RESOURCE,
};

/// The RPCs of the service, for [`verb`] and [`scope`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Rpc {
    TrackSource,
    UntrackSource,
    ListSources,
    ListDataVersions,
    WatchSynced,
    GetManifest,
    Fetch,
    PinVersion,
    UnpinVersion,
}

/// The RBAC verb of each RPC: tracking creates and deletes a source, pins change it, everything
/// else reads.
pub fn verb(rpc: Rpc) -> Verb {
    match rpc {
        Rpc::TrackSource => Verb::Create,
        Rpc::UntrackSource => Verb::Delete,
        Rpc::ListSources | Rpc::ListDataVersions => Verb::List,
        Rpc::WatchSynced => Verb::Watch,
        Rpc::GetManifest | Rpc::Fetch => Verb::Get,
        Rpc::PinVersion | Rpc::UnpinVersion => Verb::Update,
    }
}

/// What a caller may do without RBAC: a pod-bound token (the DataDeployer in an app's pod) may
/// read manifests and fetch, which is all a DataDeployer does, so app ServiceAccounts need no
/// grant on `datasources`. Anything else a pod-bound token asks goes to RBAC like any identity:
/// the controller's and the DataRepository's own in-cluster tokens are pod-bound too, and their
/// grants are what lets them pin and track.
pub fn scope(caller: &Caller, rpc: Rpc) -> Scope {
    match (caller.bound_pod(), rpc) {
        (Some(_), Rpc::GetManifest | Rpc::Fetch) => Scope::Allow,
        _ => Scope::Rbac,
    }
}

/// The service.
#[derive(Clone, Debug)]
pub struct Service {
    auth: Arc<Authorizer>,
    store: Store,
    followers: Followers,
    shutdown: Shutdown,
    fetches: Arc<Semaphore>,
    bytes_per_second: u64,
    metrics: Metrics,
    directories: AllowedDirectories,
    egress: EgressPolicy,
}

/// How much the Fetch streams may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// Concurrent Fetch streams; more get RESOURCE_EXHAUSTED.
    pub max_fetches: usize,
    /// Bytes per second one stream may send; 0 means unlimited.
    pub bytes_per_second: u64,
}

impl Service {
    /// A service over `store`, fetches within `limits`, directory sources only under
    /// `directories`, remote sources refused at once when their host can never pass `egress`,
    /// callers checked by `auth`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        followers: Followers,
        shutdown: Shutdown,
        limits: FetchLimits,
        metrics: Metrics,
        directories: AllowedDirectories,
        egress: EgressPolicy,
        auth: Authorizer,
    ) -> Self {
        let FetchLimits {
            max_fetches,
            bytes_per_second,
        } = limits;
        Self {
            auth: Arc::new(auth),
            store,
            followers,
            shutdown,
            fetches: Arc::new(Semaphore::new(max_fetches.max(1))),
            bytes_per_second,
            metrics,
            directories,
            egress,
        }
    }

    /// Checks the caller of `request` before anything else runs (no validation error, no
    /// VersionWatcher call for a caller who may not call).
    async fn authorize<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<(), Error> {
        self.auth
            .check_with(
                auth::bearer(request.metadata()),
                verb(rpc),
                None,
                |caller| scope(caller, rpc),
            )
            .await
            .map_err(Error::Auth)
    }

    /// Fails unless `id` is a source the store knows.
    fn known(&self, id: &str) -> Result<(), Error> {
        if self.store.knows(id) {
            Ok(())
        } else {
            Err(Error::UnknownSource { id: id.into() })
        }
    }

    /// The synced version `version` of source `id`.
    fn record(&self, id: &str, version: &str) -> Result<Arc<VersionRecord>, Error> {
        let id = validate::required("source_id", id)?;
        let version = validate::required("version", version)?;
        self.known(id)?;
        if let Some(record) = self.store.version(id, version) {
            return Ok(record);
        }
        let syncing = self
            .store
            .source(id)
            .and_then(|s| s.status)
            .is_some_and(|s| s.version == version && s.state == pb::SyncState::Syncing as i32);
        Err(if syncing {
            Error::NotSynced {
                id: id.into(),
                version: version.into(),
            }
        } else {
            Error::UnknownVersion {
                id: id.into(),
                version: version.into(),
            }
        })
    }

    async fn track(
        &self,
        request: pb::TrackSourceRequest,
    ) -> Result<pb::TrackSourceResponse, Error> {
        let (spec, directory) = validate::data_source(request.source)?;
        if let Some(path) = directory {
            self.directories
                .check(std::path::Path::new(&path))
                .map_err(validate::directory_not_allowed)?;
        }
        // An IP literal or `localhost` the egress policy refuses can never be fetched: say so now
        // (names are judged when connecting, on what they resolve to).
        if let Some((field, host)) = validate::remote_host(&spec)? {
            self.egress
                .check_host(&host)
                .map_err(|refused| validate::egress_refused(field, refused))?;
        }
        let state = self
            .followers
            .version_watcher()
            .get_source(GetSourceRequest { source: Some(spec) })
            .await
            .map_err(Error::AskVersionWatcher)?
            .into_inner()
            .source
            .ok_or(Error::VersionWatcherReply("no source"))?;
        let canonical = state
            .spec
            .clone()
            .ok_or(Error::VersionWatcherReply("no spec"))?;
        let id = state.source_id;
        let new = self
            .store
            .track(&id, canonical.clone())
            .map_err(Error::WriteStore)?;
        self.followers.start(&id, canonical);
        if new {
            tracing::info!(source_id = %id, "Tracking a source");
        }
        Ok(pb::TrackSourceResponse {
            source: self.store.source(&id),
        })
    }

    fn untrack(
        &self,
        request: pb::UntrackSourceRequest,
    ) -> Result<pb::UntrackSourceResponse, Error> {
        let id = validate::required("source_id", &request.source_id)?;
        if !self.store.untrack(id).map_err(Error::WriteStore)? {
            return Err(Error::UnknownSource { id: id.into() });
        }
        self.followers.stop(id);
        tracing::info!(source_id = %id, "Untracked a source");
        Ok(pb::UntrackSourceResponse {})
    }

    fn list(&self, request: pb::ListSourcesRequest) -> Result<pb::ListSourcesResponse, Error> {
        let limit = validate::page_size(request.page_size)?;
        let (sources, more) = self.store.sources(&request.page_token, limit);
        let next_page_token = if more {
            sources
                .last()
                .map(|s| s.source_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListSourcesResponse {
            sources,
            next_page_token,
        })
    }

    fn list_versions(
        &self,
        request: pb::ListDataVersionsRequest,
    ) -> Result<pb::ListDataVersionsResponse, Error> {
        let id = validate::required("source_id", &request.source_id)?;
        let versions = self
            .store
            .versions(id)
            .ok_or_else(|| Error::UnknownSource { id: id.into() })?;
        Ok(pb::ListDataVersionsResponse { versions })
    }

    fn watch(
        &self,
        request: pb::WatchSyncedRequest,
    ) -> Result<BoxStream<pb::WatchSyncedResponse>, Error> {
        if let Some(id) = request
            .source_ids
            .iter()
            .find(|id| !self.store.is_tracked(id))
        {
            return Err(Error::NotTracked { id: id.clone() });
        }
        let (sender, receiver) = mpsc::channel(16);
        let span = tracing::info_span!("watch_synced", sources = request.source_ids.len());
        tokio::spawn(
            watch_synced(
                self.store.clone(),
                self.shutdown.clone(),
                request.source_ids,
                sender,
            )
            .instrument(span),
        );
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    fn fetch_stream(
        &self,
        request: pb::FetchRequest,
    ) -> Result<BoxStream<pb::FetchResponse>, Error> {
        let record = self.record(&request.source_id, &request.version)?;
        validate::have(&request.have)?;
        let have: HashSet<&str> = request.have.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let mut plan: Vec<Blob> = Vec::new();
        for file in &record.files {
            if file.digest.is_empty()
                || have.contains(file.digest.as_str())
                || !seen.insert(file.digest.as_str())
            {
                continue;
            }
            plan.push(Blob {
                digest: file.digest.clone(),
                size: file.size,
                offset: 0,
            });
        }
        if let Some(resume) = &request.resume {
            let blob = plan.iter_mut().find(|blob| blob.digest == resume.digest);
            validate::resume(resume, blob.as_ref().map(|blob| blob.size))?;
            if let Some(blob) = blob {
                blob.offset = resume.offset;
            }
        }
        let permit = self
            .fetches
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyFetches)?;
        let total: u64 = plan.iter().map(|blob| blob.size - blob.offset).sum();
        tracing::info!(source_id = %record.source_id, version = %record.version, blobs = plan.len(), bytes = total, "Fetch");
        self.metrics.fetches.inc();
        let (sender, receiver) = mpsc::channel(4);
        let span = tracing::info_span!(
            "fetch",
            source_id = %record.source_id,
            version = %record.version,
            blobs = plan.len(),
            bytes = total,
        );
        let fetch = Fetch {
            store: self.store.clone(),
            shutdown: self.shutdown.clone(),
            rate: self.bytes_per_second,
            metrics: self.metrics.clone(),
            sender,
        };
        tokio::spawn(
            async move {
                let _permit = permit;
                fetch.send(plan, total).await;
            }
            .instrument(span),
        );
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    fn pin(&self, request: pb::PinVersionRequest) -> Result<pb::PinVersionResponse, Error> {
        let id = validate::required("source_id", &request.source_id)?;
        let version = validate::required("version", &request.version)?;
        let holder = validate::holder(&request.holder)?;
        match self
            .store
            .pin(id, version, holder)
            .map_err(Error::WriteStore)?
        {
            Some(version) => Ok(pb::PinVersionResponse {
                version: Some(version),
            }),
            None => {
                self.known(id)?;
                Err(Error::UnknownVersion {
                    id: id.into(),
                    version: version.into(),
                })
            }
        }
    }

    fn unpin(&self, request: pb::UnpinVersionRequest) -> Result<pb::UnpinVersionResponse, Error> {
        let id = validate::required("source_id", &request.source_id)?;
        let version = validate::required("version", &request.version)?;
        let holder = validate::required("holder", &request.holder)?;
        let version = self
            .store
            .unpin(id, version, holder)
            .map_err(Error::WriteStore)?;
        Ok(pb::UnpinVersionResponse { version })
    }
}

/// Streams the sync states of `wanted` (every source when empty): a snapshot, then each change.
async fn watch_synced(
    store: Store,
    shutdown: Shutdown,
    wanted: Vec<String>,
    sender: mpsc::Sender<Result<pb::WatchSyncedResponse, Status>>,
) {
    let states = |store: &Store| -> Vec<pb::DataSource> {
        if wanted.is_empty() {
            store.sources("", usize::MAX).0
        } else {
            wanted.iter().filter_map(|id| store.source(id)).collect()
        }
    };
    let mut generation = store.subscribe();
    let token = *generation.borrow_and_update();
    let mut last = states(&store);
    let first = pb::WatchSyncedResponse {
        snapshot: true,
        sources: last.clone(),
        resume_token: token.to_string(),
    };
    if sender.send(Ok(first)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = generation.changed() => if changed.is_err() { return },
            () = shutdown.wait() => return,
            () = sender.closed() => return,
        }
        let token = *generation.borrow_and_update();
        let now = states(&store);
        let changed: Vec<pb::DataSource> =
            now.iter().filter(|s| !last.contains(s)).cloned().collect();
        last = now;
        if changed.is_empty() {
            continue;
        }
        let message = pb::WatchSyncedResponse {
            snapshot: false,
            sources: changed,
            resume_token: token.to_string(),
        };
        if sender.send(Ok(message)).await.is_err() {
            return;
        }
    }
}

/// One blob of a fetch plan.
#[derive(Debug)]
struct Blob {
    digest: String,
    size: u64,
    /// Where sending starts (a resumed blob's offset).
    offset: u64,
}

/// The sending side of one `Fetch` stream.
#[derive(Debug)]
struct Fetch {
    store: Store,
    shutdown: Shutdown,
    /// Bytes per second; 0 means unlimited.
    rate: u64,
    metrics: Metrics,
    sender: mpsc::Sender<Result<pb::FetchResponse, Status>>,
}

impl Fetch {
    /// Sends the plan message, then every blob in chunks; an error ends the stream with its status.
    async fn send(self, plan: Vec<Blob>, total: u64) {
        let plan_message = pb::FetchResponse {
            payload: Some(pb::fetch_response::Payload::Plan(pb::FetchPlan {
                blob_count: plan.len() as u64,
                total_bytes: total,
            })),
        };
        if self.sender.send(Ok(plan_message)).await.is_err() {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        for blob in plan {
            match self.send_blob(blob, started, &mut sent).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    let _ = self.sender.send(Err(status(err))).await;
                    return;
                }
            }
        }
    }

    /// Sends one blob from its offset; `Ok(false)` when the client left or the server stops.
    async fn send_blob(
        &self,
        blob: Blob,
        started: tokio::time::Instant,
        sent: &mut u64,
    ) -> Result<bool, Error> {
        let Blob {
            digest,
            size,
            offset,
        } = blob;
        if self.shutdown.is_triggered() {
            return Err(Error::ShuttingDown);
        }
        let path = self.store.blob_path(&digest);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(source) => return Err(Error::BlobGone { digest, source }),
        };
        if offset > 0
            && let Err(source) =
                tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset)).await
        {
            return Err(Error::ReadBlob { digest, source });
        }
        let mut position = offset;
        loop {
            let want = CHUNK_BYTES.min((size - position) as usize);
            let mut data = vec![0u8; want];
            if let Err(source) = file.read_exact(&mut data).await {
                return Err(Error::ReadBlob { digest, source });
            }
            let last = position + want as u64 == size;
            let chunk = pb::Chunk {
                digest: digest.clone(),
                offset: position,
                data,
                last,
            };
            position += want as u64;
            *sent += want as u64;
            self.metrics.fetch_bytes.inc_by(want as u64);
            let message = pb::FetchResponse {
                payload: Some(pb::fetch_response::Payload::Chunk(chunk)),
            };
            tokio::select! {
                result = self.sender.send(Ok(message)) => if result.is_err() { return Ok(false) },
                () = self.shutdown.wait() => return Ok(false),
            }
            if self.rate > 0 {
                let due = Duration::from_secs_f64(*sent as f64 / self.rate as f64);
                tokio::time::sleep_until(started + due).await;
            }
            if last {
                return Ok(true);
            }
        }
    }
}

#[tonic::async_trait]
impl DataRepository for Service {
    async fn track_source(
        &self,
        request: Request<pb::TrackSourceRequest>,
    ) -> Result<Response<pb::TrackSourceResponse>, Status> {
        self.authorize(&request, Rpc::TrackSource).await?;
        Ok(Response::new(self.track(request.into_inner()).await?))
    }

    async fn untrack_source(
        &self,
        request: Request<pb::UntrackSourceRequest>,
    ) -> Result<Response<pb::UntrackSourceResponse>, Status> {
        self.authorize(&request, Rpc::UntrackSource).await?;
        Ok(Response::new(self.untrack(request.into_inner())?))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        self.authorize(&request, Rpc::ListSources).await?;
        Ok(Response::new(self.list(request.into_inner())?))
    }

    async fn list_data_versions(
        &self,
        request: Request<pb::ListDataVersionsRequest>,
    ) -> Result<Response<pb::ListDataVersionsResponse>, Status> {
        self.authorize(&request, Rpc::ListDataVersions).await?;
        Ok(Response::new(self.list_versions(request.into_inner())?))
    }

    async fn watch_synced(
        &self,
        request: Request<pb::WatchSyncedRequest>,
    ) -> Result<Response<BoxStream<pb::WatchSyncedResponse>>, Status> {
        self.authorize(&request, Rpc::WatchSynced).await?;
        Ok(Response::new(self.watch(request.into_inner())?))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        self.authorize(&request, Rpc::GetManifest).await?;
        let request = request.into_inner();
        let record = self.record(&request.source_id, &request.version)?;
        Ok(Response::new(pb::GetManifestResponse {
            manifest: Some(record.manifest()),
        }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<BoxStream<pb::FetchResponse>>, Status> {
        self.authorize(&request, Rpc::Fetch).await?;
        Ok(Response::new(self.fetch_stream(request.into_inner())?))
    }

    async fn pin_version(
        &self,
        request: Request<pb::PinVersionRequest>,
    ) -> Result<Response<pb::PinVersionResponse>, Status> {
        self.authorize(&request, Rpc::PinVersion).await?;
        Ok(Response::new(self.pin(request.into_inner())?))
    }

    async fn unpin_version(
        &self,
        request: Request<pb::UnpinVersionRequest>,
    ) -> Result<Response<pb::UnpinVersionResponse>, Status> {
        self.authorize(&request, Rpc::UnpinVersion).await?;
        Ok(Response::new(self.unpin(request.into_inner())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    /// Each domain error, the code a caller sees and a fragment of the message.
    #[test]
    fn each_error_has_its_code() {
        let id = || "git-0123".to_string();
        let version = || "v1".to_string();
        let digest = || format!("sha256:{}", "a".repeat(64));
        let table: Vec<(Error, Code, &str)> = vec![
            (
                validate::required("source_id", "").unwrap_err().into(),
                Code::InvalidArgument,
                "source_id: must not be empty",
            ),
            (
                validate::page_size(5000).unwrap_err().into(),
                Code::InvalidArgument,
                "page_size: must be 0..1000",
            ),
            (
                Error::UnknownSource { id: id() },
                Code::NotFound,
                "source \"git-0123\" is not known",
            ),
            (
                Error::NotTracked { id: id() },
                Code::NotFound,
                "source_ids: \"git-0123\" is not tracked",
            ),
            (
                Error::UnknownVersion {
                    id: id(),
                    version: version(),
                },
                Code::NotFound,
                "source \"git-0123\" has no version \"v1\"",
            ),
            (
                Error::NotSynced {
                    id: id(),
                    version: version(),
                },
                Code::FailedPrecondition,
                "version \"v1\" of \"git-0123\" is not synced yet",
            ),
            (
                Error::TooManyFetches,
                Code::ResourceExhausted,
                "too many concurrent fetches; retry later",
            ),
            (
                Error::ShuttingDown,
                Code::Unavailable,
                "the server is shutting down; resume the fetch",
            ),
            (
                Error::BlobGone {
                    digest: digest(),
                    source: io(std::io::ErrorKind::NotFound),
                },
                Code::NotFound,
                "the version was removed",
            ),
            (
                Error::ReadBlob {
                    digest: digest(),
                    source: io(std::io::ErrorKind::UnexpectedEof),
                },
                Code::Internal,
                "reading blob sha256:aaaa",
            ),
            (
                Error::AskVersionWatcher(Status::invalid_argument("source.git.url: required")),
                Code::InvalidArgument,
                "source.git.url: required",
            ),
            (
                Error::AskVersionWatcher(Status::not_found("no such source")),
                Code::NotFound,
                "no such source",
            ),
            (
                Error::AskVersionWatcher(Status::deadline_exceeded("slow")),
                Code::Unavailable,
                "the VersionWatcher: slow",
            ),
            (
                Error::VersionWatcherReply("no spec"),
                Code::Internal,
                "the VersionWatcher returned no spec",
            ),
            (
                Error::WriteStore(crate::store::StoreError::Parse {
                    path: "state.json".into(),
                    message: "not JSON".into(),
                }),
                Code::Internal,
                "state.json",
            ),
        ];
        for (err, code, fragment) in table {
            let shown = format!("{err:?}");
            let status = status(err);
            assert_eq!(status.code(), code, "{shown}");
            assert!(
                status.message().contains(fragment),
                "{shown}: {:?} lacks {fragment:?}",
                status.message()
            );
        }
    }
}
