//! The `kubelet-sim` binary on its own against an API server it only knows from a kubeconfig
//! file: it registers a Ready Node with its Lease, runs a pod bound to it, and on SIGTERM kills
//! the pod's processes and exits.

mod common;

use std::process::Command;
use std::time::Duration;

use autocrane_test_support::{Running, eventually};
use common::{phase, pids_with, require_tools, sh_pod, wait_pids};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::PostParams;
use kube_sim::KubeSim;
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const NODE: &str = "standalone-node";

fn condition<'a>(
    node: &'a Node,
    ty: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_registers_a_ready_node_runs_its_pods_and_kills_them_on_sigterm() {
    require_tools();
    // With auth the kubeconfig's current context is HTTPS with the CA and the admin token, as a
    // node's kubeconfig on a real cluster would be (HTTPS, a CA, credentials).
    let sim = KubeSim::builder()
        .auth(true)
        .kubelet_delay(None)
        .start()
        .await
        .expect("kube-sim starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)
        .expect("kubeconfig written");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubelet-sim"));
    command
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", NODE, "--pod-network", "179"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "info");
    let mut kubelet = Running::spawn(command);

    let nodes: Api<Node> = Api::all(sim.client());
    let node = eventually(T, "the Node to be Ready", || async {
        nodes
            .get_opt(NODE)
            .await
            .expect("get node")
            .filter(|n| condition(n, "Ready").is_some_and(|c| c.status == "True"))
    })
    .await;
    let ready = condition(&node, "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(
            condition(&node, pressure).map(|c| c.status.as_str()),
            Some("False"),
            "{pressure}"
        );
    }
    let status = node.status.as_ref().unwrap();
    for resources in [&status.capacity, &status.allocatable] {
        let resources = resources.as_ref().expect("capacity and allocatable");
        for name in ["cpu", "memory", "pods"] {
            assert!(resources.contains_key(name), "{name} in {resources:?}");
        }
    }
    let labels = node.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], NODE);
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(labels.contains_key("kubernetes.io/arch"));
    let leases: Api<Lease> = Api::namespaced(sim.client(), "kube-node-lease");
    let lease = leases.get(NODE).await.expect("the node's Lease exists");
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(NODE));

    // A pod bound to the node runs as a local process.
    let marker = format!("marker-standalone-{}", std::process::id());
    let mut pod = sh_pod("solo", &format!(": {marker}; sleep 7304 & wait"));
    pod["spec"]["nodeName"] = json!(NODE);
    let pods: Api<Pod> = Api::namespaced(sim.client(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .expect("pod created");
    eventually(T, "the pod to be Running", || async {
        pods.get("solo").await.is_ok_and(|p| phase(&p) == "Running")
    })
    .await;
    wait_pids(&marker, 2, T).await;

    // SIGTERM: the simulator kills its pods' processes and exits cleanly.
    let exit = tokio::task::block_in_place(|| kubelet.terminate(T))
        .expect("kubelet-sim exits after SIGTERM");
    assert!(
        exit.success(),
        "exit status {exit}:\n{}",
        kubelet.stderr_text()
    );
    assert!(
        pids_with(&marker).is_empty(),
        "the pod's processes outlived kubelet-sim"
    );
    assert!(
        kubelet.stderr_text().contains("Stopping"),
        "it logs what it does:\n{}",
        kubelet.stderr_text()
    );
    sim.shutdown().await;
}
