//! The `autocrane.data.v1.DataRepository` service: proto ↔ store conversion, the two streams
//! (`WatchSynced` from the store's change generation, `Fetch` from blob files), and the one place
//! where errors become gRPC statuses ([`status`]). Request validation is in [`crate::validate`].

use std::{collections::HashSet, pin::Pin, sync::Arc, time::Duration};

use autocrane_api::proto::{
    data_v1::{self as pb, data_repository_server::DataRepository},
    version_v1::GetSourceRequest,
};
use autocrane_runtime::{shutdown::Shutdown, upstream::local_dirs::AllowedDirectories};
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
        | Error::VersionWatcher(_) => Status::internal(err.to_string()),
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        status(err)
    }
}

/// The service.
#[derive(Clone, Debug)]
pub struct Service {
    store: Store,
    followers: Followers,
    shutdown: Shutdown,
    fetches: Arc<Semaphore>,
    bytes_per_second: u64,
    metrics: Metrics,
    directories: AllowedDirectories,
}

impl Service {
    /// A service over `store`, allowing `max_fetches` concurrent Fetch streams, each sending at most
    /// `bytes_per_second` (0: unlimited), and directory sources only under `directories`.
    pub fn new(
        store: Store,
        followers: Followers,
        shutdown: Shutdown,
        max_fetches: usize,
        bytes_per_second: u64,
        metrics: Metrics,
        directories: AllowedDirectories,
    ) -> Self {
        Self {
            store,
            followers,
            shutdown,
            fetches: Arc::new(Semaphore::new(max_fetches.max(1))),
            bytes_per_second,
            metrics,
            directories,
        }
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
        Ok(Response::new(self.track(request.into_inner()).await?))
    }

    async fn untrack_source(
        &self,
        request: Request<pb::UntrackSourceRequest>,
    ) -> Result<Response<pb::UntrackSourceResponse>, Status> {
        Ok(Response::new(self.untrack(request.into_inner())?))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner())?))
    }

    async fn list_data_versions(
        &self,
        request: Request<pb::ListDataVersionsRequest>,
    ) -> Result<Response<pb::ListDataVersionsResponse>, Status> {
        Ok(Response::new(self.list_versions(request.into_inner())?))
    }

    async fn watch_synced(
        &self,
        request: Request<pb::WatchSyncedRequest>,
    ) -> Result<Response<BoxStream<pb::WatchSyncedResponse>>, Status> {
        Ok(Response::new(self.watch(request.into_inner())?))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
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
        Ok(Response::new(self.fetch_stream(request.into_inner())?))
    }

    async fn pin_version(
        &self,
        request: Request<pb::PinVersionRequest>,
    ) -> Result<Response<pb::PinVersionResponse>, Status> {
        Ok(Response::new(self.pin(request.into_inner())?))
    }

    async fn unpin_version(
        &self,
        request: Request<pb::UnpinVersionRequest>,
    ) -> Result<Response<pb::UnpinVersionResponse>, Status> {
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
