//! `kubelet-sim`: a kubelet simulator for kube-sim. Pods bound to its node become real local
//! processes, each pod with its own loopback IP, volumes at their `mountPath` (private mount and
//! PID namespaces per container, as root; see `runtime`), a service-account token from TokenRequest, and the real
//! kubelet's status reporting, restart back-off, probes and graceful termination. It talks to the
//! API server only through a `kube::Client`, as a real kubelet does.
//!
//! ```no_run
//! # async fn f(client: kube::Client) -> Result<(), kubelet_sim::Error> {
//! use kubelet_sim::{ImageMap, Kubelet};
//! let kubelet = Kubelet::builder(client)
//!     .node_name("sim-node")
//!     .image_map(ImageMap::new().with("autocrane:*", "/work/main/target/debug/autocrane"))
//!     .api_server("https://127.0.0.1:6443", "-----BEGIN CERTIFICATE-----…")
//!     .start()
//!     .await?;
//! kubelet.shutdown().await;
//! # Ok(()) }
//! ```

pub mod atomic_writer;
pub mod backoff;
mod container;
pub mod env;
pub mod image;
pub mod ipam;
pub mod kubelet_api;
mod node;
mod pod;
pub mod probes;
pub mod runtime;
pub mod status;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

pub use backoff::Backoff;
pub use image::ImageMap;
pub use kubelet_api::KubeletApi;

use ipam::IpPool;
use pod::{Stop, Worker};
use runtime::Tools;

/// The field manager of every write the simulator makes.
pub const FIELD_MANAGER: &str = "kubelet";

