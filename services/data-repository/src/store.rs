//! The on-disk store: blobs content-addressed by SHA-256, one manifest file per version, and the
//! tracked sources with their pins.
//!
//! Layout under `--store DIR`:
//! - `blobs/sha256/<2 hex>/<64 hex>`: file contents, written temp + fsync + rename;
//! - `versions/<source id>/<sha256 of the version name>.json`: one [`VersionRecord`] per synced
//!   version, written temp + fsync + rename only after all its blobs are durable, so a listed
//!   version is always complete;
//! - `state.json`: tracked sources (spec as protobuf) and pins, written atomically;
//! - `tmp/`: staging; emptied at start, so a crash at any point leaves no partial version;
//! - `git/`: bare git repositories used as fetch caches.
//!
//! Every change bumps a generation published on a `tokio::sync::watch`, which the `WatchSynced`
//! streams follow.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use autocrane_api::proto::{data_v1 as pb, version_v1::SourceSpec};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use autocrane_api::manifest::{hex, sha256_digest};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored file could not be parsed.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One stored version: its manifest and when it was synced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    /// The source id.
    pub source_id: String,
    /// The version name.
    pub version: String,
    /// Sync order within the store; higher is newer.
    pub seq: u64,
    /// When the sync finished, milliseconds since the Unix epoch.
    pub synced_at_ms: i64,
    /// See `DataVersion.manifest_digest`.
    pub manifest_digest: String,
    /// The files, sorted by path.
    pub files: Vec<FileRecord>,
}

/// One file of a [`VersionRecord`] (mirrors `FileEntry`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    /// Relative path.
    pub path: String,
    /// 0o644 or 0o755 (links: 0o644; the proto produces no other modes).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>`, empty for links.
    pub digest: String,
    /// Link target, empty for files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub symlink_target: String,
}

impl FileRecord {
    /// As the proto entry.
    pub fn to_proto(&self) -> pb::FileEntry {
        pb::FileEntry {
            path: self.path.clone(),
            mode: self.mode,
            size: self.size,
            digest: self.digest.clone(),
            symlink_target: self.symlink_target.clone(),
        }
    }
}

