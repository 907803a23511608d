//! kube-sim benchmark (not a timed test): 10,000 pods — create rate, full list time, watch
//! fan-out to 50 watchers, resident memory — each beside a baseline measured in the same run.
//!
//! Run: `cargo bench -p kube-sim --bench kube_sim_bench`

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_sim::KubeSim;
use serde_json::json;

const PODS: usize = 10_000;
const WATCHERS: usize = 50;
const UPDATES: usize = 2_000;
const CONCURRENCY: usize = 32;

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "namespace": "bench", "labels": {"app": "bench", "shard": (i % 10).to_string()},
                     "annotations": {"data.autocrane.io/main": "v1"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "example.invalid/app:1.0.0",
                  "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 8080}]}]}
    }))
    .expect("pod")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("nproc={cpus}, cpu={model}")
}

/// A bare hyper HTTP/1.1 server that answers every request with its body: the floor for any
/// HTTP API server on this machine.
async fn echo_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let b = req
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(201)
                            .header("content-type", "application/json")
                            .body(Full::new(b))
                            .expect("resp"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn create_all(api: &Api<Pod>) {
    futures::stream::iter(0..PODS)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &pod(i))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("create");
}

#[tokio::main]
async fn main() {
    println!(
        "kube-sim benchmark: {PODS} pods, {WATCHERS} watchers, {UPDATES} updates, client concurrency {CONCURRENCY}"
    );
    println!("machine: {}", machine());
    let rss_start = rss_kib();

    // Baseline 1: the same creates against a bare hyper echo server, through the same kube client.
    let echo = echo_server().await;
    let echo_client = kube::Client::try_from(kube::Config::new(
        format!("http://{echo}").parse().expect("url"),
    ))
    .expect("client");
    let echo_api: Api<Pod> = Api::namespaced(echo_client, "bench");
    let t = Instant::now();
    create_all(&echo_api).await;
    let echo_rate = PODS as f64 / t.elapsed().as_secs_f64();

    let sim = KubeSim::builder()
        .history(200_000)
        .start()
        .await
        .expect("sim");
    let client = sim.client();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "bench"}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let rss_before = rss_kib();
    let t = Instant::now();
    create_all(&api).await;
    let create_secs = t.elapsed().as_secs_f64();
    let create_rate = PODS as f64 / create_secs;
    let rss_after = rss_kib();
    println!(
        "create: {PODS} pods in {create_secs:.2}s = {create_rate:.0} pods/s | baseline bare hyper echo: {echo_rate:.0} req/s | ratio sim/echo = {:.2}",
        create_rate / echo_rate
    );
    bench_result(
        &format!("create {PODS} pods"),
        create_rate,
        "pods/s",
        echo_rate,
        "bare hyper echo, same client",
        create_rate / echo_rate,
    );

    // Full list, and the baseline: serialize + deserialize the same 10,000 pods with serde_json.
    let t = Instant::now();
    let list = api.list(&ListParams::default()).await.expect("list");
    let list_secs = t.elapsed().as_secs_f64();
    assert_eq!(list.items.len(), PODS);
    let t = Instant::now();
    let bytes = serde_json::to_vec(&list.items).expect("ser");
    let back: Vec<Pod> = serde_json::from_slice(&bytes).expect("de");
    let ser_secs = t.elapsed().as_secs_f64();
    assert_eq!(back.len(), PODS);
    println!(
        "list: all {PODS} pods ({:.1} MB JSON) in {:.0} ms | baseline serde_json ser+de of the same pods: {:.0} ms | ratio = {:.2}",
        bytes.len() as f64 / 1e6,
        list_secs * 1e3,
        ser_secs * 1e3,
        list_secs / ser_secs
    );
    bench_result(
        &format!("list {PODS} pods"),
        list_secs * 1e3,
        "ms",
        ser_secs * 1e3,
        "serde_json ser+de of the same pods",
        list_secs / ser_secs,
    );

    // Watch fan-out: 50 watchers from the current rv, 2,000 label updates.
    let rv = sim.resource_version().to_string();
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WATCHERS {
        let api = api.clone();
        let rv = rv.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default().timeout(120), &rv)
                .await
                .expect("watch")
                .boxed();
            let mut n = 0;
            while let Some(ev) = s.try_next().await.expect("event") {
                if matches!(ev, WatchEvent::Modified(_)) {
                    n += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                    if n == UPDATES {
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    futures::stream::iter(0..UPDATES)
        .map(|i| {
            let api = api.clone();
            async move {
                api.patch(
                    &format!("pod-{:05}", i % PODS),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"rev": i.to_string()}}})),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("patch");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("watchers finish")
            .expect("join");
    }
    let fan_secs = t.elapsed().as_secs_f64();
    let delivered = received.load(Ordering::Relaxed);
    let fan_rate = delivered as f64 / fan_secs;
    // Baseline: serialize each of the 2,000 event lines once per watcher and parse it back (the
    // encode/decode work the delivered events need at minimum).
    let sample = serde_json::to_value(&list.items[0]).expect("value");
    let t = Instant::now();
    let mut total = 0usize;
    for _ in 0..(UPDATES * WATCHERS) {
        let line =
            serde_json::to_vec(&json!({"type": "MODIFIED", "object": &sample})).expect("ser");
        let ev: WatchEvent<Pod> = serde_json::from_slice(&line).expect("de");
        total += matches!(ev, WatchEvent::Modified(_)) as usize;
    }
    let base_rate = total as f64 / t.elapsed().as_secs_f64();
    println!(
        "watch fan-out: {delivered} events to {WATCHERS} watchers in {fan_secs:.2}s = {fan_rate:.0} events/s | baseline serde_json event ser+de: {base_rate:.0} events/s | ratio = {:.2}",
        fan_rate / base_rate
    );
    bench_result(
        &format!("watch fan-out to {WATCHERS} watchers"),
        fan_rate,
        "events/s",
        base_rate,
        "serde_json event ser+de",
        fan_rate / base_rate,
    );

    // Memory: the simulator's growth for 10,000 stored pods vs holding the same pods as Values.
    let rss_before_base = rss_kib();
    let values: Vec<serde_json::Value> = list
        .items
        .iter()
        .map(|p| serde_json::to_value(p).expect("value"))
        .collect();
    let rss_after_base = rss_kib();
    println!(
        "memory: RSS at start {} MiB; sim grew {} MiB storing {PODS} pods (incl. history) | baseline {PODS} pods as serde_json::Value: {} MiB | ratio = {:.2}",
        rss_start / 1024,
        rss_after.saturating_sub(rss_before) / 1024,
        rss_after_base.saturating_sub(rss_before_base) / 1024,
        rss_after.saturating_sub(rss_before) as f64
            / rss_after_base.saturating_sub(rss_before_base).max(1) as f64
    );
    println!("final RSS {} MiB", rss_kib() / 1024);
    drop(values);
    sim.shutdown().await;
}

/// One figure for `scripts/bench.sh`: a `BENCH-RESULT` JSON line (no goal here: figures to watch).
fn bench_result(figure: &str, value: f64, unit: &str, baseline: f64, what: &str, ratio: f64) {
    println!(
        "BENCH-RESULT {}",
        json!({
            "bench": "kube-sim", "figure": figure, "value": value, "unit": unit,
            "baseline": baseline, "baseline_what": what, "ratio": ratio, "goal": null, "met": null,
        })
    );
}
