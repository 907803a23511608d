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

fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn now_secs() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn status(name: &str, host_ip: &str) -> Value {
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
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "kubeletVersion": "v1.37.0-sim", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
            "containerRuntimeVersion": concat!("kubelet-sim://", env!("CARGO_PKG_VERSION")), "osImage": "kubelet-sim", "kernelVersion": "",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    })
}

/// Create (or take over) the Node object and its Lease.
pub async fn register(
    client: &Client,
    name: &str,
    pod_cidr: &str,
    host_ip: &str,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    nodes
        .patch_status(
            name,
            &pp,
            &Patch::Merge(json!({"status": status(name, host_ip)})),
        )
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
    }))
    .map_err(kube::Error::SerdeError)?;
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renew the Lease and the Ready heartbeat until dropped.
pub async fn heartbeat(client: Client, name: String, host_ip: String) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
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
        }
        let mut s = status(&name, &host_ip);
        // Keep transition times: only the heartbeat moves.
        if let Ok(n) = nodes.get_status(&name).await
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
