//! `kube-sim`: an in-memory Kubernetes API server that real `kubectl` and `kube` clients work
//! against — discovery, CRUD with the real metadata rules, all four patch types, watch with
//! resourceVersion resume, bookmarks and in-stream 410, CRDs with structural-schema and CEL
//! validation, server-side printing, ServiceAccount tokens, RBAC, and fault injection.
//!
//! ```no_run
//! # async fn f() -> Result<(), kube_sim::Error> {
//! let sim = kube_sim::KubeSim::builder().auth(true).start().await?;
//! let client = sim.client();
//! # Ok(()) }
//! ```

pub mod auth;
mod builtin;
mod delete;
pub mod faults;
mod managed;
pub mod node_auth;
pub mod patch;
mod pod_log;
pub mod protobuf;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
mod subresources;
pub mod table;
pub mod tls;
pub mod validate;
pub mod verbs;
mod watching;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use faults::{ErrorRule, FaultConfig, Faults};
pub use pod_log::LogSource;

use server::Shared;
use store::Store;

/// Errors starting or driving the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding a listener failed.
    #[error("binding {addr} failed")]
    Bind {
        /// The address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating the TLS material failed.
    #[error("generating TLS material failed: {0}")]
    Tls(String),
    /// Writing the kubeconfig failed.
    #[error("writing kubeconfig {path} failed")]
    WriteKubeconfig {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the snapshot failed.
    #[error("snapshot {path}: {message}")]
    Snapshot {
        /// Path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A bootstrap write failed.
    #[error("bootstrapping {what} failed: {message}")]
    Bootstrap {
        /// What was being created.
        what: String,
        /// The API error message.
        message: String,
    },
}

/// Builder for [`KubeSim`].
#[derive(Debug, Clone)]
pub struct Builder {
    auth: bool,
    listen: SocketAddr,
    https_listen: SocketAddr,
    history: usize,
    kubelet_delay: Option<Duration>,
    bookmark_interval: Duration,
    seed: u64,
    snapshot: Option<PathBuf>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            auth: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            https_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: 100_000,
            kubelet_delay: Some(Duration::from_millis(100)),
            bookmark_interval: Duration::from_secs(5),
            seed: 0,
            snapshot: None,
        }
    }
}

impl Builder {
    /// Require bearer tokens and authorize with RBAC (default: anonymous admin).
    pub fn auth(mut self, on: bool) -> Self {
        self.auth = on;
        self
    }

    /// Address of the plain-HTTP listener (default 127.0.0.1:0).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Address of the HTTPS listener (default 127.0.0.1:0).
    pub fn https_listen(mut self, addr: SocketAddr) -> Self {
        self.https_listen = addr;
        self
    }

    /// How many changes watches can resume across (default 100 000).
    pub fn history(mut self, changes: usize) -> Self {
        self.history = changes.max(1);
        self
    }

    /// After a graceful pod deletion the emulated kubelet removes the pod after this delay
    /// (default 100 ms). `None` leaves terminating pods for a kubelet simulator to remove.
    pub fn kubelet_delay(mut self, delay: Option<Duration>) -> Self {
        self.kubelet_delay = delay;
        self
    }

