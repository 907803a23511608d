//! End-to-end: the WatchdogListener API against kube-sim with authentication on, observed the way
//! users observe it (gRPC responses, `kubectl get pods -L status.autocrane.io/health`, the pod's
//! annotations).

mod common;

use std::time::Duration;

use autocrane_api::proto::watchdog_v1 as pb;
use autocrane_test_support::eventually;
use common::{Env, pod_ref, post, with_token};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use tonic::Code;

// ---- rollup and storage -------------------------------------------------------------------

#[tokio::test]
async fn posts_change_the_rollup_that_kubectl_shows() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[("app", "web")], &[], None).await;
    let mut client = env.client().await;
    let admin = env.admin_token();

    let posted = client
        .post_watchdog(with_token(
            post(
                "shop",
                "web-0",
                "http",
                pb::Level::Error,
                "connection refused",
            ),
            &admin,
        ))
        .await
        .expect("post accepted")
        .into_inner()
        .pod_health
        .unwrap();
    assert_eq!(posted.health, pb::Health::Error as i32);
    assert_eq!(env.kubectl_health("shop", "web-0").await, "error");

    client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Info, "ok"),
            &admin,
        ))
        .await
        .expect("post accepted");
    client
        .post_watchdog(with_token(
            post(
                "shop",
                "web-0",
                "disk",
                pb::Level::Warning,
                "80% full / slow",
            ),
            &admin,
        ))
        .await
        .expect("post accepted");
    assert_eq!(env.kubectl_health("shop", "web-0").await, "warning");

    let got = client
        .get_pod_health(with_token(
            pb::GetPodHealthRequest {
                pod: pod_ref("shop", "web-0"),
            },
            &admin,
        ))
        .await
        .expect("get")
        .into_inner()
        .pod_health
        .unwrap();
    let names: Vec<_> = got
        .watchdogs
        .iter()
        .map(|w| (w.name.as_str(), w.level, w.message.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("disk", pb::Level::Warning as i32, "80% full / slow"),
            ("http", pb::Level::Info as i32, "ok")
        ]
    );
    let pod = env.get_pod("shop", "web-0").await;
    assert!(
        pod.annotations()["status.autocrane.io/http"].starts_with("info/20"),
        "{:?}",
        pod.annotations()
    );

    client
        .delete_watchdog(with_token(
            pb::DeleteWatchdogRequest {
                pod: pod_ref("shop", "web-0"),
                name: "disk".into(),
            },
            &admin,
        ))
        .await
        .expect("delete");
    assert_eq!(env.kubectl_health("shop", "web-0").await, "info");
}

#[tokio::test]
async fn ttl_expiry_changes_the_rollup_back_without_any_post() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let mut client = env.client().await;
    let admin = env.admin_token();
    client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Info, "ok"),
            &admin,
        ))
        .await
        .unwrap();
    let mut warm_up = post(
        "shop",
        "web-0",
        "warm-up",
        pb::Level::Error,
        "loading caches",
    );
    warm_up.ttl = Some(prost_types::Duration {
        seconds: 2,
        nanos: 0,
    });
    let posted = client
        .post_watchdog(with_token(warm_up, &admin))
        .await
        .unwrap()
        .into_inner();
    let expiring = &posted.pod_health.unwrap().watchdogs[1];
    assert_eq!(expiring.name, "warm-up");
    assert!(expiring.expires_at.is_some());
    assert_eq!(env.kubectl_health("shop", "web-0").await, "error");
    let mut stream = client
        .watch_pod_health(with_token(
            pb::WatchPodHealthRequest {
                namespace: "shop".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = stream.message().await.unwrap().unwrap();
    assert_eq!(snapshot.pods[0].health, pb::Health::Error as i32);

    // The TTL is 2 s at second precision: the label must flip within about 3 s, with no post.
    eventually(
        Duration::from_secs(5),
        "label back to info after the TTL",
        || async { env.kubectl_health("shop", "web-0").await == "info" },
    )
    .await;
    let got = client
        .get_pod_health(with_token(
            pb::GetPodHealthRequest {
                pod: pod_ref("shop", "web-0"),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .pod_health
        .unwrap();
    assert_eq!(
        got.watchdogs.len(),
        1,
        "the expired watchdog is gone: {got:?}"
    );
    assert!(
        !env.get_pod("shop", "web-0")
            .await
            .annotations()
            .contains_key("status.autocrane.io/warm-up")
    );
    // Watchers see the expiry as a change.
    let change = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!change.snapshot);
    assert_eq!(change.pods[0].health, pb::Health::Info as i32);
}

#[tokio::test]
async fn another_writers_annotation_set_between_two_posts_survives() {
    let env = Env::start().await;
    env.pod(
        "shop",
        "web-0",
        &[],
        &[("data.autocrane.io/config", "v1")],
        None,
    )
    .await;
    let mut client = env.client().await;
    let admin = env.admin_token();
    client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Error, "down"),
            &admin,
        ))
        .await
        .unwrap();
    // Between the posts, kubectl (a merge patch) and the controller-like writer change other keys.
    env.kubectl(&["annotate", "pod", "web-0", "-n", "shop", "team=payments"])
        .await;
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.sim.client(), "shop")
        .patch(
            "web-0",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"data.autocrane.io/config": "v2"}}})),
        )
        .await
        .unwrap();
    client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Info, "up"),
            &admin,
        ))
        .await
        .unwrap();
    let pod = env.get_pod("shop", "web-0").await;
    let annotations = pod.annotations();
    assert_eq!(annotations["team"], "payments");
    assert_eq!(annotations["data.autocrane.io/config"], "v2");
    assert!(annotations["status.autocrane.io/http"].starts_with("info/"));
}

