//! The DataRepository end to end: the real `autocrane` binary (VersionWatcher + DataRepository
//! processes) against real origins (a git repository, an HTTP server handing out archives).

use std::{path::Path, time::Duration};

use autocrane_api::proto::data_v1::{self as pb, fetch_response::Payload};
use tokio_stream::StreamExt;

mod common;
use autocrane_test_support::{
    GitRepo, GitServer, HttpOrigin, eventually, file, gzip, noise, raw_tar, symlink,
};
use common::{Api, Stack, dir_spec, git_spec, http_spec};

/// Reads a whole Fetch stream: (blobs in order, content bytes).
async fn fetch_all(
    client: &mut pb::data_repository_client::DataRepositoryClient<tonic::transport::Channel>,
    request: pb::FetchRequest,
) -> (pb::FetchPlan, Vec<String>, u64) {
    let mut stream = client.fetch(request).await.expect("Fetch").into_inner();
    let mut plan = None;
    let mut blobs = Vec::new();
    let mut bytes = 0u64;
    while let Some(message) = stream.next().await {
        match message.expect("fetch message").payload.unwrap() {
            Payload::Plan(p) => plan = Some(p),
            Payload::Chunk(chunk) => {
                assert!(chunk.data.len() <= 1 << 20, "chunks are at most 1 MiB");
                bytes += chunk.data.len() as u64;
                if chunk.last {
                    blobs.push(chunk.digest);
                }
            }
        }
    }
    (plan.expect("a plan first"), blobs, bytes)
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_commits_sync_and_fetch_sends_only_what_the_client_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("origin"));
    let v1 = repo.commit(
        &[
            ("data/a.bin", &noise(1, 300_000)),
            ("data/b.bin", &noise(2, 2_500_000)),
            ("data/sub/c.txt", b"config = 1\n"),
            ("outside.txt", b"not data"),
        ],
        &[],
    );
    // Over `git daemon`: the servers refuse `file://` and local-path remotes.
    let daemon = GitServer::serve(dir.path());
    let url = daemon.url("origin");
    let mut stack = Stack::start(dir.path(), &[]).await;
    let mut client = stack.repository().await;

    let bad = client
        .track_source(pb::TrackSourceRequest { source: None })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("source"), "{}", bad.message());

    let id = stack.track(git_spec(&url, "data")).await;
    assert_eq!(
        stack.track(git_spec(&url, "data")).await,
        id,
        "tracking twice is one source"
    );
    let manifest = stack.synced(&id, &v1).await;
    let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        ["a.bin", "b.bin", "sub/c.txt"],
        "only the sub-path, sorted"
    );

    let mut watch = client
        .watch_synced(pb::WatchSyncedRequest {
            source_ids: vec![id.clone()],
            resume_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert!(first.snapshot);
    assert_eq!(first.sources[0].versions[0].version, v1);

    let (plan, blobs, bytes) = fetch_all(
        &mut client,
        pb::FetchRequest {
            source_id: id.clone(),
            version: v1.clone(),
            have: vec![],
            resume: None,
        },
    )
    .await;
    assert_eq!((plan.blob_count, blobs.len()), (3, 3));
    assert_eq!(bytes, 300_000 + 2_500_000 + 11);

    // A new commit that changes one file: a delta fetch moves only that file.
    let v2 = repo.commit(&[("data/b.bin", &noise(3, 2_500_000))], &[]);
    let manifest2 = stack.synced(&id, &v2).await;
    let have: Vec<String> = manifest.files.iter().map(|f| f.digest.clone()).collect();
    let (plan, blobs, bytes) = fetch_all(
        &mut client,
        pb::FetchRequest {
            source_id: id.clone(),
            version: v2.clone(),
            have: have.clone(),
            resume: None,
        },
    )
    .await;
    println!(
        "delta v1 -> v2: {} blob(s), {bytes} bytes moved of {} bytes in the version",
        blobs.len(),
        manifest2.files.iter().map(|f| f.size).sum::<u64>()
    );
    assert_eq!(blobs.len(), 1);
    assert_eq!(bytes, 2_500_000);
    assert_eq!(plan.total_bytes, 2_500_000);

    // The sync stream announced v2 (only once it was stored).
    let announced = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(message) = watch.next().await {
            let message = message.unwrap();
            assert!(!message.snapshot);
            if message
                .sources
                .iter()
                .any(|s| s.versions.iter().any(|v| v.version == v2))
            {
                return message;
            }
        }
        panic!("the stream ended");
    })
    .await
    .expect("WatchSynced announces v2");
    assert!(!announced.resume_token.is_empty());

    // Resume after a cut: the blob continues from the offset.
    let changed = manifest2
        .files
        .iter()
        .find(|f| f.path == "b.bin")
        .unwrap()
        .digest
        .clone();
    let (plan, _, bytes) = fetch_all(
        &mut client,
        pb::FetchRequest {
            source_id: id.clone(),
            version: v2.clone(),
            have,
            resume: Some(pb::ResumePoint {
                digest: changed.clone(),
                offset: 2_000_000,
            }),
        },
    )
    .await;
    assert_eq!((plan.total_bytes, bytes), (500_000, 500_000));

    // Unknown versions and sources are NOT_FOUND; pins are listed.
    let missing = client
        .get_manifest(pb::GetManifestRequest {
            source_id: id.clone(),
            version: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let pinned = client
        .pin_version(pb::PinVersionRequest {
            source_id: id.clone(),
            version: v1.clone(),
            holder: "acd/ns/app/lkg".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pinned.version.unwrap().pinned_by, ["acd/ns/app/lkg"]);

    // SIGKILL and restart: everything synced is still there.
    stack.kill_repository();
    stack.restart_repository().await;
    let mut client = stack.repository().await;
    let versions = client
        .list_data_versions(pb::ListDataVersionsRequest {
            source_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let names: Vec<&str> = versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(
        names,
        [v2.as_str(), v1.as_str()],
        "newest first, after a restart"
    );
    assert_eq!(versions[1].pinned_by, ["acd/ns/app/lkg"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_archives_are_rejected_and_nothing_of_them_lands() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start();
    let stack = Stack::start(dir.path(), &["--max-version-bytes", "4194304"]).await;

    let good = origin.put(
        "/good.tar.gz",
        gzip(&raw_tar(&[
            file("conf/app.yaml", b"a: 1\n"),
            symlink("current.yaml", "conf/app.yaml"),
        ])),
    );
    let good_id = stack.track(http_spec(&origin.url("/good.tar.gz"))).await;
    let manifest = stack.synced(&good_id, &good).await;
    assert_eq!(manifest.files.len(), 2);
    assert_eq!(manifest.files[1].path, "current.yaml");
    assert_eq!(manifest.files[1].symlink_target, "conf/app.yaml");
    let blobs_before = count_files(&stack.store.join("blobs"));

    let mut bomb = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    bomb.start_file(
        "bomb",
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated),
    )
    .unwrap();
    std::io::Write::write_all(&mut bomb, &vec![0u8; 16 << 20]).unwrap();
    let bomb = bomb.finish().unwrap().into_inner();

    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "/dotdot.tar",
            raw_tar(&[file("fine.txt", b"fine"), file("../escape", b"evil")]),
            "`..`",
        ),
        (
            "/absolute.tar.gz",
            gzip(&raw_tar(&[file("/tmp/evil", b"evil")])),
            "absolute",
        ),
        (
            "/symlink.tar",
            raw_tar(&[
                file("fine.txt", b"fine2"),
                symlink("link", "../../etc/passwd"),
            ]),
            "leaves the version root",
        ),
        ("/bomb.zip", bomb, "larger than the limit"),
    ];
    for (path, body, rule) in hostile {
        let version = origin.put(path, body);
        let id = stack.track(http_spec(&origin.url(path))).await;
        let status = stack
            .status_until(&id, &format!("{path} to fail"), |s| {
                s.state == pb::SyncState::Failed as i32
            })
            .await;
        println!("{path}: {}", status.error);
        assert!(status.error.contains(rule), "{path}: {}", status.error);
        assert_eq!(status.version, version);
        let versions = stack
            .repository()
            .await
            .list_data_versions(pb::ListDataVersionsRequest {
                source_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .versions;
        assert!(versions.is_empty(), "{path}: no version is listed");
    }
    assert_eq!(
        count_files(&stack.store.join("blobs")),
        blobs_before,
        "no blob of a rejected version is stored"
    );
    assert_eq!(
        count_files(&stack.store.join("tmp")),
        0,
        "staging is cleaned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_ingest_no_partial_version_is_listed_and_the_sync_completes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    std::fs::create_dir_all(source.join("v1")).unwrap();
    for n in 0..400u64 {
        std::fs::write(source.join(format!("v1/f{n:03}.bin")), noise(n, 256 << 10)).unwrap();
    }
    let mut stack = Stack::start(dir.path(), &[]).await;
    let id = stack.track(dir_spec(&source)).await;
    // SIGKILL while the version is being staged.
    let staging = stack.store.join("tmp");
    let stage_dir = eventually(
        Duration::from_secs(30),
        "the ingest to be under way",
        || {
            let busy = std::fs::read_dir(&staging)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| count_files(&e.path()) > 20)
                .map(|e| e.path());
            async move { busy }
        },
    )
    .await;
    stack.kill_repository();
    let staged = count_files(&stage_dir);
    assert!(
        count_files(&stack.store.join("versions")) == 0,
        "killed before the manifest was written"
    );

    stack.restart_repository().await;
    assert!(
        !stage_dir.exists(),
        "the interrupted staging directory is removed at start"
    );
    let mut client = stack.repository().await;
    let listed = client
        .list_data_versions(pb::ListDataVersionsRequest {
            source_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert!(
        listed.iter().all(|v| v.file_count == 400),
        "a listed version is always complete: {listed:?}"
    );
    let manifest = stack.synced(&id, "v1").await;
    assert_eq!(manifest.files.len(), 400);
    let (_, blobs, bytes) = fetch_all(
        &mut client,
        pb::FetchRequest {
            source_id: id.clone(),
            version: "v1".into(),
            have: vec![],
            resume: None,
        },
    )
    .await;
    assert_eq!((blobs.len(), bytes), (400, 400 * (256 << 10)));
    println!(
        "killed with {staged} files staged; after the restart v1 synced complete ({} blobs)",
        blobs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_sources_outside_the_allowed_directories_are_refused_and_nothing_is_tracked() {
    // The stack allows its own temporary directory only.
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), &[]).await;
    std::os::unix::fs::symlink("/etc", dir.path().join("etc-link")).unwrap();
    for outside in [Path::new("/etc"), &dir.path().join("etc-link")] {
        let refused = stack
            .repository()
            .await
            .track_source(pb::TrackSourceRequest {
                source: Some(dir_spec(outside)),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with("source.directory.path: ")
                && refused
                    .message()
                    .contains("is outside the directories this server may read"),
            "{}",
            refused.message()
        );
    }
    let listed = stack
        .repository()
        .await
        .list_sources(pb::ListSourcesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sources.is_empty(), "{listed:?}");
}
