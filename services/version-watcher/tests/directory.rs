//! Local directory sources: each sub-directory is a version; a hook call probes at once.

mod common;

use std::time::Duration;

use autocrane_api::proto::version_v1 as pb;
use common::*;

#[tokio::test]
async fn a_new_subdirectory_reaches_a_watcher_through_a_hook() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("1.0.0")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    let spec = pb::SourceSpec {
        upstream: Some(pb::source_spec::Upstream::Directory(pb::DirectorySource {
            path: data.path().to_str().unwrap().to_string(),
            version_file: String::new(),
        })),
        policy: Some(pb::VersionPolicy {
            policy: semver_any(),
        }),
        poll_interval: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    };
    let mut stream = watch(&mut client, vec![spec], "").await;
    let first = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(current_name(&first).as_deref(), Some("1.0.0"));
    let id = first.sources[0].source_id.clone();

    // A version is copied in under a hidden name and renamed into place.
    std::fs::create_dir(data.path().join(".1.1.0.partial")).unwrap();
    std::fs::rename(
        data.path().join(".1.1.0.partial"),
        data.path().join("1.1.0"),
    )
    .unwrap();
    let (status, _, _) = http(
        "POST",
        &format!("http://{}/hooks/{id}", watcher.webhook),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 202);
    let messages = until(&mut stream, Duration::from_secs(5), |m| {
        current_name(m).as_deref() == Some("1.1.0")
    })
    .await;
    assert!(has_event(
        messages.last().unwrap(),
        pb::VersionEventKind::Discovered,
        "1.1.0"
    ));

    // Removing a version directory is a REMOVED event and the policy falls back.
    std::fs::remove_dir(data.path().join("1.1.0")).unwrap();
    let probed = client
        .probe(pb::ProbeRequest { source_id: id })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(probed.current.as_ref().unwrap().name, "1.0.0");
    let messages = until(&mut stream, Duration::from_secs(5), |m| {
        current_name(m).as_deref() == Some("1.0.0")
    })
    .await;
    assert!(has_event(
        messages.last().unwrap(),
        pb::VersionEventKind::Removed,
        "1.1.0"
    ));
    watcher.stop().await;
}

fn directory_spec(path: &std::path::Path) -> pb::SourceSpec {
    pb::SourceSpec {
        upstream: Some(pb::source_spec::Upstream::Directory(pb::DirectorySource {
            path: path.to_str().unwrap().to_string(),
            version_file: String::new(),
        })),
        policy: Some(pb::VersionPolicy {
            policy: semver_any(),
        }),
        poll_interval: None,
    }
}

#[tokio::test]
async fn directory_sources_outside_the_allowed_directories_are_refused() {
    // The in-process watcher may read the temp dir only; a symlink out of it does not help.
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    let data = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", data.path().join("etc")).unwrap();
    for (path, field) in [
        (std::path::Path::new("/etc"), "source.directory.path"),
        (&data.path().join("etc"), "source.directory.path"),
    ] {
        let refused = client
            .get_source(pb::GetSourceRequest {
                source: Some(directory_spec(path)),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with(&format!("{field}: "))
                && refused
                    .message()
                    .contains("is outside the directories this server may read"),
            "{}",
            refused.message()
        );
    }
    let refused = client
        .watch_versions(pb::WatchVersionsRequest {
            sources: vec![directory_spec(data.path()), directory_spec("/etc".as_ref())],
            resume_token: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().starts_with("sources[1].directory.path: "),
        "{}",
        refused.message()
    );
    watcher.stop().await;

    // The real binary without --allow-directory refuses every directory source.
    let state = tempfile::tempdir().unwrap();
    let binary = BinaryWatcher::start(state.path()).await;
    let refused = binary
        .client()
        .await
        .get_source(pb::GetSourceRequest {
            source: Some(directory_spec(data.path())),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains(
            "directory sources are disabled on this server (start it with --allow-directory DIR)"
        ),
        "{}",
        refused.message()
    );
    binary.stop().await;
}
