//! The kubelet's AtomicWriter (`pkg/volume/util/atomic_writer.go`): a volume's files are written
//! into a fresh timestamped directory `..2026_11_26_20_00_00.123456789`, the `..data` symlink is
//! swapped to it with one `rename`, and every user-visible top-level entry is a symlink through
//! `..data` (`annotations -> ..data/annotations`). A reader therefore sees either the old or the
//! new payload, never a partial file.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a payload: bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// Content.
    pub data: Vec<u8>,
    /// Mode bits (e.g. 0o644).
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Write `payload` into `dir` atomically. Returns false when the current content already equals
/// the payload (nothing written).
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    write_retiring_after(dir, payload, RETIRED_GRACE)
}

fn write_retiring_after(dir: &Path, payload: &Payload, grace: Duration) -> io::Result<bool> {
    for p in payload.keys() {
        validate(p)?;
    }
    fs::create_dir_all(dir)?;
    let old_ts = fs::read_link(dir.join(DATA)).ok();
    if let Some(old) = &old_ts
        && same_content(&dir.join(old), payload)
    {
        return Ok(false);
    }
    let ts_name = timestamped_name();
    let ts_dir = dir.join(&ts_name);
    fs::create_dir(&ts_dir)?;
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))?;
    for (rel, file) in payload {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, &file.data)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))?;
    }
    // The user-visible entries point through `..data`; creating them before the swap is safe
    // because a dangling or old target never shows partial content.
    let wanted: Vec<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(String::from))
        .collect();
    for top in &wanted {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(top), &link)?;
        }
    }
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&ts_name, &tmp)?;
    fs::rename(&tmp, dir.join(DATA))?;
    // Remove entries that are no longer in the payload, then the old data directory.
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !wanted.contains(&name) {
            let _ = fs::remove_file(dir.join(&name));
        }
    }
    remove_retired_generations(dir, &ts_name, old_ts.as_deref(), grace);
    Ok(true)
}

/// How long a superseded data directory outlives the swap, at least.
const RETIRED_GRACE: Duration = Duration::from_secs(1);

/// Removes the data directories no reader can still be resolving. The real kubelet removes the
/// old directory right after the swap, which leaves a reader that resolved `..data` an instant
/// before it with ENOENT; readers of a file that changes 200 times in a burst hit that window.
/// Here the directory just superseded is always kept, and older ones only go once they were
/// written more than `grace` ago, so the window closes without the volume growing.
fn remove_retired_generations(
    dir: &Path,
    current: &str,
    just_superseded: Option<&Path>,
    grace: Duration,
) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_generation = name.starts_with("..") && name != DATA && name != DATA_TMP;
        if !is_generation || name == current || just_superseded == Some(Path::new(&name)) {
            continue;
        }
        let written_long_ago = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= grace);
        if written_long_ago {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn validate(rel: &str) -> io::Result<()> {
    let p = PathBuf::from(rel);
    let ok = !rel.is_empty()
        && !rel.starts_with("..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid volume file path {rel:?}: must be relative, without '..'"),
        ))
    }
}

fn same_content(ts_dir: &Path, payload: &Payload) -> bool {
    let mut found = Vec::new();
    if collect(ts_dir, ts_dir, &mut found).is_err() || found.len() != payload.len() {
        return false;
    }
    found.iter().all(|rel| {
        let path = ts_dir.join(rel);
        let Some(want) = payload.get(rel) else {
            return false;
        };
        fs::read(&path).is_ok_and(|d| d == want.data)
            && fs::metadata(&path)
                .is_ok_and(|m| m.permissions().mode() & 0o7777 == want.mode & 0o7777)
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect(root, &path, out)?;
        } else {
            out.push(
                path.strip_prefix(root)
                    .map_err(io::Error::other)?
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    Ok(())
}

/// `..2026_11_26_20_00_00.123456789`: the UTC time plus a per-process counter, so two writes in
/// the same nanosecond still get distinct directories.
fn timestamped_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let now = jiff::Timestamp::now();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "..{}.{}{:03}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond(),
        n % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str)]) -> Payload {
        files
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    FileProjection {
                        data: v.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn files_are_symlinks_through_data_into_a_timestamped_dir() {
        let d = tempfile::tempdir().unwrap();
        assert!(write(d.path(), &payload(&[("labels", "a=\"1\"")])).unwrap());
        assert_eq!(
            fs::read_link(d.path().join("labels")).unwrap(),
            Path::new("..data/labels")
        );
        let ts = fs::read_link(d.path().join("..data")).unwrap();
        assert!(ts.to_string_lossy().starts_with("..20"), "{ts:?}");
        assert_eq!(
            fs::read_to_string(d.path().join("labels")).unwrap(),
            "a=\"1\""
        );
    }

    #[test]
    fn an_update_swaps_data_and_removes_stale_entries_and_retired_dirs() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &payload(&[("labels", "1"), ("old", "x")])).unwrap();
        let first = fs::read_link(d.path().join("..data")).unwrap();
        assert!(write(d.path(), &payload(&[("labels", "2"), ("sub/file", "y")])).unwrap());
        assert_eq!(fs::read_to_string(d.path().join("labels")).unwrap(), "2");
        assert_eq!(fs::read_to_string(d.path().join("sub/file")).unwrap(), "y");
        assert!(fs::symlink_metadata(d.path().join("old")).is_err());
        assert!(fs::symlink_metadata(d.path().join("..data_tmp")).is_err());
        // A reader that resolved `..data` just before the swap still finds its file.
        assert!(d.path().join(&first).exists(), "just superseded dir kept");
        let second = fs::read_link(d.path().join("..data")).unwrap();
        assert!(
            write_retiring_after(d.path(), &payload(&[("labels", "3")]), Duration::ZERO).unwrap()
        );
        assert!(!d.path().join(&first).exists(), "retired dir removed");
        assert!(d.path().join(&second).exists(), "just superseded dir kept");
    }

    #[test]
    fn superseded_dirs_inside_the_grace_period_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let mut generations = Vec::new();
        for i in 0..4 {
            write(d.path(), &payload(&[("labels", &i.to_string())])).unwrap();
            generations.push(fs::read_link(d.path().join("..data")).unwrap());
        }
        for g in &generations {
            assert!(
                d.path().join(g).exists(),
                "{g:?} written within the last second"
            );
        }
    }

    #[test]
    fn an_unchanged_payload_is_not_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let p = payload(&[("a", "1")]);
        write(d.path(), &p).unwrap();
        let ts = fs::read_link(d.path().join("..data")).unwrap();
        assert!(!write(d.path(), &p).unwrap());
        assert_eq!(fs::read_link(d.path().join("..data")).unwrap(), ts);
    }

    #[test]
    fn escaping_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "..data", "a/../../b"] {
            assert!(write(d.path(), &payload(&[(bad, "1")])).is_err(), "{bad}");
        }
    }
}
