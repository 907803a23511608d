//! Persistence in `--state-dir`: checkpoints, one JSON file per source (`sources/<source_id>.json`)
//! holding its canonical spec, known versions, quarantines, current version and recent event log;
//! and a journal (`journal/<segment>.log`) of the source states written since.
//!
//! A change is durable once its record is in the journal and the journal is fsynced: one append
//! and one `fdatasync` commit a whole batch of sources (group commit, see [`crate::commit`]), where
//! a file per source would cost two fsyncs each. A record is a line `<check> <source_id> <json>`,
//! `check` being the first 8 bytes of the SHA-256 of `<source_id> <json>` in hex; replay stops at
//! the first line that is torn or fails its check (only the tail after the last fsync can be, and
//! nothing in it was acknowledged).
//!
//! Segments are folded into the checkpoint files in the background: each state of the segment is
//! written atomically (temporary file, fsync, rename, then one fsync of the directory), and only
//! then is the segment deleted, so a crash at any point leaves a checkpoint plus segments that
//! replay to the latest state. Loading applies the checkpoints, then the segments in order.
//!
//! The checkpoint files keep the format of earlier versions, which wrote only them: an older state
//! directory loads as it is. (An older binary would ignore the journal, so a downgrade should
//! start from a directory whose journal was folded, that is after a clean start and stop.)

use std::{
    collections::BTreeMap,
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
    /// A source file or journal segment could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The committer stopped (the watcher is shutting down).
    #[error("the state committer has stopped")]
    Stopped,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    sources: PathBuf,
    journal: PathBuf,
}

/// One journal segment's latest state per source id (the raw JSON).
pub type Replayed = BTreeMap<String, Vec<u8>>;

fn check_of(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    digest.as_ref()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `id` can name a file (ids are `<kind>-<hex>`; anything else is corruption).
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Encodes one journal record (a full line).
pub fn encode_record(id: &str, json: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(id.len() + json.len() + 1);
    body.extend_from_slice(id.as_bytes());
    body.push(b' ');
    body.extend_from_slice(json);
    let mut line = check_of(&body).into_bytes();
    line.push(b' ');
    line.extend_from_slice(&body);
    line.push(b'\n');
    line
}

/// The valid records of a segment, in order, up to the first torn or corrupt one.
pub fn decode_records(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let (line, tail) = rest.split_at(end);
        rest = &tail[1..];
        let Some((check, body)) = line
            .split_at_checked(16)
            .and_then(|(check, body)| Some((check, body.strip_prefix(b" ")?)))
        else {
            break;
        };
        if check != check_of(body).as_bytes() {
            break;
        }
        let Some(space) = body.iter().position(|b| *b == b' ') else {
            break;
        };
        let Ok(id) = std::str::from_utf8(&body[..space]) else {
            break;
        };
        if !plausible_id(id) {
            break;
        }
        out.push((id.to_string(), body[space + 1..].to_vec()));
    }
    out
}

/// Serialises a source as stored (checkpoint files and journal records alike).
pub fn encode(source: &Source) -> Vec<u8> {
    // A `Source` has only string map keys and plain fields, so serialising cannot fail.
    serde_json::to_vec(source).unwrap_or_default()
}

fn parse(json: &[u8]) -> Result<Source, String> {
    let mut source = serde_json::from_slice::<Source>(json).map_err(|e| e.to_string())?;
    source.compile();
    if source.spec.source_id() != source.id {
        return Err("the source id does not match its spec".into());
    }
    Ok(source)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir).and_then(|dir| dir.sync_all())
}

