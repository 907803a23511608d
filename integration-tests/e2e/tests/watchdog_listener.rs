//! The WatchdogListener end to end on the cluster of `AUTOCRANE_TEST_CLUSTER` (kube-sim with
//! kubelet-sim by default; the real API server, controller-manager and scheduler with a
//! kubelet-sim node in `scripts/test.sh`'s real pass), installed as `deploy/rbac.yaml` says:
//! `autocrane watchdog-listener` runs with its own ServiceAccount's token, and
//! - a pod posts its own watchdog from inside its container with its projected, pod-bound
//!   ServiceAccount token (TokenReview names the pod): the annotation, the rollup label and the
//!   readiness condition land, and the pod becomes Ready through its readiness gate; the same
//!   token may not post for another pod;
//! - a person's ServiceAccount posts for the pod once a RoleBinding of
//!   `autocrane-watchdog-writer` lets it (SubjectAccessReview): the pod turns unready; without
//!   the binding, or with a forged token, the post is refused.
//!
//! The listener logs at `--log trace`, and no token — its own, the pods', the people's, the
//! forged one — appears in its log, its command line, or the pods' logs.

use std::{net::SocketAddr, process::Command, time::Duration};

use autocrane_test_support::{
    ClusterOptions, Running, TestCluster, accepting, assert_no_secrets, assert_traced,
    autocrane_bin, command_line, eventually, free_port, run,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::PostParams};
use serde_json::json;

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(60);
/// Where the ServiceAccount admission plugin (real) and kubelet-sim (sim) mount the token.
const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A pod of ServiceAccount `web` running `script` (sh), with the readiness gate the controller's
/// pods carry.
fn pod(name: &str, listener: SocketAddr, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "terminationGracePeriodSeconds": 2,
            "readinessGates": [{"conditionType": "autocrane.io/healthy"}],
            "containers": [{
                "name": "app",
                "image": "registry.example/web:1",
                "command": ["sh", "-c", script],
                "env": [
                    {"name": "AUTOCRANE_WATCHDOG_SERVER", "value": format!("http://{listener}")},
                    {"name": "AUTOCRANE_WATCHDOG_TOKEN_FILE", "value": TOKEN},
                ],
            }],
        },
    }))
    .unwrap()
}

/// `autocrane watchdog post --pod shop/POD …` from the test (a person or tool), with the token in
/// `token_file`.
async fn post_as(
    listener: SocketAddr,
    token_file: &std::path::Path,
    pod: &str,
    level: &str,
) -> (bool, String) {
    let mut command = Command::new(autocrane_bin());
    command
        .args(["watchdog", "post", "--pod", &format!("{NS}/{pod}")])
        .args([
            "--name",
            "smoke",
            "--level",
            level,
            "--message",
            "checkout smoke test",
        ])
        .env("AUTOCRANE_WATCHDOG_SERVER", format!("http://{listener}"))
        .arg("--token-file")
        .arg(token_file);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .unwrap();
    (ok, format!("{out}{err}"))
}

