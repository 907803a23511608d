//! Putting one version live: manifest → missing blobs into the cache → the version directory
//! built under a temporary name and renamed into place → optional validation → `current` swapped
//! with a temporary symlink renamed over it (the path never disappears, the app never sees a
//! partial or mixed tree) → optional app notification → older versions collected.
//!
//! On-disk layout under `--root`: `<name>/<version dir>/…` (complete versions only: a directory
//! exists under its final name only once fully written), `<name>/current -> <version dir>`,
//! `<name>/.history` (version dirs, most recently live first), and hidden `.tmp-*`, `.trash-*`,
//! `.current-*` leftovers of a crash, removed at start.
//!
//! Version files are read-only (0444/0555) hard links of verified cache blobs, so building a
//! version costs links, not copies; app containers should mount the data volume read-only. A blob
//! needed with both modes is copied for the second one.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use autocrane_api::proto::data_v1::{self as pb, data_repository_client::DataRepositoryClient};
use autocrane_runtime::{
    client::AutoCraneChannel,
    fs::{sync_dir, write_atomic},
};
use tonic::Status;

use crate::{
    cache::{Cache, FetchError, FetchStats, FetchStream},
    desired::{Desired, version_dir},
};

/// Why a version could not be put live.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The manifest could not be read from the repository.
    #[error("getting the manifest of {version}: {status}")]
    GetManifest {
        /// The version.
        version: String,
        /// The answer.
        status: String,
    },
    /// The manifest is unsafe (bad path, link leaving the tree).
    #[error("the manifest is unsafe: {0}")]
    UnsafeManifest(String),
    /// The blobs could not be fetched.
    #[error("fetching the files: {0}")]
    Fetch(#[from] FetchError),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The validation command rejected the version.
    #[error("validation failed: {0}")]
    Validate(String),
    /// Building the version directory stopped (the blocking task panicked or was cancelled).
    #[error("building the version directory: {0}")]
    Materialize(String),
    /// `init` ran out of time during this apply.
    #[error("the init timeout passed while applying")]
    TimedOut,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DeployError + 'a {
    move |source| DeployError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// How the app is told about a swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notify {
    /// HTTP POST of `{"source","version","path"}` to a URL.
    Url(String),
    /// A signal to a process: (pid, signal name or number).
    Signal(u32, String),
}

/// What applying a version did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// The version directory now live.
    pub dir: PathBuf,
    /// Whether it was already on disk (a rollback or a restart): nothing was fetched.
    pub reused: bool,
    /// What the fetch moved.
    pub fetch: FetchStats,
    /// Bytes of the files of the version.
    pub version_bytes: u64,
    /// Time spent fetching (manifest and blobs).
    pub fetch_time: Duration,
    /// Time spent building the version directory.
    pub materialize_time: Duration,
}

/// Puts versions live under one root.
#[derive(Debug)]
pub struct Deployer {
    root: PathBuf,
    cache: Cache,
    client: DataRepositoryClient<AutoCraneChannel>,
    /// Version directories kept per source (the live one included); at least 2.
    keep: usize,
    patience: Duration,
    validate: Option<String>,
    notify: Option<Notify>,
}

