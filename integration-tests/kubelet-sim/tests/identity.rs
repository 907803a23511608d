//! In-cluster identity: the mounted, pod-bound ServiceAccount token, CA and namespace let
//! `kubectl` and a `kube::Client::try_default()` program inside a pod reach the API.

mod common;

use std::time::Duration;

use common::{Env, phase, sh_pod};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use kube::api::PostParams;
use kubelet_sim::ImageMap;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_inside_a_pod_lists_pods_with_its_bound_service_account_token() {
    let env = Env::with(true, ImageMap::new()).await;
    let admin = env.sim.client();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lister"}})).unwrap(),
    )
    .await
    .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), "default");
    let rb = json!({"metadata": {"name": "lister-view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": "default"}]});
    rbs.create(&PostParams::default(), &serde_json::from_value(rb).unwrap())
        .await
        .unwrap();
    // No kubeconfig: kubectl falls back to the in-cluster config (env + mounted token and CA).
    let mut p = sh_pod(
        "lister",
        "ls /var/run/secrets/kubernetes.io/serviceaccount; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; kubectl get pods -o name",
    );
    p["spec"]["serviceAccountName"] = json!("lister");
    p["spec"]["restartPolicy"] = json!("Never");
    p["spec"]["containers"][0]["env"] = json!([{"name": "KUBECACHEDIR", "value": "/cache"}]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cache", "mountPath": "/cache"}]);
    p["spec"]["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
    env.create(p).await;
    env.wait("lister", Duration::from_secs(40), "finished", |p| {
        phase(p) == "Succeeded" || phase(p) == "Failed"
    })
    .await;
    let log = env
        .kubelet()
        .logs("default", "lister", "main", false)
        .unwrap_or_default();
    let p = env.pods.get("lister").await.unwrap();
    assert_eq!(phase(&p), "Succeeded", "in-pod kubectl output:\n{log}");
    assert_eq!(log, "ca.crt\nnamespace\ntoken\ndefault\npod/lister\n");

    // The mounted token is bound to this pod: TokenReview names it. The volume is the
    // ServiceAccount admission's `kube-api-access-*` where the API server adds one, else the
    // simulator's own.
    let volume = p
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .find(|n| n.starts_with("kube-api-access-"))
        .unwrap_or(kubelet_sim::volumes::SA_VOLUME);
    let token = std::fs::read_to_string(
        env.kubelet()
            .volume_path("default", "lister", volume)
            .unwrap()
            .join("token"),
    )
    .unwrap();
    let reviews: Api<k8s_openapi::api::authentication::v1::TokenReview> = Api::all(admin);
    let review = serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})).unwrap();
    let r = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(r.authenticated, Some(true));
    let user = r.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:lister")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
        vec!["lister".to_string()]
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_kube_client_in_a_pod_lists_pods_over_https() {
    // The workload is a Rust program using kube::Client::try_default(), started from the image map.
    let images = ImageMap::new().with("lister:*", env!("CARGO_BIN_EXE_in-cluster-list-pods"));
    let env = Env::with(true, images).await;
    let admin = env.sim.client();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
    )
    .await
    .ok();
    let rbs: Api<RoleBinding> = Api::namespaced(admin, "default");
    let rb = json!({"metadata": {"name": "default-view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]});
    rbs.create(&PostParams::default(), &serde_json::from_value(rb).unwrap())
        .await
        .unwrap();
    let mut p = sh_pod("rusty", "");
    p["spec"]["restartPolicy"] = json!("Never");
    p["spec"]["containers"][0] = json!({"name": "main", "image": "lister:1"});
    env.create(p).await;
    let p = env
        .wait("rusty", Duration::from_secs(40), "finished", |p| {
            phase(p) == "Succeeded" || phase(p) == "Failed"
        })
        .await;
    let log = env
        .kubelet()
        .logs("default", "rusty", "main", false)
        .unwrap_or_default();
    assert_eq!(phase(&p), "Succeeded", "in-pod kube client output:\n{log}");
    assert_eq!(log, "rusty\n");
    env.stop().await;
}
