//! Against a real OCI registry (Debian `docker-registry`, tags pushed over its HTTP API): pushed
//! tags reach watchers by polling and, with registry notifications, without waiting for a poll
//! (how fast is `examples/bench.rs`'s figure); quarantine; failure and recovery; bad specs.

mod common;

use std::time::{Duration, Instant};

use autocrane_api::proto::version_v1 as pb;
use common::*;
use pb::VersionEventKind as Kind;

#[tokio::test]
async fn a_pushed_tag_reaches_a_watcher_by_polling() {
    let registry = Registry::start(None).await;
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    registry.push_tag("acme/app", "1.0.0").await;
    registry.push_tag("acme/app", "latest").await;

    let spec = oci_spec(&registry.url(), "acme/app", semver_any(), 1);
    let mut stream = watch(&mut client, vec![spec], "").await;
    let first = next(&mut stream, Duration::from_secs(10)).await;
    assert!(first.snapshot);
    assert_eq!(current_name(&first).as_deref(), Some("1.0.0"));
    assert_eq!(
        first.sources[0].version_count, 1,
        "`latest` is not a semver version"
    );

    let digest = registry.push_tag("acme/app", "1.1.0").await;
    let messages = until(&mut stream, Duration::from_secs(10), |m| {
        current_name(m).as_deref() == Some("1.1.0")
    })
    .await;
    let last = messages.last().unwrap();
    assert!(!last.snapshot);
    assert!(has_event(last, Kind::Discovered, "1.1.0"));
    let changed = last
        .events
        .iter()
        .find(|e| e.kind == Kind::CurrentChanged as i32)
        .unwrap();
    assert_eq!(
        changed.version.as_ref().unwrap().digest,
        digest,
        "tags are resolved to digests"
    );
    assert_eq!(changed.previous.as_ref().unwrap().name, "1.0.0");
    watcher.stop().await;
}

#[tokio::test]
async fn a_registry_notification_delivers_a_push_without_waiting_for_a_poll() {
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let registry =
        Registry::start(Some(&format!("http://{}/notifications", watcher.webhook))).await;
    let mut client = watcher.client().await;
    registry.push_tag("acme/web", "1.0.0").await;

    // An hour between polls: within the (generous) deadline only the notification can deliver.
    // The push-to-event latency is `examples/bench.rs`'s figure, beside its baselines.
    let spec = oci_spec(&registry.url(), "acme/web", semver_any(), 3600);
    let mut stream = watch(&mut client, vec![spec], "").await;
    let first = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(current_name(&first).as_deref(), Some("1.0.0"));

    for version in ["1.0.1", "1.0.2", "1.0.3"] {
        let (digest, pushed) = registry.publish("acme/web", version).await;
        let messages = until(&mut stream, Duration::from_secs(60), |m| {
            has_event(m, Kind::Discovered, version)
        })
        .await;
        println!("push of {version} → watch event: {:?}", pushed.elapsed());
        let last = messages.last().unwrap();
        assert_eq!(current_name(last).as_deref(), Some(version));
        let discovered = last
            .events
            .iter()
            .find(|e| e.kind == Kind::Discovered as i32)
            .and_then(|e| e.version.as_ref())
            .unwrap();
        assert_eq!(discovered.name, version);
        assert_eq!(discovered.digest, digest, "the pushed image is announced");
    }
    watcher.stop().await;
}

