//! HTTP sources against a real HTTP server (`python3 -m http.server`): the version is a field of
//! a JSON document; a `Probe` call picks up a change at once.

mod common;

use std::process::Command;

use autocrane_api::proto::version_v1 as pb;
use common::*;

#[tokio::test]
async fn a_json_field_is_the_version_and_a_probe_sees_a_change() {
    let python = system_tool("python3");
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("release.json"), r#"{"version": "1.0.0"}"#).unwrap();
    let port = free_port();
    let mut server = Command::new(python);
    server
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(site.path());
    let _server = Running::builder(server)
        .log_to(site.path().with_extension("log"))
        .start();
    accepting(([127, 0, 0, 1], port).into()).await;

    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start(state.path()).await;
    let mut client = watcher.client().await;
    let spec = pb::SourceSpec {
        upstream: Some(pb::source_spec::Upstream::Http(pb::HttpSource {
            url: format!("http://127.0.0.1:{port}/release.json"),
            json_pointer: "/version".into(),
        })),
        policy: None,
        poll_interval: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    };
    let source = client
        .get_source(pb::GetSourceRequest { source: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(source.current.as_ref().unwrap().name, "1.0.0");
    assert!(
        source.current.as_ref().unwrap().published_at.is_some(),
        "Last-Modified is the publication time"
    );

    std::fs::write(site.path().join("release.json"), r#"{"version": "1.1.0"}"#).unwrap();
    let probed = client
        .probe(pb::ProbeRequest {
            source_id: source.source_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(probed.current.as_ref().unwrap().name, "1.1.0");
    assert_eq!(probed.version_count, 2, "the older version stays known");

    std::fs::remove_file(site.path().join("release.json")).unwrap();
    let failing = client
        .probe(pb::ProbeRequest {
            source_id: source.source_id,
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(health(&failing), pb::SourceHealth::Failing);
    assert!(
        failing.status.as_ref().unwrap().last_error.contains("404"),
        "{:?}",
        failing.status
    );
    watcher.stop().await;
}
