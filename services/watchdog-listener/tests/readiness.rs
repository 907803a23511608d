//! End-to-end: readiness follows watchdogs. Pods with the readiness gate `autocrane.io/healthy`
//! get that condition from the listener, in step with the rollup, through `pods/status`; other
//! pods never get it. Against kube-sim with authentication on, observed on the pod as kubectl
//! shows it.

mod common;

use std::time::Duration;

use autocrane_api::proto::watchdog_v1 as pb;
use autocrane_test_support::eventually;
use common::{Env, listener_args, post, with_token};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// Posts one watchdog as the cluster admin.
async fn post_as_admin(env: &Env, pod: &str, level: pb::Level, message: &str) {
    env.client()
        .await
        .post_watchdog(with_token(
            post("shop", pod, "http", level, message),
            &env.admin_token(),
        ))
        .await
        .expect("post accepted");
}

/// Waits until the pod's condition has `status`, and returns it.
async fn condition_becomes(env: &Env, pod: &str, status: &str) -> PodCondition {
    eventually(
        WAIT,
        &format!("{pod} autocrane.io/healthy={status}"),
        || async {
            env.healthy_condition("shop", pod)
                .await
                .filter(|c| c.status == status)
        },
    )
    .await
}

fn transition_time(condition: &PodCondition) -> Timestamp {
    condition.last_transition_time.as_ref().expect("a time").0
}

#[tokio::test]
async fn a_gated_pod_without_watchdogs_becomes_ready() {
    let env = Env::start().await;
    env.pod_with_gate("shop", "web-0", true).await;

    let condition = condition_becomes(&env, "web-0", "True").await;
    assert_eq!(condition.reason.as_deref(), Some("NoWatchdogs"));
    let shown = env
        .kubectl(&[
            "get",
            "pod",
            "web-0",
            "-n",
            "shop",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="autocrane.io/healthy")].status}"#,
        ])
        .await;
    assert_eq!(shown, "True");
}

#[tokio::test]
async fn an_error_makes_the_pod_unready_and_info_makes_it_ready_again() {
    let env = Env::start().await;
    env.pod_with_gate("shop", "web-0", true).await;
    let ready = condition_becomes(&env, "web-0", "True").await;

    // The post is answered once its write landed, the condition included.
    post_as_admin(&env, "web-0", pb::Level::Error, "connection refused").await;
    let failing = env.healthy_condition("shop", "web-0").await.unwrap();
    assert_eq!(failing.status, "False");
    assert_eq!(failing.reason.as_deref(), Some("WatchdogError"));
    assert_eq!(
        failing.message.as_deref(),
        Some("watchdogs in error: http (connection refused)")
    );
    assert!(transition_time(&failing) >= transition_time(&ready));

    // Another error message: the message follows, the transition time stays.
    post_as_admin(&env, "web-0", pb::Level::Error, "timeout").await;
    let still = env.healthy_condition("shop", "web-0").await.unwrap();
    assert_eq!(
        still.message.as_deref(),
        Some("watchdogs in error: http (timeout)")
    );
    assert_eq!(still.last_transition_time, failing.last_transition_time);

    // Transition times hold whole seconds: let one pass so the flip back is visible.
    let flipped_at = transition_time(&failing);
    eventually(WAIT, "the next second", || async {
        Timestamp::now().as_second() > flipped_at.as_second()
    })
    .await;
    post_as_admin(&env, "web-0", pb::Level::Info, "ok").await;
    let healed = env.healthy_condition("shop", "web-0").await.unwrap();
    assert_eq!(healed.status, "True");
    assert_eq!(healed.reason.as_deref(), Some("WatchdogsHealthy"));
    assert!(transition_time(&healed) > flipped_at, "{healed:?}");
}

#[tokio::test]
async fn a_pod_without_the_gate_never_gets_the_condition() {
    let env = Env::start().await;
    env.pod_with_gate("shop", "plain-0", false).await;
    post_as_admin(&env, "plain-0", pb::Level::Error, "down").await;
    post_as_admin(&env, "plain-0", pb::Level::Info, "up").await;

    assert_eq!(env.kubectl_health("shop", "plain-0").await, "info");
    assert_eq!(env.healthy_condition("shop", "plain-0").await, None);
    assert_eq!(env.listener.writer.stats().status_patches.get(), 0);
}