#[tokio::test]
async fn a_status_written_by_hand_between_posts_counts_in_the_rollup() {
    // The listener plans on the pod as its last write left it; the resourceVersion precondition
    // must make it re-read when someone else changed the pod meanwhile.
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let mut client = env.client().await;
    let admin = env.admin_token();
    client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Error, "down"),
            &admin,
        ))
        .await
        .unwrap();
    env.kubectl(&[
        "annotate",
        "pod",
        "web-0",
        "-n",
        "shop",
        "status.autocrane.io/manual=Error/2026-11-26T20:00:00Z//set by hand",
    ])
    .await;
    let posted = client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Info, "up"),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .pod_health
        .unwrap();
    assert_eq!(posted.health, pb::Health::Error as i32, "{posted:?}");
    assert_eq!(env.kubectl_health("shop", "web-0").await, "error");
    // First post: read + patch; second: a patch planned on the cached copy is refused (409), then
    // read + patch again.
    let stats = env.listener.writer.stats();
    assert_eq!(stats.patches.get(), 3);
    assert_eq!(stats.reads.get(), 2);
}

#[tokio::test]
async fn a_post_that_changes_nothing_writes_nothing() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let mut client = env.client().await;
    let admin = env.admin_token();
    let first = client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Info, "ok"),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let rv = env.get_pod("shop", "web-0").await.resource_version();
    // Timestamps have second precision: once the clock is past the first post's second, a post
    // that rewrote the watchdog would store a new `updated_at`, so "nothing written" means it.
    let written_at = first.pod_health.as_ref().unwrap().watchdogs[0]
        .updated_at
        .unwrap()
        .seconds;
    eventually(
        Duration::from_secs(5),
        "the clock past the first post's second",
        || async { jiff::Timestamp::now().as_second() > written_at },
    )
    .await;
    let again = client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Info, "ok"),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(env.get_pod("shop", "web-0").await.resource_version(), rv);
    assert_eq!(
        first.pod_health.unwrap().watchdogs,
        again.pod_health.unwrap().watchdogs
    );
}

// ---- authentication and authorization -----------------------------------------------------

#[tokio::test]
async fn a_call_without_a_valid_token_is_unauthenticated() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let mut client = env.client().await;
    let err = client
        .post_watchdog(tonic::Request::new(post(
            "shop",
            "web-0",
            "http",
            pb::Level::Error,
            "x",
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Error, "x"),
            "forged.token.value",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        !env.get_pod("shop", "web-0")
            .await
            .annotations()
            .contains_key("status.autocrane.io/http")
    );
}

#[tokio::test]
async fn a_pod_token_may_post_for_its_own_pod_but_not_for_another() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    env.pod("shop", "web-1", &[], &[], None).await;
    let token = env.sim.issue_token("shop", "web", Some("web-0"));
    let mut client = env.client().await;

    client
        .post_watchdog(with_token(
            post("shop", "web-0", "self", pb::Level::Info, "me"),
            &token,
        ))
        .await
        .expect("own pod allowed");
    client
        .delete_watchdog(with_token(
            pb::DeleteWatchdogRequest {
                pod: pod_ref("shop", "web-0"),
                name: "self".into(),
            },
            &token,
        ))
        .await
        .expect("own pod delete allowed");
    let err = client
        .post_watchdog(with_token(
            post("shop", "web-1", "forged", pb::Level::Error, "you"),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("create") && err.message().contains("shop"),
        "{}",
        err.message()
    );
    assert!(
        !env.get_pod("shop", "web-1")
            .await
            .annotations()
            .contains_key("status.autocrane.io/forged")
    );
}

