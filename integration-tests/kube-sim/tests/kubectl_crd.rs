//! Real kubectl against kube-sim: the AutoCraneDeployment CRD and custom resources (client-side
//! and server-side apply, printer columns, schema and CEL validation, finalizers).

mod common;

use common::*;

async fn env_with_crd() -> Env {
    let env = Env::start(false).await;
    let crd = env.file("crd.yaml", &crd_yaml());
    let out = env.ok(&["apply", "-f", crd.to_str().unwrap()]).await;
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/autocranedeployments.autocrane.io created"), "{out}");
    env.ok(&["create", "namespace", "x"]).await;
    env
}

#[tokio::test]
async fn client_side_apply_creates_then_updates_a_custom_resource() {
    let env = env_with_crd().await;
    let cr = env.file("cr.yaml", &acd_yaml("web", "x", 3));
    let out = env.ok(&["apply", "-f", cr.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "autocranedeployment.autocrane.io/web created");
    let cr2 = env.file("cr2.yaml", &acd_yaml("web", "x", 5));
    let out = env.ok(&["apply", "-f", cr2.to_str().unwrap()]).await;
    assert_eq!(
        out.trim(),
        "autocranedeployment.autocrane.io/web configured"
    );
    let out = env
        .ok(&[
            "get",
            "acd",
            "web",
            "-n",
            "x",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}",
        ])
        .await;
    assert_eq!(out, "5 2");
    let out = env.ok(&["apply", "-f", cr2.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "autocranedeployment.autocrane.io/web unchanged");
    // The scale subresource the CRD declares.
    let out = env
        .ok(&["scale", "acd", "web", "-n", "x", "--replicas=4"])
        .await;
    assert_eq!(out.trim(), "autocranedeployment.autocrane.io/web scaled");
    let out = env
        .ok(&[
            "get",
            "acd",
            "web",
            "-n",
            "x",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(out, "4");
}

#[tokio::test]
async fn get_shows_printer_columns_and_yaml() {
    let env = env_with_crd().await;
    let cr = env.file("cr.yaml", &acd_yaml("web", "x", 3));
    env.ok(&["apply", "-f", cr.to_str().unwrap()]).await;
    let out = env.ok(&["get", "acd", "-n", "x"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "DESIRED", "READY", "HEALTHY", "CURRENT", "TARGET", "PHASE", "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["web", "3"], "{out}");
    let yaml = env
        .ok(&[
            "get",
            "autocranedeployments.autocrane.io",
            "web",
            "-n",
            "x",
            "-o",
            "yaml",
        ])
        .await;
    let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(v["kind"].as_str(), Some("AutoCraneDeployment"));
    assert_eq!(v["spec"]["replicas"].as_i64(), Some(3));
    assert!(
        v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36),
        "{yaml}"
    );
    assert!(
        v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "{yaml}"
    );
    // Defaults from the schema were applied on create.
    assert!(
        !v["spec"]["rollout"].is_null(),
        "schema defaults missing: {yaml}"
    );
}

#[tokio::test]
async fn server_side_apply_creates_and_keeps_other_managers_fields() {
    let env = env_with_crd().await;
    let cr = env.file("cr.yaml", &acd_yaml("api", "x", 2));
    let out = env
        .ok(&["apply", "--server-side", "-f", cr.to_str().unwrap()])
        .await;
    assert_eq!(
        out.trim(),
        "autocranedeployment.autocrane.io/api serverside-applied"
    );
    env.ok(&["label", "acd", "api", "-n", "x", "team=blue"])
        .await;
    let cr2 = env.file("cr2.yaml", &acd_yaml("api", "x", 4));
    env.ok(&["apply", "--server-side", "-f", cr2.to_str().unwrap()])
        .await;
    let out = env
        .ok(&[
            "get",
            "acd",
            "api",
            "-n",
            "x",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.labels.team}",
        ])
        .await;
    assert_eq!(out, "4 blue");
    let yaml = env
        .ok(&[
            "get",
            "acd",
            "api",
            "-n",
            "x",
            "-o",
            "yaml",
            "--show-managed-fields",
        ])
        .await;
    assert!(
        yaml.contains("manager: kubectl\n") && yaml.contains("operation: Apply"),
        "{yaml}"
    );
    assert!(yaml.contains("manager: kubectl-label"), "{yaml}");
    // A second applier that sets the same field to another value conflicts.
    let cr3 = env.file("cr3.yaml", &acd_yaml("api", "x", 7));
    let err = env
        .fails(&[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "-f",
            cr3.to_str().unwrap(),
        ])
        .await;
    assert!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    env.ok(&[
        "apply",
        "--server-side",
        "--field-manager",
        "other",
        "--force-conflicts",
        "-f",
        cr3.to_str().unwrap(),
    ])
    .await;
    let out = env
        .ok(&[
            "get",
            "acd",
            "api",
            "-n",
            "x",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(out, "7");
}

#[tokio::test]
async fn schema_invalid_custom_resources_are_rejected_naming_the_field() {
    let env = env_with_crd().await;
    let bad = env.file("bad.yaml", &acd_yaml("bad", "x", 20000));
    let err = env.fails(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(
        err.contains("spec.replicas") && err.contains("should be less than or equal to 10000"),
        "{err}"
    );
    assert!(err.contains("is invalid"), "{err}");
    let cel = acd_yaml("cel", "x", 1).replace(
        "    pinned: \"1.0.0\"\n",
        "    pinned: \"1.0.0\"\n    source:\n      oci: {registry: r.invalid, repository: a/b}\n",
    );
    let f = env.file("cel.yaml", &cel);
    let err = env.fails(&["apply", "-f", f.to_str().unwrap()]).await;
    assert!(
        err.contains("spec.version")
            && err.contains("set exactly one of version.pinned and version.source"),
        "{err}"
    );
    let missing = acd_yaml("missing", "x", 1).replace("  replicas: 1\n", "");
    let f = env.file("missing.yaml", &missing);
    let err = env.fails(&["apply", "-f", f.to_str().unwrap()]).await;
    assert!(err.contains("spec.replicas: Required value"), "{err}");
    let unknown =
        acd_yaml("unknown", "x", 1).replace("  replicas: 1\n", "  replicas: 1\n  bogus: true\n");
    let f = env.file("unknown.yaml", &unknown);
    let err = env.fails(&["apply", "-f", f.to_str().unwrap()]).await;
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");
    env.fails(&["get", "acd", "bad", "-n", "x"]).await;
}

#[tokio::test]
async fn delete_waits_for_finalizers() {
    let env = env_with_crd().await;
    let cr = acd_yaml("fin", "x", 1).replace(
        "  namespace: x\n",
        "  namespace: x\n  finalizers: [autocrane.io/cleanup]\n",
    );
    let f = env.file("fin.yaml", &cr);
    env.ok(&["apply", "-f", f.to_str().unwrap()]).await;
    env.ok(&["delete", "acd", "fin", "-n", "x", "--wait=false"])
        .await;
    let ts = env
        .ok(&[
            "get",
            "acd",
            "fin",
            "-n",
            "x",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await;
    assert!(!ts.is_empty(), "deletionTimestamp not set");
    env.ok(&[
        "patch",
        "acd",
        "fin",
        "-n",
        "x",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await;
    let err = env.fails(&["get", "acd", "fin", "-n", "x"]).await;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}
