//! Custom resources through kube 5 clients: CRDs served at once, the status subresource and
//! generation, cluster scope, schema defaults, server-side printing, pod status conditions.

mod common;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_sim::KubeSim;
use serde_json::json;

use common::{api_err, raw, raw_accept};

#[tokio::test]
async fn custom_resource_status_subresource_and_generation() {
    let sim = KubeSim::builder().start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(sim.client());
    crds.create(
        &PostParams::default(),
        &autocrane_api::crd::AutoCraneDeployment::crd(),
    )
    .await
    .unwrap();
    let ar = kube::discovery::ApiResource::erase::<autocrane_api::crd::AutoCraneDeployment>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(sim.client(), "default", &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "autocrane.io/v1alpha1", "kind": "AutoCraneDeployment", "metadata": {"name": "w"},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}},
        "status": {"phase": "ignored-on-create"}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create: {:?}",
        created.data
    );
    let pp = PatchParams::default();
    let o = api
        .patch("w", &pp, &Patch::Merge(json!({"status": {"phase": "x"}})))
        .await
        .unwrap();
    assert!(
        o.data.get("status").is_none() && o.metadata.generation == Some(1),
        "main resource ignores status"
    );
    let o = api
        .patch_status(
            "w",
            &pp,
            &Patch::Merge(json!({"spec": {"replicas": 9}, "status": {"phase": "Available"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            o.data["status"]["phase"].as_str(),
            o.data["spec"]["replicas"].as_i64(),
            o.metadata.generation
        ),
        (Some("Available"), Some(1), Some(1))
    );
    let e = api_err(
        api.patch_status(
            "w",
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Stable"}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        e.message
            .contains("status.phase: Unsupported value: \"Stable\""),
        "status is validated on /status: {}",
        e.message
    );
    let o = api
        .patch(
            "w",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        o.metadata.generation,
        Some(1),
        "metadata changes keep generation"
    );
    let o = api
        .patch("w", &pp, &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(2));
    let e = api_err(
        api.patch("w", &pp, &Patch::Merge(json!({"spec": {"replicas": -1}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    let causes = e.details.unwrap().causes;
    assert_eq!(causes[0].field, "spec.replicas");
    let e = api_err(
        api.patch(
            "w",
            &pp,
            &Patch::Strategic(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 415);
    // A controller's server-side apply of its status, the usual reconciler pattern.
    let ssa = PatchParams::apply("autocrane-controller").force();
    let status = json!({"apiVersion": "autocrane.io/v1alpha1", "kind": "AutoCraneDeployment", "status": {"phase": "Degraded", "readyReplicas": 1}});
    let o = api
        .patch_status("w", &ssa, &Patch::Apply(status))
        .await
        .unwrap();
    assert_eq!(
        (
            o.data["status"]["phase"].as_str(),
            o.data["spec"]["replicas"].as_i64(),
            o.metadata.generation
        ),
        (Some("Degraded"), Some(2), Some(2))
    );
    assert_eq!(o.metadata.labels.unwrap()["a"], "b");
    // Deleting the CRD removes its objects and its discovery entry.
    crds.delete(
        "autocranedeployments.autocrane.io",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    assert!(api.list(&ListParams::default()).await.is_err());
}

#[tokio::test]
async fn cluster_scoped_crd_defaults_table_and_pod_status_conditions() {
    let sim = KubeSim::builder().start().await.unwrap();
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.io"},
        "spec": {"group": "example.io", "scope": "Cluster",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                               "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {"size": {"type": "integer", "default": 3}}},
                                   "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    }))
    .unwrap();
    Api::<CustomResourceDefinition>::all(sim.client())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let ar = kube::discovery::ApiResource {
        group: "example.io".into(),
        version: "v1".into(),
        api_version: "example.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let api: Api<kube::api::DynamicObject> = Api::all_with(sim.client(), &ar);
    let w: kube::api::DynamicObject = serde_json::from_value(json!({"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {}})).unwrap();
    let w = api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(w.data["spec"]["size"], 3, "schema default applied");
    assert!(w.metadata.namespace.is_none());
    let (head, body) = raw_accept(
        &sim,
        "GET",
        "/apis/example.io/v1/widgets",
        "",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Size"]);
    assert_eq!(t["rows"][0]["cells"], json!(["w1", 3]));
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    // Discovery lists the new group at once.
    let (_, body) = raw(&sim, "GET", "/apis/example.io/v1", "").await;
    assert!(body.contains("\"name\":\"widgets/status\""), "{body}");

    // Pod conditions merge by type under strategic merge on /status, as a kubelet writes them.
    let pods: Api<Pod> = Api::namespaced(sim.client(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pp = PatchParams::default();
    pods.patch_status("p", &pp, &Patch::Strategic(json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))).await.unwrap();
    pods.patch_status(
        "p",
        &pp,
        &Patch::Strategic(
            json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}),
        ),
    )
    .await
    .unwrap();
    let p = pods
        .patch_status(
            "p",
            &pp,
            &Patch::Strategic(
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        )
        .await
        .unwrap();
    let conds: Vec<(String, String)> = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert_eq!(
        conds,
        [
            ("Ready".to_string(), "False".to_string()),
            ("PodScheduled".to_string(), "True".to_string())
        ]
    );
    let list = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
}