impl Store {
    /// Opens (creating) `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let store = Self {
            sources: state_dir.join("sources"),
            journal: state_dir.join("journal"),
        };
        for dir in [&store.sources, &store.journal] {
            fs::create_dir_all(dir).map_err(|source| StoreError::Open {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(store)
    }

    /// The journal directory.
    pub fn journal_dir(&self) -> &Path {
        &self.journal
    }

    /// The path of journal segment `segment`.
    pub fn segment_path(&self, segment: u64) -> PathBuf {
        self.journal.join(format!("{segment:020}.log"))
    }

    /// The journal segments on disk, oldest first.
    pub fn segments(&self) -> Result<Vec<u64>, StoreError> {
        let entries = fs::read_dir(&self.journal).map_err(|source| StoreError::Open {
            path: self.journal.clone(),
            source,
        })?;
        let mut segments: Vec<u64> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                name.to_str()?.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        segments.sort_unstable();
        Ok(segments)
    }

    /// The latest state per source recorded in `segment` (empty when it is gone).
    pub fn replay(&self, segment: u64) -> Result<Replayed, StoreError> {
        let path = self.segment_path(segment);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Replayed::new());
            }
            Err(source) => return Err(StoreError::Open { path, source }),
        };
        Ok(decode_records(&bytes).into_iter().collect())
    }

    /// Loads every source: the checkpoints, then the journal on top. An unreadable file or record
    /// is logged and skipped (files are left in place for a person to look at) rather than
    /// stopping the watcher.
    pub fn load(&self) -> Result<Vec<Source>, StoreError> {
        // The journal is read before the checkpoints: a segment folded meanwhile (by a running
        // watcher, when a test looks) is then found in the checkpoints instead.
        let mut journal = Vec::new();
        for segment in self.segments()? {
            journal.push((segment, self.replay(segment)?));
        }
        let entries = fs::read_dir(&self.sources).map_err(|source| StoreError::Open {
            path: self.sources.clone(),
            source,
        })?;
        let mut sources = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| parse(&b))
            {
                Ok(source) => {
                    sources.insert(source.id.clone(), source);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "Unreadable source file; skipped")
                }
            }
        }
        for (segment, records) in journal {
            for (id, json) in records {
                match parse(&json) {
                    Ok(source) if source.id == id => {
                        sources.insert(id, source);
                    }
                    Ok(_) => {
                        tracing::warn!(segment, %id, "Journal record under another id; skipped")
                    }
                    Err(error) => {
                        tracing::warn!(segment, %id, %error, "Unreadable journal record; skipped")
                    }
                }
            }
        }
        Ok(sources.into_values().collect())
    }

    /// Atomically replaces the checkpoint file of `source` (two fsyncs: the file and the
    /// directory). The hub commits through the journal instead; this is the one-source path.
    pub fn save(&self, source: &Source) -> Result<(), StoreError> {
        let path = self.write_checkpoint(&source.id, &encode(source))?;
        sync_dir(&self.sources).map_err(|source| StoreError::Write { path, source })
    }

    /// Writes a checkpoint file through a temporary file (fsynced, renamed); the caller fsyncs
    /// the directory.
    fn write_checkpoint(&self, id: &str, json: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.sources.join(format!("{id}.json"));
        let tmp = self.sources.join(format!(".{id}.json.tmp"));
        let result = fs::File::create(&tmp)
            .and_then(|mut file| {
                file.write_all(json)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &path));
        match result {
            Ok(()) => Ok(path),
            Err(source) => Err(StoreError::Write { path, source }),
        }
    }

    /// Folds `segment` into the checkpoint files and deletes it; returns how many sources it
    /// held. Segments must be folded oldest first (a newer one may hold newer states).
    pub fn fold(&self, segment: u64) -> Result<usize, StoreError> {
        let records = self.replay(segment)?;
        for (id, json) in &records {
            self.write_checkpoint(id, json)?;
        }
        let wrap = |source| StoreError::Write {
            path: self.sources.clone(),
            source,
        };
        sync_dir(&self.sources).map_err(wrap)?;
        let path = self.segment_path(segment);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Write { path, source }),
        }
        sync_dir(&self.journal).map_err(|source| StoreError::Write {
            path: self.journal.clone(),
            source,
        })?;
        Ok(records.len())
    }
}

/// An open journal segment that batches are appended to.
#[derive(Debug)]
pub struct Segment {
    /// Its number.
    pub number: u64,
    file: fs::File,
    /// Bytes written so far.
    pub len: u64,
}

impl Segment {
    /// Creates segment `number` and makes its directory entry durable (one fsync).
    pub fn create(store: &Store, number: u64) -> Result<Self, StoreError> {
        let path = store.segment_path(number);
        let wrap = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(wrap)?;
        sync_dir(store.journal_dir()).map_err(wrap)?;
        Ok(Self {
            number,
            file,
            len: 0,
        })
    }

