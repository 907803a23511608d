//! The fixtures of the controller's end-to-end suites: kube-sim with its kubelet (pods are real
//! local processes; images `autocrane:*` run the real `autocrane` binary, as the DataDeployer's
//! injected containers need), the real `autocrane watchdog-listener`, controller replicas
//! in-process as `autocrane controller` runs them, the real test workload, and what a user reads
//! back through `kubectl`.
#![allow(dead_code)] // each suite uses its own part

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use autocrane_reconciler::Args;
use autocrane_runtime::{process::Process, shutdown::Shutdown};
use autocrane_test_support::{Running, autocrane_bin, free_port, http_get, run, workspace_root};
use clap::Parser;
use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
use kube::{Api, ResourceExt, api::ListParams};

#[derive(Parser, Debug)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) args: Args,
}

pub(crate) const NS: &str = "shop";
pub(crate) const WAIT: Duration = Duration::from_secs(90);

/// `kubectl …` against the simulator; panics with the output on failure.
pub(crate) async fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let (ok, out, err) = kubectl_run(kubeconfig, args).await;
    assert!(ok, "kubectl {}: {out}{err}", args.join(" "));
    out
}

/// `kubectl …` against the simulator: (succeeded, stdout, stderr).
pub(crate) async fn kubectl_run(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let kubeconfig = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let cache = kubeconfig.with_file_name("kube-cache");
        run(Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("KUBECACHEDIR", cache))
    })
    .await
    .unwrap()
}

pub(crate) fn deployment_yaml(name: &str, version: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: autocrane.io/v1alpha1
kind: AutoCraneDeployment
metadata:
  name: {name}
  namespace: {NS}
spec:
  replicas: {replicas}
  version:
    pinned: "{version}"
  rollout:
    steps:
      - {{percent: 34, bake: 2s}}
      - {{percent: 100}}
    maxSurge: 1
    maxUnavailable: 0
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: registry.local/web:placeholder
          command: ["sleep", "3600"]
"#
    )
}

/// kube-sim with its kubelet and a WatchdogListener, the CRD installed, namespace [`NS`] created.
pub(crate) struct Cluster {
    pub(crate) sim: kube_sim::KubeSim,
    pub(crate) kubelet: kubelet_sim::KubeletHandle,
    /// `autocrane watchdog-listener` (killed on drop): keeps the pods' `autocrane.io/healthy`.
    pub(crate) listener: Running,
    /// Its gRPC address.
    pub(crate) listener_addr: std::net::SocketAddr,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) kubeconfig: std::path::PathBuf,
}