/// Errors starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host tool the simulator needs is missing.
    #[error("finding host tools failed: {0}")]
    FindTools(String),
    /// Mount namespaces were required but the process is not root.
    #[error(
        "mount namespaces need root; run as root or disable them with .mount_namespaces(false)"
    )]
    NotRoot,
    /// The builder is missing a required setting.
    #[error("invalid kubelet configuration: {0}")]
    Config(String),
    /// Creating the state directory failed.
    #[error("creating state directory {path} failed")]
    CreateStateDir {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubelet API could not be set up (certificates, port).
    #[error("serving the kubelet API failed: {0}")]
    KubeletApi(String),
    /// Registering the Node failed.
    #[error("registering node {node} failed")]
    RegisterNode {
        /// Node name.
        node: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// State shared by the dispatcher and all pod workers.
pub(crate) struct Shared {
    pub client: Client,
    pub node_name: String,
    pub images: ImageMap,
    pub state_dir: PathBuf,
    pub api_host: String,
    pub api_port: u16,
    pub ca_pem: String,
    pub backoff: Backoff,
    pub tools: Tools,
    /// Containers get a private mount namespace with an overlay root (root only).
    pub isolate: bool,
    pub host_mounts: Vec<PathBuf>,
    pub ipam: Mutex<IpPool>,
    pub host_ip: String,
    pub sync_period: Duration,
    /// (namespace, name) → pod directory, for logs and volume paths.
    pub pods: Mutex<HashMap<(String, String), PathBuf>>,
    pub shutting_down: AtomicBool,
    /// The port reported in `status.daemonEndpoints.kubeletEndpoint.Port`.
    pub kubelet_port: u16,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node_name", &self.node_name)
            .field("state_dir", &self.state_dir)
            .field("isolate", &self.isolate)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Entry point: `Kubelet::builder(client)`.
#[derive(Debug)]
pub struct Kubelet;

impl Kubelet {
    /// A builder for a kubelet that uses `client` (it needs rights on pods, pods/status,
    /// pods/binding, nodes, nodes/status, leases, configmaps, secrets, serviceaccounts/token).
    pub fn builder(client: Client) -> Builder {
        Builder {
            client,
            node_name: "sim-node".into(),
            images: ImageMap::new(),
            state_dir: None,
            api_server: None,
            backoff: Backoff::default(),
            pod_network: None,
            sync_period: Duration::from_secs(10),
            mount_namespaces: None,
            bind_unscheduled: true,
            kubelet_api: None,
        }
    }
}

/// Kubelet settings. Only [`api_server`](Builder::api_server) is required.
pub struct Builder {
    client: Client,
    node_name: String,
    images: ImageMap,
    state_dir: Option<PathBuf>,
    api_server: Option<(String, String)>,
    backoff: Backoff,
    pod_network: Option<u8>,
    sync_period: Duration,
    mount_namespaces: Option<bool>,
    bind_unscheduled: bool,
    kubelet_api: Option<KubeletApi>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("node_name", &self.node_name)
            .field("images", &self.images)
            .field("state_dir", &self.state_dir)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The Node name (default `sim-node`); pods with this `spec.nodeName` run here.
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = name.into();
        self
    }

    /// Image → program table used for containers without `command`.
    pub fn image_map(mut self, images: ImageMap) -> Self {
        self.images = images;
        self
    }

    /// Where pod directories (volumes, container layers, logs) live. Default: a fresh directory
    /// under the system temp dir, removed on shutdown.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The API server as pods see it: its HTTPS URL (`https://127.0.0.1:PORT`, for
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`) and CA (PEM, for `ca.crt`). Required.
    pub fn api_server(mut self, https_url: impl Into<String>, ca_pem: impl Into<String>) -> Self {
        self.api_server = Some((https_url.into(), ca_pem.into()));
        self
    }

    /// CrashLoopBackOff / ImagePullBackOff timing (default: the kubelet's 10 s … 5 min).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Pod IPs come from `127.<octet>.0.0/16` (default: an octet in 100..=250 derived from the
    /// process id and time, so simulators in one process rarely collide; tests may set it).
    pub fn pod_network(mut self, octet: u8) -> Self {
        self.pod_network = Some(octet);
        self
    }

    /// How often ConfigMap/Secret volumes are re-read and tokens checked for refresh (default
    /// 10 s). Label and annotation changes are applied at once regardless.
    pub fn sync_period(mut self, every: Duration) -> Self {
        self.sync_period = every;
        self
    }

    /// Force mount namespaces on (error when not root) or off. Default: on when root.
    pub fn mount_namespaces(mut self, on: bool) -> Self {
        self.mount_namespaces = Some(on);
        self
    }

    /// Bind pods without `spec.nodeName` to this node through `pods/binding` (default true;
    /// switched off by itself when the API server does not serve that subresource).
    pub fn bind_unscheduled(mut self, on: bool) -> Self {
        self.bind_unscheduled = on;
        self
    }

    /// Serve the kubelet API (`/containerLogs/…`, what the API server proxies `kubectl logs`
    /// to) over HTTPS on 127.0.0.1, and report its port in the Node's
    /// `status.daemonEndpoints.kubeletEndpoint.Port`. Default: not served (port 10250 reported).
    pub fn kubelet_api(mut self, api: KubeletApi) -> Self {
        self.kubelet_api = Some(api);
        self
    }

    /// Register the Node and start running pods.
    pub async fn start(self) -> Result<KubeletHandle, Error> {
        let Builder {
            client,
            node_name,
            images,
            state_dir,
            api_server,
            backoff,
            pod_network,
            sync_period,
            mount_namespaces,
            bind_unscheduled,
            kubelet_api,
        } = self;
        let (url, ca_pem) = api_server.ok_or_else(|| {
            Error::Config(
                "api_server(https_url, ca_pem) is required so pods can reach the API".into(),
            )
        })?;
        let (api_host, api_port) = parse_url(&url).ok_or_else(|| {
            Error::Config(format!("api_server URL {url:?} is not https://HOST:PORT"))
        })?;
        let tools = Tools::find().map_err(Error::FindTools)?;
        let root = runtime::is_root();
        let isolate = match mount_namespaces {
            Some(true) if !root => return Err(Error::NotRoot),
            Some(on) => on,
            None => root,
        };
        if !isolate {
            warn!(
                "Containers run without mount namespaces: volumes are not visible at their mountPath"
            );
        }
        let owned_state_dir = state_dir.is_none();
        let state_dir = state_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "kubelet-sim-{}-{}",
                std::process::id(),
                jiff::Timestamp::now().as_nanosecond()
            ))
        });
        std::fs::create_dir_all(state_dir.join("pods")).map_err(|source| {
            Error::CreateStateDir {
                path: state_dir.display().to_string(),
                source,
            }
        })?;
        let state_dir = state_dir
            .canonicalize()
            .map_err(|source| Error::CreateStateDir {
                path: state_dir.display().to_string(),
                source,
            })?;
        let octet = pod_network.unwrap_or_else(default_octet);
        let ipam = IpPool::new(octet);
        let host_ip = "127.0.0.1".to_string();
        let api_bound = match &kubelet_api {
            Some(api) => Some(kubelet_api::bind(api).await.map_err(Error::KubeletApi)?),
            None => None,
        };
        let kubelet_port = api_bound
            .as_ref()
            .map_or(node::DEFAULT_KUBELET_PORT, |b| b.addr.port());
        node::register(&client, &node_name, &ipam.cidr(), &host_ip, kubelet_port)
            .await
            .map_err(|source| Error::RegisterNode {
                node: node_name.clone(),
                source,
            })?;
        let host_mounts = if isolate {
            runtime::host_mounts(&state_dir)
        } else {
            vec![]
        };
        let shared = Arc::new(Shared {
            client,
            node_name,
            images,
            state_dir,
            api_host,
            api_port,
            ca_pem,
            backoff,
            tools,
            isolate,
            host_mounts,
            ipam: Mutex::new(ipam),
            host_ip,
            sync_period,
            pods: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            kubelet_port,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let span = info_span!("kubelet", node = %shared.node_name);
        if let Some(bound) = api_bound {
            tokio::spawn(
                kubelet_api::serve(bound, shared.clone(), stop_rx.clone()).instrument(span.clone()),
            );
        }
        let task = tokio::spawn(
            dispatch(shared.clone(), stop_rx.clone(), bind_unscheduled).instrument(span),
        );
        info!(node = %shared.node_name, pod_cidr = %format!("127.{octet}.0.0/16"), isolate, "Kubelet started");
        Ok(KubeletHandle {
            shared,
            stop_tx,
            task: Some(task),
            owned_state_dir,
        })
    }
}

fn parse_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    Some((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port.parse().ok()?,
    ))
}

fn default_octet() -> u8 {
    let t = jiff::Timestamp::now().subsec_nanosecond().unsigned_abs();
    let mix = std::process::id().wrapping_mul(2_654_435_761) ^ t;
    100 + u8::try_from(mix % 151).unwrap_or(0)
}

/// A running kubelet. Dropping it stops the pods' processes too (SIGKILL), but prefer
/// [`shutdown`](KubeletHandle::shutdown), which waits for them.
#[derive(Debug)]
pub struct KubeletHandle {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    owned_state_dir: bool,
}

impl KubeletHandle {
    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.node_name
    }

    /// The state directory (pod directories live in `pods/<ns>_<name>_<uid>/`).
    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    /// The kubelet API port reported in the Node's `daemonEndpoints` (served only when
    /// [`Builder::kubelet_api`] was given).
    pub fn kubelet_port(&self) -> u16 {
        self.shared.kubelet_port
    }

    /// Whether containers get a private mount namespace (volumes at their `mountPath`).
    pub fn mount_namespaces(&self) -> bool {
        self.shared.isolate
    }

    /// The host directory of a running pod.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.shared
            .pods
            .lock()
            .expect("pods")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The host directory backing one of a pod's volumes (the service-account volume is
    /// [`volumes::SA_VOLUME`]).
    pub fn volume_path(&self, namespace: &str, name: &str, volume: &str) -> Option<PathBuf> {
        self.pod_dir(namespace, name)
            .map(|d| d.join("volumes").join(volume))
    }

    /// A container's captured stdout+stderr: the current run, or with `previous` the one before
    /// (what `kubectl logs [--previous]` would show).
    pub fn logs(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        previous: bool,
    ) -> Option<String> {
        self.log_reader().read(namespace, name, container, previous)
    }

    /// A cloneable, thread-safe reader of captured logs, e.g. for an API server's `pods/log`.
    pub fn log_reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// Kill every container (SIGKILL), wait for the processes to be gone, and stop. Pods stay in
    /// the API, as when a real kubelet stops.
    pub async fn shutdown(mut self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.stop_tx.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if self.owned_state_dir {
            let _ = std::fs::remove_dir_all(&self.shared.state_dir);
        }
        info!(node = %self.shared.node_name, "Kubelet stopped");
    }
}

impl Drop for KubeletHandle {
    fn drop(&mut self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.stop_tx.send(true);
    }
}

/// Reads the captured output of containers (see [`KubeletHandle::logs`]).
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// The current (or with `previous`, the one before) run's stdout+stderr of a container of a
    /// pod this kubelet runs; None when there is no such pod, container or run.
    pub fn read(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        previous: bool,
    ) -> Option<String> {
        let pod_dir = self
            .shared
            .pods
            .lock()
            .expect("pods")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()?;
        let dir = pod_dir.join("logs").join(container);
        let mut runs: Vec<u32> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        runs.sort_unstable();
        let n = if previous {
            runs.iter().rev().nth(1)?
        } else {
            runs.last()?
        };
        std::fs::read_to_string(dir.join(format!("{n}.log"))).ok()
    }
}

/// Watch the pods bound to this node and keep one worker per pod.
async fn dispatch(shared: Arc<Shared>, mut stop_rx: watch::Receiver<bool>, bind_unscheduled: bool) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
    let mut events = watcher::watcher(pods.clone(), cfg)
        .default_backoff()
        .boxed();
    let heartbeat = tokio::spawn(
        node::heartbeat(
            shared.client.clone(),
            shared.node_name.clone(),
            shared.host_ip.clone(),
            shared.kubelet_port,
        )
        .in_current_span(),
    );
    let binder = bind_unscheduled.then(|| tokio::spawn(bind(shared.clone()).in_current_span()));
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let ev = tokio::select! {
            _ = stop_rx.changed() => break,
            ev = events.next() => ev,
        };
        match ev {
            Some(Ok(Event::Init)) => seen.clear(),
            Some(Ok(Event::InitApply(p))) => {
                seen.insert(p.metadata.uid.clone().unwrap_or_default());
                upsert(&shared, &mut workers, p).await;
            }
            Some(Ok(Event::InitDone)) => {
                let gone: Vec<String> = workers
                    .keys()
                    .filter(|u| !seen.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    forget(&mut workers, &uid);
                }
            }
            Some(Ok(Event::Apply(p))) => upsert(&shared, &mut workers, p).await,
            Some(Ok(Event::Delete(p))) => {
                forget(&mut workers, p.metadata.uid.as_deref().unwrap_or_default())
            }
            Some(Err(e)) => debug!(error = %e, "Pod watch failed; retrying"),
            None => break,
        }
        workers.retain(|_, w| !w.task.is_finished());
    }
    heartbeat.abort();
    if let Some(b) = binder {
        b.abort();
    }
    for w in workers.values() {
        let _ = w.stop_tx.send(Stop::Kill);
    }
    for (_, w) in workers.drain() {
        let _ = w.task.await;
    }
}

async fn upsert(shared: &Arc<Shared>, workers: &mut HashMap<String, Worker>, pod: Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
    if let Some(w) = workers.get(&uid) {
        if deleting {
            let deadline = Instant::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(0));
            w.stop_tx.send_if_modified(|s| {
                if *s == Stop::Run {
                    *s = Stop::Graceful(deadline);
                    true
                } else {
                    false
                }
            });
        }
        let _ = w.pod_tx.send(Arc::new(pod));
        return;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        // Finished before this kubelet started: nothing to run; finish a deletion.
        if deleting {
            remove(shared, &pod).await;
        }
        return;
    }
    let w = Worker::start(shared.clone(), pod);
    if deleting {
        let _ = w.stop_tx.send(Stop::Graceful(
            Instant::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(0)),
        ));
    }
    workers.insert(uid, w);
}

fn forget(workers: &mut HashMap<String, Worker>, uid: &str) {
    if let Some(w) = workers.get(uid) {
        // Gone from the API (force deletion): kill at once. The task ends by itself.
        let _ = w.stop_tx.send(Stop::Kill);
    }
}

async fn remove(shared: &Arc<Shared>, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(
        shared.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = api
        .delete(pod.metadata.name.as_deref().unwrap_or_default(), &dp)
        .await;
}

/// Act as the scheduler for pods without a node: bind them here through `pods/binding`.
async fn bind(shared: Arc<Shared>) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher::watcher(pods, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut tried: HashSet<String> = HashSet::new();
    while let Some(ev) = events.next().await {
        let Ok(p) = ev else { continue };
        let uid = p.metadata.uid.clone().unwrap_or_default();
        if p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
            || p.metadata.deletion_timestamp.is_some()
            || !tried.insert(uid)
        {
            continue;
        }
        let (ns, name) = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns}, "target": {"apiVersion": "v1", "kind": "Node", "name": shared.node_name}});
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => info!(%ns, %name, "Pod bound to node"),
            Err(kube::Error::Api(e))
                if e.code == 404 && e.reason == "NotFound" && !e.message.contains(&name) =>
            {
                warn!(
                    "The API server does not serve pods/binding: pods without spec.nodeName stay Pending"
                );
                return;
            }
            Err(e) => warn!(%ns, %name, error = %e, "Binding pod failed"),
        }
    }
}
