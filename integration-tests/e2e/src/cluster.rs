//! [`TestCluster`]: the one way a test gets a Kubernetes API server. `AUTOCRANE_TEST_CLUSTER`
//! picks the backend ([`Backend::from_env`]):
//!
//! | value | what starts |
//! |---|---|
//! | `sim` (default, or unset) | kube-sim in this process (authentication and RBAC on), and with [`ClusterOptions::with_kubelet`] kubelet-sim in this process on its node |
//! | `real` | upstream etcd, kube-apiserver (`Node,RBAC`, `NodeRestriction`, audit log), controller-manager and scheduler from `.cache/cluster/cluster up`, and with [`ClusterOptions::with_kubelet`] the `kubelet-sim` binary as the node agent with the node's own identity |
//!
//! A test written against [`TestCluster`] (its [`client`](TestCluster::client), its
//! [`kubeconfig`](TestCluster::kubeconfig), its [`kubectl`](TestCluster::kubectl)) runs on both;
//! `scripts/test.sh` runs it once per backend. A missing cluster binary fails the test with what
//! to do, never skips it.
//!
//! Processes of the real backend are started through `setpriv --pdeathsig KILL --` (the
//! workspace forbids `unsafe`, which `pre_exec` needs). The parent-death signal follows the
//! thread that forks, so start the cluster from the test body (which runs on the test's thread
//! for the whole test), never from `spawn_blocking` (whose threads end when idle). A killed test
//! run takes the launcher with it, the launcher's components follow (their own parent-death
//! signal), and kubelet-sim's containers follow kubelet-sim.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::{Running, eventually, is_alive, system_tool, workspace_binary, workspace_root};

/// The environment variable that picks the backend.
pub const BACKEND_ENV: &str = "AUTOCRANE_TEST_CLUSTER";

/// How long the real control plane (and its node) may take to become ready: generous, the
/// 2-core machine is shared with builds (the launcher's own limit is 3 min per component).
const REAL_START: Duration = Duration::from_secs(240);
/// How long stopping may take (the launcher gives each component 10 s after SIGTERM).
const STOP: Duration = Duration::from_secs(60);

/// Which API server a [`TestCluster`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// kube-sim (and kubelet-sim) in the test's process.
    Sim,
    /// The upstream control plane from `.cache/cluster/cluster` (and the kubelet-sim binary).
    Real,
}

impl Backend {
    /// The backend `AUTOCRANE_TEST_CLUSTER` names (`sim` when unset); panics on any other value.
    pub fn from_env() -> Backend {
        let value = std::env::var_os(BACKEND_ENV).map(|v| v.to_string_lossy().into_owned());
        Backend::parse(value.as_deref()).unwrap_or_else(|message| panic!("{message}"))
    }

    /// The backend a value of `AUTOCRANE_TEST_CLUSTER` names (`None`: unset).
    pub fn parse(value: Option<&str>) -> Result<Backend, String> {
        match value {
            None | Some("" | "sim") => Ok(Backend::Sim),
            Some("real") => Ok(Backend::Real),
            Some(other) => Err(format!(
                "{BACKEND_ENV}={other:?} is not a backend: use `sim` (kube-sim, the default) or \
                 `real` (the control plane from .cache/cluster/cluster)"
            )),
        }
    }

    /// Fails the test unless `AUTOCRANE_TEST_CLUSTER=real`: for the `#[ignore]`d
    /// `real_control_plane_only_…` tests, which must never pass without running.
    pub fn require_real(test: &str) {
        assert_eq!(
            Backend::from_env(),
            Backend::Real,
            "{test} needs the real control plane: run it with {BACKEND_ENV}=real \
             (under the default `sim` backend it is ignored, not passed)"
        );
    }

    /// `sim` or `real`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Real => "real",
        }
    }
}

/// What a node of the cluster does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeMode {
    /// No node.
    None,
    /// Node credentials only (`system:node:NAME`), no agent: the test plays the node.
    Credentials,
    /// kubelet-sim runs the pods bound to the node.
    Kubelet,
}

