//! Termination: SIGTERM then removal on delete, SIGKILL when the grace period ends, and no
//! container process or mount outliving the kubelet — shut down or killed. Containers have
//! their own PID namespace, so the tests find their processes from the host by a marker in the
//! command line.

mod common;

use std::time::{Duration, Instant};

use common::{Env, T, alive, phase, pids_with, sh_pod, wait_no_pids, wait_pids};
use kube::api::DeleteParams;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_sends_sigterm_waits_for_exit_then_removes_it() {
    let env = Env::start().await;
    let host = env.dir.path().join("term");
    std::fs::create_dir_all(&host).unwrap();
    let script = ": marker-graceful; trap 'echo got-TERM > /data/term; exit 0' TERM; sleep 7301 & while :; do sleep 0.1; done";
    let mut p = sh_pod("graceful", script);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    p["spec"]["volumes"] =
        json!([{"name": "data", "hostPath": {"path": host.display().to_string()}}]);
    env.create(p).await;
    env.wait("graceful", T, "Running", |p| phase(p) == "Running")
        .await;
    let pids = wait_pids("marker-graceful", 2, T).await;
    wait_pids("sleep 7301", 1, T).await;
    env.kubectl_ok(&["delete", "pod", "graceful", "--wait=false"])
        .await;
    env.wait_gone("graceful", T).await;
    assert_eq!(
        std::fs::read_to_string(host.join("term")).unwrap().trim(),
        "got-TERM"
    );
    for p in pids {
        assert!(!alive(p), "process {p} outlived its pod");
    }
    // Even the background child the script left behind is gone with the pod's PID namespace.
    assert!(pids_with("sleep 7301").is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_when_the_grace_period_ends() {
    let env = Env::start().await;
    let mut p = sh_pod(
        "stubborn",
        ": marker-stubborn; trap '' TERM; while :; do sleep 0.1; done",
    );
    p["spec"]["terminationGracePeriodSeconds"] = json!(2);
    env.create(p).await;
    env.wait("stubborn", T, "Running", |p| phase(p) == "Running")
        .await;
    wait_pids("marker-stubborn", 2, T).await;
    let start = Instant::now();
    env.pods
        .delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    // Terminating but still running during the grace period.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !pids_with("marker-stubborn").is_empty(),
        "killed before the grace period ended"
    );
    assert!(
        env.pods
            .get_opt("stubborn")
            .await
            .unwrap()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    );
    env.wait_gone("stubborn", T).await;
    // Never before the grace period ends (how soon after is the bench's business).
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(2), "removed after {took:?}");
    assert!(pids_with("marker-stubborn").is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_kubelet_down_leaves_no_process_and_no_mount() {
    let mut env = Env::start().await;
    for i in 0..3 {
        env.create(sh_pod(
            &format!("p{i}"),
            ": marker-shutdown; sleep 7302 & wait",
        ))
        .await;
    }
    wait_pids("marker-shutdown", 6, T).await;
    wait_pids("sleep 7302", 3, T).await;
    let state = env.kubelet().state_dir().to_path_buf();
    env.kubelet.take().unwrap().shutdown().await;
    assert!(
        pids_with("marker-shutdown").is_empty() && pids_with("sleep 7302").is_empty(),
        "processes outlived the kubelet"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&state.display().to_string()),
        "a container mount leaked into the host namespace"
    );
    env.stop().await;
}

/// Set by the parent test in the child process it kills.
const CHILD_MARKER: &str = "KUBELET_SIM_TEST_MARKER";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_simulator_leaves_no_container_process() {
    common::require_tools();
    let marker = format!("73{:05}", std::process::id() % 100_000);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "simulator_process_for_the_kill_test",
            "--nocapture",
        ])
        .env(CHILD_MARKER, &marker)
        .kill_on_drop(true)
        .spawn()
        .expect("test binary re-runs itself");
    // Per pod: unshare, the container's shell, its background sleep.
    wait_pids(&marker, 6, Duration::from_secs(40)).await;
    child.kill().await.unwrap();
    wait_no_pids(&marker, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: the process a_killed_simulator_leaves_no_container_process starts and SIGKILLs"]
async fn simulator_process_for_the_kill_test() {
    let Ok(marker) = std::env::var(CHILD_MARKER) else {
        return;
    };
    let env = Env::start().await;
    for i in 0..2 {
        env.create(sh_pod(&format!("k{i}"), &format!("sleep {marker} & wait")))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    env.stop().await;
}
