//! Real kubectl against kube-sim: built-in resources (pods, configmaps), selectors, every patch
//! type, describe, cascading delete, `get -w` and `auth can-i` with authentication on.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn env_with_pods() -> Env {
    let env = Env::start(false).await;
    env.ok(&["create", "namespace", "x"]).await;
    for (name, labels) in [
        ("web-0", "app: web, status.autocrane.io/health: ok"),
        ("web-1", "app: web, status.autocrane.io/health: error"),
        ("db-0", "app: db"),
    ] {
        let f = env.file(&format!("{name}.yaml"), &pod_yaml(name, "x", labels));
        env.ok(&["apply", "-f", f.to_str().unwrap()]).await;
    }
    env
}

#[tokio::test]
async fn get_pods_with_columns_label_columns_and_selectors() {
    let env = env_with_pods().await;
    let out = env
        .ok(&["get", "pods", "-n", "x", "-L", "status.autocrane.io/health"])
        .await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "HEALTH"],
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("web-1")
            && l.contains("0/1")
            && l.contains("Pending")
            && l.trim_end().ends_with("error")),
        "{out}"
    );
    let out = env
        .ok(&["get", "pods", "-n", "x", "-l", "app=web", "-o", "name"])
        .await;
    assert_eq!(out, "pod/web-0\npod/web-1\n");
    let out = env
        .ok(&[
            "get",
            "pods",
            "-n",
            "x",
            "-l",
            "app notin (web)",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out, "pod/db-0\n");
    let out = env
        .ok(&[
            "get",
            "pods",
            "-n",
            "x",
            "-l",
            "!status.autocrane.io/health",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out, "pod/db-0\n");
    let out = env
        .ok(&[
            "get",
            "pods",
            "-n",
            "x",
            "--field-selector",
            "metadata.name=web-0",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out, "pod/web-0\n");
    let out = env
        .ok(&["get", "pods", "-n", "x", "--chunk-size", "1", "-o", "name"])
        .await;
    assert_eq!(out, "pod/db-0\npod/web-0\npod/web-1\n");
    let yaml = env
        .ok(&["get", "pod", "web-0", "-n", "x", "-o", "yaml"])
        .await;
    let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(v["status"]["phase"].as_str(), Some("Pending"));
    assert_eq!(v["spec"]["restartPolicy"].as_str(), Some("Always"));
    let err = env.fails(&["get", "pod", "nope", "-n", "x"]).await;
    assert!(
        err.contains("Error from server (NotFound): pods \"nope\" not found"),
        "{err}"
    );
}

#[tokio::test]
async fn annotate_label_and_every_patch_type() {
    let env = env_with_pods().await;
    env.ok(&["annotate", "pod", "web-0", "-n", "x", "note=hello"])
        .await;
    env.ok(&["label", "pod", "web-0", "-n", "x", "tier=front"])
        .await;
    let err = env
        .fails(&["label", "pod", "web-0", "-n", "x", "tier=back"])
        .await;
    assert!(err.contains("already has a value"), "{err}");
    env.ok(&[
        "label",
        "pod",
        "web-0",
        "-n",
        "x",
        "tier=back",
        "--overwrite",
    ])
    .await;
    env.ok(&[
        "patch",
        "pod",
        "web-0",
        "-n",
        "x",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"m":"1"}}}"#,
    ])
    .await;
    env.ok(&[
        "patch",
        "pod",
        "web-0",
        "-n",
        "x",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/j","value":"2"}]"#,
    ])
    .await;
    // Strategic merge: the env list merges by name, the container list by name.
    env.ok(&["patch", "pod", "web-0", "-n", "x", "-p", r#"{"spec":{"containers":[{"name":"app","image":"example.invalid/web:2.0.0"}]},"metadata":{"labels":{"s":"3"}}}"#]).await;
    let out = env.ok(&["get", "pod", "web-0", "-n", "x", "-o", "jsonpath={.metadata.annotations.note} {.metadata.labels.tier} {.metadata.labels.m} {.metadata.labels.j} {.metadata.labels.s} {.spec.containers[0].image} {.spec.containers[0].env[0].name}"]).await;
    assert_eq!(out, "hello back 1 2 3 example.invalid/web:2.0.0 A");
    let err = env
        .fails(&[
            "patch",
            "pod",
            "web-0",
            "-n",
            "x",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/metadata/name","value":"zzz"}]"#,
        ])
        .await;
    assert!(err.contains("Invalid") || err.contains("invalid"), "{err}");
    let err = env
        .fails(&[
            "patch",
            "pod",
            "web-0",
            "-n",
            "x",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"restartPolicy":"Never"}}"#,
        ])
        .await;
    assert!(err.contains("pod updates may not change fields"), "{err}");
    let dry = env
        .ok(&[
            "label",
            "pod",
            "web-0",
            "-n",
            "x",
            "dry=run",
            "--dry-run=server",
        ])
        .await;
    assert!(dry.contains("server dry run"), "{dry}");
    let out = env
        .ok(&[
            "get",
            "pod",
            "web-0",
            "-n",
            "x",
            "-o",
            "jsonpath={.metadata.labels.dry}",
        ])
        .await;
    assert_eq!(out, "");
}

