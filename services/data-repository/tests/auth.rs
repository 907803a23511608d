//! Who may call the VersionWatcher and the DataRepository, with real tokens issued by the API
//! server of `AUTOCRANE_TEST_CLUSTER` (kube-sim by default, the real kube-apiserver in
//! `scripts/test.sh`'s real pass), both servers as real `autocrane` processes running as their
//! ServiceAccounts of `deploy/rbac.yaml` with no anonymous access. For every RPC of both:
//! - a ServiceAccount granted `versions` / `datasources` in `autocrane.io` is served;
//! - no token, and a forged token, get UNAUTHENTICATED;
//! - a ServiceAccount without a grant gets PERMISSION_DENIED naming it, the verb and the resource;
//! - a pod-bound token (the DataDeployer's) may GetManifest and Fetch, and nothing else; a pod
//!   token minted for another audience is not accepted at all.
//!
//! The DataRepository calls the VersionWatcher with its own ServiceAccount's token (granted
//! `get`/`watch` on `versions` by `deploy/rbac.yaml`): tracking a source proves it.
//!
//! Both servers log at `--log trace` (every crate's spans and events, the HTTP/2 frames and the
//! Kubernetes client's requests included), and no token the test handled — nor anything shaped
//! like a credential — appears in their logs or command lines.

use std::{fmt::Debug, net::SocketAddr, path::Path, process::Command};

use autocrane_api::proto::{
    data_v1::{self as pb, data_repository_client::DataRepositoryClient},
    version_v1::{self as vpb, version_watcher_client::VersionWatcherClient},
};
use autocrane_test_support::{
    ClusterOptions, Running, TestCluster, accepting, assert_no_secrets, assert_traced,
    autocrane_bin, command_line, free_port,
};
use tonic::{Code, Request, Status, transport::Channel};

mod common;
use common::{channel, dir_spec};

const NS: &str = "shop";
const SYSTEM: &str = "autocrane-system";

/// `message` with `authorization: Bearer <token>` when there is a token.
fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// A unary answer, or the first message of a stream, as `Ok(())`.
fn done<T: Debug>(result: Result<T, Status>) -> Result<(), Status> {
    result.map(|_| ())
}

/// The VersionWatcher's RPCs in an order that succeeds for an allowed caller (the lift after
/// the quarantine), each with its RBAC verb and the outcome for `token`.
async fn version_calls(
    url: &str,
    token: Option<&str>,
    spec: &vpb::SourceSpec,
    id: &str,
) -> Vec<(&'static str, &'static str, Result<(), Status>)> {
    let mut client = VersionWatcherClient::new(channel(url).await);
    let source_id = || id.to_string();
    let mut calls = Vec::new();
    let get = client
        .get_source(with(
            vpb::GetSourceRequest {
                source: Some(spec.clone()),
            },
            token,
        ))
        .await;
    calls.push(("GetSource", "get", done(get)));
    let list = client
        .list_sources(with(vpb::ListSourcesRequest::default(), token))
        .await;
    calls.push(("ListSources", "list", done(list)));
    let versions = client
        .list_versions(with(
            vpb::ListVersionsRequest {
                source_id: source_id(),
                ..Default::default()
            },
            token,
        ))
        .await;
    calls.push(("ListVersions", "list", done(versions)));
    let watch = match client
        .watch_versions(with(
            vpb::WatchVersionsRequest {
                sources: vec![spec.clone()],
                resume_token: String::new(),
            },
            token,
        ))
        .await
    {
        Ok(stream) => done(stream.into_inner().message().await),
        Err(status) => Err(status),
    };
    calls.push(("WatchVersions", "watch", watch));
    let probe = client
        .probe(with(
            vpb::ProbeRequest {
                source_id: source_id(),
            },
            token,
        ))
        .await;
    calls.push(("Probe", "get", done(probe)));
    let quarantine = client
        .quarantine_version(with(
            vpb::QuarantineVersionRequest {
                source_id: source_id(),
                version: "v1".into(),
                reason: "auth test".into(),
            },
            token,
        ))
        .await;
    calls.push(("QuarantineVersion", "update", done(quarantine)));
    let lift = client
        .lift_quarantine(with(
            vpb::LiftQuarantineRequest {
                source_id: source_id(),
                version: "v1".into(),
            },
            token,
        ))
        .await;
    calls.push(("LiftQuarantine", "update", done(lift)));
    calls
}