/// How to start a [`TestCluster`]: `ClusterOptions::new().with_kubelet()`.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    backend: Option<Backend>,
    node: NodeMode,
    node_name: String,
    kubelet_bin: Option<PathBuf>,
    pod_network: Option<u8>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterOptions {
    /// The API server alone, on the backend of `AUTOCRANE_TEST_CLUSTER`.
    pub fn new() -> Self {
        ClusterOptions {
            backend: None,
            node: NodeMode::None,
            node_name: "kubelet-sim".into(),
            kubelet_bin: None,
            pod_network: None,
        }
    }

    /// One node running pods: kubelet-sim (pods become local processes with their projected
    /// ServiceAccount tokens, probes and logs). On `real` the scheduler binds pods to it and
    /// the cluster is ready once the node is Ready and untainted.
    pub fn with_kubelet(mut self) -> Self {
        self.node = NodeMode::Kubelet;
        self
    }

    /// Credentials of a node (user `system:node:NAME` in `system:nodes`) but no agent:
    /// [`TestCluster::node_client`] acts as the node.
    pub fn with_node_credentials(mut self) -> Self {
        self.node = NodeMode::Credentials;
        self
    }

    /// The node's name (default `kubelet-sim`).
    pub fn node_name(mut self, name: &str) -> Self {
        self.node_name = name.into();
        self
    }

    /// The `kubelet-sim` binary for `real` (default: the workspace build's,
    /// [`workspace_binary`]); kubelet-sim's own tests pass `env!("CARGO_BIN_EXE_kubelet-sim")`.
    pub fn kubelet_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubelet_bin = Some(path.into());
        self
    }

    /// Pod IPs from `127.OCTET.0.0/16` (default: kubelet-sim's choice).
    pub fn pod_network(mut self, octet: u8) -> Self {
        self.pod_network = Some(octet);
        self
    }

    /// This backend instead of `AUTOCRANE_TEST_CLUSTER`'s.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }
}

/// What `kubectl` did.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl KubectlOutput {
    /// stdout followed by stderr (what a user sees in the terminal).
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A running API server (and node), stopped on drop: see the [module](self) documentation.
/// Prefer [`stop`](TestCluster::stop) at the end of a test, which stops cleanly and checks that
/// the real components exited 0; drop (on a panic) kills.
pub struct TestCluster {
    backend: Backend,
    client: kube::Client,
    kubeconfig: PathBuf,
    node: Option<String>,
    /// Declared before `dir`: the processes and servers stop before their directory goes.
    inner: Inner,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("backend", &self.backend)
            .field("kubeconfig", &self.kubeconfig)
            .field("node", &self.node)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Inner {
    Sim {
        /// Before `sim`: the kubelet stops before its API server.
        kubelet: Option<kubelet_sim::KubeletHandle>,
        sim: kube_sim::KubeSim,
        node_kubeconfig: Option<PathBuf>,
    },
    Real {
        /// Before `launcher`: the node agent stops before the control plane.
        kubelet: Option<Running>,
        launcher: Running,
        cluster_bin: PathBuf,
        cluster_dir: PathBuf,
    },
}

impl TestCluster {
    /// Starts a cluster as `options` say, on the backend of `AUTOCRANE_TEST_CLUSTER` (unless
    /// the options name one).
    pub async fn start(options: ClusterOptions) -> TestCluster {
        let backend = options.backend.unwrap_or_else(Backend::from_env);
        let dir = tempfile::Builder::new()
            .prefix(&format!("test-cluster-{}-", backend.name()))
            .tempdir()
            .expect("creating the cluster's temporary directory");
        match backend {
            Backend::Sim => start_sim(options, dir).await,
            Backend::Real => start_real(options, dir).await,
        }
    }

