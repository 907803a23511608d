//! Scenario 5 end to end: a data deployment from a git repository into running pods, canary
//! first, with every part real — `git daemon`, the VersionWatcher and the DataRepository as
//! `autocrane` processes, kube-sim with its kubelet running the pods the controller builds (the
//! test workload as the app, the DataDeployer injected as init container and sidecar from image
//! `autocrane:*`), the real WatchdogListener, and the controller in-process.
//!
//! What a user would check: a new commit reaches one canary pod first, then every pod after the
//! bake, and becomes last-known-good; the app is the same process throughout (PID and start time
//! unchanged, no container restart); a poisoned commit (the app reads `error` from the data and
//! says so in its watchdog) is reverted on the canary to last-known-good, marked bad, and not
//! retried.

mod support;

use std::{net::SocketAddr, time::Duration};

use autocrane_test_support::{DataStack, GitServer, eventually, git, http_get};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams};

use support::*;

/// The data source's name in the deployment.
const SOURCE: &str = "catalog";

/// The test workload's HTTP port on its pod IP (this binary runs one cluster at a time).
const APP_PORT: u16 = 8080;

/// An AutoCraneDeployment of the test workload (HTTP on `<pod IP>:`[`APP_PORT`]) with data
/// source [`SOURCE`] from `git_url`,
/// mounted at `/data`, one canary in three, baked `bake`. The error threshold (3 s) leaves the
/// app, which reports every second, time to report on the data it has after a switch, as a user
/// would set it.
fn data_deployment_yaml(name: &str, git_url: &str, listener: SocketAddr, bake: &str) -> String {
    let data = format!(
        r#"  data:
    - name: {SOURCE}
      mountPath: /data
      source:
        git: {{url: "{git_url}", ref: refs/heads/main}}
        pollInterval: 1s
  dataRollout:
    canaryPercent: 33
    bake: {bake}
"#
    );
    testworkload_yaml_with(name, "1.0", 3, "3s", listener, APP_PORT, &data)
}

/// One live pod as the test sees it.
#[derive(Clone, Debug, PartialEq)]
struct DataPod {
    name: String,
    /// `data.autocrane.io/catalog`: the version the controller wants in it.
    desired: String,
    /// Ready (the readiness gate follows its watchdogs).
    ready: bool,
    /// The app container's restart count.
    restarts: i32,
    /// Its pod IP.
    ip: Option<String>,
}

async fn data_pods(pods: &Api<Pod>) -> Vec<DataPod> {
    let listed = pods.list(&ListParams::default()).await.unwrap().items;
    listed
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .as_ref()
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let restarts = status
                .container_statuses
                .as_ref()
                .and_then(|cs| cs.iter().find(|c| c.name == "app"))
                .map_or(0, |c| c.restart_count);
            DataPod {
                desired: p
                    .annotations()
                    .get(&format!("data.autocrane.io/{SOURCE}"))
                    .cloned()
                    .unwrap_or_default(),
                name: p.name_any(),
                ready,
                restarts,
                ip: status.pod_ip,
            }
        })
        .collect()
}

/// The test workload's `/status` of a pod: (pid, startedAt).
async fn app_process(ip: &str) -> Option<(u64, String)> {
    let address: SocketAddr = format!("{ip}:{APP_PORT}").parse().ok()?;
    let (status, body) = tokio::task::spawn_blocking(move || http_get(address, "/status"))
        .await
        .unwrap();
    if status != 200 {
        return None;
    }
    // `http_get` answers with the headers; the JSON is the body after them.
    let (_, body) = body.split_once("\r\n\r\n")?;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    Some((
        json["pid"].as_u64()?,
        json["startedAt"].as_str()?.to_string(),
    ))
}

/// `{.status.data[0].<field>}` of the deployment.
async fn data_status(cluster: &Cluster, name: &str, field: &str) -> String {
    acd_fields(cluster, name, &[&format!("status.data[0].{field}")]).await
}

/// Commits `status` (what the test workload reads: `ok` or `error`) and a data file to `work`,
/// pushes it, and returns the commit.
fn commit_data(server: &GitServer, work: &std::path::Path, status: &str, items: &str) -> String {
    std::fs::write(work.join("status"), status).unwrap();
    std::fs::write(work.join("items.txt"), items).unwrap();
    git(work, &["add", "-A"]);
    server.commit_and_push(work, &format!("data: {status} {items}"))
}

/// What a user would look at when a wait fails: pods, the deployment, Events, and the logs of
/// every container of every pod.
async fn diagnose(cluster: &Cluster, pods: &Api<Pod>) -> String {
    let mut out = cluster
        .kubectl(&["get", "pods", "-n", NS, "-o", "wide"])
        .await;
    out += &cluster
        .kubectl(&["get", "acd", "-n", NS, "-o", "yaml"])
        .await;
    out += &cluster.kubectl(&["get", "events", "-n", NS]).await;
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        let name = pod.name_any();
        out += &cluster
            .kubectl(&["get", "pod", &name, "-n", NS, "-o", "jsonpath={.status}"])
            .await;
        for container in ["autocrane-data-init", "autocrane-data", "app"] {
            let logs = cluster
                .kubectl_lenient(&["logs", &name, "-n", NS, "-c", container, "--tail", "30"])
                .await;
            out += &format!("\n--- {name}/{container}\n{logs}");
        }
    }
    out
}

