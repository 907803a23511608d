//! Group commit keeps its promises: sources added together are on disk when the call returns and
//! share a handful of fsyncs, and no event is broadcast before the state it describes is on disk
//! (read back by a second, independent `Store` the moment the event arrives).

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use autocrane_runtime::{
    process::Process,
    shutdown::{Shutdown, ShutdownTrigger},
    upstream::local_dirs::LocalDirectoryArgs,
};
use autocrane_version_watcher::{
    hub::{Hub, HubConfig},
    metrics::Metrics,
    spec::{Policy, Spec, Upstream},
    store::Store,
    upstream::{RateLimiter, Upstreams, oci::Auth},
};

/// A hub on `state` whose directory sources may read under `data`.
fn hub(state: &Path, data: &Path) -> (Arc<Hub>, ShutdownTrigger) {
    let (trigger, shutdown) = Shutdown::new();
    let process = Process::new(shutdown.clone());
    let directories = LocalDirectoryArgs {
        allow_directories: vec![data.to_path_buf()],
    }
    .allowed();
    let upstreams = Upstreams::new(
        Arc::new(RateLimiter::new(1000.0, 1000)),
        Arc::new(Auth::anonymous()),
        Duration::from_secs(5),
        directories,
        // Directory sources only: nothing here reaches the network.
        autocrane_runtime::upstream::git::GitSandbox::new(
            Default::default(),
            state.join("git-home"),
        )
        .unwrap(),
    );
    let hub = Hub::start(
        Store::open(state).unwrap(),
        upstreams,
        shutdown,
        Metrics::register(&process.registry),
        HubConfig {
            probe_timeout: Duration::from_secs(10),
        },
    )
    .unwrap();
    (hub, trigger)
}

/// `n` distinct sources reading the same directory (they differ in their poll interval, which is
/// part of a source's identity), polled hourly so that only the test triggers probes.
fn specs(data: &Path, n: u64) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            upstream: Upstream::Directory {
                path: data.to_str().unwrap().to_string(),
                version_file: String::new(),
            },
            policy: Policy::Newest,
            poll_interval_ms: 3_600_000 + i,
        })
        .collect()
}

/// What a watcher restarted on `state` would load: the last event sequence number per source.
fn on_disk(state: &Path) -> HashMap<String, u64> {
    Store::open(state)
        .unwrap()
        .load()
        .unwrap()
        .into_iter()
        .map(|s| (s.id.clone(), s.last_seq()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sources_added_together_are_on_disk_on_return_after_few_fsyncs() {
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("1.0.0")).unwrap();
    let (hub, trigger) = hub(state.path(), data.path());
    let syncs_before = hub.commit_counters().syncs.get();

    let started = Instant::now();
    let ids = hub.ensure_all(specs(data.path(), 1000)).await.unwrap();
    println!("1,000 sources durable in {:?}", started.elapsed());
    assert_eq!(ids.len(), 1000);
    let persisted = on_disk(state.path());
    assert!(
        ids.iter().all(|id| persisted.contains_key(id)),
        "every source is on disk when ensure_all returns ({} of 1000)",
        persisted.len()
    );

    // Their first probes (a DISCOVERED and a CURRENT_CHANGED each) are committed too.
    for id in &ids {
        hub.wait_probed(id, Duration::from_secs(30)).await.unwrap();
    }
    let counters = hub.commit_counters();
    let syncs = counters.syncs.get() - syncs_before;
    println!(
        "{} records in {} group commits, {syncs} fsyncs",
        counters.records.get(),
        counters.batches.get()
    );
    // 2,000 changes (a creation and a first probe per source; two of one source that meet in
    // a batch are written once, as its latest state). Without group commit each took two fsyncs
    // (4,000). How many share a batch depends on how fast the probes finish against one fsync:
    // about 20 per batch on an idle machine, 10 on a loaded CI machine (200 fsyncs seen), so the
    // bound is one fsync per five changes.
    assert!(
        syncs <= 400,
        "2,000 source changes took {syncs} fsyncs: the group commit no longer groups"
    );
    let persisted = on_disk(state.path());
    assert!(
        ids.iter().all(|id| persisted[id] >= 2),
        "the first probes' events are on disk"
    );
    trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_broadcast_before_its_state_is_on_disk() {
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("1.0.0")).unwrap();
    let (hub, trigger) = hub(state.path(), data.path());
    let ids = hub.ensure_all(specs(data.path(), 100)).await.unwrap();
    let mut changes = hub.subscribe(&ids, None).await.unwrap().receiver;

    // Every source discovers 1.0.0 (first probes), then 1.1.0 (triggered), concurrently.
    std::fs::create_dir(data.path().join("1.1.0")).unwrap();
    for id in &ids {
        hub.trigger(id).unwrap();
    }
    let mut seen = 0;
    let mut checked = HashSet::new();
    while checked.len() < ids.len() {
        let change = tokio::time::timeout(Duration::from_secs(30), changes.recv())
            .await
            .expect("changes stopped coming")
            .unwrap();
        seen += 1;
        let persisted = on_disk(state.path());
        let on_disk = persisted.get(&change.source_id).copied().unwrap_or(0);
        assert!(
            on_disk >= change.last_seq(),
            "event {} of {} was broadcast while the disk held only up to {on_disk}",
            change.last_seq(),
            change.source_id
        );
        if change.view.current.as_ref().map(|v| v.record.name.as_str()) == Some("1.1.0") {
            checked.insert(change.source_id.clone());
        }
    }
    println!("{seen} changes checked against the disk");

    // A quarantine is on disk when the call answers.
    let view = hub.quarantine(&ids[0], "1.1.0", "broken").await.unwrap();
    assert_eq!(view.current.unwrap().record.name, "1.0.0");
    let reloaded = Store::open(state.path()).unwrap().load().unwrap();
    let source = reloaded.iter().find(|s| s.id == ids[0]).unwrap();
    assert_eq!(source.quarantines["1.1.0"].reason, "broken");
    trigger.trigger();
}
