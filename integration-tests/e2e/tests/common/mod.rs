//! Fixtures shared by the end-to-end tests that run a WatchdogListener against a cluster.

use autocrane_test_support::{ClusterOptions, TestCluster};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

/// The cluster of `AUTOCRANE_TEST_CLUSTER` with pod `default/<pod>` (no node runs it: the
/// listener only needs the object).
pub(crate) async fn cluster_with_pod(pod: &str) -> TestCluster {
    let cluster = TestCluster::start(ClusterOptions::new()).await;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pod},
        "spec": {"containers": [{"name": "web", "image": "x"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(cluster.client(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    cluster
}