/// The real `autocrane watchdog-listener` against the cluster of `kubeconfig`, on free ports,
/// anonymous calls allowed (no caller posts here: it only keeps the readiness-gate condition).
pub(crate) async fn watchdog_listener(kubeconfig: &Path) -> (Running, std::net::SocketAddr) {
    let grpc = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(autocrane_bin());
    command
        .args(["watchdog-listener", "--listen", &grpc.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--insecure-allow-anonymous")
        .env("KUBECONFIG", kubeconfig);
    tokio::task::spawn_blocking(move || {
        let listener = Running::spawn(command);
        assert_eq!(listener.grpc_address(), grpc);
        (listener, grpc)
    })
    .await
    .unwrap()
}

impl Cluster {
    pub(crate) async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let sim = kube_sim::KubeSim::builder()
            .kubelet_delay(None)
            .start()
            .await
            .unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        let kubelet = kubelet_sim::Kubelet::builder(sim.client())
            .node_name("sim-node")
            .image_map(kubelet_sim::ImageMap::new().with("autocrane:*", autocrane_bin()))
            .api_server(sim.https_url(), sim.ca_pem())
            .start()
            .await
            .unwrap();
        // `kubectl logs` serves what the kubelet captured, as on a real cluster.
        let reader = kubelet.log_reader();
        sim.serve_pod_logs(
            move |ns: &str, pod: &str, container: &str, previous: bool| {
                reader.read(ns, pod, container, previous)
            },
        );
        let crd = workspace_root().join("deploy/crds/autocranedeployment.yaml");
        kubectl(&kubeconfig, &["apply", "-f", crd.to_str().unwrap()]).await;
        kubectl(&kubeconfig, &["create", "namespace", NS]).await;
        let (listener, listener_addr) = watchdog_listener(&kubeconfig).await;
        Cluster {
            sim,
            kubelet,
            listener,
            listener_addr,
            dir,
            kubeconfig,
        }
    }

    pub(crate) async fn kubectl(&self, args: &[&str]) -> String {
        kubectl(&self.kubeconfig, args).await
    }

    /// `kubectl …` whose failure is part of the answer (for diagnostics): stdout, or stderr.
    pub(crate) async fn kubectl_lenient(&self, args: &[&str]) -> String {
        let (ok, out, err) = kubectl_run(&self.kubeconfig, args).await;
        if ok { out } else { err }
    }

    /// `kubectl apply` of `yaml`.
    pub(crate) async fn apply(&self, yaml: &str) {
        let file = self.dir.path().join("manifest.yaml");
        std::fs::write(&file, yaml).unwrap();
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]).await;
    }

    /// A controller replica with `identity`, its Lease valid for `lease_secs`.
    pub(crate) fn controller(&self, identity: &str, lease_secs: u64) -> Replica {
        self.controller_with(identity, lease_secs, &[])
    }

    /// A controller replica as [`Cluster::controller`], with more flags.
    pub(crate) fn controller_with(
        &self,
        identity: &str,
        lease_secs: u64,
        flags: &[&str],
    ) -> Replica {
        let lease_flag = lease_secs.to_string();
        let mut argv = vec![
            "--lease-namespace",
            "default",
            "--lease-duration-secs",
            &lease_flag,
            "--identity",
            identity,
        ];
        argv.extend_from_slice(flags);
        spawn_controller(self.sim.client(), &argv)
    }

    /// A controller replica as it is installed: as the ServiceAccount
    /// [`CONTROLLER_ACCOUNT`] with only the rights `deploy/rbac.yaml` grants it (call
    /// [`Cluster::install_rbac`] first), its Lease in `autocrane-system`, with `flags`. Being one
    /// user lets a test scope the API server's faults to the controller.
    pub(crate) fn controller_as_installed(&self, identity: &str, flags: &[&str]) -> Replica {
        let (namespace, account) = CONTROLLER_ACCOUNT;
        let token = self.sim.issue_token(namespace, account, None);
        let mut argv = vec![
            "--lease-namespace",
            namespace,
            "--lease-duration-secs",
            "15",
            "--identity",
            identity,
        ];
        argv.extend_from_slice(flags);
        spawn_controller(self.sim.client_with_token(Some(&token)), &argv)
    }

    /// `autocrane controller` as a process (so that it can be SIGKILLed), as the installed
    /// ServiceAccount [`CONTROLLER_ACCOUNT`] (its kubeconfig carries the account's token; call
    /// [`Cluster::install_rbac`] first), its Lease in `autocrane-system`, admin listener off.
    pub(crate) fn controller_process(&self, identity: &str, flags: &[&str]) -> ControllerProcess {
        let (namespace, account) = CONTROLLER_ACCOUNT;
        let token = self.sim.issue_token(namespace, account, None);
        let kubeconfig = self.dir.path().join(format!("kubeconfig-{identity}"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: sim, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: controller, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: sim, context: {{cluster: sim, user: controller}}}}]\ncurrent-context: sim\n",
                self.sim.url()
            ),
        )
        .unwrap();
        let mut argv: Vec<String> = [
            "controller",
            "--admin-listen",
            "off",
            "--lease-namespace",
            namespace,
            "--identity",
            identity,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        argv.extend(flags.iter().map(|f| f.to_string()));
        let log = self.dir.path().join(format!("controller-{identity}.log"));
        let mut controller = ControllerProcess {
            argv,
            kubeconfig,
            token,
            log,
            process: None,
        };
        controller.start();
        controller
    }

    /// `deploy/rbac.yaml`: the components' ServiceAccounts and least-privilege roles.
    pub(crate) async fn install_rbac(&self) {
        let rbac = workspace_root().join("deploy/rbac.yaml");
        self.kubectl(&["apply", "-f", rbac.to_str().unwrap()]).await;
    }

    pub(crate) fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.sim.client(), NS)
    }

    /// Event reasons recorded on deployment `name`.
    pub(crate) async fn event_reasons(&self, name: &str) -> BTreeSet<String> {
        let events: Api<Event> = Api::namespaced(self.sim.client(), NS);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    pub(crate) async fn shutdown(self) {
        drop(self.listener);
        self.kubelet.shutdown().await;
        self.sim.shutdown().await;
    }
}

