//! The `autocrane.data.v1.DataRepository` service: proto ↔ store conversion, validation and the
//! two streams (`WatchSynced` from the store's change generation, `Fetch` from blob files).

use std::{collections::HashSet, pin::Pin, sync::Arc, time::Duration};

use autocrane_api::{
    proto::{
        data_v1::{self as pb, data_repository_server::DataRepository},
        version_v1::{GetSourceRequest, source_spec::Upstream},
    },
    runtime::{local_dirs::AllowedDirectories, shutdown::Shutdown},
};
use futures::Stream;
use tokio::{io::AsyncReadExt, sync::Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{follow::Followers, metrics::Metrics, store::Store, tree};

/// Largest chunk of a `Fetch` stream.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest `holder` of a pin.
const MAX_HOLDER_BYTES: usize = 253;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )))
    } else {
        Ok(value)
    }
}

fn internal(err: impl std::fmt::Display) -> Status {
    Status::internal(err.to_string())
}

fn unknown_source(id: &str) -> Status {
    Status::not_found(format!("source {id:?} is not known"))
}

impl Service {
    fn record(&self, id: &str, version: &str) -> Result<Arc<crate::store::VersionRecord>, Status> {
        let id = required(id, "source_id")?;
        let version = required(version, "version")?;
        if !self.store.knows(id) {
            return Err(unknown_source(id));
        }
        if let Some(record) = self.store.version(id, version) {
            return Ok(record);
        }
        let syncing = self
            .store
            .source(id)
            .and_then(|s| s.status)
            .is_some_and(|s| s.version == version && s.state == pb::SyncState::Syncing as i32);
        if syncing {
            Err(Status::failed_precondition(format!(
                "version {version:?} of {id:?} is not synced yet"
            )))
        } else {
            Err(Status::not_found(format!(
                "source {id:?} has no version {version:?}"
            )))
        }
    }
}