    /// Appends `bytes` (whole records) and makes them durable with one `fdatasync`.
    pub fn append(&mut self, store: &Store, bytes: &[u8]) -> Result<(), StoreError> {
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        self.len += bytes.len() as u64;
        result.map_err(|source| StoreError::Write {
            path: store.segment_path(self.number),
            source,
        })
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

    fn source(path: &str) -> Source {
        Source::new(Spec {
            upstream: Upstream::Directory {
                path: path.into(),
                version_file: String::new(),
            },
            policy: Policy::Newest,
            poll_interval_ms: 1000,
        })
    }

    fn discover(source: &mut Source, name: &str, seq: &mut u64) {
        let listing = Listing {
            items: vec![Observed {
                name: name.into(),
                digest: String::new(),
                published_at: None,
            }],
            complete: false,
        };
        source.apply_listing(listing, SystemTime::now(), seq);
    }

    #[test]
    fn a_saved_source_loads_back_with_its_quarantine_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut source = source("/d");
        let mut seq = 0;
        discover(&mut source, "a", &mut seq);
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

    #[test]
    fn the_journal_overrides_checkpoints_and_stops_at_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (mut a, mut b) = (source("/a"), source("/b"));
        let mut seq = 0;
        store.save(&a).unwrap();
        discover(&mut a, "a1", &mut seq);
        discover(&mut b, "b1", &mut seq);
        let mut segment = Segment::create(&store, 7).unwrap();
        let mut batch = encode_record(&a.id, &encode(&a));
        batch.extend(encode_record(&b.id, &encode(&b)));
        segment.append(&store, &batch).unwrap();
        // A later batch that never finished: b's newer state is torn, then garbage follows.
        discover(&mut b, "b2", &mut seq);
        let torn = encode_record(&b.id, &encode(&b));
        let mut tail = torn[..torn.len() / 2].to_vec();
        tail.extend_from_slice(b"\n\0\0\0garbage\n");
        segment.append(&store, &tail).unwrap();

        let loaded = store.load().unwrap();
        let by_id: BTreeMap<_, _> = loaded.iter().map(|s| (s.id.clone(), s)).collect();
        assert_eq!(by_id.len(), 2);
        assert_eq!(by_id[&a.id].current.as_deref(), Some("a1"), "journal wins");
        assert_eq!(
            by_id[&b.id].current.as_deref(),
            Some("b1"),
            "the torn record and everything after it are ignored"
        );
    }

    #[test]
    fn folding_a_segment_moves_its_states_into_checkpoint_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut a = source("/a");
        let mut seq = 0;
        let mut first = Segment::create(&store, 1).unwrap();
        first
            .append(&store, &encode_record(&a.id, &encode(&a)))
            .unwrap();
        discover(&mut a, "a1", &mut seq);
        let mut second = Segment::create(&store, 2).unwrap();
        second
            .append(&store, &encode_record(&a.id, &encode(&a)))
            .unwrap();
        assert_eq!(store.fold(1).unwrap(), 1);
        assert_eq!(store.segments().unwrap(), [2]);
        assert_eq!(store.load().unwrap()[0].current.as_deref(), Some("a1"));
        assert_eq!(store.fold(2).unwrap(), 1);
        assert!(store.segments().unwrap().is_empty());
        let file = fs::read(dir.path().join(format!("sources/{}.json", a.id))).unwrap();
        assert_eq!(parse(&file).unwrap().current.as_deref(), Some("a1"));
        assert_eq!(store.fold(2).unwrap(), 0, "folding again is harmless");
    }

    #[test]
    fn records_with_a_bad_check_or_id_end_the_replay() {
        let good = encode_record("directory-00ff", b"{}");
        let mut flipped = encode_record("directory-00ff", b"{}");
        let last = flipped.len() - 2;
        flipped[last] = b']';
        assert_eq!(decode_records(&good).len(), 1);
        assert!(decode_records(&flipped).is_empty());
        assert!(decode_records(&encode_record("../etc", b"{}")).is_empty());
        let mut both = good.clone();
        both.extend(flipped);
        both.extend(good);
        assert_eq!(decode_records(&both).len(), 1);
    }
}
