//! One pod's life on the node: set up its "sandbox" (IP, directories, volumes), run the init
//! containers in order, supervise the app containers (restart policy, back-off, probes), keep the
//! downward-API, ConfigMap, Secret and token volumes current, report status, and on deletion stop
//! the containers (SIGTERM, grace period, SIGKILL) before removing the pod from the API.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodStatus, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Shared;
use crate::container;
use crate::env::{Runtime, Sources};
use crate::status::{self, ContainerRun, Exit, PodRun, RunState};
use crate::volumes::{self, Content, TokenKey};
use crate::{FIELD_MANAGER, atomic_writer};

/// Why a pod's containers must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Keep running.
    Run,
    /// The pod was deleted gracefully: SIGTERM now, SIGKILL at the deadline, then remove it.
    Graceful(Instant),
    /// The pod is gone from the API, or the simulator shuts down: SIGKILL now.
    Kill,
}

/// The dispatcher's handle on a pod worker.
#[derive(Debug)]
pub(crate) struct Worker {
    pub pod_tx: watch::Sender<Arc<Pod>>,
    pub stop_tx: watch::Sender<Stop>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Start a worker for a pod bound to this node.
    pub(crate) fn start(shared: Arc<Shared>, pod: Pod) -> Worker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let (pod_tx, pod_rx) = watch::channel(Arc::new(pod));
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let dir = shared
            .state_dir
            .join("pods")
            .join(format!("{ns}_{name}_{uid}"));
        let ctx = Arc::new(Ctx {
            api: Api::namespaced(shared.client.clone(), &ns),
            shared,
            uid,
            ns: ns.clone(),
            name: name.clone(),
            dir,
            pod_rx,
            stop_rx,
            run: Mutex::new(PodRun::default()),
            dirty: Notify::new(),
            sources: Mutex::new(Sources::default()),
            tokens: Mutex::new(HashMap::new()),
            reported: tokio::sync::Mutex::new(Reported::default()),
        });
        let task = tokio::spawn(run_pod(ctx).instrument(info_span!("pod", %ns, %name)));
        Worker {
            pod_tx,
            stop_tx,
            task,
        }
    }
}

struct Token {
    value: String,
    refresh_at: Timestamp,
}

pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) api: Api<Pod>,
    pub(crate) uid: String,
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) pod_rx: watch::Receiver<Arc<Pod>>,
    pub(crate) stop_rx: watch::Receiver<Stop>,
    pub(crate) run: Mutex<PodRun>,
    pub(crate) dirty: Notify,
    pub(crate) sources: Mutex<Sources>,
    tokens: Mutex<HashMap<TokenKey, Token>>,
    pub(crate) reported: tokio::sync::Mutex<Reported>,
}

/// What the last successful status write left.
#[derive(Default)]
pub(crate) struct Reported {
    /// The kubelet's own part of the status as written (see [`status::compute`]).
    status: Option<PodStatus>,
    /// The pod as that write returned it: fresher than the watch until the watch catches up.
    pod: Option<Arc<Pod>>,
}