/// The controller's ServiceAccount in `deploy/rbac.yaml`: (namespace, name).
pub(crate) const CONTROLLER_ACCOUNT: (&str, &str) = ("autocrane-system", "autocrane-controller");

/// The user name the API server knows the installed controller by.
pub(crate) fn controller_user() -> String {
    let (namespace, account) = CONTROLLER_ACCOUNT;
    format!("system:serviceaccount:{namespace}:{account}")
}

/// `autocrane controller <argv>` in-process with `client`, its admin listener on a free port.
fn spawn_controller(client: kube::Client, argv: &[&str]) -> Replica {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_flag = admin.to_string();
    let mut full = vec!["controller", "--admin-listen", &admin_flag];
    full.extend_from_slice(argv);
    let cli = Cli::try_parse_from(full).unwrap();
    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(autocrane_reconciler::run_with(
        cli.args,
        Process::new(shutdown),
        client,
    ));
    Replica { stop, task, admin }
}

/// `autocrane controller` as a process, logging to the cluster's directory.
pub(crate) struct ControllerProcess {
    argv: Vec<String>,
    kubeconfig: std::path::PathBuf,
    /// The ServiceAccount token its kubeconfig carries.
    token: String,
    /// Its log (appended to across restarts).
    pub(crate) log: std::path::PathBuf,
    process: Option<Running>,
}

impl ControllerProcess {
    fn start(&mut self) {
        let mut command = Command::new(autocrane_bin());
        command
            .args(&self.argv)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("AUTOCRANE_LOG", "info");
        self.process = Some(Running::builder(command).log_to(&self.log).start());
    }

    /// The ServiceAccount token its kubeconfig carries (a secret no log may show).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The running process's id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Running::pid)
    }

    /// SIGKILL — a crash: nothing flushed, no Lease released — then started again as the same
    /// replica (a restarted pod keeps its name).
    pub(crate) fn kill_and_restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.start();
    }
}

/// One running controller replica.
pub(crate) struct Replica {
    pub(crate) stop: autocrane_runtime::shutdown::ShutdownTrigger,
    pub(crate) task: tokio::task::JoinHandle<Result<(), autocrane_reconciler::Error>>,
    /// The admin listener (`/metrics`).
    pub(crate) admin: std::net::SocketAddr,
}

impl Replica {
    /// `autocrane_controller_reconciles_total` from `/metrics`.
    pub(crate) async fn reconciles(&self) -> u64 {
        let admin = self.admin;
        let (status, text) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| {
                l.strip_prefix("autocrane_controller_reconciles_total ")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no reconcile counter in {text}"))
    }

    /// The `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let admin = self.admin;
        let (status, text) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{text}");
        text
    }

    /// SIGTERM: stops acting and releases the Lease.
    pub(crate) async fn stop(self) {
        self.stop.trigger();
        self.task.await.unwrap().unwrap();
    }
}

/// The pods of the namespace that are not going away: (name, image, ready).
pub(crate) async fn live_pods(pods: &Api<Pod>) -> Vec<(String, String, bool)> {
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), pod_image(&p), pod_ready(&p)))
        .collect()
}

