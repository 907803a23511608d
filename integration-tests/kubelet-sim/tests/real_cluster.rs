//! kubelet-sim as the node agent of the **real** control plane (issue 12, item 2): upstream etcd,
//! kube-apiserver (`Node,RBAC`, `NodeRestriction`, audit log), kube-controller-manager and
//! kube-scheduler from `.cache/cluster/cluster up`, and the `kubelet-sim` binary with the node's
//! own identity (`system:node:NODE` in `system:nodes`, client certificate).
//!
//! Real control plane only, by name and by `#[ignore]`: kube-sim has no scheduler, no Node
//! authorizer, no NodeRestriction and no `pods/log` proxy to a kubelet, so none of these checks
//! applies to it, and an ignored test is reported as ignored, never as passed. Run it with
//!
//! ```sh
//! AUTOCRANE_TEST_CLUSTER=real cargo test -p kubelet-sim --test real_cluster -- --ignored
//! ```
//!
//! (`scripts/test.sh`'s `real` pass). Run with `--ignored` but without
//! `AUTOCRANE_TEST_CLUSTER=real`, or without the cluster binary, it **fails** with what to do.
//!
//! The cluster is the workspace harness's [`TestCluster`] (the one every Kubernetes-facing test
//! takes), here on the `real` backend with this crate's own `kubelet-sim` binary: the launcher
//! and kubelet-sim run under `setpriv --pdeathsig KILL --`, started from the test's own thread,
//! so a killed test run takes them with it, and kubelet-sim's containers (`unshare --kill-child`
//! with Pdeathsig) follow. On success both get SIGTERM and must exit 0
//! ([`TestCluster::stop`]); on a panic the harness SIGKILLs them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use autocrane_test_support::cluster::cluster_binary;
use autocrane_test_support::{Backend, ClusterOptions, TestCluster, eventually};
use common::{condition, phase, pids_with, require_tools, wait_no_pids, wait_pids};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const NODE: &str = "kubelet-sim-real";
const T: Duration = Duration::from_secs(60);

fn node_condition<'a>(n: &'a Node, ty: &str) -> Option<&'a str> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.as_str())
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other}"),
    }
}

