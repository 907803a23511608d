//! Authentication and authorization through kube 5 clients: pod-bound ServiceAccount tokens,
//! TokenReview, SubjectAccessReview and RBAC denials.

mod common;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_sim::KubeSim;
use serde_json::json;

use common::api_err;

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
    // No token at all is `system:anonymous`, which RBAC refuses (403), as on a real cluster
    // with anonymous authentication on (the default).
    let anon: Api<Pod> = Api::namespaced(sim.client_with_token(None), "apps");
    let refused = api_err(anon.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"apps\""
    );
}
