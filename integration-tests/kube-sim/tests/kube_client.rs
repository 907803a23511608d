//! kube 5 clients against kube-sim: Status errors, optimistic concurrency, pagination, watch
//! semantics, status subresource, server-side apply, TokenReview / SubjectAccessReview, events,
//! HTTPS with the generated CA, faults over the admin endpoint, and the binary.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{CustomResourceExt, Resource};
use kube_sim::{ErrorRule, FaultConfig, KubeSim};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    c
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

/// Raw HTTP/1.1 request on the plain listener; returns (status line + headers, body).
async fn raw(sim: &KubeSim, method: &str, path: &str, body: &str) -> (String, String) {
    raw_accept(sim, method, path, body, "application/json").await
}

async fn raw_accept(
    sim: &KubeSim,
    method: &str,
    path: &str,
    body: &str,
    accept: &str,
) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

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
    tokio::time::sleep(Duration::from_millis(300)).await;
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
async fn list_pagination_and_selectors() {
    let sim = KubeSim::builder().start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        api.create(
            &PostParams::default(),
            &cm(&format!("c{i:02}"), &[("tier", tier), ("app", "x")]),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(10);
    let mut pages = 0;
    loop {
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!((pages, names.len()), (3, 25));
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(api.list(&sel("tier=even")).await.unwrap().items.len(), 13);
    assert_eq!(
        api.list(&sel("tier in (odd),app"))
            .await
            .unwrap()
            .items
            .len(),
        12
    );
    assert_eq!(
        api.list(&sel("tier notin (odd,even)"))
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert_eq!(
        api.list(&ListParams::default().fields("metadata.name=c03"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let all: Api<ConfigMap> = Api::all(sim.client());
    assert_eq!(all.list(&sel("app=x")).await.unwrap().items.len(), 25);
}

#[tokio::test]
async fn watch_resumes_sends_bookmarks_and_selector_transitions() {
    let sim = KubeSim::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    api.create(&PostParams::default(), &cm("a", &[("sel", "yes")]))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cm("b", &[("sel", "yes")]))
        .await
        .unwrap();
    let wp = WatchParams::default().labels("sel=yes").timeout(5);
    let mut s = api.watch(&wp, &rv).await.unwrap().boxed();
    // Resume from the list rv replays what happened since.
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    // Leaving the selector is a DELETED for this watch.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})),
    )
    .await
    .unwrap();
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        other => panic!("expected DELETED a, got {other:?}"),
    }
    drop(s);
    let wp = WatchParams {
        bookmarks: true,
        ..WatchParams::default().timeout(2)
    };
    let mut s = api
        .watch(&wp, &sim.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(3), s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Bookmark(b) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    // A resourceVersion older than the retained history gets an in-stream 410.
    sim.faults().compact();
    let mut s = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    // timeoutSeconds ends the stream.
    let started = std::time::Instant::now();
    let mut s = api
        .watch(
            &WatchParams::default().timeout(1),
            &sim.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    while s.try_next().await.unwrap().is_some() {}
    assert!(started.elapsed() < Duration::from_secs(4));
}

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
async fn token_review_and_subject_access_review() {
    let sim = KubeSim::builder().auth(true).start().await.unwrap();
    let client = sim.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap(),
        )
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web-0"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}})).unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let token = sim.issue_token("apps", "default", Some("web-0"));
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: token.clone(),
            audiences: None,
        },
        ..Default::default()
    };
    let st = reviews
        .create(&PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.authenticated, Some(true));
    let user = st.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:apps:default")
    );
    assert_eq!(
        user.groups.unwrap(),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ]
    );
    let extra = user.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["web-0"]);
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        [pod.metadata.uid.clone().unwrap()]
    );
    // The token authenticates API requests too, and RBAC denies what no role grants.
    let as_sa: Api<Pod> = Api::namespaced(sim.client_with_token(Some(&token)), "apps");
    let e = api_err(as_sa.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "pods is forbidden: User \"system:serviceaccount:apps:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"apps\""
    );
    let e = api_err(
        as_sa
            .patch("web-0", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "pods \"web-0\" is forbidden: User \"system:serviceaccount:apps:default\" cannot patch resource \"pods\" in API group \"\" in the namespace \"apps\""
    );
    let sars: Api<SubjectAccessReview> = Api::all(client.clone());
    let sar = |verb: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("system:serviceaccount:apps:default".into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some("apps".into()),
                verb: Some(verb.into()),
                resource: Some("pods".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        !sars
            .create(&PostParams::default(), &sar("list"))
            .await
            .unwrap()
            .status
            .unwrap()
            .allowed
    );
    let rb: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "apps"}]})).unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), "apps")
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    assert!(
        sars.create(&PostParams::default(), &sar("list"))
            .await
            .unwrap()
            .status
            .unwrap()
            .allowed
    );
    assert!(
        !sars
            .create(&PostParams::default(), &sar("delete"))
            .await
            .unwrap()
            .status
            .unwrap()
            .allowed
    );
    assert_eq!(
        as_sa
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // Deleting the bound pod invalidates the token.
    pods.delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    let st = reviews
        .create(&PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(st.authenticated, Some(true));
    assert!(st.error.unwrap().contains("pods \"web-0\" not found"));
    // No token at all is 401.
    let anon: Api<Pod> = Api::namespaced(sim.client_with_token(None), "apps");
    assert_eq!(
        api_err(anon.list(&ListParams::default()).await.unwrap_err()).code,
        401
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

#[tokio::test]
async fn https_listener_with_generated_ca() {
    let sim = KubeSim::builder().start().await.unwrap();
    let mut config = kube::Config::new(sim.https_url().parse().unwrap());
    let pem = sim.ca_pem().to_string();
    let der = {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    config.root_cert = Some(vec![der]);
    let client = kube::Client::try_from(config).unwrap();
    let ns: Api<Namespace> = Api::all(client);
    let names: Vec<String> = ns
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
}

#[tokio::test]
async fn fault_endpoint_injects_429_with_retry_after_and_latency() {
    let sim = KubeSim::builder().start().await.unwrap();
    let cfg = json!({"errors": [{"verb": "list", "resource": "configmaps", "rate": 1.0, "code": 429, "retryAfterSeconds": 3}], "latencyMs": 50, "seed": 7});
    let (head, _) = raw(&sim, "PUT", "/_sim/faults", &cfg.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(sim.faults().get().errors.len(), 1);
    let started = std::time::Instant::now();
    let (head, body) = raw(&sim, "GET", "/api/v1/namespaces/default/configmaps", "").await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 3"),
        "{head}"
    );
    assert!(body.contains("\"reason\":\"TooManyRequests\""), "{body}");
    let (head, _) = raw(&sim, "GET", "/api/v1/namespaces/default/secrets", "").await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "other resources are untouched: {head}"
    );
    raw(&sim, "DELETE", "/_sim/faults", "").await;
    assert_eq!(sim.faults().get(), FaultConfig::default());
    // Deterministic with a seed: the same seed gives the same failure sequence.
    let pattern = |seed: u64| async move { sim_pattern(seed).await };
    assert_eq!(pattern(42).await, pattern(42).await);
}

async fn sim_pattern(seed: u64) -> Vec<bool> {
    let sim = KubeSim::builder().seed(seed).start().await.unwrap();
    sim.faults().add_error(ErrorRule {
        verb: Some("get".into()),
        resource: None,
        rate: 0.5,
        code: 500,
        retry_after_seconds: None,
    });
    let api: Api<Namespace> = Api::all(sim.client());
    let mut out = Vec::new();
    for _ in 0..16 {
        out.push(api.get("default").await.is_ok());
    }
    assert!(out.contains(&true) && out.contains(&false), "{out:?}");
    out
}

#[tokio::test]
async fn binary_writes_a_kubeconfig_kubectl_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig",
            kc.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kube-sim binary starts");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(line.starts_with("http://127.0.0.1:"), "{line}");
    assert!(kc.exists(), "kubeconfig written before the URL is printed");
    let out = common::kubectl_at(&kc, dir.path(), &["get", "namespaces", "-o", "name"], None).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/kube-system"));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn snapshot_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let sim = KubeSim::builder().snapshot(&path).start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let c = api
        .create(&PostParams::default(), &cm("kept", &[]))
        .await
        .unwrap();
    let rv = sim.resource_version();
    sim.shutdown().await;
    let sim = KubeSim::builder().snapshot(&path).start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    assert_eq!(api.get("kept").await.unwrap().metadata.uid, c.metadata.uid);
    assert_eq!(sim.resource_version(), rv);
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