    /// Interval of BOOKMARK events on watches that allow them (default 5 s).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Seed of the fault-injection RNG (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Load state from this JSON file at start when it exists, and write it back on
    /// `shutdown()` / drop.
    pub fn snapshot(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// Bind the listeners, bootstrap the default objects and start serving.
    pub async fn start(self) -> Result<KubeSim, Error> {
        let store = Arc::new(Mutex::new(Store::new(self.history)));
        let (close_tx, close_rx) = watch::channel(0u64);
        let faults = Faults::new(Arc::new(close_tx), store.clone());
        faults.seed(self.seed);
        let admin_token = format!("admin-{}", auth::random_string(32));
        let shared = Arc::new(Shared {
            store: store.clone(),
            auth: self.auth,
            admin_token: admin_token.clone(),
            faults: faults.clone(),
            close_rx,
            server_addr: Mutex::new(String::new()),
            kubelet_delay: self.kubelet_delay,
            bookmark_interval: self.bookmark_interval,
            pod_logs: Mutex::new(None),
        });
        let tls = tls::generate()?;
        store.lock().expect("store").root_ca = tls.ca_pem.clone();
        match self.snapshot.as_ref().and_then(|p| std::fs::read(p).ok()) {
            Some(bytes) => {
                let snap: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Snapshot {
                        path: self
                            .snapshot
                            .clone()
                            .unwrap_or_default()
                            .display()
                            .to_string(),
                        message: e.to_string(),
                    })?;
                let mut st = store.lock().expect("store");
                st.restore(&snap);
                // This run's CA differs from the snapshot's: republish it, as the root-CA
                // publisher would.
                let namespaces: Vec<String> = st
                    .objects
                    .get("/namespaces")
                    .map(|b| b.keys().map(|(_, n)| n.clone()).collect())
                    .unwrap_or_default();
                for ns in namespaces {
                    let cm = verbs::root_ca_configmap(&ns, &tls.ca_pem);
                    st.put("/configmaps", cm);
                }
            }
            None => bootstrap(&store)?,
        }
        let bind = |a: SocketAddr| async move {
            TcpListener::bind(a).await.map_err(|source| Error::Bind {
                addr: a.to_string(),
                source,
            })
        };
        let plain = bind(self.listen).await?;
        let secure = bind(self.https_listen).await?;
        let addr = plain.local_addr().map_err(|source| Error::Bind {
            addr: self.listen.to_string(),
            source,
        })?;
        let https_addr = secure.local_addr().map_err(|source| Error::Bind {
            addr: self.https_listen.to_string(),
            source,
        })?;
        *shared.server_addr.lock().expect("addr") = addr.to_string();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(server::listen::serve(
            plain,
            None,
            shared.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(server::listen::serve(
            secure,
            Some(tokio_rustls::TlsAcceptor::from(tls.config.clone())),
            shared.clone(),
            stop_rx,
        ));
        tracing::info!(%addr, %https_addr, auth = self.auth, "Kube-sim serving");
        Ok(KubeSim {
            addr,
            https_addr,
            ca_pem: tls.ca_pem,
            admin_token,
            auth: self.auth,
            shared,
            faults,
            stop_tx,
            tasks: Mutex::new(Some(tasks)),
            snapshot: self.snapshot,
        })
    }
}

fn bootstrap(store: &Arc<Mutex<Store>>) -> Result<(), Error> {
    let mut st = store.lock().expect("store");
    let types = resources::builtins();
    let find = |k: &str| {
        types
            .iter()
            .find(|t| t.kind == k && (t.group.is_empty() || t.group.starts_with("rbac")))
            .expect("builtin")
    };
    fn mk(rt: &resources::ResourceType) -> verbs::Ctx<'_> {
        verbs::Ctx {
            rt,
            ns: String::new(),
            manager: "kube-apiserver".into(),
            manager_explicit: true,
            dry_run: false,
            field_validation: "Ignore".into(),
            node: None,
        }
    }
    let ns_rt = find("Namespace");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        verbs::create(&mut st, &mk(ns_rt), json!({"metadata": {"name": ns}})).map_err(|e| {
            Error::Bootstrap {
                what: format!("namespace {ns}"),
                message: e.message,
            }
        })?;
    }
    for obj in auth::bootstrap_roles() {
        let rt = find(obj["kind"].as_str().unwrap_or_default());
        verbs::create(&mut st, &mk(rt), obj).map_err(|e| Error::Bootstrap {
            what: "RBAC bootstrap".into(),
            message: e.message,
        })?;
    }
    Ok(())
}

/// A running simulator. Dropping it stops serving.
#[derive(Debug)]
pub struct KubeSim {
    addr: SocketAddr,
    https_addr: SocketAddr,
    ca_pem: String,
    admin_token: String,
    auth: bool,
    shared: Arc<Shared>,
    faults: Faults,
    stop_tx: watch::Sender<bool>,
    tasks: Mutex<Option<JoinSet<()>>>,
    snapshot: Option<PathBuf>,
}

impl KubeSim {
    /// A builder with defaults: no auth, 127.0.0.1:0.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    /// The plain listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed the HTTPS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The administrator's bearer token (accepted with or without `auth`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Serve `pods/log` (`kubectl logs`) from a kubelet simulator's captured output (any
    /// [`LogSource`], e.g. a closure over `kubelet_sim::LogReader::read`). Without a source, a
    /// log request fails as for a pod whose node is gone.
    pub fn serve_pod_logs(&self, source: impl LogSource) {
        *self.shared.pod_logs.lock().expect("pod_logs") = Some(Arc::new(source));
    }

