//! Archive staging in the DataRepository (tar, tar.gz, zip from an HTTP source anyone may point at):
//! the archive is extracted into a fresh staging directory with the production entry point
//! (`origin::extract_archive`, format sniffed), then nothing exists outside the staging directory,
//! the staging directory holds only regular blob files named by the SHA-256 of their content (no
//! link, no directory, nothing from the archive's own paths), and an accepted version is within the
//! size limit, has blobs for all its files and passes the DataDeployer's manifest check with every
//! link inside the version.

use std::{collections::BTreeSet, fs, io::Write, path::Path};

use autocrane_api::manifest::{check_manifest, digest_hex, sha256_digest};
use autocrane_data_repository::{origin::extract_archive, stage::Stager};

/// The version size limit while fuzzing: small, so that zip and gzip bombs hit it.
pub const LIMIT: u64 = 1 << 20;

/// The archive format a target feeds.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// The input as is (tar seeds).
    Raw,
    /// The input gzipped first unless it already is gzip (tar.gz seeds, or tars to compress).
    Gzip,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("in memory");
    encoder.finish().expect("in memory")
}

/// Checks one input.
pub fn check(data: &[u8], format: Format) {
    let archive_bytes = match format {
        Format::Gzip if !data.starts_with(&[0x1f, 0x8b]) => gzip(data),
        _ => data.to_vec(),
    };
    // On tmpfs when there is one: the stager syncs every blob, which on a disk costs more than
    // the extraction.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let root = tempfile::Builder::new()
        .prefix("autocrane-fuzz-")
        .tempdir_in(base)
        .expect("a temporary directory");
    let stage = root.path().join("stage");
    let archive = root.path().join("archive");
    fs::create_dir(&stage).expect("the staging directory");
    fs::write(&archive, &archive_bytes).expect("the archive");
    let mut stager = Stager::new(stage.clone(), LIMIT);
    let result = extract_archive(&mut stager, &archive).and_then(|()| stager.finish());

    let outside: BTreeSet<String> = fs::read_dir(root.path())
        .expect("the temporary directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        outside,
        BTreeSet::from(["archive".to_string(), "stage".to_string()]),
        "something was written outside the staging directory"
    );
    let blobs = check_staging_dir(&stage);

    if let Ok(staged) = result {
        assert_eq!(staged.dir, stage);
        let total: u64 = staged.files.iter().map(|f| f.size).sum();
        assert!(total <= LIMIT, "{total} bytes staged, over the limit");
        let entries: Vec<_> = staged.files.iter().map(|f| f.to_proto()).collect();
        if let Err(e) = check_manifest(&entries) {
            panic!("a staged version fails the DataDeployer's manifest check: {e}");
        }
        crate::manifest_tree::assert_tree_stays_inside(&entries);
        for file in staged.files.iter().filter(|f| f.symlink_target.is_empty()) {
            let hex = digest_hex(&file.digest).expect("a well-formed digest");
            let (_, size) = blobs
                .iter()
                .find(|(name, _)| name == hex)
                .unwrap_or_else(|| panic!("no blob for {file:?}"));
            assert_eq!(*size, file.size, "{file:?}");
        }
    }
}

/// Every entry of the staging directory is a regular file (never a link or a directory) named by
/// the SHA-256 of its content, or a `.part-<n>` left by a failed extraction. Returns the blobs.
fn check_staging_dir(stage: &Path) -> Vec<(String, u64)> {
    let mut blobs = Vec::new();
    for entry in fs::read_dir(stage).expect("the staging directory") {
        let entry = entry.expect("an entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().expect("a file type");
        assert!(
            kind.is_file(),
            "{name:?} in the staging directory is not a regular file"
        );
        if name.starts_with(".part-") {
            continue;
        }
        let content = fs::read(entry.path()).expect("a blob");
        let digest = sha256_digest(&content);
        assert_eq!(
            digest_hex(&digest),
            Some(name.as_str()),
            "the blob {name:?} does not hold its content"
        );
        blobs.push((name, content.len() as u64));
    }
    blobs
}