/// The pod's `Ready` and `autocrane.io/healthy` condition statuses, and its health label.
async fn readiness(pods: &Api<Pod>, name: &str) -> (String, String, String) {
    let pod = pods.get(name).await.unwrap();
    let condition = |type_: &str| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == type_))
            .map(|c| c.status.clone())
            .unwrap_or_default()
    };
    let label = pod
        .labels()
        .get("status.autocrane.io/health")
        .cloned()
        .unwrap_or_default();
    (condition("Ready"), condition("autocrane.io/healthy"), label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_post_their_own_watchdogs_with_their_projected_token_and_rbac_guards_the_rest() {
    // Built before the cluster starts, so its start is not raced by cargo.
    let autocrane = autocrane_bin();
    let cluster = TestCluster::start(ClusterOptions::new().with_kubelet()).await;
    cluster
        .install_rbac_with_accounts(NS, &["web", "ops", "nobody"])
        .await;

    // The listener as installed: its own ServiceAccount, no anonymous calls.
    let listener_kubeconfig = cluster
        .service_account_kubeconfig("autocrane-system", "autocrane-watchdog-listener")
        .await;
    let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(&autocrane);
    command
        .args(["watchdog-listener", "--listen", &listener.to_string()])
        .args(["--admin-listen", "off", "--log", "trace"])
        .env("KUBECONFIG", &listener_kubeconfig);
    let listener_process = Running::logged("watchdog-listener", command, cluster.dir());
    accepting(listener).await;

    // web-1 only idles; web-0 posts for itself, then tries to post for web-1.
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NS);
    let idle = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let post = |pod: &str, name: &str, level: &str| {
        format!(
            "{} watchdog post --pod {NS}/{pod} --name {name} --level {level} --message 'posted from inside'",
            autocrane.display()
        )
    };
    let script = format!(
        "for i in $(seq 100); do {own} && echo OWN-POST-OK && break; sleep 0.2; done; \
         {forged}; echo FORGED-POST-EXIT=$?; {idle}",
        own = post("web-0", "self", "info"),
        forged = post("web-1", "forged", "error"),
    );
    for (name, script) in [("web-1", idle.to_string()), ("web-0", script)] {
        pods.create(&PostParams::default(), &pod(name, listener, &script))
            .await
            .unwrap_or_else(|err| panic!("creating pod {name}: {err}"));
    }

    // The pod's own post lands: annotation, label, condition, and the pod is Ready.
    eventually(
        WAIT,
        "web-0 Ready with an info watchdog of its own",
        || async {
            readiness(&pods, "web-0").await == ("True".into(), "True".into(), "info".into())
        },
    )
    .await;
    let web0 = pods.get("web-0").await.unwrap();
    let own = &web0.annotations()["status.autocrane.io/self"];
    assert!(
        own.starts_with("info/") && own.ends_with("/posted from inside"),
        "{own}"
    );
    let logs = eventually(WAIT, "web-0's forged post to be answered", || async {
        let output = cluster.kubectl(&["logs", "web-0", "-n", NS]).await;
        Some(output.stdout).filter(|log| log.contains("FORGED-POST-EXIT="))
    })
    .await;
    assert!(logs.contains("OWN-POST-OK"), "{logs}");
    assert!(!logs.contains("FORGED-POST-EXIT=0"), "{logs}");
    assert!(
        logs.contains("bound to pod shop/web-0"),
        "the refusal names the pod the token is bound to:\n{logs}"
    );
    let web1 = pods.get("web-1").await.unwrap();
    assert!(
        !web1
            .annotations()
            .contains_key("status.autocrane.io/forged"),
        "{:?}",
        web1.annotations()
    );

    // A ServiceAccount with no grant on watchdogs is refused, a forged token too.
    let token_file = cluster.dir().join("token");
    let nobody = cluster.service_account_token(NS, "nobody").await;
    std::fs::write(&token_file, &nobody).unwrap();
    let (ok, denied) = post_as(listener, &token_file, "web-0", "error").await;
    assert!(!ok && denied.contains("PermissionDenied"), "{denied}");
    std::fs::write(&token_file, "forged.token.value").unwrap();
    let (ok, unauthenticated) = post_as(listener, &token_file, "web-0", "error").await;
    assert!(
        !ok && unauthenticated.contains("Unauthenticated"),
        "{unauthenticated}"
    );

    // With a RoleBinding of autocrane-watchdog-writer, `ops` may: the pod turns unready.
    cluster
        .kubectl_ok(&[
            "create",
            "rolebinding",
            "ops-writes-watchdogs",
            "-n",
            NS,
            "--clusterrole",
            "autocrane-watchdog-writer",
            "--serviceaccount",
            "shop:ops",
        ])
        .await;
    let ops = cluster.service_account_token(NS, "ops").await;
    std::fs::write(&token_file, &ops).unwrap();
    // The listener caches a denial for 2 s, RBAC may take a moment: retry until allowed.
    eventually(WAIT, "ops's post to be allowed", || {
        let token_file = token_file.clone();
        async move { post_as(listener, &token_file, "web-0", "error").await.0 }
    })
    .await;
    eventually(WAIT, "web-0 unready with an error watchdog", || async {
        readiness(&pods, "web-0").await == ("False".into(), "False".into(), "error".into())
    })
    .await;
    let table = cluster
        .kubectl_ok(&["get", "pods", "-n", NS, "-L", "status.autocrane.io/health"])
        .await;
    let row = table
        .lines()
        .find(|line| line.starts_with("web-0 "))
        .unwrap_or_else(|| panic!("{table}"));
    // (kubectl's READY column counts ready containers; the pod's Ready condition is above.)
    assert!(row.ends_with("error"), "{table}");

    // No token in any log or command line: the listener's own (from its kubeconfig), the
    // people's, the forged one; the pods' projected tokens are caught by their JWT shape.
    let kubeconfig: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&listener_kubeconfig).unwrap()).unwrap();
    let own = kubeconfig["users"][0]["user"]["token"]
        .as_str()
        .expect("the listener's kubeconfig holds its token")
        .to_string();
    let known = [own.as_str(), &nobody, &ops, "forged.token.value"];
    let log = listener_process.log_text();
    assert_traced("the WatchdogListener", &log, 100);
    assert_no_secrets("the WatchdogListener's log", &log, &known);
    assert_no_secrets(
        "the WatchdogListener's command line",
        &command_line(listener_process.pid()),
        &known,
    );
    assert_no_secrets("the pods' log", &logs, &known);
    assert_no_secrets("the CLI's refusals", &(denied + &unauthenticated), &known);
    drop(listener_process);
    cluster.stop().await;
}