/// The fresher of two copies of the pod, by resourceVersion (compared as numbers, which they
/// are on kube-sim and etcd; otherwise the watch's copy, and a 409 tells when it was stale).
fn fresher(watched: Arc<Pod>, written: Option<Arc<Pod>>) -> Arc<Pod> {
    let rv = |p: &Pod| {
        p.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match written {
        Some(w) if w.metadata.uid == watched.metadata.uid => match (rv(&watched), rv(&w)) {
            (Some(a), Some(b)) if b > a => w,
            _ => watched,
        },
        _ => watched,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Init,
    App,
}

pub(crate) enum Outcome {
    Done(Exit),
    Stopped,
}

impl Ctx {
    pub(crate) fn pod(&self) -> Arc<Pod> {
        self.pod_rx.borrow().clone()
    }

    pub(crate) fn stop(&self) -> Stop {
        *self.stop_rx.borrow()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut PodRun)) {
        f(&mut self.run.lock().expect("pod run"));
        self.dirty.notify_one();
    }

    pub(crate) fn container(&self, kind: Kind, i: usize, f: impl FnOnce(&mut ContainerRun)) {
        self.update(|r| {
            f(if kind == Kind::Init {
                &mut r.init[i]
            } else {
                &mut r.app[i]
            })
        });
    }

    pub(crate) fn pod_ip(&self) -> String {
        self.run
            .lock()
            .expect("pod run")
            .pod_ip
            .clone()
            .unwrap_or_default()
    }

    pub(crate) fn runtime_view(&self) -> (String, String) {
        (self.pod_ip(), self.shared.host_ip.clone())
    }

    /// Patch the status if the kubelet's part of it changed since the last successful patch.
    ///
    /// Read-modify-write, as the real kubelet keeps what it does not own: the status is computed
    /// from the freshest copy of the pod (its readiness-gate conditions decide `Ready`), written
    /// with that copy's conditions of other writers (e.g. `autocrane.io/healthy`) and its
    /// resourceVersion as a precondition; on a conflict the pod is read again and the status
    /// recomputed, so a condition another writer just set is neither lost nor misjudged.
    pub(crate) async fn sync(&self) {
        let spec = self.pod().spec.clone().unwrap_or_default();
        let run = self.run.lock().expect("pod run").clone();
        let mut reported = self.reported.lock().await;
        let mut base = fresher(self.pod(), reported.pod.clone());
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        for _attempt in 0..10 {
            let current = base.status.as_ref();
            let new = status::compute(&spec, &run, current, Timestamp::now());
            if reported.status.as_ref() == Some(&new) {
                return;
            }
            let mut body = json!({"status": status::with_foreign_conditions(new.clone(), current)});
            if let Some(rv) = &base.metadata.resource_version {
                body["metadata"] = json!({"resourceVersion": rv});
            }
            match self
                .api
                .patch_status(&self.name, &pp, &Patch::Merge(body))
                .await
            {
                Ok(pod) => {
                    reported.status = Some(new);
                    reported.pod = Some(Arc::new(pod));
                    return;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    match self.api.get_opt(&self.name).await {
                        Ok(Some(pod)) if pod.metadata.uid.as_deref() == Some(&self.uid) => {
                            base = Arc::new(pod);
                        }
                        // Gone, or replaced by another pod of the same name.
                        Ok(_) => return,
                        Err(e) => {
                            warn!(error = %e, "Reading the pod after a status conflict failed");
                            break;
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "Patching pod status failed");
                    break;
                }
            }
        }
        drop(reported);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.dirty.notify_one();
    }

    /// Fetch the ConfigMaps and Secrets the pod references.
    pub(crate) async fn fetch_sources(&self) {
        let (cms, secrets) = volumes::referenced(&self.pod());
        let mut src = Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.ns);
        for n in cms {
            let data = match cm_api.get_opt(&n).await {
                Ok(o) => o.map(|cm| {
                    let mut d: std::collections::BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    d.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    d
                }),
                Err(e) => {
                    warn!(configmap = %n, error = %e, "Reading ConfigMap failed");
                    continue;
                }
            };
            src.config_maps.insert(n, data);
        }
        let s_api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.ns);
        for n in secrets {
            let data = match s_api.get_opt(&n).await {
                Ok(o) => o.map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect()
                }),
                Err(e) => {
                    warn!(secret = %n, error = %e, "Reading Secret failed");
                    continue;
                }
            };
            src.secrets.insert(n, data);
        }
        *self.sources.lock().expect("sources") = src;
    }

    /// Request (or refresh at 80 % of their lifetime) the tokens the pod's volumes need.
    pub(crate) async fn refresh_tokens(&self) -> Result<(), String> {
        let pod = self.pod();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.shared.client.clone(), &self.ns);
        for key in volumes::tokens_needed(&pod) {
            let due = self
                .tokens
                .lock()
                .expect("tokens")
                .get(&key)
                .is_none_or(|t| t.refresh_at <= Timestamp::now());
            if !due {
                continue;
            }
            let mut spec = json!({"expirationSeconds": key.expiration_seconds, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name, "uid": self.uid}});
            if let Some(a) = &key.audience {
                spec["audiences"] = json!([a]);
            }
            let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
            let resp: serde_json::Value = api
                .create_subresource("token", &sa, &PostParams::default(), &body)
                .await
                .map_err(|e| {
                    format!("requesting a token for service account {sa:?} failed: {e}")
                })?;
            let value = resp["status"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let exp = resp["status"]["expirationTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            let now = Timestamp::now();
            let life = exp.map_or(SignedDuration::from_secs(key.expiration_seconds), |e| {
                e.duration_since(now)
            });
            let refresh_at = now + life * 4 / 5;
            self.tokens
                .lock()
                .expect("tokens")
                .insert(key, Token { value, refresh_at });
        }
        Ok(())
    }

    /// Write every volume's current content (files are only rewritten when they change).
    pub(crate) fn write_volumes(&self) -> Result<(), String> {
        let pod = self.pod();
        let (ip, host_ip) = self.runtime_view();
        let rt = Runtime {
            service_host: &self.shared.api_host,
            service_port: self.shared.api_port,
            pod_ip: &ip,
            host_ip: &host_ip,
        };
        let tokens: HashMap<TokenKey, String> = self
            .tokens
            .lock()
            .expect("tokens")
            .iter()
            .map(|(k, t)| (k.clone(), t.value.clone()))
            .collect();
        let sources = self.sources.lock().expect("sources").clone();
        let inp = volumes::Inputs {
            rt: &rt,
            sources: &sources,
            tokens: &tokens,
            ca_pem: &self.shared.ca_pem,
        };
        let contents = volumes::contents(&pod, &inp)?;
        let root = self.dir.join("volumes");
        for (name, c) in contents {
            let dir = root.join(&name);
            match c {
                Content::Dir => std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("creating emptyDir {name}: {e}"))?,
                Content::Host(_) => {}
                Content::Files(p) => {
                    if atomic_writer::write(&dir, &p)
                        .map_err(|e| format!("writing volume {name}: {e}"))?
                    {
                        debug!(volume = %name, "Volume updated");
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) async fn wait_stop(rx: &mut watch::Receiver<Stop>) -> Stop {
    match rx.wait_for(|s| *s != Stop::Run).await {
        Ok(s) => *s,
        Err(_) => Stop::Kill,
    }
}

pub(crate) async fn sleep_or_stop(ctx: &Ctx, d: Duration) -> bool {
    let mut rx = ctx.stop_rx.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = wait_stop(&mut rx) => false,
    }
}

async fn run_pod(ctx: Arc<Ctx>) {
    info!("Pod admitted");
    let pod = ctx.pod();
    let spec = pod.spec.clone().unwrap_or_default();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let first_wait = if inits.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    ctx.update(|r| {
        r.host_ip = ctx.shared.host_ip.clone();
        r.start_time = Some(Timestamp::now());
        r.init = inits
            .iter()
            .map(|c| {
                ContainerRun::waiting(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    "PodInitializing",
                )
            })
            .collect();
        r.app = spec
            .containers
            .iter()
            .map(|c| {
                ContainerRun::waiting(&c.name, c.image.as_deref().unwrap_or_default(), first_wait)
            })
            .collect();
    });
    ctx.shared
        .pods
        .lock()
        .expect("pods")
        .insert((ctx.ns.clone(), ctx.name.clone()), ctx.dir.clone());
    // Status follows the containers (`dirty`) and the pod: another writer's change of a
    // readiness gate's condition flips `Ready`.
    let syncer = tokio::spawn({
        let ctx = ctx.clone();
        let mut pod_rx = ctx.pod_rx.clone();
        async move {
            loop {
                tokio::select! {
                    () = ctx.dirty.notified() => {}
                    changed = pod_rx.changed() => if changed.is_err() { return },
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                ctx.sync().await;
            }
        }
        .in_current_span()
    });
    let mut ip = ctx.shared.ipam.lock().expect("ipam").allocate();
    let mut refresher = None;
    if let Some(addr) = ip {
        if setup(&ctx, addr).await {
            refresher = Some(tokio::spawn(refresh_volumes(ctx.clone()).in_current_span()));
            run_containers(&ctx, &inits, &spec.containers).await;
        }
    } else {
        ctx.update(|r| r.message = Some("no free pod IP on this node".into()));
    }
    // Containers are done: completed, failed for good, or stopped.
    let release = |ip: &mut Option<Ipv4Addr>| {
        if let Some(addr) = ip.take() {
            ctx.shared.ipam.lock().expect("ipam").release(addr);
        }
    };
    let mut stop_rx = ctx.stop_rx.clone();
    let stop = if ctx.stop() == Stop::Run {
        ctx.sync().await;
        release(&mut ip);
        wait_stop(&mut stop_rx).await
    } else {
        ctx.stop()
    };
    if let Some(r) = refresher {
        r.abort();
    }
    release(&mut ip);
    let graceful = matches!(stop, Stop::Graceful(_)) && !ctx.shared.shutting_down();
    if graceful {
        ctx.update(|r| r.terminated = true);
        ctx.sync().await;
    }
    syncer.abort();
    if graceful {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(ctx.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match ctx.api.delete(&ctx.name, &dp).await {
            Ok(_) => info!("Pod removed"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(error = %e, "Removing pod failed"),
        }
    }
    ctx.shared
        .pods
        .lock()
        .expect("pods")
        .remove(&(ctx.ns.clone(), ctx.name.clone()));
    if let Err(e) = std::fs::remove_dir_all(&ctx.dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(error = %e, dir = %ctx.dir.display(), "Removing pod directory failed");
    }
}

/// IP, directories, tokens and volumes. Retries until it works or the pod is stopped.
async fn setup(ctx: &Arc<Ctx>, ip: Ipv4Addr) -> bool {
    ctx.update(|r| r.pod_ip = Some(ip.to_string()));
    let mut failures = 0u32;
    loop {
        ctx.fetch_sources().await;
        let result = ctx
            .refresh_tokens()
            .await
            .and_then(|()| ctx.write_volumes());
        match result {
            Ok(()) => return true,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    warn!(error = %e, "Setting up volumes failed (FailedMount); retrying");
                }
                if !sleep_or_stop(ctx, ctx.shared.backoff.base.min(Duration::from_secs(1))).await {
                    return false;
                }
            }
        }
    }
}

/// Keep volumes current: at once on pod changes (labels, annotations), and every sync period
/// for ConfigMaps, Secrets and token refreshes.
async fn refresh_volumes(ctx: Arc<Ctx>) {
    let mut pod_rx = ctx.pod_rx.clone();
    let mut tick = tokio::time::interval(ctx.shared.sync_period);
    tick.tick().await;
    loop {
        tokio::select! {
            r = pod_rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {
                ctx.fetch_sources().await;
                if let Err(e) = ctx.refresh_tokens().await {
                    warn!(error = %e, "Refreshing tokens failed");
                }
            }
        }
        if let Err(e) = ctx.write_volumes() {
            warn!(error = %e, "Updating volumes failed");
        }
    }
}

async fn run_containers(ctx: &Arc<Ctx>, inits: &[Container], apps: &[Container]) {
    for i in 0..inits.len() {
        match container::run(ctx.clone(), Kind::Init, i).await {
            Outcome::Done(e) if e.exit_code == 0 => {}
            _ => return,
        }
    }
    ctx.update(|r| {
        for c in &mut r.app {
            c.state = RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for i in 0..apps.len() {
        set.spawn(container::run(ctx.clone(), Kind::App, i).in_current_span());
    }
    while set.join_next().await.is_some() {}
}
