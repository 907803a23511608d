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
