//! The local content-addressed cache and the resumable, verifying fetch into it.
//!
//! Layout under `--cache DIR` (default `<root>/.cache`):
//! - `blobs/<64 hex>`: verified contents, written as `partial/<hex>`, fsynced, hashed, renamed;
//! - `partial/<64 hex>`: a blob being received; its length is the resume offset after a cut or a
//!   restart;
//! - `manifests/<name>/<version dir>.pb`: the manifests of the versions on disk, which say which
//!   blobs must stay.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    future::Future,
    io::{Read, Write},
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use autocrane_api::{manifest::digest_hex, proto::data_v1 as pb};
use autocrane_runtime::fs::{sync_dir, write_atomic};
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// A stream of fetch messages.
pub type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchResponse, Status>> + Send>>;
/// Opens one fetch stream (the gRPC call, or a test's wrapper around it).
pub type OpenFetch<'a> = &'a mut (
            dyn FnMut(
    pb::FetchRequest,
) -> Pin<Box<dyn Future<Output = Result<FetchStream, Status>> + Send>>
                + Send
        );

/// Why fetching failed for good.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A cache file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The repository refused the request (unknown version, bad request).
    #[error("the repository refused the fetch: {0}")]
    Refused(String),
    /// The fetch did not complete in time (repository unreachable, blobs keep arriving corrupt).
    #[error("the fetch did not complete: {0}")]
    Incomplete(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FetchError + 'a {
    move |source| FetchError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What one fetch moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Blobs stored.
    pub blobs: u64,
    /// Content bytes received over the network (including refetched ones).
    pub bytes: u64,
    /// Blobs that failed verification and were fetched again.
    pub corrupt: u64,
    /// Fetch calls made (more than one after cuts).
    pub calls: u64,
}

