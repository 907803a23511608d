//! The install manifests in `deploy/` parse as Kubernetes objects and grant least privilege: no
//! wildcard verbs, resources or groups, no access to secrets, and no token for components that do
//! not talk to Kubernetes. What the grants allow, asked of an API server, is `tests/rbac.rs`.

use std::collections::BTreeMap;

use autocrane_test_support::workspace_root;

fn documents(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(workspace_root().join("deploy").join(file)).unwrap();
    text.split("\n---")
        .map(parse_yaml)
        .filter(|value: &serde_json::Value| !value.is_null())
        .collect()
}

fn parse_yaml(doc: &str) -> serde_json::Value {
    serde_saphyr::from_str(doc).unwrap_or_else(|err| panic!("invalid YAML document: {err}\n{doc}"))
}

#[test]
fn rbac_grants_no_wildcards_and_no_secrets() {
    let docs = documents("rbac.yaml");
    let roles: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    assert!(
        roles.len() >= 4,
        "expected the component roles, found {}",
        roles.len()
    );
    for role in roles {
        let name = role["metadata"]["name"].as_str().unwrap();
        for rule in role["rules"].as_array().unwrap() {
            for key in ["verbs", "resources", "apiGroups"] {
                let values = rule[key]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: rule without {key}"));
                assert!(
                    values.iter().all(|v| v != "*"),
                    "{name} grants a wildcard in {key}"
                );
            }
            assert!(
                rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r != "secrets"),
                "{name} may touch secrets"
            );
        }
    }
}

#[test]
fn the_version_watcher_and_data_repository_only_review_their_callers() {
    let docs = documents("rbac.yaml");
    for role in ["autocrane-version-watcher", "autocrane-data-repository"] {
        let rules = &docs
            .iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == role)
            .unwrap_or_else(|| panic!("{role} missing"))["rules"];
        let resources: Vec<&str> = rules
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().unwrap())
            .map(|r| r.as_str().unwrap())
            .collect();
        let mut expected = vec!["tokenreviews", "subjectaccessreviews"];
        if role == "autocrane-data-repository" {
            // It calls the VersionWatcher (GetSource, WatchVersions).
            expected.push("versions");
        }
        assert_eq!(resources, expected, "{role}");
    }
}

#[test]
fn every_role_is_bound_to_its_service_account() {
    let docs = documents("rbac.yaml");
    for role in [
        "autocrane-controller",
        "autocrane-watchdog-listener",
        "autocrane-version-watcher",
        "autocrane-data-repository",
    ] {
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "ClusterRoleBinding" && d["roleRef"]["name"] == role)
            .unwrap_or_else(|| panic!("{role} is not bound"));
        assert_eq!(binding["subjects"][0]["name"], role);
        assert_eq!(binding["subjects"][0]["namespace"], "autocrane-system");
    }
}

#[test]
fn components_run_hardened_with_probes_and_limits() {
    let docs = documents("components.yaml");
    let deployments: Vec<&serde_json::Value> =
        docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert!(deployments.len() >= 3);
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let account = pod["serviceAccountName"].as_str().unwrap();
        assert_eq!(account, name, "{name} runs under its own ServiceAccount");
        for container in pod["containers"].as_array().unwrap() {
            // Servers are ready when their gRPC health says so; the controller serves no gRPC
            // API, so its admin listener's /healthz.
            let probe = &container["readinessProbe"];
            assert!(
                probe["grpc"]["port"].is_number()
                    || (name == "autocrane-controller" && probe["httpGet"]["path"] == "/healthz"),
                "{name} has no readiness probe"
            );
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{name}"
            );
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["capabilities"]["drop"][0], "ALL", "{name}");
            let subcommand = container["args"][0].as_str().unwrap();
            assert!(
                name.ends_with(subcommand),
                "{name} runs `autocrane {subcommand}`"
            );
        }
    }
}

#[test]
fn only_the_data_repository_and_the_controller_reach_the_version_watcher_api() {
    let docs = documents("components.yaml");
    let policy = docs
        .iter()
        .find(|d| {
            d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "autocrane-version-watcher"
        })
        .expect("a NetworkPolicy for the VersionWatcher");
    let watcher = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "autocrane-version-watcher")
        .unwrap();
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        watcher["spec"]["template"]["metadata"]["labels"],
        "the policy selects the VersionWatcher's pods"
    );
    assert_eq!(policy["spec"]["policyTypes"][0], "Ingress");
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let grpc = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == "grpc")
        .expect("a rule for the gRPC port");
    let callers = &grpc["from"][0]["podSelector"]["matchExpressions"][0];
    assert_eq!(callers["key"], "app.kubernetes.io/component");
    assert_eq!(callers["operator"], "In");
    assert_eq!(
        callers["values"],
        serde_json::json!(["data-repository", "controller"])
    );
    assert!(
        grpc["from"][0].get("namespaceSelector").is_none(),
        "callers from this namespace only"
    );
    // Every other rule opens only the metrics port.
    for rule in rules.iter().filter(|r| r["ports"][0]["port"] != "grpc") {
        assert_eq!(rule["ports"], serde_json::json!([{"port": "admin"}]));
    }
}

