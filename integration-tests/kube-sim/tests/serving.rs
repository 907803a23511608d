//! How kube-sim is served and driven: the HTTPS listener with its generated CA, the fault
//! admin endpoint (injected errors, latency, seeded determinism), the binary writing a
//! kubeconfig kubectl can use, and snapshots across a restart.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use kube_sim::{ErrorRule, FaultConfig, KubeSim};
use serde_json::json;

use common::{cm, raw};

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
    assert_eq!(sim.faults().injected(), 1, "the 429 was an injected fault");
    let (_, counts) = raw(&sim, "GET", "/_sim/faults/injected", "").await;
    let counts: serde_json::Value = serde_json::from_str(&counts).unwrap();
    assert_eq!(counts, json!({"total": 1, "byVerb": {"list": 1}}));
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
        user: None,
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
    let failed = out.iter().filter(|ok| !**ok).count() as u64;
    assert_eq!(
        sim.faults().injected(),
        failed,
        "every failure was an injected fault"
    );
    out
}

/// A rule with `user` fails only that user's requests: a test can disturb one component while its
/// own reads, made as the administrator, succeed.
#[tokio::test]
async fn a_fault_scoped_to_a_user_spares_every_other_caller() {
    let sim = KubeSim::builder().start().await.unwrap();
    let token = sim.issue_token("default", "robot", None);
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(sim.client());
    let view = serde_json::from_value(json!({
        "metadata": {"name": "robot-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}],
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &view)
        .await
        .unwrap();
    sim.faults().add_error(ErrorRule {
        verb: Some("get".into()),
        resource: None,
        user: Some("system:serviceaccount:default:robot".into()),
        rate: 1.0,
        code: 500,
        retry_after_seconds: None,
    });
    let admin: Api<Namespace> = Api::all(sim.client());
    admin
        .get("default")
        .await
        .expect("the administrator is spared");
    let robot: Api<Namespace> = Api::all(sim.client_with_token(Some(&token)));
    let err = robot
        .get("default")
        .await
        .expect_err("the robot's get fails");
    assert!(
        matches!(&err, kube::Error::Api(status) if status.code == 500),
        "{err}"
    );
    assert_eq!(sim.faults().injected(), 1);
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
    // The counter continues (never restarts below the snapshot's); the restart republishes
    // this run's CA in each namespace's `kube-root-ca.crt`, which takes one change per namespace.
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(sim.client())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .len() as u64;
    assert_eq!(sim.resource_version(), rv + namespaces);
    let root_ca = api.get("kube-root-ca.crt").await.unwrap();
    assert_eq!(
        root_ca
            .data
            .unwrap_or_default()
            .get("ca.crt")
            .map(String::as_str),
        Some(sim.ca_pem())
    );
}