impl Deployer {
    /// A deployer for `root`, caching in `cache`, fetching from `client`.
    pub fn new(
        root: PathBuf,
        cache: Cache,
        client: DataRepositoryClient<AutoCraneChannel>,
        keep: usize,
        patience: Duration,
        validate: Option<String>,
        notify: Option<Notify>,
    ) -> Self {
        Self {
            root,
            cache,
            client,
            keep: keep.max(2),
            patience,
            validate,
            notify,
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Removes what a crash may have left: temporary trees, links and trash.
    pub fn clean_leftovers(&self) -> Result<(), DeployError> {
        let Ok(sources) = fs::read_dir(&self.root) else {
            return Ok(());
        };
        for source in sources.flatten() {
            if !source.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for entry in fs::read_dir(source.path()).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-")
                    || name.starts_with(".trash-")
                    || name.starts_with(".current-")
                {
                    remove_any(&entry.path());
                    tracing::info!(path = %entry.path().display(), "Removed a leftover of an interrupted run");
                }
            }
        }
        Ok(())
    }

    /// The version directory `current` points at, if any.
    pub fn live(&self, name: &str) -> Option<String> {
        fs::read_link(self.root.join(name).join("current"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// Whether `desired` is live.
    pub fn is_live(&self, desired: &Desired) -> bool {
        self.live(&desired.name).as_deref() == Some(version_dir(&desired.version).as_str())
    }

    /// Puts `desired` live.
    pub async fn apply(&mut self, desired: &Desired) -> Result<Applied, DeployError> {
        let source_dir = self.root.join(&desired.name);
        fs::create_dir_all(&source_dir).map_err(io("creating", &source_dir))?;
        let dir_name = version_dir(&desired.version);
        let final_dir = source_dir.join(&dir_name);
        let mut applied = Applied {
            dir: final_dir.clone(),
            ..Applied::default()
        };
        if final_dir.is_dir() && self.cache.load_manifest(&desired.name, &dir_name).is_some() {
            applied.reused = true;
        } else {
            let started = std::time::Instant::now();
            let manifest = self
                .client
                .get_manifest(pb::GetManifestRequest {
                    source_id: desired.source_id.clone(),
                    version: desired.version.clone(),
                })
                .await
                .map_err(|status| DeployError::GetManifest {
                    version: desired.version.clone(),
                    status: format!("{:?}: {}", status.code(), status.message()),
                })?
                .into_inner()
                .manifest
                .ok_or_else(|| {
                    DeployError::UnsafeManifest("the repository sent no manifest".into())
                })?;
            check_manifest(&manifest)?;
            applied.version_bytes = manifest.files.iter().map(|f| f.size).sum();
            let client = self.client.clone();
            let mut open = move |request: pb::FetchRequest| {
                let mut client = client.clone();
                Box::pin(async move {
                    let stream = client.fetch(request).await?.into_inner();
                    Ok(Box::pin(stream) as FetchStream)
                })
                    as std::pin::Pin<
                        Box<dyn std::future::Future<Output = Result<FetchStream, Status>> + Send>,
                    >
            };
            applied.fetch = self
                .cache
                .fetch_missing(&manifest, &mut open, self.patience)
                .await?;
            self.cache
                .save_manifest(&desired.name, &dir_name, &manifest)?;
            applied.fetch_time = started.elapsed();
            let started = std::time::Instant::now();
            if !final_dir.is_dir() {
                let cache = self.cache.clone();
                let (source_dir2, dir_name2) = (source_dir.clone(), dir_name.clone());
                tokio::task::spawn_blocking(move || {
                    materialize(&cache, &manifest, &source_dir2, &dir_name2)
                })
                .await
                .map_err(|e| DeployError::Materialize(e.to_string()))??;
            }
            applied.materialize_time = started.elapsed();
        }
        if let Some(command) = &self.validate {
            validate(command, desired, &final_dir).await?;
        }
        swap(&source_dir, &dir_name)?;
        self.record_and_collect(&desired.name, &source_dir, &dir_name)?;
        if let Some(notify) = &self.notify {
            notify_app(notify, desired, &final_dir).await;
        }
        Ok(applied)
    }

    /// Records `dir_name` as the newest live version and removes directories beyond `keep`.
    fn record_and_collect(
        &self,
        name: &str,
        source_dir: &Path,
        dir_name: &str,
    ) -> Result<(), DeployError> {
        let history_path = source_dir.join(".history");
        let old = fs::read_to_string(&history_path).unwrap_or_default();
        let mut history = vec![dir_name.to_string()];
        history.extend(
            old.lines()
                .filter(|l| !l.is_empty() && *l != dir_name)
                .map(str::to_string),
        );
        history.truncate(self.keep);
        write_atomic(&history_path, history.join("\n").as_bytes())
            .map_err(io("writing", &history_path))?;
        let keep: BTreeSet<String> = history.into_iter().collect();
        for entry in fs::read_dir(source_dir)
            .map_err(io("reading", source_dir))?
            .flatten()
        {
            let entry_name = entry.file_name().to_string_lossy().into_owned();
            if entry_name.starts_with('.') || entry_name == "current" || keep.contains(&entry_name)
            {
                continue;
            }
            // Renamed first, so that a crash mid-removal never leaves a partial tree under a
            // version's name (which a later run would take for complete).
            let trash = source_dir.join(format!(".trash-{entry_name}-{:x}", rand::random::<u32>()));
            if fs::rename(entry.path(), &trash).is_ok() {
                remove_any(&trash);
                tracing::info!(source = name, version_dir = %entry_name, "Collected an old version");
            }
        }
        self.cache.collect(name, &keep)?;
        Ok(())
    }
}

fn remove_any(path: &Path) {
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let _ = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
}

/// Rejects manifests whose paths or links could write or point outside the version directory,
/// with the rules the repository applies before storing a version ([`autocrane_api::manifest`]):
/// the deployer does not trust the network.
pub fn check_manifest(manifest: &pb::Manifest) -> Result<(), DeployError> {
    autocrane_api::manifest::check_manifest(&manifest.files)
        .map_err(|err| DeployError::UnsafeManifest(err.to_string()))
}

/// Builds `<source_dir>/<dir_name>` from the cache under a temporary name, then renames it.
fn materialize(
    cache: &Cache,
    manifest: &pb::Manifest,
    source_dir: &Path,
    dir_name: &str,
) -> Result<(), DeployError> {
    let tmp = source_dir.join(format!(".tmp-{dir_name}-{:x}", rand::random::<u64>()));
    fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
    let mut dirs = BTreeSet::new();
    for file in &manifest.files {
        let target = tmp.join(&file.path);
        if let Some(parent) = target.parent()
            && dirs.insert(parent.to_path_buf())
        {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        if !file.symlink_target.is_empty() {
            std::os::unix::fs::symlink(&file.symlink_target, &target)
                .map_err(io("linking", &target))?;
            continue;
        }
        let blob = cache.blob(&file.digest);
        // Version files are read-only. A verified cache blob is made read-only with the file's
        // mode and hard-linked (no copy, no second fsync); a blob already linked elsewhere with
        // the other mode is copied instead.
        let mode = if file.mode & 0o111 != 0 { 0o555 } else { 0o444 };
        let blob_mode = fs::metadata(&blob)
            .map_err(io("reading", &blob))?
            .permissions()
            .mode()
            & 0o777;
        if blob_mode & 0o222 != 0 {
            fs::set_permissions(&blob, fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &blob))?;
        }
        let linked =
            (blob_mode & 0o222 != 0 || blob_mode == mode) && fs::hard_link(&blob, &target).is_ok();
        if !linked {
            fs::copy(&blob, &target).map_err(io("copying into", &target))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &target))?;
            fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io("syncing", &target))?;
        }
    }
    for dir in dirs.iter().rev() {
        sync_dir(dir).map_err(io("syncing", dir))?;
    }
    let final_dir = source_dir.join(dir_name);
    fs::rename(&tmp, &final_dir).map_err(io("renaming into", &final_dir))?;
    sync_dir(source_dir).map_err(io("syncing", source_dir))
}

/// Points `<source_dir>/current` at `dir_name` atomically: a new link under a temporary name,
/// renamed over the old one.
pub fn swap(source_dir: &Path, dir_name: &str) -> Result<(), DeployError> {
    let link = source_dir.join("current");
    if fs::read_link(&link).is_ok_and(|t| t == Path::new(dir_name)) {
        return Ok(());
    }
    let tmp = source_dir.join(format!(".current-{:x}", rand::random::<u64>()));
    std::os::unix::fs::symlink(dir_name, &tmp).map_err(io("linking", &tmp))?;
    fs::rename(&tmp, &link).map_err(io("swapping", &link))?;
    sync_dir(source_dir).map_err(io("syncing", source_dir))
}

/// Runs the validation command (`sh -c`) with the new version's directory in
/// `AUTOCRANE_DATA_DIR`; a non-zero exit aborts the swap.
async fn validate(command: &str, desired: &Desired, dir: &Path) -> Result<(), DeployError> {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("AUTOCRANE_DATA_DIR", dir)
        .env("AUTOCRANE_DATA_SOURCE", &desired.name)
        .env("AUTOCRANE_DATA_VERSION", &desired.version)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| DeployError::Validate("the command timed out after 120 s".into()))?
        .map_err(|e| DeployError::Validate(format!("running sh: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(DeployError::Validate(format!(
        "{}: {}",
        output.status,
        stderr.trim().lines().last().unwrap_or_default()
    )))
}