    /// Which backend runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// An administrator's client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The administrator's kubeconfig (HTTPS, CA embedded).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster's own directory: logs, the kubelet's state, and on `real` the PKI, the audit
    /// log and the component logs under [`cluster_dir`](Self::cluster_dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node's name, when the cluster has one.
    pub fn node_name(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The kube-sim instance (`sim` only): for what only the emulator offers (fault injection).
    pub fn sim(&self) -> Option<&kube_sim::KubeSim> {
        match &self.inner {
            Inner::Sim { sim, .. } => Some(sim),
            Inner::Real { .. } => None,
        }
    }

    /// `cluster up`'s directory (`real` only): `ca.crt`, `admin.crt/.key`,
    /// `kubelet-serving.crt/.key`, `audit.log`, the components' logs.
    pub fn cluster_dir(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Real { cluster_dir, .. } => Some(cluster_dir),
            Inner::Sim { .. } => None,
        }
    }

    /// The API server's audit log (`real` only; one JSON event per line).
    pub fn audit_log(&self) -> Option<PathBuf> {
        self.cluster_dir().map(|dir| dir.join("audit.log"))
    }

    /// Where the node's kubelet keeps pod directories (`pods/<ns>_<name>_<uid>/`).
    pub fn kubelet_state_dir(&self) -> Option<PathBuf> {
        match &self.inner {
            Inner::Sim { kubelet, .. } => kubelet.as_ref().map(|k| k.state_dir().to_path_buf()),
            Inner::Real { kubelet, .. } => kubelet.as_ref().map(|_| self.dir().join("kubelet")),
        }
    }

    /// A kubeconfig of the node's identity (`system:node:NAME` in `system:nodes`).
    pub fn node_kubeconfig(&self) -> Option<PathBuf> {
        match &self.inner {
            Inner::Sim {
                node_kubeconfig, ..
            } => node_kubeconfig.clone(),
            Inner::Real { cluster_dir, .. } => self
                .node
                .as_ref()
                .map(|node| cluster_dir.join(format!("node-{node}.kubeconfig"))),
        }
    }

    /// A client with the node's identity; panics without a node.
    pub async fn node_client(&self) -> kube::Client {
        let kubeconfig = self
            .node_kubeconfig()
            .expect("this cluster has no node: start it with_node_credentials() or with_kubelet()");
        client_of(&kubeconfig).await
    }

    /// Writes a kubeconfig that authenticates as ServiceAccount `namespace/name` with a token
    /// from the API server's TokenRequest (one hour), and returns its path. The account must
    /// exist.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.service_account_token(namespace, name).await;
        let mut config = Kubeconfig::read_from(&self.kubeconfig).expect("admin kubeconfig");
        for user in &mut config.auth_infos {
            user.auth_info =
                Some(serde_json::from_value(json!({ "token": token })).expect("token auth info"));
        }
        let path = self.dir().join(format!("sa-{namespace}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&config).expect("kubeconfig"),
        )
        .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        path
    }