#[tokio::test]
async fn describe_pod_shows_its_fields_and_events() {
    let env = env_with_pods().await;
    let out = env.ok(&["describe", "pod", "web-0", "-n", "x"]).await;
    for want in [
        "Name:",
        "web-0",
        "Namespace:",
        "x",
        "Containers:",
        "app:",
        "example.invalid/web:1.0.0",
        "Events:",
    ] {
        assert!(out.contains(want), "describe lacks {want}:\n{out}");
    }
}

#[tokio::test]
async fn delete_cascades_to_owned_objects() {
    let env = Env::start(false).await;
    env.ok(&["create", "namespace", "x"]).await;
    for (owner, policy) in [("bg", "background"), ("fg", "foreground")] {
        env.ok(&["create", "configmap", owner, "-n", "x"]).await;
        let uid = env
            .ok(&[
                "get",
                "cm",
                owner,
                "-n",
                "x",
                "-o",
                "jsonpath={.metadata.uid}",
            ])
            .await;
        for i in 0..2 {
            let child = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {owner}-child-{i}\n  namespace: x\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: {owner}\n    uid: {uid}\n    blockOwnerDeletion: true\n"
            );
            let f = env.file(&format!("{owner}{i}.yaml"), &child);
            env.ok(&["apply", "-f", f.to_str().unwrap()]).await;
        }
        let out = env
            .ok(&[
                "delete",
                "cm",
                owner,
                "-n",
                "x",
                &format!("--cascade={policy}"),
            ])
            .await;
        assert!(
            out.contains(&format!("configmap \"{owner}\" deleted")),
            "{out}"
        );
        let left = env.ok(&["get", "cm", "-n", "x", "-o", "name"]).await;
        assert!(!left.contains(owner), "{policy} deletion left {left}");
    }
    // Orphan keeps the dependents.
    env.ok(&["create", "configmap", "or", "-n", "x"]).await;
    let uid = env
        .ok(&[
            "get",
            "cm",
            "or",
            "-n",
            "x",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await;
    let f = env.file("orc.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: or-child\n  namespace: x\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: or, uid: {uid}}}\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]).await;
    env.ok(&["delete", "cm", "or", "-n", "x", "--cascade=orphan"])
        .await;
    let refs = env
        .ok(&[
            "get",
            "cm",
            "or-child",
            "-n",
            "x",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ])
        .await;
    assert_eq!(refs, "");
    // Graceful pod deletion: kubectl waits until the pod is gone.
    let f = env.file("p.yaml", &pod_yaml("p", "x", "a: b"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]).await;
    env.ok(&["delete", "pod", "p", "-n", "x"]).await;
    env.fails(&["get", "pod", "p", "-n", "x"]).await;
}

#[tokio::test]
async fn get_watch_sees_changes() {
    let env = Env::start(false).await;
    env.ok(&["create", "namespace", "x"]).await;
    env.ok(&["create", "configmap", "w", "-n", "x"]).await;
    let cache = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(kubectl_bin())
        .args([
            "--kubeconfig",
            env.kubeconfig.to_str().unwrap(),
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "get",
            "configmaps",
            "-n",
            "x",
            "-w",
            "-o",
            "name",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl -w starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Every namespace holds the root CA's ConfigMap, as on a real cluster.
    for want in ["configmap/kube-root-ca.crt", "configmap/w"] {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("initial line in time")
            .unwrap();
        assert_eq!(line.as_deref(), Some(want));
    }
    env.ok(&["create", "configmap", "w2", "-n", "x"]).await;
    let next = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("change seen in time")
        .unwrap();
    assert_eq!(next.as_deref(), Some("configmap/w2"));
    child.kill().await.ok();
}

#[tokio::test]
async fn get_watch_table_output_sees_updates() {
    let env = Env::start(false).await;
    env.ok(&["create", "namespace", "x"]).await;
    let f = env.file("p.yaml", &pod_yaml("p", "x", "a: b"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]).await;
    let cache = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(kubectl_bin())
        .args([
            "--kubeconfig",
            env.kubeconfig.to_str().unwrap(),
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "get",
            "pods",
            "-n",
            "x",
            "-w",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl -w starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS"),
        "{header}"
    );
    let row = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(row.starts_with("p ") && row.contains("Pending"), "{row}");
    env.ok(&["label", "pod", "p", "-n", "x", "x=y"]).await;
    let row = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("update seen")
        .unwrap()
        .unwrap();
    assert!(row.starts_with("p "), "{row}");
    child.kill().await.ok();
}

#[tokio::test]
async fn auth_can_i_and_forbidden_with_auth_on() {
    // With auth on the kubeconfig's current context is the HTTPS listener.
    let env = Env::start(true).await;
    env.ok(&["create", "namespace", "x"]).await;
    env.ok(&["create", "serviceaccount", "bot", "-n", "x"])
        .await;
    env.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "x",
        "--verb=get,list,watch",
        "--resource=pods",
    ])
    .await;
    env.ok(&[
        "create",
        "rolebinding",
        "bot-reads",
        "-n",
        "x",
        "--role=pod-reader",
        "--serviceaccount=x:bot",
    ])
    .await;
    let token = env.ok(&["create", "token", "bot", "-n", "x"]).await;
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped token: {token}");
    let yes = env
        .kubectl_as(token, &["auth", "can-i", "list", "pods", "-n", "x"])
        .await;
    assert!(
        yes.status.success() && String::from_utf8_lossy(&yes.stdout).trim() == "yes",
        "{yes:?}"
    );
    let no = env
        .kubectl_as(token, &["auth", "can-i", "delete", "pods", "-n", "x"])
        .await;
    assert!(
        !no.status.success() && String::from_utf8_lossy(&no.stdout).trim() == "no",
        "{no:?}"
    );
    let no = env
        .kubectl_as(token, &["auth", "can-i", "list", "pods", "-n", "default"])
        .await;
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    let out = env.kubectl_as(token, &["get", "pods", "-n", "x"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = env
        .kubectl_as(token, &["get", "configmaps", "-n", "x"])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"configmaps is forbidden: User "system:serviceaccount:x:bot" cannot list resource "configmaps" in API group "" in the namespace "x""#), "{err}");
    let out = env
        .kubectl_as("not-a-token", &["get", "pods", "-n", "x"])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
    // Impersonation by the admin.
    let out = env
        .kubectl(&[
            "auth",
            "can-i",
            "delete",
            "pods",
            "-n",
            "x",
            "--as",
            "system:serviceaccount:x:bot",
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{out:?}");
    let out = env
        .ok(&[
            "auth",
            "can-i",
            "get",
            "pods",
            "-n",
            "x",
            "--as",
            "system:serviceaccount:x:bot",
        ])
        .await;
    assert_eq!(out.trim(), "yes");
}

#[tokio::test]
async fn secret_string_data_is_encoded_into_data_and_not_stored() {
    let env = Env::start(false).await;
    let manifest = env.file(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: default}\n\
         data: {user: YWRtaW4=, token: b2xk}\nstringData: {token: s3cr3t, extra: 'two words'}\n",
    );
    env.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    let stored: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "secret", "creds", "-o", "json"]).await).unwrap();
    assert_eq!(stored["type"], "Opaque", "{stored}");
    assert!(stored.get("stringData").is_none(), "{stored}");
    assert_eq!(
        stored["data"],
        serde_json::json!({"user": "YWRtaW4=", "token": "czNjcjN0", "extra": "dHdvIHdvcmRz"}),
        "stringData wins over data for the same key"
    );
    // An update with stringData again: encoded, and still not stored.
    env.ok(&[
        "patch",
        "secret",
        "creds",
        "--type",
        "merge",
        "-p",
        r#"{"stringData": {"user": "root"}}"#,
    ])
    .await;
    let user = env
        .ok(&["get", "secret", "creds", "-o", "jsonpath={.data.user}"])
        .await;
    assert_eq!(user, "cm9vdA==");
}
