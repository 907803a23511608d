//! Against a real `git daemon`: a new commit on a branch and a new tag reach watchers, by polling
//! and by `POST /hooks/<source_id>`.

mod common;

use std::time::{Duration, Instant};

use autocrane_api::proto::version_v1 as pb;
use autocrane_test_support::{GitServer, git};
use common::*;
use pb::VersionEventKind as Kind;

fn git_spec(
    url: &str,
    git_ref: &str,
    policy: Option<pb::version_policy::Policy>,
    poll_secs: i64,
) -> pb::SourceSpec {
    pb::SourceSpec {
        upstream: Some(pb::source_spec::Upstream::Git(pb::GitSource {
            url: url.to_string(),
            r#ref: git_ref.to_string(),
            path: String::new(),
        })),
        policy: policy.map(|p| pb::VersionPolicy { policy: Some(p) }),
        poll_interval: Some(prost_types::Duration {
            seconds: poll_secs,
            nanos: 0,
        }),
    }
}

#[tokio::test]
async fn a_new_commit_reaches_a_watcher_by_polling() {
    let server = GitServer::start();
    let (url, work) = server.create_repo("app");
    let first_commit = git(&work, &["rev-parse", "HEAD"]);
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    let mut stream = watch(
        &mut client,
        vec![git_spec(&url, "refs/heads/main", None, 1)],
        "",
    )
    .await;
    let first = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(current_name(&first), Some(first_commit.clone()));

    let commit = server.commit_and_push(&work, "second");
    let messages = until(&mut stream, Duration::from_secs(10), |m| {
        current_name(m).as_deref() == Some(commit.as_str())
    })
    .await;
    let last = messages.last().unwrap();
    let changed = last
        .events
        .iter()
        .find(|e| e.kind == Kind::CurrentChanged as i32)
        .unwrap();
    assert_eq!(changed.version.as_ref().unwrap().digest, commit);
    assert_eq!(changed.previous.as_ref().unwrap().name, first_commit);
    watcher.stop().await;
}

#[tokio::test]
async fn a_hook_call_delivers_a_new_commit_at_once() {
    let server = GitServer::start();
    let (url, work) = server.create_repo("data");
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    let mut stream = watch(&mut client, vec![git_spec(&url, "", None, 3600)], "").await;
    let first = next(&mut stream, Duration::from_secs(10)).await;
    let id = first.sources[0].source_id.clone();

    let commit = server.commit_and_push(&work, "data update");
    let sent = Instant::now();
    let (status, _, _) = http(
        "POST",
        &format!("http://{}/hooks/{id}", watcher.webhook),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 202);
    until(&mut stream, Duration::from_secs(5), |m| {
        current_name(m).as_deref() == Some(commit.as_str())
    })
    .await;
    println!("hook → watch event: {:?}", sent.elapsed());
    let (status, _, _) = http(
        "POST",
        &format!("http://{}/hooks/git-0000000000000000", watcher.webhook),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 404);
    watcher.stop().await;
}

#[tokio::test]
async fn a_new_tag_reaches_a_watcher_by_semver() {
    let server = GitServer::start();
    let (url, work) = server.create_repo("lib");
    server.tag_and_push(&work, "v1.0.0");
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    let mut stream = watch(
        &mut client,
        vec![git_spec(&url, "refs/tags/v*", semver_any(), 1)],
        "",
    )
    .await;
    let first = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(current_name(&first).as_deref(), Some("v1.0.0"));

    server.commit_and_push(&work, "feature");
    let commit = server.tag_and_push(&work, "v1.1.0");
    let messages = until(&mut stream, Duration::from_secs(10), |m| {
        current_name(m).as_deref() == Some("v1.1.0")
    })
    .await;
    let last = messages.last().unwrap();
    assert_eq!(last.sources[0].current.as_ref().unwrap().digest, commit);
    assert!(has_event(last, Kind::Discovered, "v1.1.0"));
    watcher.stop().await;
}
