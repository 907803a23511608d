//! The in-memory object store: objects by resource, one global resourceVersion counter, and a
//! bounded history of changes that watches replay from and that a broadcast fans out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::resources::{self, ResourceType};

/// One committed change, as watches see it.
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Store key (`group/plural`).
    pub key: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub etype: &'static str,
    /// The object after the change (for DELETED: the last state, with the new rv).
    pub object: Arc<Value>,
    /// The object before the change, so selector watches can turn a MODIFIED that leaves
    /// the selection into a DELETED, as the real server does.
    pub old: Option<Arc<Value>>,
}

/// A ServiceAccount token issued by TokenRequest.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// UID of the service account at issue time.
    pub sa_uid: String,
    /// Bound pod (name, uid).
    pub pod: Option<(String, String)>,
    /// The node (name, uid): the bound pod's node, or the bound Node.
    pub node: Option<(String, String)>,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Expiry, unix seconds.
    pub expires: i64,
    /// Token id (`jti`).
    pub jti: String,
}

/// Objects of one resource, keyed by (namespace, name); "" namespace for cluster scope.
pub type Bucket = BTreeMap<(String, String), Arc<Value>>;

/// All mutable server state, behind one mutex.
#[derive(Debug)]
pub struct Store {
    /// Last issued resourceVersion.
    pub rv: u64,
    /// Objects by store key.
    pub objects: HashMap<String, Bucket>,
    /// Retained changes, oldest first.
    pub history: VecDeque<Arc<Change>>,
    /// How many changes to retain.
    pub history_cap: usize,
    /// Watches may resume from any rv >= this.
    pub oldest_rv: u64,
    /// Fan-out of committed changes.
    pub tx: broadcast::Sender<Arc<Change>>,
    /// Served types (built-ins plus CRDs), recomputed when CRDs change.
    pub types: Vec<ResourceType>,
    /// Bumped whenever the set of types changes (the openapi hash).
    pub types_gen: u64,
    /// Issued tokens.
    pub tokens: HashMap<String, TokenInfo>,
    /// Node credentials: token → node name (user `system:node:<name>` in `system:nodes`).
    pub node_tokens: HashMap<String, String>,
    /// PEM of the cluster CA (the `kube-root-ca.crt` ConfigMaps).
    pub root_ca: String,
    /// Nodes whose condition taints the emulated node lifecycle controller must reconcile.
    pub pending_nodes: Vec<String>,
    /// Pods in graceful deletion that the emulated kubelet must remove: (ns, name, uid).
    pub pending_pods: Vec<(String, String, String)>,
}

/// Store key of CRDs.
pub const CRD_KEY: &str = "apiextensions.k8s.io/customresourcedefinitions";

impl Store {
    /// An empty store.
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(16384);
        Store {
            rv: 1,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_cap,
            oldest_rv: 1,
            tx,
            types: resources::builtins(),
            types_gen: 1,
            tokens: HashMap::new(),
            node_tokens: HashMap::new(),
            root_ca: String::new(),
            pending_nodes: Vec::new(),
            pending_pods: Vec::new(),
        }
    }

    /// Look a type up by group, version and plural.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Look a type up by kind.
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
    }

    /// One object.
    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(key)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Commit an object (create or replace), giving it the next resourceVersion.
    pub fn put(&mut self, key: &str, mut obj: Value) -> Arc<Value> {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let obj = Arc::new(obj);
        let old = self
            .objects
            .entry(key.to_string())
            .or_default()
            .insert((ns, name), obj.clone());
        let etype = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.emit(key, etype, obj.clone(), old);
        if key == CRD_KEY {
            self.refresh_types();
        }
        obj
    }

    /// Remove an object for good, emitting DELETED.
    pub fn remove(&mut self, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        let old = self
            .objects
            .get_mut(key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        let mut last = (*old).clone();
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let last = Arc::new(last);
        self.emit(key, "DELETED", last.clone(), Some(old));
        if key == CRD_KEY {
            self.refresh_types();
        }
        Some(last)
    }

    fn emit(
        &mut self,
        key: &str,
        etype: &'static str,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        let c = Arc::new(Change {
            rv: self.rv,
            key: key.to_string(),
            etype,
            object,
            old,
        });
        self.history.push_back(c.clone());
        while self.history.len() > self.history_cap {
            if let Some(front) = self.history.pop_front() {
                self.oldest_rv = front.rv;
            }
        }
        let _ = self.tx.send(c);
    }

    /// Forget all history: every resume from an older rv now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest_rv = self.rv;
    }

    fn refresh_types(&mut self) {
        let crds: Vec<Arc<Value>> = self
            .objects
            .get(CRD_KEY)
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default();
        self.types = resources::all_types(&crds);
        self.types_gen += 1;
    }

    /// The whole state as JSON (for snapshots).
    pub fn snapshot(&self) -> Value {
        let objects: Vec<Value> = self
            .all()
            .into_iter()
            .map(|(k, o)| serde_json::json!({"key": k, "object": *o}))
            .collect();
        serde_json::json!({"resourceVersion": self.rv, "objects": objects})
    }

    /// Replace the state with a snapshot; history starts empty (older resumes get 410).
    pub fn restore(&mut self, snap: &Value) {
        self.objects.clear();
        for e in snap["objects"].as_array().into_iter().flatten() {
            let (Some(k), o) = (e["key"].as_str(), &e["object"]) else {
                continue;
            };
            let ns = o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.objects
                .entry(k.to_string())
                .or_default()
                .insert((ns, name), Arc::new(o.clone()));
        }
        self.rv = self.rv.max(snap["resourceVersion"].as_u64().unwrap_or(1));
        self.compact();
        self.refresh_types();
    }

    /// Every object of every resource (for GC and namespace deletion).
    pub fn all(&self) -> Vec<(String, Arc<Value>)> {
        self.objects
            .iter()
            .flat_map(|(k, b)| b.values().map(move |o| (k.clone(), o.clone())))
            .collect()
    }
}
