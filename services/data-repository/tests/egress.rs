//! The DataRepository's own egress policy, with real origins on 127.0.0.1 (`git daemon`, an HTTP
//! origin): a VersionWatcher allowed to see them, a DataRepository that is not (or is) allowed to
//! fetch from them. Refused at `TrackSource` when the URL says loopback, at the fetch when only
//! the resolved address does; hostile git URLs refused before any `git` process starts.

use autocrane_api::proto::data_v1 as pb;
use autocrane_test_support::{GitRepo, GitServer, HttpOrigin, file, gzip, loopback_alias, raw_tar};

mod common;
use common::{Api, Stack, git_spec, http_spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_origins_are_refused_unless_the_repository_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("origin"));
    let commit = repo.commit(&[("data/a.txt", b"a\n")], &[]);
    let daemon = GitServer::serve(dir.path());
    let origin = HttpOrigin::start();
    let archive = origin.put("/data.tar.gz", gzip(&raw_tar(&[file("a.txt", b"a\n")])));
    let alias = loopback_alias();
    let stack = Stack::start_with_egress(dir.path(), &[], &["127.0.0.1"], &[]).await;
    let mut client = stack.repository().await;

    for (spec, field) in [
        (http_spec(&origin.url("/data.tar.gz")), "source.http.url"),
        (
            http_spec(&format!("http://0x7f000001:{}/data.tar.gz", origin.port)),
            "source.http.url",
        ),
        (git_spec(&daemon.url("origin"), "data"), "source.git.url"),
        (
            git_spec(&format!("git://localhost:{}/origin", daemon.port), "data"),
            "source.git.url",
        ),
    ] {
        let refused = client
            .track_source(pb::TrackSourceRequest {
                source: Some(spec.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{spec:?}");
        assert!(
            refused.message().starts_with(&format!("{field}: "))
                && refused.message().contains("loopback address")
                && refused.message().contains("--allow-upstream-host"),
            "{}",
            refused.message()
        );
    }

    // Through a name: the VersionWatcher (allowed) sees the versions, the repository's fetch is
    // refused on the address the name resolves to.
    for (spec, version) in [
        (
            http_spec(&format!("http://{alias}:{}/data.tar.gz", origin.port)),
            archive.clone(),
        ),
        (
            git_spec(&format!("git://{alias}:{}/origin", daemon.port), "data"),
            commit.clone(),
        ),
    ] {
        let id = stack.track(spec.clone()).await;
        let status = stack
            .status_until(&id, &format!("{spec:?} to fail"), |s| {
                s.state == pb::SyncState::Failed as i32
            })
            .await;
        assert_eq!(status.version, version);
        assert!(
            status
                .error
                .contains(&format!("{alias} (127.0.0.1) is a loopback address"))
                && status.error.contains("--allow-upstream-host"),
            "{spec:?}: {}",
            status.error
        );
    }
    assert!(
        !stack
            .store
            .join("git")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "no mirror was created for a refused remote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_is_fetched_and_hostile_git_urls_never_reach_git() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("origin"));
    let commit = repo.commit(&[("data/a.txt", b"a\n")], &[]);
    let daemon = GitServer::serve(dir.path());
    let alias = loopback_alias();
    let stack = Stack::start_with_egress(dir.path(), &[], &["127.0.0.1"], &[&alias]).await;

    let id = stack
        .track(git_spec(
            &format!("git://{alias}:{}/origin", daemon.port),
            "data",
        ))
        .await;
    let manifest = stack.synced(&id, &commit).await;
    assert_eq!(manifest.files[0].path, "a.txt");

    let marker = dir.path().join("pwned");
    let mut client = stack.repository().await;
    for url in [
        format!("ext::sh -c touch% {}", marker.display()),
        format!("--upload-pack=touch {}", marker.display()),
        format!("file://{}", dir.path().join("origin").display()),
        dir.path().join("origin").display().to_string(),
        "ssh://-oProxyCommand=sh/x".to_string(),
    ] {
        let refused = client
            .track_source(pb::TrackSourceRequest {
                source: Some(git_spec(&url, "")),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}");
        assert!(
            refused.message().starts_with("source.git.url: "),
            "{url}: {}",
            refused.message()
        );
    }
    assert!(!marker.exists(), "no git process ran a payload");
}
