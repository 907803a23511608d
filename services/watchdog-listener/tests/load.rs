//! End-to-end under load: 32 concurrent clients posting to 100 pods. The final annotations equal
//! the last post per (pod, name), and the listener makes far fewer API patches than it gets posts.

mod common;

use std::time::Instant;

use autocrane_api::proto::watchdog_v1 as pb;
use autocrane_api::watchdog::parse_value;
use common::{Env, post, with_token};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams};

const CLIENTS: usize = 32;
const PODS: usize = 100;
const ROUNDS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_converge_to_the_last_post_with_few_patches() {
    let env = Env::start().await;
    for pod in 0..PODS {
        env.pod(
            "load",
            &format!("pod-{pod:03}"),
            &[("app", "load")],
            &[],
            None,
        )
        .await;
    }
    let admin = env.admin_token();
    let rv_before = env.sim.resource_version();
    let started = Instant::now();

    // Client c owns watchdog `c<c>` on every pod. In each round it posts it to all 100 pods at
    // once (100 calls in flight on its connection, as the prober does after a scan), and waits for
    // them before the next round; so every pod receives bursts from 32 clients, and the last post
    // per (pod, name) is well defined: round ROUNDS-1 of its client.
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = env.client().await;
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let calls = (0..PODS).map(|pod| {
                    let mut client = client.clone();
                    let level = if (round + pod + c).is_multiple_of(3) {
                        pb::Level::Error
                    } else {
                        pb::Level::Info
                    };
                    let request = post(
                        "load",
                        &format!("pod-{pod:03}"),
                        &format!("c{c}"),
                        level,
                        &format!("round {round}"),
                    );
                    let admin = admin.clone();
                    async move {
                        client
                            .post_watchdog(with_token(request, &admin))
                            .await
                            .expect("post accepted")
                    }
                });
                futures::future::join_all(calls).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let posts = CLIENTS * PODS * ROUNDS;
    let stats = env.listener.writer.stats();
    let patches = stats.patches.get();
    let api_writes = env.sim.resource_version() - rv_before;
    println!(
        "posts: {posts}, API patches (listener count): {patches}, API writes (resourceVersion delta): {api_writes}, \
         pod reads: {}, elapsed: {elapsed:?}, posts/s: {:.0}",
        stats.reads.get(),
        posts as f64 / elapsed.as_secs_f64()
    );

    let pods = Api::<Pod>::namespaced(env.sim.client(), "load")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(pods.items.len(), PODS);
    for pod in &pods.items {
        let index: usize = pod.name_any()[4..].parse().unwrap();
        let annotations = pod.annotations();
        let mut worst = "info";
        for c in 0..CLIENTS {
            let name = format!("c{c}");
            let value = &annotations[&format!("status.autocrane.io/{name}")];
            let watchdog = parse_value(&name, value).unwrap();
            let round = ROUNDS - 1;
            let expected = if (round + index + c).is_multiple_of(3) {
                "error"
            } else {
                "info"
            };
            assert_eq!(
                watchdog.level.as_str(),
                expected,
                "{} {name}",
                pod.name_any()
            );
            assert_eq!(
                watchdog.message,
                format!("round {round}"),
                "{} {name}",
                pod.name_any()
            );
            if expected == "error" {
                worst = "error";
            }
        }
        assert_eq!(
            pod.labels()["status.autocrane.io/health"],
            worst,
            "{}",
            pod.name_any()
        );
    }
    assert!(
        (patches as usize) * 4 < posts,
        "expected far fewer patches than posts: {patches} patches for {posts} posts"
    );
}
