//! Staging one version: every entry from an origin (tar, tar.gz, zip, git archive, directory) goes
//! through a [`Stager`], which checks its path, counts the bytes actually read against the size
//! limit (so a lying header or a zip bomb is caught while extracting), hashes the content into a
//! blob file in the staging directory, and finally checks the whole tree.

use std::{
    fs,
    io::{self, Read, Write},
    path::PathBuf,
};

use autocrane_api::manifest::{self, TreeError};

use crate::store::{FileRecord, Staged};

/// Why a version could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The content breaks a rule (path, link, size): the version is rejected.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Reading the origin or writing the staging area failed.
    #[error("{0}")]
    Io(String),
}

impl From<TreeError> for StageError {
    fn from(err: TreeError) -> Self {
        StageError::Rejected(err.to_string())
    }
}

/// Collects the files of one version in a staging directory.
#[derive(Debug)]
pub struct Stager {
    dir: PathBuf,
    limit: u64,
    total: u64,
    files: Vec<FileRecord>,
    /// Where the store keeps blobs: content already there is not written durably again.
    blobs: Option<PathBuf>,
}

impl Stager {
    /// A stager writing blobs into `dir`, rejecting versions over `limit` bytes.
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        Self {
            dir,
            limit,
            total: 0,
            files: Vec::new(),
            blobs: None,
        }
    }

    /// Skips the fsync of content the store already holds under `blobs` (`blobs/sha256`), so an
    /// unchanged file of a new version costs a read and a hash, not a durable write.
    pub fn with_store_blobs(mut self, blobs: PathBuf) -> Self {
        self.blobs = Some(blobs);
        self
    }

    fn over_limit(&self) -> StageError {
        StageError::Rejected(format!(
            "the version is larger than the limit of {} bytes (--max-version-bytes)",
            self.limit
        ))
    }

    /// Checks a size an archive declares before reading it (zip central directory, tar header).
    pub fn declare(&self, size: u64) -> Result<(), StageError> {
        if self.total.saturating_add(size) > self.limit {
            return Err(self.over_limit());
        }
        Ok(())
    }

    /// Adds a regular file, reading `content` to its end (or until the limit is passed).
    pub fn add_file(
        &mut self,
        raw_path: &str,
        mode: u32,
        content: impl Read,
    ) -> Result<(), StageError> {
        let path = manifest::normalize_path(raw_path)?;
        let remaining = self.limit - self.total;
        let mut limited = content.take(remaining + 1);
        let tmp = self.dir.join(format!(".part-{}", self.files.len()));
        let mut out = fs::File::create(&tmp)
            .map_err(|e| StageError::Io(format!("creating {}: {e}", tmp.display())))?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StageError::Io(format!("reading {path}: {e}"))),
            };
            size += n as u64;
            if size > remaining {
                drop(out);
                let _ = fs::remove_file(&tmp);
                return Err(self.over_limit());
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| StageError::Io(format!("writing {}: {e}", tmp.display())))?;
        }
        let hex = manifest::hex(hasher.finish().as_ref());
        let blob = self.dir.join(&hex);
        let stored = self
            .blobs
            .as_ref()
            .is_some_and(|b| b.join(&hex[..2]).join(&hex).exists());
        if blob.exists() || stored {
            drop(out);
            let _ = fs::remove_file(&tmp);
        } else {
            out.sync_all()
                .map_err(|e| StageError::Io(format!("syncing {}: {e}", tmp.display())))?;
            drop(out);
            fs::rename(&tmp, &blob)
                .map_err(|e| StageError::Io(format!("renaming {}: {e}", blob.display())))?;
        }
        self.total += size;
        self.files.push(FileRecord {
            path,
            mode: manifest::normalize_mode(mode),
            size,
            digest: format!("sha256:{hex}"),
            symlink_target: String::new(),
        });
        Ok(())
    }

    /// Adds a symbolic link (checked against the whole tree in [`Stager::finish`]).
    pub fn add_symlink(&mut self, raw_path: &str, target: &str) -> Result<(), StageError> {
        let path = manifest::normalize_path(raw_path)?;
        if target.is_empty() {
            return Err(StageError::Rejected(format!(
                "symlink {path:?}: the target is empty"
            )));
        }
        self.files.push(FileRecord {
            path,
            mode: 0o644,
            size: 0,
            digest: String::new(),
            symlink_target: target.to_string(),
        });
        Ok(())
    }

    /// Checks a directory entry's path (directories themselves are implied by the files).
    pub fn add_dir(&mut self, raw_path: &str) -> Result<(), StageError> {
        match manifest::normalize_path(raw_path) {
            Ok(_) => Ok(()),
            // The archive's root directory (`./`) is harmless.
            Err(TreeError::BadPath {
                rule: "the path is empty",
                ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Rejects an entry of a kind that cannot be stored (hard link, device, fifo).
    pub fn reject_kind(&self, raw_path: &str, kind: &str) -> StageError {
        StageError::Rejected(format!(
            "entry {raw_path:?}: {kind} entries are not allowed"
        ))
    }

    /// Checks the whole tree and returns the staged version.
    pub fn finish(mut self) -> Result<Staged, StageError> {
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        let entries: Vec<_> = self.files.iter().map(FileRecord::to_proto).collect();
        manifest::check_tree(&entries)?;
        Ok(Staged {
            dir: self.dir,
            files: self.files,
        })
    }
}

/// Extracts a tar stream into `stager`.
pub fn extract_tar(stager: &mut Stager, reader: impl Read) -> Result<(), StageError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| StageError::Io(format!("reading the tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| StageError::Io(format!("reading the tar archive: {e}")))?;
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| StageError::Rejected("an entry path is not UTF-8".into()))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                stager.declare(entry.header().size().unwrap_or(0))?;
                let mode = entry.header().mode().unwrap_or(0o644);
                stager.add_file(&path, mode, &mut entry)?;
            }
            tar::EntryType::Directory => stager.add_dir(&path)?,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                stager.add_symlink(&path, &target)?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            tar::EntryType::Link => return Err(stager.reject_kind(&path, "hard link")),
            other => return Err(stager.reject_kind(&path, &format!("{other:?}"))),
        }
    }
    Ok(())
}