impl VersionRecord {
    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The proto manifest.
    pub fn manifest(&self) -> pb::Manifest {
        pb::Manifest {
            source_id: self.source_id.clone(),
            version: self.version.clone(),
            files: self.files.iter().map(FileRecord::to_proto).collect(),
            manifest_digest: self.manifest_digest.clone(),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct PersistedState {
    /// Tracked sources: id → base64-free hex of the protobuf-encoded canonical spec.
    sources: BTreeMap<String, String>,
    /// Pins: source id → version → holders.
    pins: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// A source known to the store.
#[derive(Clone, Debug, Default)]
struct SourceEntry {
    spec: Option<SourceSpec>,
    tracked: bool,
    /// Newest first.
    versions: Vec<Arc<VersionRecord>>,
    status: pb::SyncStatus,
}

#[derive(Debug, Default)]
struct Inner {
    sources: BTreeMap<String, SourceEntry>,
    pins: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    next_seq: u64,
}

/// A version staged under `tmp/`, ready to commit.
#[derive(Debug)]
pub struct Staged {
    /// The staging directory; blob files inside are named by their hex digest.
    pub dir: PathBuf,
    /// The files, sorted by path.
    pub files: Vec<FileRecord>,
}

/// The store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    keep: usize,
    inner: Arc<Mutex<Inner>>,
    generation: Arc<watch::Sender<u64>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Writes `bytes` to `path` durably ([`autocrane_runtime::fs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    autocrane_runtime::fs::write_atomic(path, bytes).map_err(io("writing", path))
}

/// fsyncs a directory so that renames into it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    autocrane_runtime::fs::sync_dir(dir).map_err(io("syncing", dir))
}

impl Store {
    /// Opens (creating) the store at `root`, keeping `keep` newest versions per source plus the
    /// pinned ones. Empties `tmp/`, drops any version whose blobs are missing, and deletes
    /// unreferenced blobs.
    pub fn open(root: &Path, keep: usize) -> Result<Self, StoreError> {
        for sub in ["blobs/sha256", "versions", "tmp", "git"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io("reading", &tmp))? {
            let path = entry.map_err(io("reading", &tmp))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io("removing", &path))?;
            tracing::info!(path = %path.display(), "Removed a leftover staging entry");
        }
        let state_path = root.join("state.json");
        let state: PersistedState = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
                path: state_path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistedState::default(),
            Err(e) => return Err(io("reading", &state_path)(e)),
        };
        let mut inner = Inner {
            pins: state.pins,
            ..Inner::default()
        };
        for (id, spec_hex) in state.sources {
            let spec = unhex(&spec_hex)
                .and_then(|bytes| SourceSpec::decode(bytes.as_slice()).ok())
                .ok_or_else(|| StoreError::Parse {
                    path: state_path.clone(),
                    message: format!("the spec of {id} is not valid"),
                })?;
            inner.sources.insert(
                id,
                SourceEntry {
                    spec: Some(spec),
                    tracked: true,
                    ..SourceEntry::default()
                },
            );
        }
        let versions_dir = root.join("versions");
        for source in fs::read_dir(&versions_dir).map_err(io("reading", &versions_dir))? {
            let source_dir = source.map_err(io("reading", &versions_dir))?.path();
            for file in fs::read_dir(&source_dir).map_err(io("reading", &source_dir))? {
                let path = file.map_err(io("reading", &source_dir))?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if name.starts_with(".tmp-") {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let bytes = fs::read(&path).map_err(io("reading", &path))?;
                let record: VersionRecord =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                let missing = record
                    .files
                    .iter()
                    .find(|f| !f.digest.is_empty() && !blob_path(root, &f.digest).exists());
                if let Some(file) = missing {
                    tracing::error!(source_id = %record.source_id, version = %record.version, digest = %file.digest, "A stored version lost a blob; dropping it");
                    let _ = fs::remove_file(&path);
                    continue;
                }
                inner.next_seq = inner.next_seq.max(record.seq + 1);
                inner
                    .sources
                    .entry(record.source_id.clone())
                    .or_default()
                    .versions
                    .push(Arc::new(record));
            }
        }
        for entry in inner.sources.values_mut() {
            entry.versions.sort_by_key(|v| std::cmp::Reverse(v.seq));
            entry.status = pb::SyncStatus {
                state: pb::SyncState::Idle as i32,
                updated_at: Some(timestamp(now_ms())),
                ..Default::default()
            };
        }
        let store = Self {
            root: root.to_path_buf(),
            keep: keep.max(1),
            inner: Arc::new(Mutex::new(inner)),
            generation: Arc::new(watch::channel(0).0),
        };
        store.collect(&mut store.lock())?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver of the change generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new empty staging directory.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("stage-{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(dir)
    }

    /// The path of the blob with `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.root, digest)
    }

    /// Starts tracking `id` with its canonical `spec`; returns whether it was new.
    pub fn track(&self, id: &str, spec: SourceSpec) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let entry = inner.sources.entry(id.to_string()).or_default();
        let new = !entry.tracked;
        entry.tracked = true;
        entry.spec = Some(spec);
        if new {
            entry.status = pb::SyncStatus {
                state: pb::SyncState::Idle as i32,
                updated_at: Some(timestamp(now_ms())),
                ..Default::default()
            };
            self.persist(&inner)?;
            drop(inner);
            self.bump();
        }
        Ok(new)
    }

    /// Stops tracking `id`; returns whether it was tracked. Stored versions stay until retention.
    pub fn untrack(&self, id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = inner.sources.get_mut(id).filter(|e| e.tracked) else {
            return Ok(false);
        };
        entry.tracked = false;
        self.persist(&inner)?;
        drop(inner);
        self.bump();
        Ok(true)
    }

    /// The tracked sources' ids and specs.
    pub fn tracked(&self) -> Vec<(String, SourceSpec)> {
        self.lock()
            .sources
            .iter()
            .filter(|(_, e)| e.tracked)
            .filter_map(|(id, e)| Some((id.clone(), e.spec.clone()?)))
            .collect()
    }

    /// Whether `id` is tracked.
    pub fn is_tracked(&self, id: &str) -> bool {
        self.lock().sources.get(id).is_some_and(|e| e.tracked)
    }

    /// Whether `version` of `id` is stored.
    pub fn has_version(&self, id: &str, version: &str) -> bool {
        self.version(id, version).is_some()
    }

    /// The stored record of one version.
    pub fn version(&self, id: &str, version: &str) -> Option<Arc<VersionRecord>> {
        self.lock()
            .sources
            .get(id)?
            .versions
            .iter()
            .find(|v| v.version == version)
            .cloned()
    }

    /// Whether a source is known at all (tracked now or with stored versions).
    pub fn knows(&self, id: &str) -> bool {
        self.lock().sources.contains_key(id)
    }

    /// Records the sync state of a source.
    pub fn set_status(&self, id: &str, state: pb::SyncState, version: &str, error: &str) {
        let mut inner = self.lock();
        if let Some(entry) = inner.sources.get_mut(id) {
            let changed = entry.status.state != state as i32
                || entry.status.version != version
                || entry.status.error != error;
            if changed {
                entry.status = pb::SyncStatus {
                    state: state as i32,
                    version: version.to_string(),
                    error: error.to_string(),
                    updated_at: Some(timestamp(now_ms())),
                };
                drop(inner);
                self.bump();
            }
        }
    }

    /// The state of one source, as the API shows it.
    pub fn source(&self, id: &str) -> Option<pb::DataSource> {
        let inner = self.lock();
        let entry = inner.sources.get(id)?;
        Some(describe(&inner, id, entry))
    }

    /// The tracked sources, sorted by id, starting after `after`.
    pub fn sources(&self, after: &str, limit: usize) -> (Vec<pb::DataSource>, bool) {
        let inner = self.lock();
        let mut out = Vec::new();
        let mut more = false;
        for (id, entry) in inner
            .sources
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .filter(|(_, e)| e.tracked)
        {
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(describe(&inner, id, entry));
        }
        (out, more)
    }

    /// The versions of one source (newest first), `None` if the source is unknown.
    pub fn versions(&self, id: &str) -> Option<Vec<pb::DataVersion>> {
        let inner = self.lock();
        let entry = inner.sources.get(id)?;
        Some(
            entry
                .versions
                .iter()
                .map(|v| describe_version(&inner, v))
                .collect(),
        )
    }

    /// Moves a staged version into the store: blobs first (durable), then the manifest; then
    /// applies retention. Returns the record.
    pub fn commit(
        &self,
        id: &str,
        version: &str,
        staged: Staged,
    ) -> Result<Arc<VersionRecord>, StoreError> {
        let mut inner = self.lock();
        if let Some(existing) = inner
            .sources
            .get(id)
            .and_then(|e| e.versions.iter().find(|v| v.version == version))
        {
            let _ = fs::remove_dir_all(&staged.dir);
            return Ok(existing.clone());
        }
        let mut dirs = BTreeSet::new();
        for file in staged.files.iter().filter(|f| !f.digest.is_empty()) {
            let target = self.blob_path(&file.digest);
            if target.exists() {
                continue;
            }
            let source = staged.dir.join(&file.digest["sha256:".len()..]);
            if !source.exists() {
                // Staging skipped content the store held then; retention removed it since.
                let _ = fs::remove_dir_all(&staged.dir);
                return Err(StoreError::Io {
                    action: "storing",
                    path: target,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the store dropped this content after staging; the version will be staged again",
                    ),
                });
            }
            let dir = target.parent().expect("blob paths have a parent");
            if dirs.insert(dir.to_path_buf()) {
                fs::create_dir_all(dir).map_err(io("creating", dir))?;
            }
            fs::rename(&source, &target).map_err(io("storing", &target))?;
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        let record = VersionRecord {
            source_id: id.to_string(),
            version: version.to_string(),
            seq: inner.next_seq,
            synced_at_ms: now_ms(),
            manifest_digest: autocrane_api::manifest::manifest_digest(
                id,
                version,
                &staged
                    .files
                    .iter()
                    .map(FileRecord::to_proto)
                    .collect::<Vec<_>>(),
            ),
            files: staged.files,
        };
        let bytes = serde_json::to_vec(&record).expect("records serialise");
        write_atomic(&self.version_path(id, version), &bytes)?;
        let _ = fs::remove_dir_all(&staged.dir);
        inner.next_seq += 1;
        let record = Arc::new(record);
        inner
            .sources
            .entry(id.to_string())
            .or_default()
            .versions
            .insert(0, record.clone());
        self.collect(&mut inner)?;
        drop(inner);
        self.bump();
        Ok(record)
    }

    /// Pins a version for `holder`; `None` if the version is unknown.
    pub fn pin(
        &self,
        id: &str,
        version: &str,
        holder: &str,
    ) -> Result<Option<pb::DataVersion>, StoreError> {
        let mut inner = self.lock();
        let Some(record) = find(&inner, id, version) else {
            return Ok(None);
        };
        let added = inner
            .pins
            .entry(id.to_string())
            .or_default()
            .entry(version.to_string())
            .or_default()
            .insert(holder.to_string());
        if added {
            self.persist(&inner)?;
        }
        let out = describe_version(&inner, &record);
        drop(inner);
        if added {
            self.bump();
        }
        Ok(Some(out))
    }

    /// Removes `holder`'s pin; returns the version afterwards (if it still exists).
    pub fn unpin(
        &self,
        id: &str,
        version: &str,
        holder: &str,
    ) -> Result<Option<pb::DataVersion>, StoreError> {
        let mut inner = self.lock();
        let removed = inner
            .pins
            .get_mut(id)
            .and_then(|p| p.get_mut(version))
            .is_some_and(|h| h.remove(holder));
        if removed {
            if let Some(p) = inner.pins.get_mut(id) {
                p.retain(|_, h| !h.is_empty());
            }
            inner.pins.retain(|_, p| !p.is_empty());
            self.persist(&inner)?;
            self.collect(&mut inner)?;
        }
        let out = find(&inner, id, version).map(|r| describe_version(&inner, &r));
        drop(inner);
        if removed {
            self.bump();
        }
        Ok(out)
    }

    fn version_path(&self, id: &str, version: &str) -> PathBuf {
        let name = hex(ring::digest::digest(&ring::digest::SHA256, version.as_bytes()).as_ref());
        self.root
            .join("versions")
            .join(id)
            .join(format!("{name}.json"))
    }

    fn persist(&self, inner: &Inner) -> Result<(), StoreError> {
        let state = PersistedState {
            sources: inner
                .sources
                .iter()
                .filter(|(_, e)| e.tracked)
                .filter_map(|(id, e)| Some((id.clone(), hex(&e.spec.as_ref()?.encode_to_vec()))))
                .collect(),
            pins: inner.pins.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
        write_atomic(&self.root.join("state.json"), &bytes)
    }

    /// Retention: keeps the `keep` newest versions of each source plus every pinned one, then
    /// deletes blobs no remaining version references.
    fn collect(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let mut removed = Vec::new();
        let pins = inner.pins.clone();
        for (id, entry) in inner.sources.iter_mut() {
            let pinned = pins.get(id);
            let mut kept = 0;
            entry.versions.retain(|v| {
                let is_pinned = pinned.is_some_and(|p| p.contains_key(&v.version));
                if kept < self.keep {
                    kept += 1;
                    true
                } else if is_pinned {
                    true
                } else {
                    removed.push((id.clone(), v.version.clone()));
                    false
                }
            });
        }
        for (id, version) in &removed {
            let path = self.version_path(id, version);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &path)(e)),
            }
            tracing::info!(source_id = %id, %version, "Retention removed a version");
        }
        let referenced: HashSet<&str> = inner
            .sources
            .values()
            .flat_map(|e| e.versions.iter())
            .flat_map(|v| v.files.iter())
            .filter(|f| !f.digest.is_empty())
            .map(|f| &f.digest["sha256:".len()..])
            .collect();
        let blobs = self.root.join("blobs/sha256");
        for shard in fs::read_dir(&blobs).map_err(io("reading", &blobs))? {
            let shard = shard.map_err(io("reading", &blobs))?.path();
            for blob in fs::read_dir(&shard).map_err(io("reading", &shard))? {
                let blob = blob.map_err(io("reading", &shard))?.path();
                let name = blob
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if !referenced.contains(name) {
                    fs::remove_file(&blob).map_err(io("removing", &blob))?;
                }
            }
        }
        Ok(())
    }
}

