//! `deploy/rbac.yaml` applied with kubectl to the cluster of `AUTOCRANE_TEST_CLUSTER` (kube-sim
//! by default; the real API server's RBAC authorizer in `scripts/test.sh`'s real pass), then
//! asked with `kubectl auth can-i --as=system:serviceaccount:autocrane-system:ACCOUNT`: every
//! request each component makes is allowed, and a set of neighbouring requests it must not make
//! is refused. The RBAC-only resources the AutoCrane servers check (`watchdogs`, `versions`,
//! `datasources` in `autocrane.io`) are asked with the SubjectAccessReview the servers send.

use autocrane_test_support::{ClusterOptions, TestCluster, workspace_root};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::{Api, api::PostParams};
use serde_json::json;

const SYSTEM: &str = "autocrane-system";
const CONTROLLER: &str = "autocrane-controller";
const LISTENER: &str = "autocrane-watchdog-listener";
const VERSION_WATCHER: &str = "autocrane-version-watcher";
const DATA_REPOSITORY: &str = "autocrane-data-repository";
/// A namespace the components work in (it need not exist for `can-i`).
const APP: &str = "shop";

/// One question: may `who` do `verb` on `resource` in `namespace` (`None`: all namespaces, or
/// cluster-scoped)? `resource` is kubectl's `TYPE[/NAME]`, with `#SUBRESOURCE` for a subresource
/// (`pods#status`): kubectl reads `pods/status` as the pod named `status`.
struct Ask {
    who: String,
    verb: &'static str,
    resource: &'static str,
    namespace: Option<&'static str>,
    expected: bool,
}

fn ask(
    who: &str,
    verb: &'static str,
    resource: &'static str,
    namespace: Option<&'static str>,
    expected: bool,
) -> Ask {
    Ask {
        who: who.to_string(),
        verb,
        resource,
        namespace,
        expected,
    }
}

