//! `create` (POST): name or `generateName`, namespace checks, uid, creationTimestamp,
//! generation, the first managedFields entry; a new namespace gets its `default`
//! ServiceAccount.

use serde_json::{Value, json};

use super::{
    Ctx, Out, check_kind, has_generation, is_dns_subdomain, now, schema_check, set_or_remove,
    target, uid,
};
use crate::builtin::builtin_prepare;
use crate::managed::managed_entry;
use crate::patch;
use crate::resources::ResourceType;
use crate::status::{ApiError, Cause, Target};
use crate::store::Store;

/// Create an object.
pub fn create(st: &mut Store, ctx: &Ctx<'_>, obj: Value) -> Result<Out, ApiError> {
    create_as(st, ctx, obj, "Update")
}

pub(super) fn create_as(
    st: &mut Store,
    ctx: &Ctx<'_>,
    mut obj: Value,
    operation: &str,
) -> Result<Out, ApiError> {
    let rt = ctx.rt;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is not a valid JSON object",
        ));
    }
    check_kind(rt, &obj)?;
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if rt.namespaced {
        match obj["metadata"]["namespace"].as_str() {
            Some(n) if !n.is_empty() && n != ctx.ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(ctx.ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        match obj["metadata"]["generateName"].as_str() {
            Some(g) if !g.is_empty() => {
                const CH: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                let suffix: String = (0..5)
                    .map(|_| CH[rand::random_range(0..CH.len())] as char)
                    .collect();
                obj["metadata"]["name"] = json!(format!("{g}{suffix}"));
            }
            _ => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired",
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        }
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !is_dns_subdomain(&name) && rt.kind != "Event" && !rt.group.starts_with("rbac.") {
        return Err(ApiError::invalid(
            &rt.kind,
            &rt.group,
            &name,
            vec![Cause {
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                ),
                field: "metadata.name".into(),
            }],
        ));
    }
    if rt.namespaced {
        match st.get("/namespaces", "", &ctx.ns) {
            None => {
                return Err(ApiError::not_found(Target {
                    group: "",
                    resource: "namespaces",
                    name: &ctx.ns,
                }));
            }
            Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                return Err(ApiError::forbidden_msg(
                    target(rt, &name),
                    format!(
                        "unable to create new content in namespace {} because it is being terminated",
                        ctx.ns
                    ),
                ));
            }
            _ => {}
        }
    }
    admit_create(st, ctx, &mut obj)?;
    if st
        .get(
            &rt.store_key(),
            obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            &name,
        )
        .is_some()
    {
        return Err(ApiError::already_exists(target(rt, &name)));
    }
    if rt.has_status() && rt.custom {
        set_or_remove(&mut obj, "status", Value::Null);
    }
    builtin_prepare(rt, &mut obj, true)
        .map_err(|c| ApiError::invalid(&rt.kind, &rt.group, &name, c))?;
    let warnings = schema_check(ctx, &mut obj, None, None)?;
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    for f in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(f);
    }
    meta.insert("uid".into(), json!(uid()));
    meta.insert("creationTimestamp".into(), json!(now()));
    if has_generation(rt) {
        meta.insert("generation".into(), json!(1));
    }
    let set = patch::leaves(&obj);
    obj["metadata"]["managedFields"] = json!([managed_entry(
        &ctx.manager,
        operation,
        &rt.api_version(),
        &set,
        None
    )]);
    if ctx.dry_run {
        return Ok(Out {
            code: 201,
            object: obj,
            warnings,
        });
    }
    let stored = st.put(&rt.store_key(), obj);
    after_create(st, rt, &stored);
    if rt.group.is_empty() && rt.kind == "Node" {
        st.pending_nodes.push(name.clone());
    }
    Ok(Out {
        code: 201,
        object: (*stored).clone(),
        warnings,
    })
}

/// The admission plugins of a create: NodeRestriction, ServiceAccount (pods) and
/// TaintNodesByCondition (nodes).
fn admit_create(st: &Store, ctx: &Ctx<'_>, obj: &mut Value) -> Result<(), ApiError> {
    let rt = ctx.rt;
    if let Some(node) = &ctx.node {
        crate::node_auth::admit(node, &rt.group, &rt.plural, None, None, obj)?;
    }
    if !rt.group.is_empty() {
        return Ok(());
    }
    match rt.kind.as_str() {
        "Pod" => service_account_admission(st, &ctx.ns, obj),
        "Node" => {
            crate::node_auth::taint_new_node(obj);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Where the ServiceAccount admission mounts the API credentials.
pub(super) const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin on a pod create: `serviceAccountName` defaults to
/// `default` and must exist (403 otherwise), `serviceAccount` mirrors it, and unless
/// `automountServiceAccountToken` is false (pod, else service account) every container without
/// a mount at [`SA_MOUNT_PATH`] mounts the `kube-api-access-<5 random>` projected volume (token
/// of 3607 s, `kube-root-ca.crt`'s `ca.crt`, the namespace), read-only.
fn service_account_admission(st: &Store, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Ok(());
    }
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !pod["spec"].is_object() {
        return Ok(());
    }
    let sa_name = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            pod["spec"]["serviceAccount"]
                .as_str()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_string();
    pod["spec"]["serviceAccountName"] = json!(sa_name);
    pod["spec"]["serviceAccount"] = json!(sa_name);
    let Some(sa) = st.get("/serviceaccounts", ns, &sa_name) else {
        return Err(ApiError::forbidden_msg(
            Target {
                group: "",
                resource: "pods",
                name: &name,
            },
            format!(
                "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            ),
        ));
    };
    let automount = match pod["spec"]["automountServiceAccountToken"].as_bool() {
        Some(b) => b,
        None => sa["automountServiceAccountToken"].as_bool() != Some(false),
    };
    if !automount {
        return Ok(());
    }
    let existing = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with("kube-api-access-"))
        .map(String::from);
    let volume_name = existing.clone().unwrap_or_else(|| {
        const CH: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let suffix: String = (0..5)
            .map(|_| CH[rand::random_range(0..CH.len())] as char)
            .collect();
        format!("kube-api-access-{suffix}")
    });
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": SA_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            let has = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == SA_MOUNT_PATH);
            if has {
                continue;
            }
            needed = true;
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount.clone()]),
            }
        }
    }
    if needed && existing.is_none() {
        let volume = json!({"name": volume_name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        match pod["spec"]["volumes"].as_array_mut() {
            Some(vs) => vs.push(volume),
            None => pod["spec"]["volumes"] = json!([volume]),
        }
    }
    Ok(())
}

/// The `kube-root-ca.crt` ConfigMap the root-CA publisher keeps in every namespace.
pub(crate) fn root_ca_configmap(ns: &str, ca: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "kube-root-ca.crt", "namespace": ns, "uid": uid(), "creationTimestamp": now(),
                        "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
           "data": {"ca.crt": ca}})
}

fn after_create(st: &mut Store, rt: &ResourceType, obj: &Value) {
    if rt.group.is_empty() && rt.kind == "Namespace" {
        let ns = obj["metadata"]["name"].as_str().unwrap_or_default();
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns, "uid": uid(), "creationTimestamp": now()}});
        st.put("/serviceaccounts", sa);
        let cm = root_ca_configmap(ns, &st.root_ca);
        st.put("/configmaps", cm);
    }
}
