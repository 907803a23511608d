//! Persistence in `--state-dir`: one JSON file per source (`sources/<source_id>.json`) holding its
//! canonical spec, known versions, quarantines, current version and recent event log.
//!
//! Files are replaced atomically (write a temporary file, fsync it, rename it over the old one,
//! fsync the directory), so a crash leaves either the old or the new state, never a torn one. A
//! source's file is written before its events are broadcast, so every resume token a client holds
//! refers to persisted events.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use crate::state::Source;

/// A persistence failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or read.
    #[error("opening the state directory {path}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A source file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("sources");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Open {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Loads every source. An unreadable file is logged and skipped (and left in place for a
    /// person to look at) rather than stopping the watcher.
    pub fn load(&self) -> Result<Vec<Source>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError::Open {
            path: self.dir.clone(),
            source,
        })?;
        let mut sources = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Source>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(mut source) => {
                    source.compile();
                    if source.spec.source_id() != source.id {
                        tracing::warn!(path = %path.display(), "Source file id does not match its spec; skipped");
                        continue;
                    }
                    sources.push(source);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "Unreadable source file; skipped")
                }
            }
        }
        sources.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(sources)
    }

    /// Atomically replaces the file of `source`.
    pub fn save(&self, source: &Source) -> Result<(), StoreError> {
        let path = self.dir.join(format!("{}.json", source.id));
        let tmp = self.dir.join(format!(".{}.json.tmp", source.id));
        let wrap = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(source).map_err(|e| wrap(std::io::Error::other(e)))?;
        let mut file = fs::File::create(&tmp).map_err(wrap)?;
        file.write_all(&bytes).map_err(wrap)?;
        file.sync_all().map_err(wrap)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(wrap)?;
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(wrap)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        spec::{Policy, Spec, Upstream},
        state::{Listing, Observed},
    };
    use std::time::SystemTime;

    #[test]
    fn a_saved_source_loads_back_with_its_quarantine_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut source = Source::new(Spec {
            upstream: Upstream::Directory {
                path: "/d".into(),
                version_file: String::new(),
            },
            policy: Policy::Newest,
            poll_interval_ms: 1000,
        });
        let mut seq = 0;
        let listing = Listing {
            items: vec![Observed {
                name: "a".into(),
                digest: String::new(),
                published_at: None,
            }],
            complete: true,
        };
        source.apply_listing(listing, SystemTime::now(), &mut seq);
        source
            .quarantine("a", "bad", SystemTime::now(), &mut seq)
            .unwrap();
        store.save(&source).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].quarantines["a"].reason, "bad");
        assert_eq!(loaded[0].last_seq(), seq);
        assert_eq!(loaded[0].current, None);
        fs::write(dir.path().join("sources/garbage.json"), "{").unwrap();
        assert_eq!(store.load().unwrap().len(), 1, "garbage is skipped");
    }
}