#[tokio::test]
async fn a_service_account_needs_rbac_on_watchdogs() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let token = env.sim.issue_token("shop", "prober", None);
    let mut client = env.client().await;

    let err = client
        .post_watchdog(with_token(
            post("shop", "web-0", "ext", pb::Level::Error, "x"),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("create") && err.message().contains("\"shop\""),
        "{}",
        err.message()
    );
    let err = client
        .get_pod_health(with_token(
            pb::GetPodHealthRequest {
                pod: pod_ref("shop", "web-0"),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("get"), "{}", err.message());
    assert!(
        !env.get_pod("shop", "web-0")
            .await
            .annotations()
            .contains_key("status.autocrane.io/ext")
    );

    env.grant("shop", "prober", &["create", "get"]).await;
    // Denials are cached for 2 s, so the new binding takes effect within that.
    let shared = &client;
    eventually(Duration::from_secs(4), "RBAC grant takes effect", || {
        let mut c = shared.clone();
        let token = token.clone();
        async move {
            c.post_watchdog(with_token(
                post("shop", "web-0", "ext", pb::Level::Error, "x"),
                &token,
            ))
            .await
            .is_ok()
        }
    })
    .await;
    assert_eq!(env.kubectl_health("shop", "web-0").await, "error");
}

// ---- validation ---------------------------------------------------------------------------

#[tokio::test]
async fn every_bad_input_is_refused_with_the_field_named_and_changes_nothing() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let mut client = env.client().await;
    let admin = env.admin_token();
    let good = || post("shop", "web-0", "http", pb::Level::Info, "ok");
    let ttl = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });

    let cases: Vec<(&str, pb::PostWatchdogRequest)> = vec![
        (
            "pod:",
            pb::PostWatchdogRequest {
                pod: None,
                ..good()
            },
        ),
        (
            "pod.namespace:",
            pb::PostWatchdogRequest {
                pod: pod_ref("Shop", "web-0"),
                ..good()
            },
        ),
        (
            "pod.name:",
            pb::PostWatchdogRequest {
                pod: pod_ref("shop", "Web_0"),
                ..good()
            },
        ),
        (
            "name:",
            pb::PostWatchdogRequest {
                name: "HTTP".into(),
                ..good()
            },
        ),
        (
            "name:",
            pb::PostWatchdogRequest {
                name: "".into(),
                ..good()
            },
        ),
        (
            "name:",
            pb::PostWatchdogRequest {
                name: "a/b".into(),
                ..good()
            },
        ),
        (
            "name:",
            pb::PostWatchdogRequest {
                name: "x".repeat(64),
                ..good()
            },
        ),
        (
            "level:",
            pb::PostWatchdogRequest {
                level: pb::Level::Unspecified as i32,
                ..good()
            },
        ),
        ("level:", pb::PostWatchdogRequest { level: 9, ..good() }),
        (
            "message:",
            pb::PostWatchdogRequest {
                message: "m".repeat(1025),
                ..good()
            },
        ),
        (
            "ttl:",
            pb::PostWatchdogRequest {
                ttl: ttl(0),
                ..good()
            },
        ),
        (
            "ttl:",
            pb::PostWatchdogRequest {
                ttl: ttl(8 * 24 * 3600),
                ..good()
            },
        ),
    ];
    for (field, request) in cases {
        let err = client
            .post_watchdog(with_token(request.clone(), &admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "{request:?}: {:?} should name {field}",
            err.message()
        );
    }

    // Unknown pod.
    let err = client
        .post_watchdog(with_token(
            post("shop", "web-9", "http", pb::Level::Info, "ok"),
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = client
        .get_pod_health(with_token(
            pb::GetPodHealthRequest {
                pod: pod_ref("shop", "web-9"),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let untouched = env.get_pod("shop", "web-0").await;
    assert!(
        untouched
            .annotations()
            .keys()
            .all(|k| !k.starts_with("status.autocrane.io/"))
    );
    assert!(
        !untouched
            .labels()
            .contains_key("status.autocrane.io/health")
    );

    // The 33rd watchdog of a pod.
    for i in 0..32 {
        client
            .post_watchdog(with_token(
                post("shop", "web-0", &format!("w{i}"), pb::Level::Info, "ok"),
                &admin,
            ))
            .await
            .unwrap();
    }
    let err = client
        .post_watchdog(with_token(
            post("shop", "web-0", "w32", pb::Level::Error, "one too many"),
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("name:") && err.message().contains("32"),
        "{}",
        err.message()
    );
    assert_eq!(env.kubectl_health("shop", "web-0").await, "info");

    // A malformed selector.
    let err = client
        .list_pod_health(with_token(
            pb::ListPodHealthRequest {
                namespace: "shop".into(),
                label_selector: "app in (".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("label_selector:"),
        "{}",
        err.message()
    );
}

// ---- list and watch -----------------------------------------------------------------------

#[tokio::test]
async fn list_and_watch_follow_the_namespace() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[("app", "web")], &[], None).await;
    env.pod("shop", "db-0", &[("app", "db")], &[], None).await;
    let mut client = env.client().await;
    let admin = env.admin_token();
    client
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Warning, "slow"),
            &admin,
        ))
        .await
        .unwrap();

    let list = client
        .list_pod_health(with_token(
            pb::ListPodHealthRequest {
                namespace: "shop".into(),
                label_selector: "app=web".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.pods.len(), 1);
    assert_eq!(list.pods[0].health, pb::Health::Warning as i32);

    let mut stream = client
        .watch_pod_health(with_token(
            pb::WatchPodHealthRequest {
                namespace: "shop".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.snapshot);
    let mut names: Vec<_> = first
        .pods
        .iter()
        .map(|p| p.pod.clone().unwrap().name)
        .collect();
    names.sort();
    assert_eq!(names, ["db-0", "web-0"]);

    client
        .post_watchdog(with_token(
            post("shop", "db-0", "disk", pb::Level::Error, "full"),
            &admin,
        ))
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!change.snapshot);
    assert_eq!(change.pods.len(), 1);
    assert_eq!(change.pods[0].pod.clone().unwrap().name, "db-0");
    assert_eq!(change.pods[0].health, pb::Health::Error as i32);

    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.sim.client(), "shop")
        .delete("db-0", &Default::default())
        .await
        .unwrap();
    let removed = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if !message.removed.is_empty() {
            break message;
        }
    };
    assert_eq!(removed.removed[0].name, "db-0");

    // Reconnecting with the last token when nothing changed resumes without a snapshot.
    let resumed = client
        .watch_pod_health(with_token(
            pb::WatchPodHealthRequest {
                namespace: "shop".into(),
                resume_token: removed.resume_token.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(!resumed.snapshot && resumed.pods.is_empty(), "{resumed:?}");
    env.stop();
}

#[tokio::test]
async fn insecure_allow_anonymous_accepts_calls_without_a_token_but_still_checks_tokens() {
    let mut args = common::listener_args(50, None);
    args.auth.insecure_allow_anonymous = true;
    let env = Env::start_with(args).await;
    env.pod("dev", "app-0", &[], &[], None).await;
    let mut client = env.client().await;
    client
        .post_watchdog(tonic::Request::new(post(
            "dev",
            "app-0",
            "manual",
            pb::Level::Warning,
            "trying things",
        )))
        .await
        .expect("anonymous post allowed");
    assert_eq!(env.kubectl_health("dev", "app-0").await, "warning");
    let err = client
        .post_watchdog(with_token(
            post("dev", "app-0", "manual", pb::Level::Error, "x"),
            "not-a-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// A pod-bound token minted for the listener (`audience: autocrane-watchdog-listener`, as the
/// controller's pods and the test workload carry it) is accepted; a token minted for some other
/// service is not, and neither is anything else.
#[tokio::test]
async fn tokens_minted_for_the_listener_are_accepted_and_for_others_refused() {
    use k8s_openapi::api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{Pod, ServiceAccount},
    };
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    // Creates the ServiceAccount (and proves API-audience tokens still work, above).
    let _ = env.sim.issue_token("shop", "web", None);
    let pod_uid = Api::<Pod>::namespaced(env.sim.client(), "shop")
        .get("web-0")
        .await
        .unwrap()
        .uid();
    let accounts: Api<ServiceAccount> = Api::namespaced(env.sim.client(), "shop");
    let mint = |audience: &'static str| {
        let accounts = accounts.clone();
        let pod_uid = pod_uid.clone();
        async move {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(vec![audience.into()]),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some("web-0".into()),
                        uid: pod_uid,
                    }),
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            };
            accounts
                .create_token_request("web", &kube::api::PostParams::default(), &request)
                .await
                .expect("TokenRequest")
                .status
                .expect("a token")
                .token
                .expect("a token")
        }
    };
    let mut client = env.client().await;
    let for_listener = mint("autocrane-watchdog-listener").await;
    client
        .post_watchdog(with_token(
            post("shop", "web-0", "app", pb::Level::Info, "mine"),
            for_listener.as_str(),
        ))
        .await
        .expect("a token minted for the listener is accepted");
    let for_vault = mint("vault").await;
    let err = client
        .post_watchdog(with_token(
            post("shop", "web-0", "app", pb::Level::Error, "replayed"),
            for_vault.as_str(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .post_watchdog(with_token(
            post("shop", "web-0", "app", pb::Level::Error, "forged"),
            "not-a-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let value = env
        .get_pod("shop", "web-0")
        .await
        .annotations()
        .get("status.autocrane.io/app")
        .cloned()
        .unwrap_or_default();
    assert!(value.contains("mine"), "{value}");
}