#[tokio::test]
async fn other_conditions_survive_and_a_dropped_condition_is_restored() {
    let env = Env::start().await;
    env.pod_with_gate("shop", "web-0", true).await;
    condition_becomes(&env, "web-0", "True").await;
    post_as_admin(&env, "web-0", pb::Level::Error, "down").await;

    // A kubelet writing its conditions as a whole list (a JSON merge patch replaces it) drops ours.
    let pods: Api<Pod> = Api::namespaced(env.sim.client(), "shop");
    let kubelet = json!({"status": {"conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
    ]}});
    pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&kubelet))
        .await
        .expect("status patched");

    let restored = condition_becomes(&env, "web-0", "False").await;
    assert_eq!(restored.reason.as_deref(), Some("WatchdogError"));
    let conditions = env
        .get_pod("shop", "web-0")
        .await
        .status
        .unwrap()
        .conditions;
    let types: Vec<String> = conditions.into_iter().flatten().map(|c| c.type_).collect();
    assert!(
        types.contains(&"PodScheduled".to_string()),
        "the strategic merge kept the kubelet's condition: {types:?}"
    );
}

#[tokio::test]
async fn a_restarted_listener_converges_from_the_index() {
    let mut env = Env::start().await;
    env.pod_with_gate("shop", "web-0", true).await;
    condition_becomes(&env, "web-0", "True").await;

    // While no listener runs, the pod's watchdog turns to error (written by a previous listener
    // whose condition write never happened).
    env.stop_listener().await;
    let pods: Api<Pod> = Api::namespaced(env.sim.client(), "shop");
    let error = json!({"metadata": {"annotations": {
        "status.autocrane.io/http": "error/2026-11-18T11:06:40Z//down",
    }}});
    pods.patch("web-0", &PatchParams::default(), &Patch::Merge(&error))
        .await
        .expect("annotations patched");

    env.restart_listener().await;
    let condition = condition_becomes(&env, "web-0", "False").await;
    assert_eq!(
        condition.message.as_deref(),
        Some("watchdogs in error: http (down)")
    );
    assert!(
        env.listener.writer.stats().status_patches.get() >= 1,
        "the new listener wrote it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_posts_makes_at_most_one_status_write_per_window() {
    let env = Env::start_with(listener_args(100, None)).await;
    env.pod_with_gate("shop", "web-0", true).await;
    condition_becomes(&env, "web-0", "True").await;
    let stats = env.listener.writer.stats();
    let (patches_before, status_before) = (stats.patches.get(), stats.status_patches.get());

    // 100 posts at once, flipping between error and info: unbatched, ~100 status flips.
    let client = env.client().await;
    let admin = env.admin_token();
    let posts: Vec<_> = (0..100)
        .map(|i| {
            let mut client = client.clone();
            let level = if i % 2 == 0 {
                pb::Level::Error
            } else {
                pb::Level::Info
            };
            let request = with_token(
                post("shop", "web-0", "http", level, &format!("#{i}")),
                &admin,
            );
            tokio::spawn(async move { client.post_watchdog(request).await })
        })
        .collect();
    for post in posts {
        post.await.unwrap().expect("post accepted");
    }

    let patches = stats.patches.get() - patches_before;
    let status_writes = stats.status_patches.get() - status_before;
    println!("100 posts: {patches} annotation patches, {status_writes} status writes");
    assert!(
        status_writes <= patches,
        "at most one status write per window that wrote: {status_writes} > {patches}"
    );
    assert!(status_writes <= 20, "{status_writes} status writes");

    // Whatever order the burst landed in, the condition ends in step with the rollup.
    post_as_admin(&env, "web-0", pb::Level::Error, "final").await;
    let condition = env.healthy_condition("shop", "web-0").await.unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.message.as_deref()),
        ("False", Some("watchdogs in error: http (final)"))
    );
}
