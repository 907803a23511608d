//! A repository with 5,000 tags: handled, listed, and with bounded memory (peak RSS of the real
//! binary, compared with the same binary idle).

mod common;

use std::time::{Duration, Instant};

use autocrane_api::proto::version_v1 as pb;
use common::*;

#[tokio::test]
async fn five_thousand_tags_are_handled_with_bounded_memory() {
    let registry = Registry::start(None).await;
    let tags: Vec<String> = (0..5000)
        .map(|i| format!("1.{}.{}", i / 100, i % 100))
        .collect();
    let started = Instant::now();
    registry.push_many("acme/big", &tags).await;
    println!("pushed {} tags in {:?}", tags.len(), started.elapsed());

    let state = tempfile::tempdir().unwrap();
    let watcher = BinaryWatcher::start(&state.path().join("state")).await;
    let since_start = Instant::now();
    let idle_kib = watcher.peak_rss_kib();
    let mut client = watcher.client().await;
    let probe_started = Instant::now();
    let source = client
        .get_source(pb::GetSourceRequest {
            source: Some(oci_spec(&registry.url(), "acme/big", semver_any(), 1)),
        })
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    println!("first probe of 5,000 tags: {:?}", probe_started.elapsed());
    assert_eq!(health(&source), pb::SourceHealth::Ok, "{:?}", source.status);
    assert_eq!(source.version_count, 5000);
    assert_eq!(source.current.as_ref().unwrap().name, "1.49.99");
    assert!(
        source
            .current
            .as_ref()
            .unwrap()
            .digest
            .starts_with("sha256:")
    );

    // Several polls later (1 s interval), page through every version: the peak RSS below then
    // covers repeated polls of the 5,000 tags, not the first probe alone.
    let first_probe = source
        .status
        .as_ref()
        .unwrap()
        .last_probe_at
        .unwrap()
        .seconds;
    eventually(
        Duration::from_secs(60),
        "three more polls of the 5,000 tags",
        || {
            let spec = oci_spec(&registry.url(), "acme/big", semver_any(), 1);
            let status = status_of(client.clone(), spec);
            async move { (status.await?.last_probe_at?.seconds >= first_probe + 3).then_some(()) }
        },
    )
    .await;
    let mut names = Vec::new();
    let mut token = String::new();
    let listed = Instant::now();
    loop {
        let page = client
            .list_versions(pb::ListVersionsRequest {
                source_id: source.source_id.clone(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.versions.into_iter().map(|v| v.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    println!("listed 5,000 versions in 5 pages: {:?}", listed.elapsed());
    assert_eq!(names.len(), 5000);
    assert_eq!(names[0], "1.49.99");
    assert_eq!(names[4999], "1.0.0");

    let peak_kib = watcher.peak_rss_kib();
    println!(
        "peak RSS: idle {:.1} MiB, after 5,000 tags {:.1} MiB (+{:.1} MiB)",
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        (peak_kib - idle_kib) as f64 / 1024.0
    );
    assert!(
        peak_kib - idle_kib < 64 * 1024,
        "5,000 tags cost {} KiB of peak RSS",
        peak_kib - idle_kib
    );
    drop(client);
    let stopping = Instant::now();
    assert!(watcher.stop().await.success());
    println!(
        "stopped in {:?}; {:?} since start",
        stopping.elapsed(),
        since_start.elapsed()
    );
    let cleanup = Instant::now();
    drop(state);
    println!("state dir removed in {:?}", cleanup.elapsed());
    drop(registry);
    println!("registry stopped and removed in {:?}", cleanup.elapsed());
}
