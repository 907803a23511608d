//! The Node object and its heartbeat: the node registers itself with the conditions, addresses,
//! capacity and `nodeInfo` a real kubelet reports, and renews its Lease in `kube-node-lease` and
//! its Ready condition's heartbeat time every 10 s.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tracing::warn;

use crate::FIELD_MANAGER;

/// Heartbeat interval (the kubelet's default node-lease renew interval).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The kubelet's port, reported when the kubelet API is not served.
pub(crate) const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Now as a `metav1.MicroTime` (RFC 3339, `Z`, always six fractional digits), for the Lease.
fn now_micro() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

/// Now as a `metav1.Time` (RFC 3339, `Z`, whole seconds), for conditions.
fn now_secs() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// The architecture as Go names it (`GOARCH`), which is what kubelets report.
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn status(name: &str, host_ip: &str, kubelet_port: u16) -> Value {
    let now = now_secs();
    let cond = |ty: &str, st: &str, reason: &str, msg: &str| json!({"type": ty, "status": st, "reason": reason, "message": msg, "lastHeartbeatTime": now, "lastTransitionTime": now});
    let resources =
        json!({"cpu": "2", "memory": "8Gi", "pods": "250", "ephemeral-storage": "50Gi"});
    json!({
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": name}],
        "capacity": resources, "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "kubeletVersion": "v1.37.0-sim", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": goarch(),
            "containerRuntimeVersion": concat!("kubelet-sim://", env!("CARGO_PKG_VERSION")), "osImage": "kubelet-sim", "kernelVersion": "",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    })
}

/// Create (or take over) the Node object and its Lease.
///
/// With a node identity (`system:node:NAME`) the Node authorizer allows exactly this: create
/// and get its own Node (not `get nodes/status`), patch its `nodes/status`, and create/patch the
/// Lease of its own name in `kube-node-lease`.
pub(crate) async fn register(
    client: &Client,
    name: &str,
    pod_cidr: &str,
    host_ip: &str,
    kubelet_port: u16,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": goarch()}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
    }))
    .map_err(kube::Error::SerdeError)?;
    let created = match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(e)) if e.code == 409 => nodes.get(name).await?,
        Err(e) => return Err(e),
    };
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    nodes
        .patch_status(
            name,
            &pp,
            &Patch::Merge(json!({"status": status(name, host_ip, kubelet_port)})),
        )
        .await?;
    ensure_lease(
        client,
        name,
        created.metadata.uid.as_deref().unwrap_or_default(),
    )
    .await
}

/// The node's Lease: `<node>` in `kube-node-lease`, 40 s, owned by the Node (so it goes with
/// it), created or taken over.
async fn ensure_lease(client: &Client, name: &str, node_uid: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let owner = json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": owner},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
    }))
    .map_err(kube::Error::SerdeError)?;
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            let take_over = json!({
                "metadata": {"ownerReferences": owner},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
            });
            leases
                .patch(name, &pp, &Patch::Merge(take_over))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Renew the Lease and the Ready heartbeat until dropped.
pub(crate) async fn heartbeat(client: Client, name: String, host_ip: String, kubelet_port: u16) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(e) = leases
            .patch(
                &name,
                &pp,
                &Patch::Merge(json!({"spec": {"renewTime": now_micro()}})),
            )
            .await
        {
            warn!(error = %e, "Renewing node lease failed");
            if matches!(&e, kube::Error::Api(a) if a.code == 404) {
                // Deleted (with its Node, by garbage collection): the next round re-registers.
                if let Ok(Some(n)) = nodes.get_opt(&name).await
                    && let Err(e) = ensure_lease(
                        &client,
                        &name,
                        n.metadata.uid.as_deref().unwrap_or_default(),
                    )
                    .await
                {
                    warn!(error = %e, "Recreating node lease failed");
                }
            }
        }
        let mut s = status(&name, &host_ip, kubelet_port);
        // Keep transition times: only the heartbeat moves. (`get nodes`, not `nodes/status`:
        // the Node authorizer lets a node read its own Node, not that subresource.)
        if let Ok(n) = nodes.get(&name).await
            && let Some(old) = n.status.and_then(|s| s.conditions)
            && let Some(conds) = s["conditions"].as_array_mut()
        {
            for c in conds {
                if let Some(o) = old
                    .iter()
                    .find(|o| c["type"] == json!(o.type_) && c["status"] == json!(o.status))
                {
                    c["lastTransitionTime"] =
                        serde_json::to_value(&o.last_transition_time).unwrap_or(Value::Null);
                }
            }
        }
        if let Err(e) = nodes
            .patch_status(&name, &pp, &Patch::Merge(json!({"status": s})))
            .await
        {
            warn!(error = %e, "Node heartbeat failed");
        }
    }
}