/// The cache.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<Self, FetchError> {
        for sub in ["blobs", "partial", "manifests"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The path of a verified blob.
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest_hex(digest).unwrap_or("invalid"))
    }

    fn partial(&self, digest: &str) -> PathBuf {
        self.root
            .join("partial")
            .join(digest_hex(digest).unwrap_or("invalid"))
    }

    /// Whether a verified blob is present.
    pub fn has(&self, digest: &str) -> bool {
        self.blob(digest).exists()
    }

    /// Saves the manifest of a version kept on disk.
    pub fn save_manifest(
        &self,
        name: &str,
        dir: &str,
        manifest: &pb::Manifest,
    ) -> Result<(), FetchError> {
        let path = self
            .root
            .join("manifests")
            .join(name)
            .join(format!("{dir}.pb"));
        write_atomic(&path, &manifest.encode_to_vec()).map_err(io("writing", &path))
    }

    /// Loads a saved manifest.
    pub fn load_manifest(&self, name: &str, dir: &str) -> Option<pb::Manifest> {
        let path = self
            .root
            .join("manifests")
            .join(name)
            .join(format!("{dir}.pb"));
        pb::Manifest::decode(fs::read(path).ok()?.as_slice()).ok()
    }

    /// Drops the manifests of `name` except those of `keep`, then every blob and partial that
    /// no remaining manifest references.
    pub fn collect(&self, name: &str, keep: &BTreeSet<String>) -> Result<(), FetchError> {
        let dir = self.root.join("manifests").join(name);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let stem = file.strip_suffix(".pb").unwrap_or(&file);
                if !keep.contains(stem) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let mut referenced = HashSet::new();
        let manifests = self.root.join("manifests");
        for source in fs::read_dir(&manifests)
            .map_err(io("reading", &manifests))?
            .flatten()
        {
            for entry in fs::read_dir(source.path()).into_iter().flatten().flatten() {
                if let Some(manifest) = fs::read(entry.path())
                    .ok()
                    .and_then(|b| pb::Manifest::decode(b.as_slice()).ok())
                {
                    referenced.extend(
                        manifest
                            .files
                            .into_iter()
                            .filter_map(|f| digest_hex(&f.digest).map(str::to_string)),
                    );
                }
            }
        }
        for sub in ["blobs", "partial"] {
            let dir = self.root.join(sub);
            for entry in fs::read_dir(&dir).map_err(io("reading", &dir))?.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if !referenced.contains(&file) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Fetches every blob of `manifest` that the cache lacks, verifying each digest, resuming
    /// after cuts (from the partial file's length), and refetching corrupt blobs. Gives up after
    /// `patience` without progress.
    pub async fn fetch_missing(
        &self,
        manifest: &pb::Manifest,
        open: OpenFetch<'_>,
        patience: Duration,
    ) -> Result<FetchStats, FetchError> {
        let mut stats = FetchStats::default();
        let mut last_progress = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut corrupt_rounds = 0u32;
        loop {
            let mut have = Vec::new();
            let mut missing = Vec::new();
            let mut seen = HashSet::new();
            for file in &manifest.files {
                if file.digest.is_empty() || !seen.insert(file.digest.as_str()) {
                    continue;
                }
                if digest_hex(&file.digest).is_none() {
                    return Err(FetchError::Refused(format!(
                        "the manifest has an invalid digest for {:?}",
                        file.path
                    )));
                }
                if self.has(&file.digest) {
                    have.push(file.digest.clone());
                } else {
                    missing.push(file.digest.clone());
                }
            }
            if missing.is_empty() {
                return Ok(stats);
            }
            let resume = missing.iter().find_map(|digest| {
                let len = fs::metadata(self.partial(digest)).ok()?.len();
                (len > 0).then(|| pb::ResumePoint {
                    digest: digest.clone(),
                    offset: len,
                })
            });
            // Other partial blobs restart at 0 (the server resumes one blob per call).
            for digest in &missing {
                if resume.as_ref().is_none_or(|r| &r.digest != digest) {
                    let _ = fs::remove_file(self.partial(digest));
                }
            }
            let request = pb::FetchRequest {
                source_id: manifest.source_id.clone(),
                version: manifest.version.clone(),
                have,
                resume,
            };
            stats.calls += 1;
            let (progress, cut) = match open(request).await {
                Ok(stream) => self.receive(stream).await,
                Err(status) => (FetchStats::default(), Some(status)),
            };
            stats.blobs += progress.blobs;
            stats.bytes += progress.bytes;
            stats.corrupt += progress.corrupt;
            if progress.bytes > 0 {
                last_progress = tokio::time::Instant::now();
                delay = Duration::from_millis(100);
            }
            if progress.corrupt > 0 {
                corrupt_rounds += 1;
                if corrupt_rounds > 5 {
                    return Err(FetchError::Incomplete(
                        "blobs keep failing verification".into(),
                    ));
                }
            }
            // A stream that ends with OK before the last blob (the server shutting down) is a cut
            // like any other; one that made progress is simply continued.
            let status = match cut {
                Some(status) => status,
                None if progress.bytes > 0 || progress.blobs > 0 || progress.corrupt > 0 => {
                    continue;
                }
                None => Status::unavailable("the stream ended before the last blob"),
            };
            match status.code() {
                tonic::Code::InvalidArgument if status.message().starts_with("resume") => {
                    // The server does not accept the resume point: restart that blob.
                    let _ = fs::remove_dir_all(self.root.join("partial"));
                    fs::create_dir_all(self.root.join("partial"))
                        .map_err(io("creating", &self.root))?;
                }
                tonic::Code::NotFound
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated => {
                    return Err(FetchError::Refused(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
                _ => {
                    if last_progress.elapsed() > patience {
                        return Err(FetchError::Incomplete(format!(
                            "{:?}: {}",
                            status.code(),
                            status.message()
                        )));
                    }
                    tracing::warn!(code = ?status.code(), message = status.message(), retry_in = ?delay, "The fetch stream broke; resuming");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Reads one stream into partial files; returns what it achieved and, if the stream was cut,
    /// the status that cut it.
    async fn receive(&self, mut stream: FetchStream) -> (FetchStats, Option<Status>) {
        let mut progress = FetchStats::default();
        let mut current: Option<(String, fs::File, ring::digest::Context, u64)> = None;
        let flushes = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
        let mut pending = Vec::new();
        let cut = loop {
            let message = match stream.next().await {
                None => break None,
                Some(Ok(message)) => message,
                Some(Err(status)) => break Some(status),
            };
            let Some(pb::fetch_response::Payload::Chunk(chunk)) = message.payload else {
                continue;
            };
            if digest_hex(&chunk.digest).is_none() {
                break Some(Status::internal(
                    "the repository sent a chunk with an invalid digest",
                ));
            }
            if current.as_ref().is_none_or(|c| c.0 != chunk.digest) {
                match self.open_partial(&chunk.digest, chunk.offset) {
                    Ok(opened) => current = Some(opened),
                    Err(e) => break Some(Status::internal(e.to_string())),
                }
            }
            let (digest, file, hasher, length) = current.as_mut().expect("set above");
            if chunk.offset != *length {
                let _ = fs::remove_file(self.partial(digest));
                current = None;
                break Some(Status::data_loss("a chunk arrived out of order"));
            }
            if let Err(e) = file.write_all(&chunk.data) {
                break Some(Status::internal(format!("writing the cache: {e}")));
            }
            hasher.update(&chunk.data);
            *length += chunk.data.len() as u64;
            progress.bytes += chunk.data.len() as u64;
            if chunk.last {
                let (digest, file, hasher, _) = current.take().expect("set above");
                let got = format!(
                    "sha256:{}",
                    autocrane_api::manifest::hex(hasher.finish().as_ref())
                );
                let partial = self.partial(&digest);
                if got == digest {
                    // fsync + rename off the receive path, several at once: the disk flushes
                    // overlap with the network.
                    let blob = self.blob(&digest);
                    let permit = flushes.clone().acquire_owned().await.expect("never closed");
                    pending.push(tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        file.sync_all()?;
                        drop(file);
                        fs::rename(&partial, &blob)
                    }));
                } else {
                    tracing::warn!(expected = %digest, %got, "A blob failed verification; it will be fetched again");
                    drop(file);
                    let _ = fs::remove_file(&partial);
                    progress.corrupt += 1;
                }
            }
        };
        if let Some((_, file, _, _)) = current.take() {
            let _ = file.sync_all();
        }
        let mut cut = cut;
        for flush in pending {
            match flush.await {
                Ok(Ok(())) => progress.blobs += 1,
                Ok(Err(e)) => {
                    cut.get_or_insert_with(|| Status::internal(format!("storing a blob: {e}")));
                }
                Err(e) => {
                    cut.get_or_insert_with(|| Status::internal(format!("storing a blob: {e}")));
                }
            }
        }
        let _ = sync_dir(&self.root.join("blobs"));
        (progress, cut)
    }

    /// Opens the partial file of `digest` for appending at `offset`, hashing what it holds.
    fn open_partial(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<(String, fs::File, ring::digest::Context, u64), FetchError> {
        let path = self.partial(digest);
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        if offset == 0 {
            let file = fs::File::create(&path).map_err(io("creating", &path))?;
            return Ok((digest.to_string(), file, hasher, 0));
        }
        let mut existing = fs::File::open(&path).map_err(io("opening", &path))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut length = 0u64;
        while length < offset {
            let want = buf.len().min((offset - length) as usize);
            let n = existing
                .read(&mut buf[..want])
                .map_err(io("reading", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            length += n as u64;
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        file.set_len(length).map_err(io("truncating", &path))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(io("seeking", &path))?;
        Ok((digest.to_string(), file, hasher, length))
    }
}