/// `system:serviceaccount:NS:NAME`.
fn account(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// What each component does with the API (its code: `services/reconciler`,
/// `services/watchdog-listener`), and what it must not do.
fn component_questions() -> Vec<Ask> {
    let controller = account(SYSTEM, CONTROLLER);
    let listener = account(SYSTEM, LISTENER);
    let (all, app, system) = (None, Some(APP), Some(SYSTEM));
    let mut asks = Vec::new();
    // The controller: watches deployments and their pods everywhere, owns the pods, patches the
    // pins finalizer and the status, records Events, holds its Lease.
    for verb in ["get", "list", "watch", "patch"] {
        asks.push(ask(
            &controller,
            verb,
            "autocranedeployments.autocrane.io",
            all,
            true,
        ));
    }
    for verb in ["get", "patch", "update"] {
        asks.push(ask(
            &controller,
            verb,
            "autocranedeployments.autocrane.io#status",
            app,
            true,
        ));
    }
    for verb in ["get", "list", "watch", "create", "delete", "patch"] {
        asks.push(ask(&controller, verb, "pods", all, true));
    }
    for verb in ["create", "patch"] {
        asks.push(ask(&controller, verb, "events.events.k8s.io", app, true));
    }
    asks.push(ask(
        &controller,
        "create",
        "leases.coordination.k8s.io",
        system,
        true,
    ));
    for verb in ["get", "update"] {
        asks.push(ask(
            &controller,
            verb,
            "leases.coordination.k8s.io/autocrane-controller",
            system,
            true,
        ));
    }
    // … and nothing next to it.
    for (verb, resource, namespace) in [
        ("create", "autocranedeployments.autocrane.io", app),
        ("delete", "autocranedeployments.autocrane.io", app),
        ("update", "pods", app),
        ("patch", "pods#status", app),
        ("create", "pods#exec", app),
        ("get", "secrets", app),
        ("list", "configmaps", app),
        ("create", "leases.coordination.k8s.io", app),
        (
            "update",
            "leases.coordination.k8s.io/another-controller",
            system,
        ),
        (
            "delete",
            "leases.coordination.k8s.io/autocrane-controller",
            system,
        ),
        ("create", "watchdogs.autocrane.io", app),
        ("bind", "clusterroles.rbac.authorization.k8s.io", all),
        ("impersonate", "serviceaccounts", app),
    ] {
        asks.push(ask(&controller, verb, resource, namespace, false));
    }

    // The WatchdogListener: one pod watch everywhere, merge patches of watchdog annotations and
    // the rollup label, the readiness condition through pods/status (a strategic-merge patch),
    // TokenReview and SubjectAccessReview for callers, the prober's Warning Events.
    for verb in ["get", "list", "watch", "patch"] {
        asks.push(ask(&listener, verb, "pods", all, true));
    }
    asks.push(ask(&listener, "patch", "pods#status", app, true));
    asks.push(ask(
        &listener,
        "create",
        "tokenreviews.authentication.k8s.io",
        all,
        true,
    ));
    asks.push(ask(
        &listener,
        "create",
        "subjectaccessreviews.authorization.k8s.io",
        all,
        true,
    ));
    for verb in ["create", "patch"] {
        asks.push(ask(&listener, verb, "events.events.k8s.io", app, true));
    }
    for (verb, resource, namespace) in [
        ("create", "pods", app),
        ("delete", "pods", app),
        ("update", "pods", app),
        ("update", "pods#status", app),
        ("create", "pods#eviction", app),
        ("create", "serviceaccounts#token", app),
        ("get", "secrets", app),
        ("get", "autocranedeployments.autocrane.io", app),
        ("get", "nodes", all),
    ] {
        asks.push(ask(&listener, verb, resource, namespace, false));
    }

    // The VersionWatcher and the DataRepository read nothing from Kubernetes: they review their
    // callers (TokenReview, SubjectAccessReview) and nothing else.
    for name in [VERSION_WATCHER, DATA_REPOSITORY] {
        let who = account(SYSTEM, name);
        asks.push(ask(
            &who,
            "create",
            "tokenreviews.authentication.k8s.io",
            all,
            true,
        ));
        asks.push(ask(
            &who,
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            all,
            true,
        ));
        for (verb, resource, namespace) in [
            ("get", "pods", app),
            ("list", "pods", all),
            ("list", "configmaps", app),
            ("get", "secrets", app),
            ("get", "autocranedeployments.autocrane.io", app),
            ("create", "serviceaccounts#token", app),
        ] {
            asks.push(ask(&who, verb, resource, namespace, false));
        }
    }
    asks
}

/// What each component may do on the AutoCrane servers' RBAC-only resources
/// (`versions.autocrane.io` for the VersionWatcher, `datasources.autocrane.io` for the
/// DataRepository; both cluster-wide): `(who, verb, resource, expected)`.
fn server_questions() -> Vec<(String, &'static str, &'static str, bool)> {
    let controller = account(SYSTEM, CONTROLLER);
    let repository = account(SYSTEM, DATA_REPOSITORY);
    let watcher = account(SYSTEM, VERSION_WATCHER);
    let listener = account(SYSTEM, LISTENER);
    // The DataDeployer runs as the app's ServiceAccount and needs no grant: its pod-bound token
    // may GetManifest and Fetch without one.
    let app_account = account(APP, "web");
    let mut asks = Vec::new();
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        // The controller: WatchVersions and QuarantineVersion; TrackSource, WatchSynced,
        // PinVersion and UnpinVersion. Never an untrack, a fetch or a plain read.
        asks.push((
            controller.clone(),
            verb,
            "versions",
            matches!(verb, "watch" | "update"),
        ));
        asks.push((
            controller.clone(),
            verb,
            "datasources",
            matches!(verb, "create" | "watch" | "update"),
        ));
        // The DataRepository resolves (GetSource) and follows (WatchVersions) sources.
        asks.push((
            repository.clone(),
            verb,
            "versions",
            matches!(verb, "get" | "watch"),
        ));
        asks.push((repository.clone(), verb, "datasources", false));
        for who in [&watcher, &listener, &app_account] {
            asks.push((who.clone(), verb, "versions", false));
            asks.push((who.clone(), verb, "datasources", false));
        }
    }
    asks
}