/// Extracts a zip file: declared sizes are checked first, then the bytes actually inflated.
pub fn extract_zip(stager: &mut Stager, file: fs::File) -> Result<(), StageError> {
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| StageError::Rejected(format!("not a valid zip archive: {e}")))?;
    let mut declared = 0u64;
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| StageError::Rejected(format!("zip entry {index}: {e}")))?;
        declared = declared.saturating_add(entry.size());
    }
    stager.declare(declared)?;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| StageError::Rejected(format!("zip entry {index}: {e}")))?;
        let path = entry.name().to_string();
        let mode = entry.unix_mode().unwrap_or(0o644);
        if entry.is_dir() {
            stager.add_dir(&path)?;
        } else if mode & 0o170000 == 0o120000 {
            let mut target = String::new();
            entry
                .by_ref()
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| StageError::Rejected(format!("zip symlink {path:?}: {e}")))?;
            stager.add_symlink(&path, &target)?;
        } else {
            stager.add_file(&path, mode, &mut entry)?;
        }
    }
    Ok(())
}

/// Adds a directory tree from the local file system (links are kept as links and checked).
pub fn add_directory(stager: &mut Stager, root: &std::path::Path) -> Result<(), StageError> {
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let entries = fs::read_dir(&dir)
            .map_err(|e| StageError::Io(format!("reading {}: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| StageError::Io(format!("reading {}: {e}", dir.display())))?;
            let name = entry.file_name().into_string().map_err(|_| {
                StageError::Rejected(format!("a name in {} is not UTF-8", dir.display()))
            })?;
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = fs::symlink_metadata(entry.path())
                .map_err(|e| StageError::Io(format!("reading {rel}: {e}")))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(entry.path())
                    .map_err(|e| StageError::Io(format!("reading link {rel}: {e}")))?;
                stager.add_symlink(&rel, &target.to_string_lossy())?;
            } else if kind.is_dir() {
                pending.push((entry.path(), rel));
            } else if kind.is_file() {
                use std::os::unix::fs::PermissionsExt;
                stager.declare(meta.len())?;
                let file = fs::File::open(entry.path())
                    .map_err(|e| StageError::Io(format!("opening {rel}: {e}")))?;
                stager.add_file(&rel, meta.permissions().mode(), file)?;
            } else {
                return Err(stager.reject_kind(&rel, "special file"));
            }
        }
    }
    Ok(())
}
