//! kube 5 clients reading through kube-sim: list pagination and selectors; watch resume,
//! bookmarks, selector transitions, in-stream 410 and `timeoutSeconds`.

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_sim::KubeSim;
use serde_json::json;

use common::cm;

#[tokio::test]
async fn list_pagination_and_selectors() {
    let sim = KubeSim::builder().start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        api.create(
            &PostParams::default(),
            &cm(&format!("c{i:02}"), &[("tier", tier), ("app", "x")]),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    // `app=x`: the namespace also holds `kube-root-ca.crt`, as on a real cluster.
    let mut lp = ListParams::default().labels("app=x").limit(10);
    let mut pages = 0;
    loop {
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!((pages, names.len()), (3, 25));
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(api.list(&sel("tier=even")).await.unwrap().items.len(), 13);
    assert_eq!(
        api.list(&sel("tier in (odd),app"))
            .await
            .unwrap()
            .items
            .len(),
        12
    );
    assert_eq!(
        api.list(&sel("app,tier notin (odd,even)"))
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert_eq!(
        api.list(&ListParams::default().fields("metadata.name=c03"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let all: Api<ConfigMap> = Api::all(sim.client());
    assert_eq!(all.list(&sel("app=x")).await.unwrap().items.len(), 25);
}

#[tokio::test]
async fn watch_resumes_sends_bookmarks_and_selector_transitions() {
    let sim = KubeSim::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    api.create(&PostParams::default(), &cm("a", &[("sel", "yes")]))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cm("b", &[("sel", "yes")]))
        .await
        .unwrap();
    let wp = WatchParams::default().labels("sel=yes").timeout(5);
    let mut s = api.watch(&wp, &rv).await.unwrap().boxed();
    // Resume from the list rv replays what happened since.
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    // Leaving the selector is a DELETED for this watch.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})),
    )
    .await
    .unwrap();
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        other => panic!("expected DELETED a, got {other:?}"),
    }
    drop(s);
    let wp = WatchParams {
        bookmarks: true,
        ..WatchParams::default().timeout(2)
    };
    let mut s = api
        .watch(&wp, &sim.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(3), s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Bookmark(b) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    // A resourceVersion older than the retained history gets an in-stream 410.
    sim.faults().compact();
    let mut s = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    // timeoutSeconds ends the stream (well before the test's own deadline).
    let mut s = api
        .watch(
            &WatchParams::default().timeout(1),
            &sim.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    tokio::time::timeout(Duration::from_secs(30), async {
        while s.try_next().await.unwrap().is_some() {}
    })
    .await
    .expect("timeoutSeconds=1 ends the watch");
}