/// The DataRepository's RPCs but UntrackSource, in an order that succeeds for an allowed caller,
/// each with its RBAC verb and the outcome for `token`.
async fn data_calls(
    client: &mut DataRepositoryClient<Channel>,
    token: Option<&str>,
    spec: &vpb::SourceSpec,
    id: &str,
) -> Vec<(&'static str, &'static str, Result<(), Status>)> {
    let source_id = || id.to_string();
    let mut calls = Vec::new();
    let track = client
        .track_source(with(
            pb::TrackSourceRequest {
                source: Some(spec.clone()),
            },
            token,
        ))
        .await;
    calls.push(("TrackSource", "create", done(track)));
    let list = client
        .list_sources(with(pb::ListSourcesRequest::default(), token))
        .await;
    calls.push(("ListSources", "list", done(list)));
    let versions = client
        .list_data_versions(with(
            pb::ListDataVersionsRequest {
                source_id: source_id(),
            },
            token,
        ))
        .await;
    calls.push(("ListDataVersions", "list", done(versions)));
    let watch = match client
        .watch_synced(with(
            pb::WatchSyncedRequest {
                source_ids: vec![source_id()],
                resume_token: String::new(),
            },
            token,
        ))
        .await
    {
        Ok(stream) => done(stream.into_inner().message().await),
        Err(status) => Err(status),
    };
    calls.push(("WatchSynced", "watch", watch));
    calls.push(("GetManifest", "get", get_manifest(client, token, id).await));
    calls.push(("Fetch", "get", fetch(client, token, id).await));
    let pin = client
        .pin_version(with(
            pb::PinVersionRequest {
                source_id: source_id(),
                version: "v1".into(),
                holder: "auth-test".into(),
            },
            token,
        ))
        .await;
    calls.push(("PinVersion", "update", done(pin)));
    let unpin = client
        .unpin_version(with(
            pb::UnpinVersionRequest {
                source_id: source_id(),
                version: "v1".into(),
                holder: "auth-test".into(),
            },
            token,
        ))
        .await;
    calls.push(("UnpinVersion", "update", done(unpin)));
    calls
}

async fn get_manifest(
    client: &mut DataRepositoryClient<Channel>,
    token: Option<&str>,
    id: &str,
) -> Result<(), Status> {
    done(
        client
            .get_manifest(with(
                pb::GetManifestRequest {
                    source_id: id.into(),
                    version: "v1".into(),
                },
                token,
            ))
            .await,
    )
}

async fn fetch(
    client: &mut DataRepositoryClient<Channel>,
    token: Option<&str>,
    id: &str,
) -> Result<(), Status> {
    let stream = client
        .fetch(with(
            pb::FetchRequest {
                source_id: id.into(),
                version: "v1".into(),
                ..Default::default()
            },
            token,
        ))
        .await?;
    done(stream.into_inner().message().await)
}

async fn untrack(
    client: &mut DataRepositoryClient<Channel>,
    token: Option<&str>,
    id: &str,
) -> Result<(), Status> {
    done(
        client
            .untrack_source(with(
                pb::UntrackSourceRequest {
                    source_id: id.into(),
                },
                token,
            ))
            .await,
    )
}

