//! The real `autocrane version-watcher` binary restarted on the same `--state-dir`: resume tokens
//! keep positions (no replay, no miss, including a version pushed while it was down) and
//! quarantines survive; sources a `WatchVersions` answered for survive a SIGKILL.

mod common;

use std::{collections::BTreeSet, time::Duration};

use autocrane_api::proto::version_v1 as pb;
use common::*;
use pb::VersionEventKind as Kind;

#[tokio::test]
async fn restart_keeps_positions_and_quarantines() {
    let registry = Registry::start(None).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let spec = oci_spec(&registry.url(), "acme/app", semver_any(), 1);
    registry.push_tag("acme/app", "1.0.0").await;

    // First life: see 1.0.0, then 1.1.0, then quarantine 1.1.0.
    let first_life = BinaryWatcher::start(&state_dir).await;
    let mut client = first_life.client().await;
    let mut stream = watch(&mut client, vec![spec.clone()], "").await;
    let first = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(current_name(&first).as_deref(), Some("1.0.0"));
    let id = first.sources[0].source_id.clone();
    registry.push_tag("acme/app", "1.1.0").await;
    let messages = until(&mut stream, Duration::from_secs(10), |m| {
        current_name(m).as_deref() == Some("1.1.0")
    })
    .await;
    let token_after_1_1 = messages.last().unwrap().resume_token.clone();
    client
        .quarantine_version(pb::QuarantineVersionRequest {
            source_id: id.clone(),
            version: "1.1.0".into(),
            reason: "rolled back".into(),
        })
        .await
        .unwrap();
    let quarantined = next(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(current_name(&quarantined).as_deref(), Some("1.0.0"));
    let token_after_quarantine = quarantined.resume_token.clone();
    drop(stream);
    drop(client);
    let status = first_life.stop().await;
    assert!(status.success(), "SIGTERM must exit cleanly: {status}");

    // While the watcher is down a new version appears.
    registry.push_tag("acme/app", "1.2.0").await;

    // Second life on the same state: resume from the last token.
    let second_life = BinaryWatcher::start(&state_dir).await;
    let mut client = second_life.client().await;
    let mut stream = watch(&mut client, vec![spec.clone()], &token_after_quarantine).await;
    let messages = until(&mut stream, Duration::from_secs(10), |m| {
        current_name(m).as_deref() == Some("1.2.0")
    })
    .await;
    assert!(messages[0].snapshot);
    assert_ne!(
        current_name(&messages[0]).as_deref(),
        Some("1.1.0"),
        "the quarantined version is never current, not even right after a restart"
    );
    assert_eq!(
        events_of(&messages),
        [
            (Kind::Discovered, "1.2.0".to_string()),
            (Kind::CurrentChanged, "1.2.0".to_string())
        ],
        "a reconnect after a restart neither replays old versions nor misses the new one"
    );

    // An older token gets exactly what happened after it, once, in order.
    let mut older = watch(&mut client, vec![spec.clone()], &token_after_1_1).await;
    let replay = next(&mut older, Duration::from_secs(5)).await;
    assert!(replay.snapshot);
    assert_eq!(current_name(&replay).as_deref(), Some("1.2.0"));
    assert_eq!(
        events_of(std::slice::from_ref(&replay)),
        [
            (Kind::Quarantined, "1.1.0".to_string()),
            (Kind::CurrentChanged, "1.0.0".to_string()),
            (Kind::Discovered, "1.2.0".to_string()),
            (Kind::CurrentChanged, "1.2.0".to_string()),
        ]
    );

    // The quarantine survived the restart.
    let versions = client
        .list_versions(pb::ListVersionsRequest {
            source_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let quarantined: Vec<_> = versions
        .iter()
        .filter(|v| v.quarantine.is_some())
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(quarantined, ["1.1.0"]);
    let listed = client
        .list_sources(pb::ListSourcesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sources;
    assert_eq!(
        listed.len(),
        1,
        "the source was restored from the state directory"
    );
    assert_eq!(listed[0].source_id, id);
    drop(stream);
    drop(older);
    drop(client);
    assert!(second_life.stop().await.success());
}

/// 1,000 sources added in one `WatchVersions` are committed as a group; once the snapshot is
/// out, a crash (SIGKILL) loses none of them.
#[tokio::test]
async fn sources_in_an_answered_watch_survive_a_kill() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let watcher = BinaryWatcher::start(&state_dir).await;
    let mut client = watcher.client().await;
    // A registry address nobody listens on: every first probe fails at once, which is a change
    // (FAILING) committed before the snapshot as well.
    let registry = format!("http://127.0.0.1:{}", free_port());
    let specs: Vec<_> = (0..1000)
        .map(|i| oci_spec(&registry, &format!("fleet/app{i}"), semver_any(), 3600))
        .collect();
    let mut stream = watch(&mut client, specs, "").await;
    let snapshot = next(&mut stream, Duration::from_secs(60)).await;
    let ids: BTreeSet<String> = snapshot
        .sources
        .iter()
        .map(|s| s.source_id.clone())
        .collect();
    assert_eq!(ids.len(), 1000);
    watcher.kill();

    let restarted = BinaryWatcher::start(&state_dir).await;
    let mut client = restarted.client().await;
    let mut restored = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_sources(pb::ListSourcesRequest {
                page_size: 1000,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        restored.extend(page.sources.into_iter().map(|s| s.source_id));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(restored, ids, "every acknowledged source was restored");
    drop(stream);
    drop(client);
    assert!(restarted.stop().await.success());
}
