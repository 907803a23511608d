//! Fixtures shared by the end-to-end tests that run a WatchdogListener against kube-sim.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube_sim::KubeSim;

/// kube-sim with pod `default/<pod>` and a kubeconfig for it (in the returned temp dir).
pub(crate) async fn kube_sim_with_pod(pod: &str) -> (KubeSim, tempfile::TempDir, PathBuf) {
    let sim = KubeSim::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pod},
        "spec": {"containers": [{"name": "web", "image": "x"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(sim.client(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    (sim, dir, kubeconfig)
}