    /// A token of ServiceAccount `namespace/name` from TokenRequest (audience: the API server,
    /// one hour). The account must exist.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client(), namespace);
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        });
        let issued: k8s_openapi::api::authentication::v1::TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|err| panic!("TokenRequest for {namespace}/{name}: {err}"));
        issued
            .status
            .and_then(|status| status.token)
            .expect("TokenRequest answered with a token")
    }

    /// A token of ServiceAccount `namespace/name` bound to pod `namespace/pod` (the kind the
    /// kubelet projects into the pod: TokenReview names the pod in `user.extra`), for
    /// `audience`, one hour. The account and the pod must exist.
    pub async fn pod_bound_token(
        &self,
        namespace: &str,
        name: &str,
        pod: &str,
        audience: &str,
    ) -> String {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client(), namespace);
        let uid = pods
            .get(pod)
            .await
            .unwrap_or_else(|err| panic!("reading pod {namespace}/{pod}: {err}"))
            .metadata
            .uid
            .expect("a stored pod has a uid");
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client(), namespace);
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": [audience],
                "expirationSeconds": 3600,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid},
            },
        });
        let issued: k8s_openapi::api::authentication::v1::TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|err| {
                panic!("TokenRequest for {namespace}/{name} bound to {pod}: {err}")
            });
        issued
            .status
            .and_then(|status| status.token)
            .expect("TokenRequest answered with a token")
    }

    /// `kubectl ARGS…` against this cluster as the administrator: the machine's kubectl on
    /// `sim`, `cluster kubectl` (kubectl of the control plane's version) on `real`.
    pub async fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.kubectl_with_input(args, None).await
    }

    /// [`kubectl`](Self::kubectl) with `input` on its stdin (for `apply -f -`).
    pub async fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> KubectlOutput {
        use tokio::io::AsyncWriteExt;
        let mut command = self.kubectl_command();
        command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting kubectl {args:?}: {err}"));
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin
                .write_all(text.as_bytes())
                .await
                .expect("writing kubectl's stdin");
        }
        let output = child
            .wait_with_output()
            .await
            .unwrap_or_else(|err| panic!("running kubectl {args:?}: {err}"));
        KubectlOutput {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `deploy/rbac.yaml` applied with kubectl, then namespace `namespace` with a ServiceAccount
    /// per name in `accounts`: the set-up of the tests that call AutoCrane's servers as their
    /// installed identities and as apps' ServiceAccounts.
    pub async fn install_rbac_with_accounts(&self, namespace: &str, accounts: &[&str]) {
        let rbac = crate::workspace_root().join("deploy/rbac.yaml");
        self.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()])
            .await;
        self.kubectl_ok(&["create", "namespace", namespace]).await;
        for account in accounts {
            self.kubectl_ok(&["create", "serviceaccount", account, "-n", namespace])
                .await;
        }
    }

    /// [`kubectl`](Self::kubectl) that must succeed; returns its stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args).await;
        assert!(
            output.ok,
            "kubectl {} failed on {}:\n{}",
            args.join(" "),
            self.backend.name(),
            output.text()
        );
        output.stdout
    }

    /// The kubectl command for this cluster (kubeconfig and cache set), without arguments.
    pub fn kubectl_command(&self) -> std::process::Command {
        let mut command = match &self.inner {
            Inner::Sim { .. } => std::process::Command::new(system_tool("kubectl")),
            Inner::Real { cluster_bin, .. } => {
                let mut command = std::process::Command::new(cluster_bin);
                command.arg("kubectl");
                command
            }
        };
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir().join("kube-cache"));
        command
    }

    /// The last lines of the launcher's and the node agent's logs (`real`), for a failure
    /// message.
    pub fn logs(&self) -> String {
        match &self.inner {
            Inner::Sim { .. } => String::new(),
            Inner::Real {
                kubelet, launcher, ..
            } => {
                let tail = |text: String| {
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                };
                let mut out = format!("--- cluster up ---\n{}\n", tail(launcher.log_text()));
                if let Some(kubelet) = kubelet {
                    out += &format!("--- kubelet-sim ---\n{}\n", tail(kubelet.log_text()));
                }
                out
            }
        }
    }

    /// Stops everything: the node first (its containers end), then the API server. On `real`
    /// both get SIGTERM and must exit 0 (a component that fails to stop is a finding).
    pub async fn stop(self) {
        let TestCluster { inner, dir, .. } = self;
        match inner {
            Inner::Sim { kubelet, sim, .. } => {
                if let Some(kubelet) = kubelet {
                    kubelet.shutdown().await;
                }
                sim.shutdown().await;
            }
            Inner::Real {
                kubelet,
                mut launcher,
                ..
            } => {
                if let Some(mut kubelet) = kubelet {
                    let exit = kubelet.terminate_async(STOP).await;
                    assert!(
                        exit.is_some_and(|status| status.success()),
                        "kubelet-sim did not exit cleanly on SIGTERM ({exit:?}):\n{}",
                        kubelet.log_text()
                    );
                }
                let exit = launcher.terminate_async(STOP).await;
                assert!(
                    exit.is_some_and(|status| status.success()),
                    "cluster up did not exit cleanly on SIGTERM ({exit:?}):\n{}",
                    launcher.log_text()
                );
            }
        }
        drop(dir);
    }
}