/// `cluster kubectl ARGS…` as the admin (kubectl of the control plane's own version), blocking;
/// `kubectl` is [`TestCluster::kubectl_command`].
fn kubectl(mut kubectl: Command, args: &[&str]) -> (bool, String, String) {
    let out = kubectl
        .args(args)
        .output()
        .expect("running cluster kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Audit events as (user, verb, resource, subresource, name, code).
fn audit(dir: &Path) -> Vec<(String, String, String, String, String, u16)> {
    let text = std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let o = &e["objectRef"];
            (
                s(&e["user"]["username"]),
                s(&e["verb"]),
                s(&o["resource"]),
                s(&o["subresource"]),
                s(&o["name"]),
                u16::try_from(e["responseStatus"]["code"].as_u64().unwrap_or(0)).unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real control plane only: AUTOCRANE_TEST_CLUSTER=real cargo test -p kubelet-sim --test real_cluster -- --ignored"]
async fn real_control_plane_only_kubelet_sim_joins_as_a_node_runs_scheduled_pods_and_serves_logs() {
    Backend::require_real("this test");
    require_tools();
    let cluster_bin = cluster_binary();

    // --- the control plane and kubelet-sim (node identity, kubelet API), READY once the node is
    // Ready and untainted ------------------------------------------------------------------------
    let t0 = Instant::now();
    let cluster = TestCluster::start(
        ClusterOptions::new()
            .backend(Backend::Real)
            .with_kubelet()
            .node_name(NODE)
            .pod_network(171)
            .kubelet_bin(env!("CARGO_BIN_EXE_kubelet-sim")),
    )
    .await;
    let cluster_ready = t0.elapsed();
    let dir = cluster.cluster_dir().expect("real").to_path_buf();
    let marker = format!("marker-real-{}", std::process::id());
    let admin = cluster.client();
    let node_client = cluster.node_client().await;

    // The Node, as the controller-manager sees it: Ready, untainted, as registered.
    let nodes: Api<Node> = Api::all(admin.clone());
    let node = nodes.get(NODE).await.expect("the Node exists");
    assert_eq!(node_condition(&node, "Ready"), Some("True"));
    for p in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(node_condition(&node, p), Some("False"), "{p}");
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone());
    assert!(
        taints.as_ref().is_none_or(|t| t.is_empty()),
        "the not-ready taint is gone: {taints:?}"
    );
    let status = node.status.as_ref().expect("node status");
    for r in [&status.capacity, &status.allocatable] {
        let r = r.as_ref().expect("capacity and allocatable");
        for k in ["cpu", "memory", "pods"] {
            assert!(r.contains_key(k), "{k} in {r:?}");
        }
    }
    let addresses = status.addresses.clone().unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"),
        "{addresses:?}"
    );
    let port = status
        .daemon_endpoints
        .as_ref()
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port)
        .expect("daemonEndpoints.kubeletEndpoint.Port");
    assert!(port > 0);
    let node_uid = node.metadata.uid.clone().expect("node uid");

    // Its Lease: owned by the Node, held by it, 40 s.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    let lease = leases.get(NODE).await.expect("the node's Lease");
    let owners = lease.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "Node" && o.name == NODE && o.uid == node_uid),
        "{owners:?}"
    );
    let spec = lease.spec.clone().expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(NODE));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let first_renew = spec.renew_time.clone();

    // --- a pod scheduled by the real scheduler ---------------------------------------------------
    // The container asks the API server who it is with its projected token (`kubectl auth
    // whoami` in-cluster: KUBERNETES_SERVICE_HOST/PORT, the mounted token and ca.crt), then waits
    // for SIGTERM.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "scheduled", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "main", "image": "busybox:1",
                "command": ["sh", "-c", format!(
                    ": {marker}; echo started; {} kubectl auth whoami -o jsonpath='{{.status.userInfo.username}}'; echo; \
                     trap 'echo stopping; exit 0' TERM; while true; do sleep 1; done",
                    cluster_bin.display()
                )],
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
            }],
        }
    }))
    .expect("pod");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let created_at = Instant::now();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod created (admin)");
    let bound = eventually(T, "the scheduler to bind the pod", || async {
        pods.get("scheduled").await.ok().filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty())
        })
    })
    .await;
    let scheduled_after = created_at.elapsed();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some(NODE)
    );
    let scheduled_at = Instant::now();
    let running = eventually(T, "the pod to be Running and Ready", || async {
        pods.get("scheduled")
            .await
            .ok()
            .filter(|p| phase(p) == "Running" && condition(p, "Ready").as_deref() == Some("True"))
    })
    .await;
    let running_after = scheduled_at.elapsed();
    let pod_uid = running.metadata.uid.clone().expect("pod uid");
    assert_eq!(condition(&running, "PodScheduled").as_deref(), Some("True"));
    wait_pids(&marker, 1, T).await;

    // --- its projected token, issued by the real API server, authenticates ---------------------
    let pod_dir = cluster
        .kubelet_state_dir()
        .expect("a kubelet")
        .join("pods")
        .join(format!("default_scheduled_{pod_uid}"));
    let sa_volume = std::fs::read_dir(pod_dir.join("volumes"))
        .expect("pod volumes")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("kube-api-access-"))
        .expect("the API server's kube-api-access-* volume");
    assert_ne!(
        sa_volume, "kube-api-access-sim",
        "the admission plugin's projected volume is used, no synthesized one"
    );
    let token = std::fs::read_to_string(pod_dir.join("volumes").join(&sa_volume).join("token"))
        .expect("token file");
    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let review: TokenReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token.trim()},
    }))
    .unwrap();
    let review = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("TokenReview");
    let rs = review.status.expect("review status");
    assert_eq!(rs.authenticated, Some(true), "{rs:?}");
    let user = rs.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:default")
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["scheduled".to_string()]),
        "the token is bound to the pod: {extra:?}"
    );
    assert_eq!(
        extra.get("authentication.kubernetes.io/node-name"),
        Some(&vec![NODE.to_string()])
    );

    // --- kubectl logs through the API server's proxy to the kubelet API ------------------------
    let logs = eventually(T, "kubectl logs with the in-pod whoami", || async {
        let (ok, out, err) = kubectl(cluster.kubectl_command(), &["logs", "scheduled"]);
        assert!(ok || err.contains("waiting") || out.is_empty(), "{err}");
        Some(out).filter(|o| o.contains("system:serviceaccount:default:default"))
    })
    .await;
    assert!(logs.starts_with("started\n"), "{logs}");
    let (ok, tail, err) = kubectl(
        cluster.kubectl_command(),
        &["logs", "scheduled", "--tail", "1"],
    );
    assert!(ok, "{err}");
    assert_eq!(tail, "system:serviceaccount:default:default\n");
    let (ok, limited, err) = kubectl(
        cluster.kubectl_command(),
        &["logs", "scheduled", "--limit-bytes", "4"],
    );
    assert!(ok, "{err}");
    assert_eq!(limited, "star");
    let (ok, stamped, err) = kubectl(
        cluster.kubectl_command(),
        &["logs", "scheduled", "--timestamps"],
    );
    assert!(ok, "{err}");
    let first = stamped.lines().next().unwrap_or_default();
    let (stamp, rest) = first.split_once(' ').expect("timestamp, space, line");
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{first}");
    assert_eq!(rest, "started");
    let (ok, _, err) = kubectl(
        cluster.kubectl_command(),
        &["logs", "scheduled", "--previous"],
    );
    assert!(!ok);
    assert!(
        err.contains("previous terminated container \"main\" in pod \"scheduled\" not found"),
        "{err}"
    );
    // The kubelet API refuses a client without a certificate of the cluster CA.
    let (ok, _, _) = autocrane_test_support::run(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(dir.join("ca.crt"))
            .arg(format!("https://127.0.0.1:{port}/healthz")),
    );
    assert!(!ok, "no client certificate: refused");
    let (ok, out, err) = autocrane_test_support::run(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(dir.join("ca.crt"))
            .arg("--cert")
            .arg(dir.join("admin.crt"))
            .arg("--key")
            .arg(dir.join("admin.key"))
            .arg(format!("https://127.0.0.1:{port}/healthz")),
    );
    assert!(
        ok && out.trim() == "ok",
        "a cluster CA client is served: {out}{err}"
    );

    // --- NodeRestriction: the node's identity may not touch another Node ------------------------
    let other: Node =
        serde_json::from_value(json!({"metadata": {"name": "another-node"}})).unwrap();
    nodes
        .create(&PostParams::default(), &other)
        .await
        .expect("admin creates another Node");
    let as_node: Api<Node> = Api::all(node_client.clone());
    let pp = PatchParams::default();
    let refused = api_error(
        as_node
            .patch(
                "another-node",
                &pp,
                &Patch::Merge(json!({"metadata": {"labels": {"stolen": "yes"}}})),
            )
            .await
            .expect_err("patching another Node is refused"),
    );
    assert_eq!(refused.code, 403, "{refused:?}");
    let refused_status = api_error(
        as_node
            .patch_status(
                "another-node",
                &pp,
                &Patch::Merge(json!({"status": {"capacity": {"pods": "1"}}})),
            )
            .await
            .expect_err("patching another Node's status is refused"),
    );
    assert_eq!(refused_status.code, 403, "{refused_status:?}");
    // … nor give itself a role label (NodeRestriction proper).
    let refused_label = api_error(
        as_node
            .patch(
                NODE,
                &pp,
                &Patch::Merge(
                    json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
                ),
            )
            .await
            .expect_err("a node-role label is refused"),
    );
    assert_eq!(refused_label.code, 403, "{refused_label:?}");
    assert!(
        refused_label
            .message
            .contains("is not allowed to modify labels"),
        "{refused_label:?}"
    );
    eprintln!(
        "NodeRestriction/Node authorizer answers: other node: {:?}; its status: {:?}; role label: {:?}",
        refused.message, refused_status.message, refused_label.message
    );

    // --- deletion: SIGTERM, the kubelet finishes it (grace 0, UID precondition) ----------------
    // `kubectl logs -f` follows the container to its end (the kubelet API's `follow`).
    let follow = {
        let command = cluster.kubectl_command();
        std::thread::spawn(move || kubectl(command, &["logs", "-f", "scheduled"]))
    };
    eventually(T, "kubectl logs -f to be streaming", || async {
        std::fs::read_to_string(dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"stage\":\"ResponseStarted\"") && l.contains("follow=true"))
    })
    .await;
    let deleted_at = Instant::now();
    pods.delete("scheduled", &DeleteParams::default())
        .await
        .expect("delete");
    wait_no_pids(&marker, T).await;
    eventually(T, "the pod to be gone from the API", || async {
        pods.get_opt("scheduled")
            .await
            .ok()
            .is_some_and(|p| p.is_none())
    })
    .await;
    let deleted_after = deleted_at.elapsed();
    let (ok, followed, err) = tokio::task::block_in_place(|| follow.join()).expect("follow");
    assert!(ok, "kubectl logs -f: {err}");
    assert!(
        followed.starts_with("started\n") && followed.ends_with("stopping\n"),
        "the container got SIGTERM, and follow streamed to its end: {followed:?}"
    );

    // --- who did what (audit log): the node identity, no refusals in normal operation ----------
    let node_user = format!("system:node:{NODE}");
    let events = audit(&dir);
    let by_node = |verb: &str, resource: &str, sub: &str| {
        events
            .iter()
            .filter(|e| e.0 == node_user && e.1 == verb && e.2 == resource && e.3 == sub)
            .map(|e| e.5)
            .collect::<Vec<_>>()
    };
    assert!(
        by_node("patch", "pods", "status").contains(&200),
        "pods/status patched by the node"
    );
    assert!(
        by_node("patch", "nodes", "status").contains(&200),
        "nodes/status patched"
    );
    assert!(
        by_node("create", "serviceaccounts", "token").contains(&201),
        "TokenRequest"
    );
    assert!(by_node("watch", "pods", "").contains(&200), "pods watched");
    assert!(
        events.iter().any(|e| e.0 == node_user
            && e.1 == "delete"
            && e.2 == "pods"
            && e.4 == "scheduled"
            && e.5 == 200),
        "the node finished the deletion"
    );
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.0 == node_user && e.5 >= 400 && e.4 != "another-node")
        .filter(|e| !(e.1 == "patch" && e.2 == "nodes" && e.3.is_empty())) // the role label above
        .filter(|e| !(e.1 == "create" && e.5 == 409)) // none expected, but harmless on a retry
        .collect();
    assert!(
        refusals.is_empty(),
        "requests of the node refused: {refusals:?}"
    );

    // The Lease keeps being renewed (every 10 s).
    eventually(
        Duration::from_secs(30),
        "the Lease to be renewed",
        || async {
            leases
                .get(NODE)
                .await
                .ok()
                .and_then(|l| l.spec?.renew_time)
                .filter(|t| Some(t) != first_renew.as_ref())
        },
    )
    .await;

    eprintln!(
        "TIMES: cluster READY (node Ready, untainted) {:.1} s; \
         pod created → scheduled {:.2} s; scheduled → Running+Ready {:.2} s; delete → gone {:.2} s",
        cluster_ready.as_secs_f64(),
        scheduled_after.as_secs_f64(),
        running_after.as_secs_f64(),
        deleted_after.as_secs_f64()
    );

    // --- stop: kubelet-sim, then the control plane, both cleanly ------------------------------
    cluster.stop().await;
    assert!(pids_with(&marker).is_empty());
}