/// `deploy/tls/` as kustomize renders it on top of `deploy/` (through a kustomization of the
/// user's own, as its README says): every server serves TLS from a mounted Secret and requires
/// client certificates, every client URL is `https://` with a client certificate, no Secret is
/// mounted with `subPath` (the kubelet would never update it), no probe speaks gRPC to the TLS
/// port, and every variable set is one the subcommand reads (its `--help` names it).
#[test]
fn the_tls_component_turns_on_mutual_tls_for_every_component() {
    let kubectl = autocrane_test_support::system_tool("kubectl");
    let install = tempfile::tempdir().unwrap();
    let deploy = workspace_root().join("deploy");
    std::fs::write(
        install.path().join("kustomization.yaml"),
        format!(
            "resources: [{base}]\ncomponents: [{tls}]\n",
            base = relative(install.path(), &deploy),
            tls = relative(install.path(), &deploy.join("tls")),
        ),
    )
    .unwrap();
    let (ok, out, err) = autocrane_test_support::run(
        std::process::Command::new(kubectl)
            .arg("kustomize")
            .arg(install.path()),
    );
    assert!(ok, "kubectl kustomize: {err}");
    let docs: Vec<serde_json::Value> = out
        .split("\n---")
        .map(parse_yaml)
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    let certificates = docs.iter().filter(|d| d["kind"] == "Certificate").count();
    assert!(certificates >= 5, "the CA, three servers, the controller");
    let deployments: Vec<&serde_json::Value> =
        docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 4);
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let spec = &deployment["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let env: BTreeMap<String, String> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        let args = container["args"].to_string();
        let serves = name != "autocrane-controller";
        if serves {
            for var in [
                "AUTOCRANE_TLS_CERT",
                "AUTOCRANE_TLS_KEY",
                "AUTOCRANE_TLS_CLIENT_CA",
            ] {
                assert!(env.contains_key(var), "{name} lacks {var}");
            }
            assert!(
                container["readinessProbe"]["grpc"].is_null(),
                "{name}: the kubelet's gRPC probe cannot speak TLS"
            );
        }
        let calls = ["autocrane-controller", "autocrane-data-repository"].contains(&name);
        if calls {
            for var in [
                "AUTOCRANE_CLIENT_TLS_CA",
                "AUTOCRANE_CLIENT_TLS_CERT",
                "AUTOCRANE_CLIENT_TLS_KEY",
            ] {
                assert!(env.contains_key(var), "{name} lacks {var}");
            }
        }
        assert!(!args.contains("http://"), "{name}: {args}");
        for (var, value) in &env {
            assert!(!value.starts_with("http://"), "{name}: {var}={value}");
        }
        let mounts = container["volumeMounts"].to_string();
        assert!(mounts.contains("/autocrane/tls"), "{name}: {mounts}");
        assert!(!mounts.contains("subPath"), "{name}: {mounts}");
        let volumes = spec["volumes"].to_string();
        assert!(
            volumes.contains(&format!("{name}-tls")),
            "{name}: {volumes}"
        );

        // Every variable is one the component reads.
        let subcommand = container["args"][0].as_str().unwrap();
        let (ok, help, err) = autocrane_test_support::run(
            std::process::Command::new(autocrane_test_support::autocrane_bin())
                .args([subcommand, "--help"]),
        );
        assert!(ok, "{subcommand} --help: {err}");
        for var in env.keys().filter(|v| v.starts_with("AUTOCRANE_")) {
            assert!(
                help.contains(var.as_str()),
                "{subcommand} does not read {var}"
            );
        }
    }
}

/// `to` relative to `from` (kustomize takes relative paths only).
fn relative(from: &std::path::Path, to: &std::path::Path) -> String {
    let ups = from.components().count() - 1;
    format!(
        "{}{}",
        "../".repeat(ups),
        to.strip_prefix("/").unwrap().display()
    )
}