/// An administrator's (or whoever the kubeconfig names) client from a kubeconfig file.
pub async fn client_of(kubeconfig: &Path) -> kube::Client {
    let config = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|err| panic!("reading kubeconfig {}: {err}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|err| panic!("loading kubeconfig {}: {err}", kubeconfig.display()));
    kube::Client::try_from(config).expect("building a kube client")
}

async fn start_sim(options: ClusterOptions, dir: tempfile::TempDir) -> TestCluster {
    let ClusterOptions {
        backend: _,
        node,
        node_name,
        kubelet_bin: _,
        pod_network,
    } = options;
    let sim = kube_sim::KubeSim::builder()
        .auth(true)
        // With a kubelet, terminating pods go when their containers have stopped, as on a
        // real cluster; without one, after kube-sim's stand-in delay.
        .kubelet_delay((node != NodeMode::Kubelet).then_some(Duration::from_millis(100)))
        .start()
        .await
        .expect("kube-sim starts");
    let kubeconfig = dir.path().join("admin.kubeconfig");
    sim.write_kubeconfig(&kubeconfig)
        .expect("writing kube-sim's kubeconfig");
    let node_kubeconfig = (node != NodeMode::None).then(|| {
        let token = sim.issue_node_token(&node_name);
        let path = dir.path().join(format!("node-{node_name}.kubeconfig"));
        let mut config: serde_json::Value =
            serde_saphyr::from_str(&sim.kubeconfig()).expect("kube-sim's kubeconfig");
        config["users"][0]["user"] = json!({ "token": token });
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&config).expect("kubeconfig"),
        )
        .expect("writing the node's kubeconfig");
        path
    });
    let kubelet = if node == NodeMode::Kubelet {
        let mut builder = kubelet_sim::Kubelet::builder(sim.client())
            .node_name(node_name.clone())
            .state_dir(dir.path().join("kubelet"))
            .api_server(sim.https_url(), sim.ca_pem());
        if let Some(octet) = pod_network {
            builder = builder.pod_network(octet);
        }
        let kubelet = builder.start().await.expect("kubelet-sim starts");
        let reader = kubelet.log_reader();
        sim.serve_pod_logs(
            move |ns: &str, pod: &str, container: &str, previous: bool| {
                reader.read(ns, pod, container, previous)
            },
        );
        Some(kubelet)
    } else {
        None
    };
    TestCluster {
        backend: Backend::Sim,
        client: sim.client(),
        kubeconfig,
        node: (node != NodeMode::None).then_some(node_name),
        inner: Inner::Sim {
            kubelet,
            sim,
            node_kubeconfig,
        },
        dir,
    }
}

/// The control plane binary built by `scripts/install-test-tools.sh`; panics when missing.
pub fn cluster_binary() -> PathBuf {
    let path = workspace_root().join(".cache/cluster/cluster");
    assert!(
        path.is_file(),
        "{BACKEND_ENV}=real but the control plane binary {} is missing: build it with \
         scripts/install-test-tools.sh (block \"upstream Kubernetes control plane\")",
        path.display()
    );
    path
}