    /// Fault injection handle.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The kubeconfig YAML: context `kube-sim` (plain HTTP) and `kube-sim-https` (HTTPS with the
    /// CA), user `kube-sim-admin` (the admin token when auth is on). The current context is the
    /// HTTPS one when auth is on, because client-go sends bearer tokens only over TLS.
    pub fn kubeconfig(&self) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let user = if self.auth {
            json!({"token": self.admin_token})
        } else {
            json!({})
        };
        let cfg = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": if self.auth { "kube-sim-https" } else { "kube-sim" }, "preferences": {},
            "clusters": [
                {"name": "kube-sim", "cluster": {"server": self.url()}},
                {"name": "kube-sim-https", "cluster": {"server": self.https_url(), "certificate-authority-data": ca}},
            ],
            "users": [{"name": "kube-sim-admin", "user": user}],
            "contexts": [
                {"name": "kube-sim", "context": {"cluster": "kube-sim", "user": "kube-sim-admin", "namespace": "default"}},
                {"name": "kube-sim-https", "context": {"cluster": "kube-sim-https", "user": "kube-sim-admin", "namespace": "default"}},
            ],
        });
        serde_saphyr::to_string(&cfg).expect("a JSON value serializes as YAML")
    }

    /// Write [`kubeconfig`](Self::kubeconfig) to a file.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let p = path.as_ref();
        std::fs::write(p, self.kubeconfig()).map_err(|source| Error::WriteKubeconfig {
            path: p.display().to_string(),
            source,
        })
    }

    /// A `kube::Client` for the administrator over plain HTTP.
    pub fn client(&self) -> kube::Client {
        self.client_with_token(Some(&self.admin_token))
    }

    /// A `kube::Client` over plain HTTP with the given bearer token (None: anonymous).
    pub fn client_with_token(&self, token: Option<&str>) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("url"));
        config.default_namespace = "default".into();
        config.read_timeout = None;
        if let Some(t) = token {
            config.auth_info = serde_json::from_value(json!({"token": t})).expect("auth info");
        }
        kube::Client::try_from(config).expect("kube client")
    }

    /// Issue a ServiceAccount token as TokenRequest would (audience: the API server), creating
    /// the namespace and service account when missing. With `bound_pod` the token is bound to
    /// that pod, which must exist.
    ///
    /// # Panics
    /// If `bound_pod` names a pod that does not exist.
    pub fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        bound_pod: Option<&str>,
    ) -> String {
        let mut st = self.shared.store.lock().expect("store");
        let types = resources::builtins();
        let ctx = |k: &str, ns: &str| verbs::Ctx {
            rt: types
                .iter()
                .find(|t| t.kind == k && t.group.is_empty())
                .expect("builtin"),
            ns: ns.into(),
            manager: "kube-sim".into(),
            manager_explicit: true,
            dry_run: false,
            field_validation: "Ignore".into(),
            node: None,
        };
        if st.get("/namespaces", "", namespace).is_none() {
            let _ = verbs::create(
                &mut st,
                &ctx("Namespace", ""),
                json!({"metadata": {"name": namespace}}),
            );
        }
        if st
            .get("/serviceaccounts", namespace, service_account)
            .is_none()
        {
            let _ = verbs::create(
                &mut st,
                &ctx("ServiceAccount", namespace),
                json!({"metadata": {"name": service_account}}),
            );
        }
        let bound = bound_pod.map(|p| ("Pod".to_string(), p.to_string(), None));
        match subresources::issue_token(&mut st, namespace, service_account, vec![], None, bound) {
            Ok((t, _)) => t,
            Err(e) => panic!(
                "kube-sim: issuing a token for {namespace}/{service_account} failed: {}",
                e.message
            ),
        }
    }

    /// A credential of node `node`: a bearer token that authenticates as user
    /// `system:node:<node>` in group `system:nodes`, so the Node authorizer and NodeRestriction
    /// apply to it as on a real cluster (which gives nodes client certificates instead).
    pub fn issue_node_token(&self, node: &str) -> String {
        let token = format!("node-{}", auth::random_string(32));
        self.shared
            .store
            .lock()
            .expect("store")
            .node_tokens
            .insert(token.clone(), node.to_string());
        token
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("store").rv
    }

    /// Write the state to the snapshot file, if one was configured.
    pub fn save_snapshot(&self) -> Result<(), Error> {
        let Some(p) = &self.snapshot else {
            return Ok(());
        };
        let snap = self.shared.store.lock().expect("store").snapshot();
        std::fs::write(p, serde_json::to_vec(&snap).expect("json")).map_err(|e| Error::Snapshot {
            path: p.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Stop serving and wait for the listeners to close.
    pub async fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        self.faults.close_watches();
        let tasks = self.tasks.lock().expect("tasks").take();
        if let Some(mut t) = tasks {
            while t.join_next().await.is_some() {}
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        if let Err(e) = self.save_snapshot() {
            tracing::warn!(error = %e, "Writing the snapshot failed");
        }
        let _ = self.stop_tx.send(true);
        self.faults.close_watches();
    }
}
