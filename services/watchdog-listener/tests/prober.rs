//! End-to-end: the HTTP prober. Pods annotated `probe.autocrane.io/<name>: <port>/<path>` get
//! watchdog `<name>`; pods without an IP are skipped; not-Ready pods are probed; a malformed
//! annotation gives a Warning Event, never an error watchdog; removing the annotation deletes its
//! watchdog; and a scan of 1,000 targets of which 10% hang reports every target, the hanging ones
//! as timed out. (How long such a scan takes — about one probe timeout — is measured by
//! `examples/watchdog_bench.rs`, not asserted here.)

mod common;

use std::time::Duration;

use autocrane_api::watchdog::Level;
use autocrane_test_support::eventually;
use autocrane_watchdog_listener::{
    pods::PodKey,
    prober::{ProberArgs, Target, scan},
};
use common::{Env, listener_args};
use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
use kube::{Api, ResourceExt, api::ListParams};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A tiny HTTP server: `/ok*` → 200, `/fail*` → 500, `/hang*` → never answers.
async fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                if path.starts_with("/hang") {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let status = if path.starts_with("/ok") {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = socket
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

fn status_annotation(pod: &Pod) -> Option<String> {
    pod.annotations().get("status.autocrane.io/http").cloned()
}

#[tokio::test]
async fn the_prober_posts_results_skips_pods_without_ip_and_reports_malformed_annotations() {
    let port = http_server().await;
    let env = Env::start_with(listener_args(
        50,
        Some(ProberArgs::new(
            Duration::from_secs(1),
            Duration::from_millis(500),
            16,
        )),
    ))
    .await;
    let ok = format!("{port}/ok/deep");
    let fail = format!("{port}/fail");
    env.pod(
        "shop",
        "healthy",
        &[],
        &[("probe.autocrane.io/http", &ok)],
        Some("127.0.0.1"),
    )
    .await;
    env.pod(
        "shop",
        "failing",
        &[],
        &[("probe.autocrane.io/http", &fail)],
        Some("127.0.0.1"),
    )
    .await;
    env.pod(
        "shop",
        "no-ip",
        &[],
        &[("probe.autocrane.io/http", &ok)],
        None,
    )
    .await;
    env.pod(
        "shop",
        "malformed",
        &[],
        &[("probe.autocrane.io/http", "eighty/ok")],
        Some("127.0.0.1"),
    )
    .await;
    // Not Ready (phase Pending with an IP): still probed, unlike the original (W9).
    let pending = env
        .pod(
            "shop",
            "pending",
            &[],
            &[("probe.autocrane.io/http", &ok)],
            None,
        )
        .await;
    Api::<Pod>::namespaced(env.sim.client(), "shop")
        .patch_status(
            &pending.name_any(),
            &Default::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"status": {"phase": "Pending", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        )
        .await
        .unwrap();

    eventually(Duration::from_secs(8), "probe results posted", || async {
        env.kubectl_health("shop", "healthy").await == "info"
            && env.kubectl_health("shop", "failing").await == "error"
            && env.kubectl_health("shop", "pending").await == "info"
    })
    .await;
    let failing = status_annotation(&env.get_pod("shop", "failing").await).unwrap();
    assert!(failing.contains("HTTP 500"), "{failing}");
    assert_eq!(status_annotation(&env.get_pod("shop", "no-ip").await), None);
    let malformed = env.get_pod("shop", "malformed").await;
    assert_eq!(status_annotation(&malformed), None);
    assert!(
        !malformed
            .labels()
            .contains_key("status.autocrane.io/health")
    );

    // Removing the probe annotation retires its watchdog: the failing pod's last result no longer
    // counts, so its rollup goes from error back to having no watchdog at all.
    Api::<Pod>::namespaced(env.sim.client(), "shop")
        .patch(
            "failing",
            &Default::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"probe.autocrane.io/http": null}}
            })),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(8),
        "the retired probe's watchdog deleted",
        || async { status_annotation(&env.get_pod("shop", "failing").await).is_none() },
    )
    .await;
    assert_ne!(env.kubectl_health("shop", "failing").await, "error");
    assert_eq!(
        env.kubectl_health("shop", "healthy").await,
        "info",
        "other pods' probes are untouched"
    );

    eventually(
        Duration::from_secs(5),
        "a Warning Event for the malformed annotation",
        || async {
            let events = Api::<Event>::namespaced(env.sim.client(), "shop")
                .list(&ListParams::default())
                .await
                .unwrap();
            events.items.iter().any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("MalformedProbeAnnotation")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("malformed")
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_1000_targets_with_10_percent_hanging_reports_every_target() {
    let port = http_server().await;
    let targets: Vec<Target> = (0..1000)
        .map(|i| Target {
            pod: PodKey::new("load", format!("pod-{}", i / 10)),
            name: format!("p{}", i % 10),
            ip: "127.0.0.1".into(),
            port,
            path: if i % 10 == 3 {
                format!("hang/{i}")
            } else {
                format!("ok/{i}")
            },
        })
        .collect();
    let timeout = Duration::from_secs(2);
    // A generous deadline: the scan must finish (hanging targets time out rather than block it);
    // how fast it finishes is the benchmark's business.
    let results = tokio::time::timeout(Duration::from_secs(60), scan(targets, timeout, 256))
        .await
        .expect("the scan finishes although 100 targets never answer");
    assert_eq!(results.len(), 1000);
    let errors = results
        .iter()
        .filter(|(_, level, _)| *level == Level::Error)
        .count();
    assert_eq!(errors, 100);
    for (target, level, message) in &results {
        if target.path.starts_with("hang") {
            assert_eq!(*level, Level::Error, "{message}");
            assert_eq!(
                message,
                &format!("GET {}: no response within 2000 ms", target.url())
            );
        } else {
            assert_eq!(*level, Level::Info, "{message}");
            assert!(message.ends_with(": HTTP 200"), "{message}");
        }
    }
}