/// Tells the app about a swap; failures are logged, not fatal (the data is live either way).
async fn notify_app(notify: &Notify, desired: &Desired, dir: &Path) {
    match notify {
        Notify::Signal(pid, signal) => {
            let sent = tokio::process::Command::new("kill")
                .arg("-s")
                .arg(signal)
                .arg(pid.to_string())
                .status()
                .await;
            if !sent.is_ok_and(|s| s.success()) {
                tracing::warn!(pid, %signal, "Signalling the app failed");
            }
        }
        Notify::Url(url) => {
            let body = serde_json::json!({
                "source": desired.name,
                "version": desired.version,
                "path": dir.display().to_string(),
            })
            .to_string();
            if let Err(e) = crate::report::post_json(url, body).await {
                tracing::warn!(%url, error = %e, "Notifying the app failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, target: &str) -> pb::FileEntry {
        pb::FileEntry {
            path: path.into(),
            mode: 0o644,
            size: 0,
            digest: if target.is_empty() {
                autocrane_api::manifest::sha256_digest(path.as_bytes())
            } else {
                String::new()
            },
            symlink_target: target.into(),
        }
    }

    fn manifest(files: Vec<pb::FileEntry>) -> pb::Manifest {
        pb::Manifest {
            files,
            ..Default::default()
        }
    }

    #[test]
    fn unsafe_manifests_are_refused() {
        assert!(check_manifest(&manifest(vec![entry("a/b", ""), entry("a/l", "../b")])).is_ok());
        for bad in [
            vec![entry("../x", "")],
            vec![entry("/etc/x", "")],
            vec![entry("a//b", "")],
            vec![entry("a", ""), entry("a", "")],
            vec![entry("l", "../outside")],
            vec![entry("d/l", "../../outside")],
            vec![entry("l", "/etc/passwd")],
        ] {
            assert!(check_manifest(&manifest(bad.clone())).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_swap_replaces_the_link_without_removing_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("v1")).unwrap();
        fs::create_dir(dir.path().join("v2")).unwrap();
        swap(dir.path(), "v1").unwrap();
        assert_eq!(
            fs::read_link(dir.path().join("current")).unwrap(),
            Path::new("v1")
        );
        swap(dir.path(), "v2").unwrap();
        assert_eq!(
            fs::read_link(dir.path().join("current")).unwrap(),
            Path::new("v2")
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temporary link stays behind");
    }
}
