//! kube 5 clients writing through kube-sim: Status errors like the real server's, optimistic
//! concurrency, generation / resourceVersion / dry-run / graceful pod deletion, server-side
//! apply, `pods/binding`, and Events from kube-runtime's Recorder.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_sim::KubeSim;
use serde_json::json;

use autocrane_test_support::eventually;
use common::{api_err, cm, raw};

#[tokio::test]
async fn errors_are_status_objects_like_the_real_server() {
    let sim = KubeSim::builder().start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let e = api_err(api.get("nope").await.unwrap_err());
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", "configmaps \"nope\" not found")
    );
    let created = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let e = api_err(
        api.create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (409, "AlreadyExists", "configmaps \"a\" already exists")
    );
    let mut stale = created.clone();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v2"}})),
    )
    .await
    .unwrap();
    stale.data = Some(BTreeMap::from([("k".into(), "v3".into())]));
    let e = api_err(
        api.replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let e = api_err(
        api.create(&PostParams::default(), &cm("Bad_Name", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message.starts_with(
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ),
        "{}",
        e.message
    );
    let other: Api<ConfigMap> = Api::namespaced(sim.client(), "missing-ns");
    let e = api_err(
        other
            .create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"missing-ns\" not found")
    );
    // Unknown resource types are 404 too.
    let (head, body) = raw(&sim, "GET", "/apis/nope.io/v1/things", "").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(body.contains("\"reason\":\"NotFound\""), "{body}");
}

#[tokio::test]
async fn generation_resource_version_dry_run_and_graceful_pod_deletion() {
    let sim = KubeSim::builder().start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let a = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let b = api
        .create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    let (ra, rb): (u64, u64) = (
        a.metadata.resource_version.unwrap().parse().unwrap(),
        b.metadata.resource_version.unwrap().parse().unwrap(),
    );
    assert!(rb > ra, "one global resourceVersion counter");
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&dry, &cm("c", &[])).await.unwrap();
    assert!(
        api.get_opt("c").await.unwrap().is_none(),
        "dry-run create must not persist"
    );
    let mut gen_cm = cm("g", &[]);
    gen_cm.metadata.generate_name = Some("gen-".into());
    gen_cm.metadata.name = None;
    let g = api.create(&PostParams::default(), &gen_cm).await.unwrap();
    assert!(
        g.metadata.name.as_ref().unwrap().starts_with("gen-")
            && g.metadata.name.unwrap().len() == 9
    );

    let pods: Api<Pod> = Api::namespaced(sim.client(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "finalizers": ["x/y"]}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i:1"}]}})).unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(p.metadata.generation, Some(1));
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    let p = pods.get("p").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    // The emulated kubelet has stopped the pod (grace period 0 now); the finalizer holds it.
    eventually(
        Duration::from_secs(30),
        "the kubelet to stop pod p",
        || async {
            pods.get_opt("p")
                .await
                .unwrap()
                .is_none_or(|p| p.metadata.deletion_grace_period_seconds == Some(0))
        },
    )
    .await;
    assert!(
        pods.get_opt("p").await.unwrap().is_some(),
        "a finalizer holds the pod"
    );
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        pods.get_opt("p").await.unwrap().is_none(),
        "removing the last finalizer deletes the pod"
    );
}

#[tokio::test]
async fn server_side_apply_with_kube_client() {
    let sim = KubeSim::builder().start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let a = PatchParams::apply("one");
    api.patch("s", &a, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"x": "1", "y": "1"}}))).await.unwrap();
    let b = PatchParams::apply("two");
    api.patch("s", &b, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"z": "2"}}))).await.unwrap();
    // "one" stops applying y: it is removed; "two"'s z stays.
    let o = api.patch("s", &a, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"x": "1"}}))).await.unwrap();
    assert_eq!(
        o.data.unwrap(),
        BTreeMap::from([
            ("x".to_string(), "1".to_string()),
            ("z".to_string(), "2".to_string())
        ])
    );
    let e = api_err(api.patch("s", &b, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"x": "9"}}))).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("conflict with \"one\"") && e.message.contains(".data.x"),
        "{}",
        e.message
    );
    let managers: Vec<String> = api
        .get("s")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["one", "two"]);
}

#[tokio::test]
async fn pods_binding_assigns_a_node_once_and_validates_like_the_api_server() {
    let sim = KubeSim::builder().start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(sim.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let bind = |name: &str, target: serde_json::Value| {
        let pods = pods.clone();
        let body = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": target});
        let name = name.to_string();
        async move {
            pods.create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &body,
            )
            .await
        }
    };
    let invalid = api_err(bind("p", json!({"kind": "Node"})).await.unwrap_err());
    assert_eq!(invalid.code, 422);
    assert_eq!(
        invalid.message,
        "Binding \"p\" is invalid: target.name: Required value"
    );
    let missing = api_err(bind("nope", json!({"name": "n1"})).await.unwrap_err());
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (404, "pods \"nope\" not found")
    );

    bind("p", json!({"kind": "Node", "name": "n1"}))
        .await
        .unwrap();
    let bound = pods.get("p").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("n1"));
    let scheduled = bound.status.unwrap().conditions.unwrap();
    assert!(
        scheduled
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True"),
        "{scheduled:?}"
    );
    let twice = api_err(bind("p", json!({"name": "n2"})).await.unwrap_err());
    assert_eq!(twice.code, 409);
    assert_eq!(
        twice.message,
        "Operation cannot be fulfilled on pods/binding \"p\": pod p is already assigned to node \"n1\""
    );
    assert_eq!(
        pods.get("p")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("n1"),
        "a refused binding changes nothing"
    );
}

#[tokio::test]
async fn events_from_the_kube_runtime_recorder() {
    let sim = KubeSim::builder().start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let c = api
        .create(&PostParams::default(), &cm("ev", &[]))
        .await
        .unwrap();
    let recorder = kube::runtime::events::Recorder::new(
        sim.client(),
        kube::runtime::events::Reporter {
            controller: "test".into(),
            instance: None,
        },
    );
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "Broken".into(),
        note: Some("n".into()),
        action: "Check".into(),
        secondary: None,
    };
    recorder.publish(&ev, &c.object_ref(&())).await.unwrap();
    recorder.publish(&ev, &c.object_ref(&())).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(sim.client(), "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].reason.as_deref(), Some("Broken"));
}