/// Every outcome that is not `expected`, described.
fn unexpected(
    calls: &[(&'static str, &'static str, Result<(), Status>)],
    check: impl Fn(&'static str, &Result<(), Status>) -> Result<(), String>,
) -> Vec<String> {
    calls
        .iter()
        .filter_map(|(rpc, verb, outcome)| {
            check(verb, outcome).err().map(|e| format!("{rpc}: {e}"))
        })
        .collect()
}

fn allowed(_: &'static str, outcome: &Result<(), Status>) -> Result<(), String> {
    outcome.as_ref().map(|_| ()).map_err(|s| format!("{s:?}"))
}

fn unauthenticated(_: &'static str, outcome: &Result<(), Status>) -> Result<(), String> {
    match outcome {
        Err(status) if status.code() == Code::Unauthenticated => Ok(()),
        other => Err(format!("expected UNAUTHENTICATED, got {other:?}")),
    }
}

/// PERMISSION_DENIED whose message names `user`, the call's verb and `resource`.
fn denied<'a>(
    user: &'a str,
    resource: &'a str,
) -> impl Fn(&'static str, &Result<(), Status>) -> Result<(), String> + 'a {
    move |verb, outcome| match outcome {
        Err(status)
            if status.code() == Code::PermissionDenied
                && status
                    .message()
                    .contains(&format!("{user} may not {verb} {resource}")) =>
        {
            Ok(())
        }
        other => Err(format!(
            "expected PERMISSION_DENIED for `{user} may not {verb} {resource}`, got {other:?}"
        )),
    }
}

/// One of the two servers as installed: its own ServiceAccount's token, no anonymous calls.
async fn start_server(
    cluster: &TestCluster,
    account: &str,
    args: &[&str],
    dir: &Path,
) -> (Running, String) {
    let kubeconfig = cluster.service_account_kubeconfig(SYSTEM, account).await;
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(autocrane_bin());
    command
        .args(args)
        .args(["--listen", &address.to_string(), "--admin-listen", "off"])
        .env("KUBECONFIG", &kubeconfig)
        .args(["--log", "trace"]);
    let process = Running::logged(account, command, dir);
    accepting(address).await;
    (process, format!("http://{address}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_both_servers_is_authenticated_and_authorised_with_real_tokens() {
    // Built before the cluster starts, so its start is not raced by cargo.
    autocrane_bin();
    let cluster = TestCluster::start(ClusterOptions::new()).await;
    cluster
        .install_rbac_with_accounts(NS, &["web", "ops", "nobody"])
        .await;
    // `ops` may do everything on both servers; `nobody` has no grant; `web` is the app whose
    // pod runs a DataDeployer.
    // (As YAML: `kubectl create clusterrole` refuses resources the server does not serve; no
    // client-side validation: kube-sim serves no OpenAPI document.)
    let objects = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "autocrane-operator"},
         "rules": [{"apiGroups": ["autocrane.io"], "resources": ["versions", "datasources"],
                    "verbs": ["get", "list", "watch", "create", "update", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "ops"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "autocrane-operator"},
         "subjects": [{"kind": "ServiceAccount", "name": "ops", "namespace": "shop"}]},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "web-0", "namespace": "shop"},
         "spec": {"serviceAccountName": "web",
                  "containers": [{"name": "app", "image": "registry.example/web:1"}]}}]}"#;
    let applied = cluster
        .kubectl_with_input(&["apply", "--validate=false", "-f", "-"], Some(objects))
        .await;
    assert!(
        applied.ok,
        "applying the grant and the pod: {}",
        applied.text()
    );

    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir_all(source.join("v1")).unwrap();
    std::fs::write(source.join("v1/config.json"), b"{\"version\": 1}\n").unwrap();
    let spec = dir_spec(&source);
    let allow = dir.path().to_str().unwrap().to_string();

    let (vw, vw_url) = start_server(
        &cluster,
        "autocrane-version-watcher",
        &[
            "version-watcher",
            "--webhook-listen",
            "off",
            "--state-dir",
            dir.path().join("vw-state").to_str().unwrap(),
            "--allow-directory",
            &allow,
        ],
        dir.path(),
    )
    .await;
    // The DataRepository calls the VersionWatcher with its ServiceAccount's token.
    let repository_token = dir.path().join("repository-token");
    std::fs::write(
        &repository_token,
        cluster
            .service_account_token(SYSTEM, "autocrane-data-repository")
            .await,
    )
    .unwrap();
    let (repo_process, repo_url) = start_server(
        &cluster,
        "autocrane-data-repository",
        &[
            "data-repository",
            "--store",
            dir.path().join("store").to_str().unwrap(),
            "--version-watcher",
            &vw_url,
            "--version-watcher-token-file",
            repository_token.to_str().unwrap(),
            "--allow-directory",
            &allow,
        ],
        dir.path(),
    )
    .await;

    let ops = cluster.service_account_token(NS, "ops").await;
    let nobody = cluster.service_account_token(NS, "nobody").await;
    let mut repo = DataRepositoryClient::new(channel(&repo_url).await);

    // Allowed: ops tracks the source (the DataRepository resolves it on the VersionWatcher with
    // its own token), waits for v1, then every RPC of both servers succeeds.
    let tracked = repo
        .track_source(with(
            pb::TrackSourceRequest {
                source: Some(spec.clone()),
            },
            Some(&ops),
        ))
        .await
        .expect("ops may track, and the DataRepository may resolve on the VersionWatcher")
        .into_inner()
        .source
        .unwrap();
    let id = tracked.source_id;
    autocrane_test_support::eventually(
        std::time::Duration::from_secs(60),
        "v1 to be synced",
        || {
            let mut repo = repo.clone();
            let (ops, id) = (ops.clone(), id.clone());
            async move { get_manifest(&mut repo, Some(&ops), &id).await.ok() }
        },
    )
    .await;
    let mut wrong = unexpected(
        &version_calls(&vw_url, Some(&ops), &spec, &id).await,
        allowed,
    );
    wrong.extend(unexpected(
        &data_calls(&mut repo, Some(&ops), &spec, &id).await,
        allowed,
    ));
    assert!(wrong.is_empty(), "ops was refused:\n{}", wrong.join("\n"));

    // No token, a forged token: UNAUTHENTICATED, on every RPC.
    for token in [None, Some("forged.token.value")] {
        let mut wrong = unexpected(
            &version_calls(&vw_url, token, &spec, &id).await,
            unauthenticated,
        );
        wrong.extend(unexpected(
            &data_calls(&mut repo, token, &spec, &id).await,
            unauthenticated,
        ));
        wrong.extend(unexpected(
            &[(
                "UntrackSource",
                "delete",
                untrack(&mut repo, token, &id).await,
            )],
            unauthenticated,
        ));
        assert!(wrong.is_empty(), "token {token:?}:\n{}", wrong.join("\n"));
    }

    // A ServiceAccount without a grant: PERMISSION_DENIED naming it, the verb and the resource.
    let user = format!("system:serviceaccount:{NS}:nobody");
    let mut wrong = unexpected(
        &version_calls(&vw_url, Some(&nobody), &spec, &id).await,
        denied(&user, "versions.autocrane.io"),
    );
    wrong.extend(unexpected(
        &data_calls(&mut repo, Some(&nobody), &spec, &id).await,
        denied(&user, "datasources.autocrane.io"),
    ));
    wrong.extend(unexpected(
        &[(
            "UntrackSource",
            "delete",
            untrack(&mut repo, Some(&nobody), &id).await,
        )],
        denied(&user, "datasources.autocrane.io"),
    ));
    assert!(wrong.is_empty(), "nobody:\n{}", wrong.join("\n"));

    // The DataDeployer's pod-bound token: GetManifest and Fetch, nothing else.
    let pod_token = cluster
        .pod_bound_token(NS, "web", "web-0", "autocrane-data-repository")
        .await;
    get_manifest(&mut repo, Some(&pod_token), &id)
        .await
        .expect("a pod token may read a manifest");
    fetch(&mut repo, Some(&pod_token), &id)
        .await
        .expect("a pod token may fetch");
    let web = format!("system:serviceaccount:{NS}:web");
    let calls = data_calls(&mut repo, Some(&pod_token), &spec, &id).await;
    let (reads, others): (Vec<_>, Vec<_>) = calls
        .into_iter()
        .partition(|(rpc, _, _)| matches!(*rpc, "GetManifest" | "Fetch"));
    let mut wrong = unexpected(&reads, allowed);
    wrong.extend(unexpected(
        &others,
        denied(&web, "datasources.autocrane.io"),
    ));
    wrong.extend(unexpected(
        &version_calls(&vw_url, Some(&pod_token), &spec, &id).await,
        unauthenticated,
    ));
    assert!(wrong.is_empty(), "pod token:\n{}", wrong.join("\n"));
    // A pod token minted for another server (the WatchdogListener) is not accepted here.
    let listener_token = cluster
        .pod_bound_token(NS, "web", "web-0", "autocrane-watchdog-listener")
        .await;
    let err = fetch(&mut repo, Some(&listener_token), &id)
        .await
        .expect_err("a token for another audience");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Last, ops untracks.
    untrack(&mut repo, Some(&ops), &id)
        .await
        .expect("ops may untrack");

    // Nothing of what either server was handed shows in its logs or its command line.
    let repository_token = std::fs::read_to_string(&repository_token).unwrap();
    let known = [
        ops.as_str(),
        nobody.as_str(),
        pod_token.as_str(),
        listener_token.as_str(),
        repository_token.as_str(),
        "forged.token.value",
    ];
    for (name, process) in [("VersionWatcher", &vw), ("DataRepository", &repo_process)] {
        let log = process.log_text();
        assert_traced(name, &log, 100);
        assert_no_secrets(&format!("the {name}'s log"), &log, &known);
        assert_no_secrets(
            &format!("the {name}'s command line"),
            &command_line(process.pid()),
            &known,
        );
    }
    cluster.stop().await;
}
