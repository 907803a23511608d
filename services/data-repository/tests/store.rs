//! The store and the staging checks, through the crate's own functions (no server): crash
//! leftovers, restart, retention with pins, and hostile archives.

use std::{fs, io::Write, path::Path};

use autocrane_data_repository::{
    origin::extract_archive,
    stage::{StageError, Stager},
    store::Store,
};

use autocrane_test_support::{file, gzip, noise, raw_tar, symlink};

fn stage(store: &Store, files: &[(&str, Vec<u8>)]) -> autocrane_data_repository::store::Staged {
    let mut stager = Stager::new(store.staging_dir().unwrap(), 1 << 30);
    for (path, content) in files {
        stager.add_file(path, 0o644, content.as_slice()).unwrap();
    }
    stager.finish().unwrap()
}

fn count_files(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn restart_cleans_crash_leftovers_and_keeps_complete_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 5).unwrap();
    let staged = stage(
        &store,
        &[("a.txt", b"alpha".to_vec()), ("b/c.txt", b"gamma".to_vec())],
    );
    store.commit("src", "v1", staged).unwrap();
    // A crash mid-ingest: a staging directory with a half-written blob, a temp manifest, and an
    // orphan blob that no manifest references (renamed before the crash hit the manifest write).
    let _half = stage(&store, &[("x", noise(1, 1000))]);
    fs::write(dir.path().join("versions/src/.tmp-123-456"), b"{\"partial").unwrap();
    let orphan = dir.path().join("blobs/sha256/ff").join("f".repeat(64));
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::write(&orphan, b"orphan").unwrap();
    drop(store);

    let store = Store::open(dir.path(), 5).unwrap();
    assert_eq!(
        count_files(&dir.path().join("tmp")),
        0,
        "staging is emptied at start"
    );
    assert!(!orphan.exists(), "unreferenced blobs are collected");
    assert!(!dir.path().join("versions/src/.tmp-123-456").exists());
    let versions = store.versions("src").unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].version, "v1");
    assert_eq!(versions[0].file_count, 2);
    let record = store.version("src", "v1").unwrap();
    for file in &record.files {
        assert_eq!(
            autocrane_data_repository::store::digest_of_file(&store.blob_path(&file.digest))
                .unwrap(),
            file.digest
        );
    }
}

#[test]
fn a_version_that_lost_a_blob_is_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 5).unwrap();
    let record = store
        .commit("src", "v1", stage(&store, &[("a", b"1".to_vec())]))
        .unwrap();
    fs::remove_file(store.blob_path(&record.files[0].digest)).unwrap();
    drop(store);
    let store = Store::open(dir.path(), 5).unwrap();
    assert!(store.versions("src").is_none_or(|v| v.is_empty()));
}

#[test]
fn retention_keeps_the_newest_and_every_pinned_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 2).unwrap();
    let shared = noise(7, 4096);
    for n in 1..=2 {
        store
            .commit(
                "src",
                &format!("v{n}"),
                stage(
                    &store,
                    &[
                        ("shared", shared.clone()),
                        ("own", format!("v{n}").into_bytes()),
                    ],
                ),
            )
            .unwrap();
    }
    let pinned = store.pin("src", "v1", "acd/ns/app/lkg").unwrap().unwrap();
    assert_eq!(pinned.pinned_by, ["acd/ns/app/lkg"]);
    for n in 3..=4 {
        store
            .commit(
                "src",
                &format!("v{n}"),
                stage(
                    &store,
                    &[
                        ("shared", shared.clone()),
                        ("own", format!("v{n}").into_bytes()),
                    ],
                ),
            )
            .unwrap();
    }
    let names: Vec<String> = store
        .versions("src")
        .unwrap()
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(
        names,
        ["v4", "v3", "v1"],
        "two newest plus the pinned one, newest first"
    );
    // shared + own(v4) + own(v3) + own(v1): deduplicated, v2's own blob collected.
    assert_eq!(count_files(&dir.path().join("blobs")), 4);
    // Pins survive a restart; unpinning lets retention remove the version.
    drop(store);
    let store = Store::open(dir.path(), 2).unwrap();
    assert_eq!(store.versions("src").unwrap().len(), 3);
    assert!(
        store
            .unpin("src", "v1", "acd/ns/app/lkg")
            .unwrap()
            .is_none()
    );
    let names: Vec<String> = store
        .versions("src")
        .unwrap()
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(names, ["v4", "v3"]);
    assert_eq!(count_files(&dir.path().join("blobs")), 3);
}

fn try_archive(bytes: &[u8], limit: u64) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    fs::write(&archive, bytes).unwrap();
    let stage_dir = dir.path().join("stage");
    fs::create_dir(&stage_dir).unwrap();
    let mut stager = Stager::new(stage_dir, limit);
    let result = extract_archive(&mut stager, &archive).and_then(|()| stager.finish());
    match result {
        Ok(staged) => Ok(staged.files.into_iter().map(|f| f.path).collect()),
        Err(StageError::Rejected(reason)) => Err(reason),
        Err(other) => panic!("expected a rejection, got {other}"),
    }
}

fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(content).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[test]
fn good_archives_of_every_format_are_accepted() {
    let tar = raw_tar(&[
        file("a.txt", b"a"),
        file("dir/b.txt", b"b"),
        symlink("dir/link", "../a.txt"),
    ]);
    assert_eq!(
        try_archive(&tar, 1 << 20).unwrap(),
        ["a.txt", "dir/b.txt", "dir/link"]
    );
    assert_eq!(
        try_archive(&gzip(&tar), 1 << 20).unwrap(),
        ["a.txt", "dir/b.txt", "dir/link"]
    );
    let zip = zip_of(&[("z/1.txt", b"one".to_vec()), ("2.txt", b"two".to_vec())]);
    assert_eq!(try_archive(&zip, 1 << 20).unwrap(), ["2.txt", "z/1.txt"]);
}

#[test]
fn hostile_archives_are_rejected() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            raw_tar(&[file("ok.txt", b"x"), file("../escape", b"evil")]),
            "`..`",
        ),
        (
            "nested dot-dot",
            raw_tar(&[file("a/../../escape", b"evil")]),
            "`..`",
        ),
        (
            "absolute",
            raw_tar(&[file("/etc/cron.d/evil", b"evil")]),
            "absolute",
        ),
        (
            "outside symlink",
            raw_tar(&[symlink("passwd", "../../../etc/passwd")]),
            "leaves the version root",
        ),
        (
            "absolute symlink",
            raw_tar(&[symlink("passwd", "/etc/passwd")]),
            "absolute",
        ),
        (
            "file under a symlink",
            raw_tar(&[symlink("d", "sub"), file("d/x", b"x"), file("sub/y", b"y")]),
            "under a file or symlink",
        ),
        (
            "link to the root",
            raw_tar(&[symlink("loop", ".")]),
            "version root itself",
        ),
        (
            "too big",
            gzip(&raw_tar(&[file("big", &vec![0u8; 3 << 20])])),
            "larger than the limit",
        ),
        (
            "zip bomb",
            zip_of(&[("bomb", vec![0u8; 16 << 20])]),
            "larger than the limit",
        ),
        (
            "zip dot-dot",
            zip_of(&[("../escape", b"evil".to_vec())]),
            "`..`",
        ),
    ];
    for (name, bytes, rule) in cases {
        let err = try_archive(&bytes, 2 << 20).expect_err(name);
        assert!(err.contains(rule), "{name}: {err}");
        println!("{name}: rejected: {err}");
    }
}