#[tonic::async_trait]
impl DataRepository for Service {
    async fn track_source(
        &self,
        request: Request<pb::TrackSourceRequest>,
    ) -> Result<Response<pb::TrackSourceResponse>, Status> {
        let spec = request
            .into_inner()
            .source
            .ok_or_else(|| Status::invalid_argument("source: required"))?;
        match &spec.upstream {
            None => {
                return Err(Status::invalid_argument(
                    "source: set one of git, http and directory",
                ));
            }
            Some(Upstream::Oci(_)) => {
                return Err(Status::invalid_argument(
                    "source.oci: OCI sources are not data sources",
                ));
            }
            Some(Upstream::Http(http)) if !http.json_pointer.is_empty() => {
                return Err(Status::invalid_argument(
                    "source.http.json_pointer: must be empty for a data source (the URL is the archive, its ETag the version)",
                ));
            }
            Some(Upstream::Directory(directory)) => {
                self.directories
                    .check(std::path::Path::new(directory.path.trim()))
                    .map_err(|why| {
                        Status::invalid_argument(format!("source.directory.path: {why}"))
                    })?;
            }
            Some(_) => {}
        }
        let state = self
            .followers
            .version_watcher()
            .get_source(GetSourceRequest { source: Some(spec) })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::NotFound => status,
                _ => Status::unavailable(format!("the VersionWatcher: {}", status.message())),
            })?
            .into_inner()
            .source
            .ok_or_else(|| Status::internal("the VersionWatcher returned no source"))?;
        let canonical = state
            .spec
            .clone()
            .ok_or_else(|| Status::internal("the VersionWatcher returned no spec"))?;
        let id = state.source_id;
        let new = self.store.track(&id, canonical.clone()).map_err(internal)?;
        self.followers.start(&id, canonical);
        if new {
            tracing::info!(source_id = %id, "Tracking a source");
        }
        Ok(Response::new(pb::TrackSourceResponse {
            source: self.store.source(&id),
        }))
    }

    async fn untrack_source(
        &self,
        request: Request<pb::UntrackSourceRequest>,
    ) -> Result<Response<pb::UntrackSourceResponse>, Status> {
        let request = request.into_inner();
        let id = required(&request.source_id, "source_id")?;
        if !self.store.untrack(id).map_err(internal)? {
            return Err(unknown_source(id));
        }
        self.followers.stop(id);
        tracing::info!(source_id = %id, "Untracked a source");
        Ok(Response::new(pb::UntrackSourceResponse {}))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            _ => return Err(Status::invalid_argument("page_size: must be 0..1000")),
        };
        let (sources, more) = self.store.sources(&request.page_token, limit);
        let next_page_token = if more {
            sources
                .last()
                .map(|s| s.source_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSourcesResponse {
            sources,
            next_page_token,
        }))
    }

    async fn list_data_versions(
        &self,
        request: Request<pb::ListDataVersionsRequest>,
    ) -> Result<Response<pb::ListDataVersionsResponse>, Status> {
        let request = request.into_inner();
        let id = required(&request.source_id, "source_id")?;
        let versions = self.store.versions(id).ok_or_else(|| unknown_source(id))?;
        Ok(Response::new(pb::ListDataVersionsResponse { versions }))
    }

    async fn watch_synced(
        &self,
        request: Request<pb::WatchSyncedRequest>,
    ) -> Result<Response<BoxStream<pb::WatchSyncedResponse>>, Status> {
        let request = request.into_inner();
        for id in &request.source_ids {
            if !self.store.is_tracked(id) {
                return Err(Status::not_found(format!(
                    "source_ids: {id:?} is not tracked"
                )));
            }
        }
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let wanted = request.source_ids;
        let mut generation = store.subscribe();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let states = |store: &Store| -> Vec<pb::DataSource> {
                if wanted.is_empty() {
                    store.sources("", usize::MAX).0
                } else {
                    wanted.iter().filter_map(|id| store.source(id)).collect()
                }
            };
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
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
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
        let request = request.into_inner();
        let record = self.record(&request.source_id, &request.version)?;
        for (index, digest) in request.have.iter().enumerate() {
            if !tree::is_digest(digest) {
                return Err(Status::invalid_argument(format!(
                    "have[{index}]: not a sha256:<64 hex> digest"
                )));
            }
        }
        let have: HashSet<&str> = request.have.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let mut plan: Vec<(String, u64, u64)> = Vec::new();
        for file in &record.files {
            if file.digest.is_empty()
                || have.contains(file.digest.as_str())
                || !seen.insert(file.digest.as_str())
            {
                continue;
            }
            plan.push((file.digest.clone(), file.size, 0));
        }
        if let Some(resume) = &request.resume {
            let blob = plan
                .iter_mut()
                .find(|(digest, _, _)| *digest == resume.digest)
                .ok_or_else(|| {
                    Status::invalid_argument("resume.digest: not a blob this fetch sends")
                })?;
            if resume.offset > blob.1 {
                return Err(Status::invalid_argument(
                    "resume.offset: beyond the end of the blob",
                ));
            }
            blob.2 = resume.offset;
        }
        let permit =
            self.fetches.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted("too many concurrent fetches; retry later")
            })?;
        let total: u64 = plan.iter().map(|(_, size, offset)| size - offset).sum();
        tracing::info!(source_id = %record.source_id, version = %record.version, blobs = plan.len(), bytes = total, "Fetch");
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let rate = self.bytes_per_second;
        let metrics = self.metrics.clone();
        metrics.fetches.inc();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            let plan_message = pb::FetchResponse {
                payload: Some(pb::fetch_response::Payload::Plan(pb::FetchPlan {
                    blob_count: plan.len() as u64,
                    total_bytes: total,
                })),
            };
            if sender.send(Ok(plan_message)).await.is_err() {
                return;
            }
            let started = tokio::time::Instant::now();
            let mut sent = 0u64;
            for (digest, size, offset) in plan {
                if shutdown.is_triggered() {
                    let _ = sender
                        .send(Err(Status::unavailable(
                            "the server is shutting down; resume the fetch",
                        )))
                        .await;
                    return;
                }
                let path = store.blob_path(&digest);
                let mut file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) => {
                        let _ = sender
                            .send(Err(Status::not_found(format!(
                                "blob {digest} is gone ({e}); the version was removed"
                            ))))
                            .await;
                        return;
                    }
                };
                if offset > 0
                    && let Err(e) =
                        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset))
                            .await
                {
                    let _ = sender.send(Err(internal(e))).await;
                    return;
                }
                let mut position = offset;
                loop {
                    let want = CHUNK_BYTES.min((size - position) as usize);
                    let mut data = vec![0u8; want];
                    if let Err(e) = file.read_exact(&mut data).await {
                        let _ = sender
                            .send(Err(internal(format!("reading blob {digest}: {e}"))))
                            .await;
                        return;
                    }
                    let last = position + want as u64 == size;
                    let chunk = pb::Chunk {
                        digest: digest.clone(),
                        offset: position,
                        data,
                        last,
                    };
                    position += want as u64;
                    sent += want as u64;
                    metrics.fetch_bytes.inc_by(want as u64);
                    let message = pb::FetchResponse {
                        payload: Some(pb::fetch_response::Payload::Chunk(chunk)),
                    };
                    tokio::select! {
                        result = sender.send(Ok(message)) => if result.is_err() { return },
                        () = shutdown.wait() => return,
                    }
                    if rate > 0 {
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        tokio::time::sleep_until(started + due).await;
                    }
                    if last {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn pin_version(
        &self,
        request: Request<pb::PinVersionRequest>,
    ) -> Result<Response<pb::PinVersionResponse>, Status> {
        let request = request.into_inner();
        let id = required(&request.source_id, "source_id")?;
        let version = required(&request.version, "version")?;
        let holder = required(&request.holder, "holder")?;
        if holder.len() > MAX_HOLDER_BYTES {
            return Err(Status::invalid_argument("holder: at most 253 bytes"));
        }
        let pinned = self.store.pin(id, version, holder).map_err(internal)?;
        match pinned {
            Some(version) => Ok(Response::new(pb::PinVersionResponse {
                version: Some(version),
            })),
            None if !self.store.knows(id) => Err(unknown_source(id)),
            None => Err(Status::not_found(format!(
                "source {id:?} has no version {version:?}"
            ))),
        }
    }

    async fn unpin_version(
        &self,
        request: Request<pb::UnpinVersionRequest>,
    ) -> Result<Response<pb::UnpinVersionResponse>, Status> {
        let request = request.into_inner();
        let id = required(&request.source_id, "source_id")?;
        let version = required(&request.version, "version")?;
        let holder = required(&request.holder, "holder")?;
        let version = self.store.unpin(id, version, holder).map_err(internal)?;
        Ok(Response::new(pb::UnpinVersionResponse { version }))
    }
}