/// `kubectl auth can-i` for each question; panics listing every wrong answer.
async fn check(cluster: &TestCluster, asks: &[Ask]) {
    let mut wrong = Vec::new();
    for a in asks {
        let (resource, subresource) = match a.resource.split_once('#') {
            Some((resource, subresource)) => (resource, Some(subresource)),
            None => (a.resource, None),
        };
        let mut args = vec!["auth", "can-i", a.verb, resource, "--as", &a.who];
        if let Some(subresource) = subresource {
            args.extend(["--subresource", subresource]);
        }
        match a.namespace {
            Some(namespace) => args.extend(["-n", namespace]),
            None => args.push("--all-namespaces"),
        }
        let output = cluster.kubectl(&args).await;
        // `yes` exits 0, `no` exits 1; anything else (an error) is neither.
        let answer = output.stdout.lines().last().unwrap_or_default().trim();
        let allowed = match answer {
            "yes" => true,
            "no" => false,
            _ => panic!(
                "kubectl {} answered neither yes nor no:\n{}",
                args.join(" "),
                output.text()
            ),
        };
        if allowed != a.expected {
            wrong.push(format!(
                "{} {} {} in {}: {answer}, expected {}",
                a.who,
                a.verb,
                a.resource,
                a.namespace.unwrap_or("all namespaces"),
                if a.expected { "yes" } else { "no" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} answers are wrong on {}:\n{}",
        wrong.len(),
        asks.len(),
        cluster.backend().name(),
        wrong.join("\n")
    );
}

/// The WatchdogListener's question for a caller with ServiceAccount `user`'s groups: may it
/// `verb` `watchdogs.autocrane.io` in `namespace`?
async fn watchdog_review(cluster: &TestCluster, user: &str, verb: &str, namespace: &str) -> bool {
    review(cluster, user, verb, "watchdogs", Some(namespace)).await
}

/// An AutoCrane server's question for a caller with ServiceAccount `user`'s groups: may it
/// `verb` `<resource>.autocrane.io` (in `namespace`, or cluster-wide)?
async fn review(
    cluster: &TestCluster,
    user: &str,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let account_namespace = user.split(':').nth(2).expect("a ServiceAccount user");
    let mut attributes = json!({"group": "autocrane.io", "resource": resource, "verb": verb});
    if let Some(namespace) = namespace {
        attributes["namespace"] = json!(namespace);
    }
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{account_namespace}"),
                       "system:authenticated"],
            "resourceAttributes": attributes,
        },
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(cluster.client())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.expect("SubjectAccessReview status").allowed
}

/// A cluster with the CRD and `deploy/rbac.yaml` applied with kubectl.
async fn cluster_with_rbac() -> TestCluster {
    let cluster = TestCluster::start(ClusterOptions::new()).await;
    let root = workspace_root();
    for file in ["deploy/crds/autocranedeployment.yaml", "deploy/rbac.yaml"] {
        cluster
            .kubectl_ok(&["apply", "-f", root.join(file).to_str().unwrap()])
            .await;
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_may_do_its_job_and_nothing_next_to_it() {
    let cluster = cluster_with_rbac().await;
    check(&cluster, &component_questions()).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_may_call_the_autocrane_servers_it_needs_and_nothing_more() {
    let cluster = cluster_with_rbac().await;
    // `versions` and `datasources` are no served resources (the servers ask RBAC about them), so
    // `kubectl auth can-i` cannot name them: ask the SubjectAccessReview the servers ask.
    let asks = server_questions();
    let mut wrong = Vec::new();
    for (who, verb, resource, expected) in &asks {
        let allowed = review(&cluster, who, verb, resource, None).await;
        if allowed != *expected {
            wrong.push(format!(
                "{who} {verb} {resource}.autocrane.io: {allowed}, expected {expected}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} answers are wrong on {}:\n{}",
        wrong.len(),
        asks.len(),
        cluster.backend().name(),
        wrong.join("\n")
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_roles_grant_watchdogs_where_they_are_bound() {
    let cluster = cluster_with_rbac().await;
    // People and tools get watchdog rights per namespace, with a RoleBinding of the shipped
    // ClusterRoles.
    cluster.kubectl_ok(&["create", "namespace", APP]).await;
    for (account_name, role) in [
        ("ops", "autocrane-watchdog-writer"),
        ("dashboard", "autocrane-watchdog-reader"),
    ] {
        cluster
            .kubectl_ok(&["create", "serviceaccount", account_name, "-n", APP])
            .await;
        cluster
            .kubectl_ok(&[
                "create",
                "rolebinding",
                account_name,
                "-n",
                APP,
                "--clusterrole",
                role,
                "--serviceaccount",
                &format!("{APP}:{account_name}"),
            ])
            .await;
    }
    let (ops, dashboard) = (account(APP, "ops"), account(APP, "dashboard"));
    // `watchdogs.autocrane.io` is no served resource (the WatchdogListener asks RBAC about it),
    // so `kubectl auth can-i` cannot name it (it would ask about resource
    // `watchdogs.autocrane.io` in the core group): ask the SubjectAccessReview the listener asks.
    let mut wrong = Vec::new();
    for verb in [
        "get", "list", "watch", "create", "delete", "update", "patch",
    ] {
        let writes = matches!(verb, "get" | "list" | "watch" | "create" | "delete");
        let reads = matches!(verb, "get" | "list" | "watch");
        for (who, namespace, expected) in [
            (&ops, APP, writes),
            (&ops, "elsewhere", false),
            (&dashboard, APP, reads),
        ] {
            let allowed = watchdog_review(&cluster, who, verb, namespace).await;
            if allowed != expected {
                wrong.push(format!(
                    "{who} {verb} watchdogs in {namespace}: {allowed}, expected {expected}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let mut asks = Vec::new();
    for (verb, resource) in [("patch", "pods"), ("get", "secrets"), ("create", "pods")] {
        asks.push(ask(&ops, verb, resource, Some(APP), false));
        asks.push(ask(&dashboard, verb, resource, Some(APP), false));
    }
    check(&cluster, &asks).await;
    cluster.stop().await;
}
