//! Durable file writes shared by the components that keep state on disk (the DataRepository's
//! store, the DataDeployer's cache and history).
//!
//! The functions return `std::io::Result`; each caller wraps the error in its own error type with
//! the path it was writing.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

/// Writes `bytes` to `path` so that a reader (or a restart after a crash) sees either the old
/// content or the new one, never a part: a temporary file in the same directory, fsync, rename
/// over `path`, fsync the directory. Creates the directory when missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    // The temporary name starts with a dot so that directory listings of content skip it.
    let tmp = dir.join(format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// fsyncs a directory, so that renames into it and entries created in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_the_whole_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(entries(dir.path()), ["state.json"]);
    }

    #[test]
    fn creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/manifest.pb");
        write_atomic(&path, b"x").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn a_failed_write_keeps_the_old_content_and_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        // A directory in the way: the rename fails after the temporary file was written.
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"old").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(entries(dir.path()), ["target"]);
        assert_eq!(fs::read(path.join("inside")).unwrap(), b"old");
    }

    #[test]
    fn readers_never_see_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let old = vec![b'a'; 1 << 20];
        let new = vec![b'b'; 1 << 20];
        write_atomic(&path, &old).unwrap();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let seen = fs::read(&path).unwrap();
                    assert!(
                        seen.len() == 1 << 20 && (seen[0] == b'a' || seen[0] == b'b'),
                        "a reader saw a partial file"
                    );
                    assert!(seen.iter().all(|b| *b == seen[0]), "a reader saw a mix");
                }
            })
        };
        for _ in 0..20 {
            write_atomic(&path, &new).unwrap();
            write_atomic(&path, &old).unwrap();
        }
        reader.join().unwrap();
    }

    #[test]
    fn syncing_a_missing_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(sync_dir(&dir.path().join("gone")).is_err());
        sync_dir(dir.path()).unwrap();
    }
}
