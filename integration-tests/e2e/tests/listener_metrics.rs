//! The real `autocrane watchdog-listener` against the cluster of `AUTOCRANE_TEST_CLUSTER` exports
//! its write path on `/metrics`:
//! after two posts through the `autocrane watchdog` CLI, the operation and patch counters say so.

mod common;

use std::process::Command;

use autocrane_test_support::{Running, autocrane_bin, http_get, run};

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_exports_write_path_counters() {
    let cluster = common::cluster_with_pod("web-0").await;

    let mut command = Command::new(autocrane_bin());
    command
        .args([
            "watchdog-listener",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--insecure-allow-anonymous",
        ])
        .env("KUBECONFIG", cluster.kubeconfig());
    let listener = tokio::task::spawn_blocking(move || {
        let listener = Running::spawn(command);
        let admin = listener.admin_address();
        let grpc = listener.grpc_address();
        (listener, admin, grpc)
    });
    let (listener, admin, grpc) = listener.await.unwrap();

    let post = |level: &'static str| {
        let server = format!("http://{grpc}");
        tokio::task::spawn_blocking(move || {
            run(Command::new(autocrane_bin())
                .args([
                    "watchdog",
                    "post",
                    "--pod",
                    "default/web-0",
                    "--name",
                    "smoke",
                    "--level",
                    level,
                    "--message",
                    "checked",
                ])
                .env("AUTOCRANE_WATCHDOG_SERVER", server)
                .env("AUTOCRANE_WATCHDOG_NO_TOKEN", "true"))
        })
    };
    for level in ["error", "info"] {
        let (ok, out, err) = post(level).await.unwrap();
        assert!(ok, "post {level}: {out}{err}");
    }

    // The counters move before a post is answered, so one scrape after both posts sees both.
    let (status, text) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let operations = sample(&text, "watchdog_listener_writes_operations_total");
    let patches = sample(&text, "watchdog_listener_writes_patches_total");
    assert!(operations >= Some(2), "{text}");
    assert!(
        patches >= Some(2) && patches <= operations,
        "each post changed the pod: {text}"
    );
    assert_eq!(
        sample(&text, "watchdog_listener_writes_failures_total"),
        Some(0),
        "{text}"
    );
    assert!(
        text.contains("# HELP watchdog_listener_writes_conflicts"),
        "{text}"
    );
    drop(listener);
    cluster.stop().await;
}