/// Waits up to [`WAIT`] for `check`; on timeout panics with `what` and [`diagnose`].
async fn wait_for<F, Fut>(cluster: &Cluster, pods: &Api<Pod>, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out waiting for {what}\n{}",
                diagnose(cluster, pods).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_data_reaches_a_canary_then_every_pod_and_a_poisoned_commit_is_reverted() {
    log_to_test_output();
    let cluster = Cluster::start().await;
    let git_server = GitServer::start();
    let (git_url, work) = git_server.create_repo("catalog");
    let first = commit_data(&git_server, &work, "ok", "apples\n");
    let stack_dir = tempfile::tempdir().unwrap();
    let stack = DataStack::start(stack_dir.path(), &[]).await;
    let listener = cluster.listener_addr;
    let listener_url = format!("http://{listener}");
    let controller = cluster.controller_with(
        "replica-a",
        15,
        &[
            "--data-repository",
            &stack.repo_url,
            "--version-watcher",
            &stack.vw_url,
            "--watchdog-listener",
            &listener_url,
            "--data-deployer-image",
            "autocrane:test",
        ],
    );
    cluster
        .apply(&data_deployment_yaml("shop", &git_url, listener, "3s"))
        .await;
    let pods = cluster.pods();

    // Three pods Ready with the first commit, which becomes last-known-good.
    wait_for(
        &cluster,
        &pods,
        "3 ready pods with the first commit",
        || async {
            let live = data_pods(&pods).await;
            live.len() == 3 && live.iter().all(|p| p.ready && p.desired == first)
        },
    )
    .await;
    wait_for(
        &cluster,
        &pods,
        "the first commit to be last-known-good",
        || async { data_status(&cluster, "shop", "lkg").await == first },
    )
    .await;
    let before = data_pods(&pods).await;
    let mut processes = Vec::new();
    for pod in &before {
        let ip = pod.ip.as_deref().expect("a Ready pod has an IP");
        let process = eventually(WAIT, "the app's /status", || async {
            app_process(ip).await
        })
        .await;
        processes.push((pod.name.clone(), process));
    }

    // A new commit: one canary first, for the bake (3 s), then every pod; then last-known-good.
    // The promotion patches the other pods one by one, so two of three may be seen on it for an
    // instant; what matters is that one canary held it alone for the bake first.
    let second = commit_data(&git_server, &work, "ok", "apples\npears\n");
    let mut first_canary: Option<tokio::time::Instant> = None;
    let mut canary_alone = Duration::ZERO;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let live = data_pods(&pods).await;
        let on_second = live.iter().filter(|p| p.desired == second).count();
        if on_second == 3 {
            break;
        }
        match (on_second, first_canary) {
            (1, None) => first_canary = Some(tokio::time::Instant::now()),
            (1, Some(at)) => canary_alone = at.elapsed(),
            (2, None) => panic!("two pods got the new commit before one canary: {live:?}"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second commit did not reach every pod: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("the canary held the new commit alone for {canary_alone:?} (bake 3 s)");
    assert!(
        canary_alone >= Duration::from_millis(2900),
        "the canary was promoted after {canary_alone:?}, before its 3 s bake"
    );
    eventually(WAIT, "the second commit to be last-known-good", || async {
        data_status(&cluster, "shop", "lkg").await == second
    })
    .await;

    // The app never restarted: the same processes, started at the same time.
    let after = data_pods(&pods).await;
    assert_eq!(
        after.iter().map(|p| &p.name).collect::<Vec<_>>(),
        before.iter().map(|p| &p.name).collect::<Vec<_>>(),
        "no pod was replaced"
    );
    assert!(after.iter().all(|p| p.restarts == 0), "{after:?}");
    for (pod, process) in &processes {
        let ip = after
            .iter()
            .find(|p| &p.name == pod)
            .and_then(|p| p.ip.clone())
            .unwrap();
        assert_eq!(
            app_process(&ip).await.as_ref(),
            Some(process),
            "pod {pod}: the app process changed"
        );
    }

    // A poisoned commit: the canary's app reads `error` and says so; the canary goes back to
    // last-known-good, the commit is marked bad, and it is not retried.
    let poisoned = commit_data(&git_server, &work, "error", "rotten\n");
    eventually(WAIT, "the poisoned commit to be marked bad", || async {
        data_status(&cluster, "shop", "bad[*].version")
            .await
            .split_whitespace()
            .any(|v| v == poisoned)
    })
    .await;
    eventually(
        WAIT,
        "every pod back on the second commit, Ready",
        || async {
            let live = data_pods(&pods).await;
            live.len() == 3 && live.iter().all(|p| p.ready && p.desired == second)
        },
    )
    .await;
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < quiet_until {
        let live = data_pods(&pods).await;
        assert!(
            live.iter().all(|p| p.desired == second),
            "the poisoned commit was retried: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(data_status(&cluster, "shop", "lkg").await, second);
    let reasons = cluster.event_reasons("shop").await;
    println!("events: {reasons:?}");
    for reason in [
        "DataRolloutStarted",
        "DataCanaryStarted",
        "DataPromoted",
        "DataLastKnownGood",
        "DataVersionFailed",
    ] {
        assert!(reasons.contains(reason), "no {reason} Event: {reasons:?}");
    }
    // The revert is the data rollout's answer to the canary's error: the pod is not also
    // restarted by the failing limit, and no app process was replaced at any point.
    assert!(!reasons.contains("PodRestarted"), "{reasons:?}");
    let last = data_pods(&pods).await;
    assert_eq!(
        last.iter().map(|p| &p.name).collect::<Vec<_>>(),
        before.iter().map(|p| &p.name).collect::<Vec<_>>(),
        "no pod was replaced"
    );
    assert!(last.iter().all(|p| p.restarts == 0), "{last:?}");

    controller.stop().await;
    drop(stack);
    cluster.shutdown().await;
}
