//! What a container runs with: the image map (and ImagePullBackOff for unknown images), the
//! environment from the downward API, ConfigMaps and Secrets, and their volumes.

mod common;

use autocrane_test_support::eventually;
use common::{Env, T, phase, sh_pod, waiting_reason};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use kubelet_sim::ImageMap;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_map_to_programs_and_unknown_ones_fail_to_pull() {
    let env = Env::with(false, ImageMap::new().with("tool:*", "/bin/sh")).await;
    let mut mapped = sh_pod("mapped", "");
    mapped["spec"]["containers"][0] = json!({"name": "main", "image": "tool:1.2", "args": ["-c", "echo from-image-map; sleep 3600"]});
    env.create(mapped).await;
    let mut unknown = sh_pod("unknown", "");
    unknown["spec"]["containers"][0] = json!({"name": "main", "image": "registry.invalid/nope:1"});
    env.create(unknown).await;
    env.wait("mapped", T, "Running", |p| phase(p) == "Running")
        .await;
    let p = env
        .wait("unknown", T, "failing to pull", |p| {
            matches!(
                waiting_reason(p, "main").as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })
        .await;
    assert_eq!(phase(&p), "Pending");
    env.wait("unknown", T, "in ImagePullBackOff", |p| {
        waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
    })
    .await;
    eventually(T, "the mapped program's output", || async {
        env.kubelet()
            .logs("default", "mapped", "main", false)
            .unwrap_or_default()
            == "from-image-map\n"
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_volumes_come_from_the_downward_api_config_maps_and_secrets() {
    let env = Env::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.sim.client(), "default");
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "file.txt": "from-configmap"}})).unwrap()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.sim.client(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "data": {"password": "aHVudGVyMg=="}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let mut pod = sh_pod(
        "envy",
        "echo \"$NAME|$NS|$APP|$GREETING|$PASSWORD|$NODE|$SA|$COMBINED\"; cat /etc/cfg/file.txt; echo; cat /etc/creds/password; echo; sleep 3600",
    );
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "COMBINED", "value": "$(GREETING)-$(NAME)"},
    ]);
    pod["spec"]["automountServiceAccountToken"] = json!(false);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "creds", "mountPath": "/etc/creds", "readOnly": true}]);
    pod["spec"]["volumes"] = json!([{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "creds", "secret": {"secretName": "creds"}}]);
    env.create(pod).await;
    env.wait("envy", T, "Running", |p| phase(p) == "Running")
        .await;
    let log = eventually(T, "three lines of output", || async {
        env.kubelet()
            .logs("default", "envy", "main", false)
            .filter(|l| l.matches('\n').count() >= 3)
    })
    .await;
    assert_eq!(
        log,
        "envy|default|envy|hello|hunter2|sim-node|default|hello-envy\nfrom-configmap\nhunter2\n"
    );
    // The host has none of the container's mount points.
    assert!(
        !std::path::Path::new("/etc/cfg").exists() && !std::path::Path::new("/etc/creds").exists()
    );
    env.stop().await;
}