fn find(inner: &Inner, id: &str, version: &str) -> Option<Arc<VersionRecord>> {
    inner
        .sources
        .get(id)?
        .versions
        .iter()
        .find(|v| v.version == version)
        .cloned()
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    root.join("blobs/sha256")
        .join(hex.get(..2).unwrap_or("xx"))
        .join(hex)
}

fn describe_version(inner: &Inner, record: &VersionRecord) -> pb::DataVersion {
    pb::DataVersion {
        version: record.version.clone(),
        manifest_digest: record.manifest_digest.clone(),
        file_count: record.files.len() as u64,
        total_bytes: record.total_bytes(),
        synced_at: Some(timestamp(record.synced_at_ms)),
        pinned_by: inner
            .pins
            .get(&record.source_id)
            .and_then(|p| p.get(&record.version))
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default(),
    }
}

fn describe(inner: &Inner, id: &str, entry: &SourceEntry) -> pb::DataSource {
    pb::DataSource {
        source_id: id.to_string(),
        spec: entry.spec.clone(),
        versions: entry
            .versions
            .iter()
            .map(|v| describe_version(inner, v))
            .collect(),
        status: Some(entry.status.clone()),
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks that the `sha256:` digest of a blob file matches (used by tests and repairs).
pub fn digest_of_file(path: &Path) -> std::io::Result<String> {
    let bytes = fs::read(path)?;
    Ok(sha256_digest(&bytes))
}