async fn start_real(options: ClusterOptions, dir: tempfile::TempDir) -> TestCluster {
    let ClusterOptions {
        backend: _,
        node,
        node_name,
        kubelet_bin,
        pod_network,
    } = options;
    let cluster_bin = cluster_binary();
    let kubelet_bin = (node == NodeMode::Kubelet)
        .then(|| kubelet_bin.unwrap_or_else(|| workspace_binary("kubelet-sim")));
    let cluster_dir = dir.path().join("cluster");
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let node_kubeconfig = cluster_dir.join(format!("node-{node_name}.kubeconfig"));
    let started = Instant::now();

    let mut up = std::process::Command::new("setpriv");
    up.args(["--pdeathsig", "KILL", "--"])
        .arg(&cluster_bin)
        .arg("up")
        .arg("--dir")
        .arg(&cluster_dir)
        .arg("--kubeconfig")
        .arg(&kubeconfig);
    match node {
        NodeMode::None => {}
        NodeMode::Credentials => {
            up.args(["--node-name", &node_name]);
        }
        // READY only once the node is Ready and untainted.
        NodeMode::Kubelet => {
            up.args(["--wait-node", &node_name]);
        }
    }
    let launcher = Running::builder(up)
        .log_to(dir.path().join("cluster-up.log"))
        .start();
    let alive = |process: &Running, what: &str| {
        assert!(
            is_alive(process.pid()),
            "{what} exited while the cluster started:\n{}",
            process.log_text()
        );
    };

    let kubelet = match kubelet_bin {
        None => None,
        Some(bin) => {
            eventually(
                REAL_START,
                "the node's kubeconfig (API server ready)",
                || {
                    alive(&launcher, "cluster up");
                    let ready = node_kubeconfig.is_file();
                    async move { ready }
                },
            )
            .await;
            let mut agent = std::process::Command::new("setpriv");
            agent
                .args(["--pdeathsig", "KILL", "--"])
                .arg(bin)
                .arg("--kubeconfig")
                .arg(&node_kubeconfig)
                .args(["--node-name", &node_name, "--port", "0"])
                .arg("--state-dir")
                .arg(dir.path().join("kubelet"))
                // The kubelet API, so `kubectl logs` reaches the containers through the API
                // server as on a real node.
                .arg("--tls-cert-file")
                .arg(cluster_dir.join("kubelet-serving.crt"))
                .arg("--tls-private-key-file")
                .arg(cluster_dir.join("kubelet-serving.key"))
                .arg("--client-ca-file")
                .arg(cluster_dir.join("ca.crt"))
                .env("RUST_LOG", "info");
            if let Some(octet) = pod_network {
                agent.args(["--pod-network", &octet.to_string()]);
            }
            Some(
                Running::builder(agent)
                    .log_to(dir.path().join("kubelet-sim.log"))
                    .start(),
            )
        }
    };
    let marker = format!("READY kubeconfig={}", kubeconfig.display());
    eventually(REAL_START, "cluster up to print READY", || {
        alive(&launcher, "cluster up");
        if let Some(kubelet) = &kubelet {
            alive(kubelet, "kubelet-sim");
        }
        let ready = launcher.log_text().contains(&marker);
        async move { ready }
    })
    .await;
    eprintln!(
        "real control plane{} ready in {:.1} s ({})",
        if kubelet.is_some() { " and node" } else { "" },
        started.elapsed().as_secs_f64(),
        dir.path().display()
    );
    let client = client_of(&kubeconfig).await;
    TestCluster {
        backend: Backend::Real,
        client,
        kubeconfig,
        node: (node != NodeMode::None).then_some(node_name),
        inner: Inner::Real {
            kubelet,
            launcher,
            cluster_bin,
            cluster_dir,
        },
        dir,
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn the_backend_is_sim_unless_real_is_asked_and_nothing_else_is_accepted() {
        assert_eq!(Backend::parse(None), Ok(Backend::Sim));
        assert_eq!(Backend::parse(Some("")), Ok(Backend::Sim));
        assert_eq!(Backend::parse(Some("sim")), Ok(Backend::Sim));
        assert_eq!(Backend::parse(Some("real")), Ok(Backend::Real));
        let refused = Backend::parse(Some("kind")).unwrap_err();
        assert!(
            refused.contains("AUTOCRANE_TEST_CLUSTER=\"kind\" is not a backend"),
            "{refused}"
        );
    }
}