/// The image of the pod's first (app) container.
pub(crate) fn pod_image(pod: &Pod) -> String {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// Whether the pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `kubectl get acd <name> -o jsonpath=…` of `fields` (space-separated), as a user reads the
/// deployment's status.
pub(crate) async fn acd_fields(cluster: &Cluster, name: &str, fields: &[&str]) -> String {
    let path: Vec<String> = fields.iter().map(|f| format!("{{.{f}}}")).collect();
    cluster
        .kubectl(&[
            "get",
            "acd",
            name,
            "-n",
            NS,
            "-o",
            &format!("jsonpath={}", path.join(" ")),
        ])
        .await
}

/// An AutoCraneDeployment of the real test workload (`autocrane testworkload`, serving HTTP on
/// its pod IP, any port, and posting watchdog `app` every second with its pod-bound token):
/// `error` when its version contains `bad`.
pub(crate) fn testworkload_yaml(
    name: &str,
    version: &str,
    replicas: u32,
    threshold: &str,
    listener: std::net::SocketAddr,
) -> String {
    testworkload_yaml_with(name, version, replicas, threshold, listener, 0, "")
}

/// [`testworkload_yaml`] serving HTTP on `<pod IP>:<port>` (0: any), with `more_spec` (YAML at
/// the level of `spec`'s fields, indented two spaces, each line ending in a newline) added to the
/// spec. A fixed port only where the test reads it: pod IPs of two clusters a test binary runs at
/// once may coincide (each kubelet-sim picks its network at random).
pub(crate) fn testworkload_yaml_with(
    name: &str,
    version: &str,
    replicas: u32,
    threshold: &str,
    listener: std::net::SocketAddr,
    port: u16,
    more_spec: &str,
) -> String {
    let bin = autocrane_bin();
    format!(
        r#"apiVersion: autocrane.io/v1alpha1
kind: AutoCraneDeployment
metadata:
  name: {name}
  namespace: {NS}
spec:
  replicas: {replicas}
  version:
    pinned: "{version}"
  rollout:
    steps:
      - {{percent: 34, bake: 1s}}
      - {{percent: 100}}
    maxSurge: 1
    maxUnavailable: 0
  failingLimit: {{errorThreshold: {threshold}, maxConcurrentRestarts: 1, maxRestartsPerPod: 2, window: 1h}}
{more_spec}  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: registry.local/testworkload:placeholder
          command: ["{bin}", "testworkload"]
          env:
            - name: POD_IP
              valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
            - name: POD_NAMESPACE
              valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
            - {{name: AUTOCRANE_LISTEN, value: "$(POD_IP):{port}"}}
            - {{name: AUTOCRANE_WATCHDOG_LISTENER, value: "http://{listener}"}}
            - {{name: AUTOCRANE_TESTWORKLOAD_INTERVAL_SECS, value: "1"}}
            - {{name: AUTOCRANE_TOKEN_FILE, value: /var/run/autocrane/token/token}}
          volumeMounts:
            - {{name: watchdog-token, mountPath: /var/run/autocrane/token, readOnly: true}}
      volumes:
        - name: watchdog-token
          projected:
            sources:
              - serviceAccountToken: {{audience: autocrane-watchdog-listener, expirationSeconds: 3600, path: token}}
"#,
        bin = bin.display()
    )
}

/// The pods of the namespace that are not going away, with their watchdog `app` level:
/// (name, image, ready, level).
pub(crate) async fn workload_pods(pods: &Api<Pod>) -> Vec<(String, String, bool, String)> {
    let listed = pods.list(&ListParams::default()).await.unwrap().items;
    listed
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let level = p
                .annotations()
                .get("status.autocrane.io/app")
                .map(|v| {
                    v.split(|c: char| !c.is_ascii_alphabetic())
                        .find(|w| !w.is_empty())
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default();
            let image = p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap_or_default();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.name_any(), image, ready, level)
        })
        .collect()
}

/// The in-process controller's logs in the test output (`RUST_LOG`, default: the controller at
/// info), so a failing scenario shows what the controller decided.
pub(crate) fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "autocrane_reconciler=info,autocrane_controller=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// `autocrane watchdog post` of an `error` watchdog `forced` (no expiry) for pod `name`.
pub(crate) async fn force_error(listener: std::net::SocketAddr, name: &str) {
    let pod = format!("{NS}/{name}");
    let server = format!("http://{listener}");
    tokio::task::spawn_blocking(move || {
        let (ok, out, err) = run(Command::new(autocrane_bin()).args([
            "watchdog",
            "post",
            "--server",
            &server,
            "--pod",
            &pod,
            "--name",
            "forced",
            "--level",
            "error",
            "--message",
            "forced by the test",
        ]));
        assert!(ok, "watchdog post: {out}{err}");
    })
    .await
    .unwrap();
}

/// The live pod of `slot` (the slot label; a restarted pod gets a new name in the same slot):
/// its (name, uid), if one exists and is not going away.
pub(crate) async fn in_slot(pods: &Api<Pod>, slot: &str) -> Option<(String, String)> {
    let selector = format!("autocrane.io/slot={slot}");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p.metadata.uid.unwrap_or_default()))
}