#[tokio::test]
async fn a_quarantined_version_is_skipped_and_the_previous_one_stays_current() {
    let registry = Registry::start(None).await;
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    registry.push_tag("acme/app", "1.0.0").await;
    registry.push_tag("acme/app", "1.1.0").await;
    let spec = oci_spec(&registry.url(), "acme/app", semver_any(), 3600);
    let source = client
        .get_source(pb::GetSourceRequest {
            source: Some(spec.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(source.current.as_ref().unwrap().name, "1.1.0");
    let id = source.source_id.clone();
    let mut stream = watch(&mut client, vec![spec], "").await;
    next(&mut stream, Duration::from_secs(5)).await;

    let after = client
        .quarantine_version(pb::QuarantineVersionRequest {
            source_id: id.clone(),
            version: "1.1.0".into(),
            reason: "crash-looping in canary".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(after.current.as_ref().unwrap().name, "1.0.0");
    let message = next(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(
        events_of(std::slice::from_ref(&message)),
        [
            (Kind::Quarantined, "1.1.0".to_string()),
            (Kind::CurrentChanged, "1.0.0".to_string())
        ]
    );

    // Probing again finds 1.1.0 upstream but never proposes it.
    let probed = client
        .probe(pb::ProbeRequest {
            source_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(probed.current.as_ref().unwrap().name, "1.0.0");
    let versions = client
        .list_versions(pb::ListVersionsRequest {
            source_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let names: Vec<_> = versions.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["1.1.0", "1.0.0"]);
    assert_eq!(
        versions[0].quarantine.as_ref().unwrap().reason,
        "crash-looping in canary"
    );

    // Quarantining twice keeps the first reason; lifting lets the policy choose it again.
    client
        .quarantine_version(pb::QuarantineVersionRequest {
            source_id: id.clone(),
            version: "1.1.0".into(),
            reason: "second reason".into(),
        })
        .await
        .unwrap();
    let lifted = client
        .lift_quarantine(pb::LiftQuarantineRequest {
            source_id: id.clone(),
            version: "1.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(lifted.current.as_ref().unwrap().name, "1.1.0");
    let unknown = client
        .quarantine_version(pb::QuarantineVersionRequest {
            source_id: id,
            version: "9.9.9".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    watcher.stop().await;
}

#[tokio::test]
async fn a_stopped_registry_shows_failing_and_recovers_by_itself() {
    let mut registry = Registry::start(None).await;
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    registry.push_tag("acme/app", "1.0.0").await;
    let spec = oci_spec(&registry.url(), "acme/app", semver_any(), 1);
    let mut stream = watch(&mut client, vec![spec], "").await;
    let first = next(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(health(&first.sources[0]), pb::SourceHealth::Ok);
    let id = first.sources[0].source_id.clone();

    registry.stop();
    let messages = until(&mut stream, Duration::from_secs(10), |m| {
        m.events.iter().any(|e| e.kind == Kind::Failing as i32)
    })
    .await;
    let failing = messages.last().unwrap();
    assert_eq!(health(&failing.sources[0]), pb::SourceHealth::Failing);
    let event = failing
        .events
        .iter()
        .find(|e| e.kind == Kind::Failing as i32)
        .unwrap();
    assert!(!event.error.is_empty());
    let state_now = client
        .get_source(pb::GetSourceRequest {
            source: Some(oci_spec(&registry.url(), "acme/app", semver_any(), 1)),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    let status = state_now.status.as_ref().unwrap();
    assert_eq!(health(&state_now), pb::SourceHealth::Failing);
    assert!(status.consecutive_failures >= 1);
    assert!(
        status.last_error.contains("127.0.0.1"),
        "{}",
        status.last_error
    );
    assert_eq!(
        state_now.current.as_ref().unwrap().name,
        "1.0.0",
        "the current version stays while failing"
    );

    // Let the back-off grow (a second failed probe), then bring the registry back: recovery
    // needs no one.
    eventually(Duration::from_secs(30), "a second failed probe", || {
        let spec = oci_spec(&registry.url(), "acme/app", semver_any(), 1);
        let status = status_of(client.clone(), spec);
        async move { (status.await?.consecutive_failures >= 2).then_some(()) }
    })
    .await;
    registry.restart().await;
    registry.push_tag("acme/app", "1.0.1").await;
    let restarted = Instant::now();
    let messages = until(&mut stream, Duration::from_secs(15), |m| {
        current_name(m).as_deref() == Some("1.0.1")
    })
    .await;
    println!(
        "recovered {:?} after the registry restart",
        restarted.elapsed()
    );
    let events = events_of(&messages);
    assert!(
        events.iter().any(|(k, _)| *k == Kind::Recovered),
        "{events:?}"
    );
    assert_eq!(
        health(&messages.last().unwrap().sources[0]),
        pb::SourceHealth::Ok
    );
    let _ = id;
    watcher.stop().await;
}

#[tokio::test]
async fn bad_specs_are_rejected_naming_the_field() {
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    let error = client
        .get_source(pb::GetSourceRequest {
            source: Some(oci_spec("127.0.0.1:1", "", None, 60)),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert_eq!(error.message(), "source.oci.repository: must not be empty");

    let bad_regex = oci_spec(
        "127.0.0.1:1",
        "a",
        Some(pb::version_policy::Policy::Regex(pb::RegexPolicy {
            pattern: "build-(".into(),
            ..Default::default()
        })),
        60,
    );
    let error = client
        .watch_versions(pb::WatchVersionsRequest {
            sources: vec![oci_spec("127.0.0.1:1", "a", None, 60), bad_regex],
            resume_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error
            .message()
            .starts_with("sources[1].policy.regex.pattern: "),
        "{}",
        error.message()
    );

    let bad_range = oci_spec(
        "127.0.0.1:1",
        "a",
        Some(pb::version_policy::Policy::Semver(pb::SemverPolicy {
            range: ">=1.2, <banana".into(),
            ..Default::default()
        })),
        60,
    );
    let error = client
        .get_source(pb::GetSourceRequest {
            source: Some(bad_range),
        })
        .await
        .unwrap_err();
    assert!(
        error.message().starts_with("source.policy.semver.range: "),
        "{}",
        error.message()
    );
    let error = client
        .get_source(pb::GetSourceRequest {
            source: Some(pb::SourceSpec::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "source: exactly one of oci, git, http or directory must be set"
    );
    let error = client
        .probe(pb::ProbeRequest {
            source_id: "oci-0000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    watcher.stop().await;
}

#[tokio::test]
async fn watchers_of_one_source_share_it_whatever_the_spelling() {
    let registry = Registry::start(None).await;
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    registry.push_tag("acme/app", "1.0.0").await;
    let plain = oci_spec(&registry.url(), "acme/app", semver_any(), 1);
    let shouted = oci_spec(
        &format!("HTTP://127.0.0.1:{}/", registry.port),
        "acme/app",
        semver_any(),
        1,
    );
    let mut one = watch(&mut client, vec![plain], "").await;
    let mut two = watch(&mut client, vec![shouted], "").await;
    let a = next(&mut one, Duration::from_secs(10)).await;
    let b = next(&mut two, Duration::from_secs(10)).await;
    assert_eq!(a.sources[0].source_id, b.sources[0].source_id);
    let listed = client
        .list_sources(pb::ListSourcesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sources;
    assert_eq!(listed.len(), 1, "one source, one prober");

    registry.push_tag("acme/app", "1.1.0").await;
    for stream in [&mut one, &mut two] {
        until(stream, Duration::from_secs(10), |m| {
            current_name(m).as_deref() == Some("1.1.0")
        })
        .await;
    }
    watcher.stop().await;
}

#[tokio::test]
async fn a_registry_with_basic_auth_needs_the_credentials_file() {
    let registry = Registry::start_with_basic_auth("robot", "s3cret").await;
    registry.push_tag("acme/private", "1.0.0").await;
    let spec = oci_spec(&registry.url(), "acme/private", semver_any(), 3600);

    let anonymous_state = tempfile::tempdir().unwrap();
    let anonymous = InProcess::start(anonymous_state.path()).await;
    let refused = anonymous
        .client()
        .await
        .get_source(pb::GetSourceRequest {
            source: Some(spec.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(health(&refused), pb::SourceHealth::Failing);
    let error = &refused.status.as_ref().unwrap().last_error;
    assert!(error.contains("needs credentials"), "{error}");
    anonymous.stop().await;

    // A docker config.json, as `docker login` writes it.
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "cm9ib3Q6czNjcmV0"}}}}}}"#,
            registry.port
        ),
    )
    .unwrap();
    let watcher =
        InProcess::start_with_credentials(&state.path().join("state"), Some(config)).await;
    let source = watcher
        .client()
        .await
        .get_source(pb::GetSourceRequest { source: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(health(&source), pb::SourceHealth::Ok, "{:?}", source.status);
    let current = source.current.unwrap();
    assert_eq!(current.name, "1.0.0");
    assert!(
        current.digest.starts_with("sha256:"),
        "the digest HEAD is authorised too"
    );
    watcher.stop().await;
}
