//! What a real API server does for a node's identity (`system:node:<name>` in `system:nodes`):
//! the **Node authorizer** (`plugin/pkg/auth/authorizer/node`: reads only of its own Node, of
//! pods with its `spec.nodeName` field selector or bound to it, of the ConfigMaps, Secrets and
//! ServiceAccounts its pods reference, its own Lease), the **NodeRestriction** admission plugin
//! (no writes to other Nodes, no taint/ownerReference changes, no `node-role.kubernetes.io/*` or
//! other non-kubelet `kubernetes.io` labels, mirror pods only, status of its own pods only,
//! pod-bound tokens for its own pods only), **TaintNodesByCondition** (a new Node gets
//! `node.kubernetes.io/not-ready:NoSchedule`) and the NoSchedule half of the node lifecycle
//! controller (condition taints follow the conditions). Messages are the upstream ones
//! (v1.37.2).

use serde_json::{Value, json};

use crate::auth::{Attributes, UserInfo};
use crate::status::{ApiError, Target};
use crate::store::Store;

/// The node name of a node identity (`system:node:NAME` in group `system:nodes`).
pub fn node_name(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    user.username.strip_prefix("system:node:")
}

/// The user a node credential authenticates as.
pub fn node_user(node: &str) -> UserInfo {
    UserInfo {
        username: format!("system:node:{node}"),
        uid: String::new(),
        groups: vec!["system:nodes".into(), "system:authenticated".into()],
        extra: Default::default(),
    }
}

/// The Node authorizer's decision: `Ok(())` allows, `Err(reason)` has no opinion (RBAC decides
/// next; `reason` goes into the 403 message as `node: <reason>` when non-empty).
pub fn authorize(st: &Store, node: &str, a: &Attributes) -> Result<(), String> {
    if a.path.is_some() {
        return Err(String::new());
    }
    let verb = a.verb.as_str();
    let sub = a.subresource.as_str();
    match (a.group.as_str(), a.resource.as_str()) {
        ("", "secrets") | ("", "configmaps") => {
            if !matches!(verb, "get" | "list" | "watch") {
                return Err("can only read resources of this type".into());
            }
            if !sub.is_empty() {
                return Err("cannot read subresource".into());
            }
            if a.namespace.is_empty() {
                return Err("can only read namespaced object of this type".into());
            }
            related(st, node, &a.resource, &a.namespace, &a.name)
        }
        ("", "serviceaccounts") => {
            if verb == "get" && sub.is_empty() {
                return related(st, node, "serviceaccounts", &a.namespace, &a.name);
            }
            if verb != "create" || a.name.is_empty() {
                return Err("can only create tokens for individual service accounts".into());
            }
            if sub != "token" {
                return Err("can only create token subresource of serviceaccount".into());
            }
            related(st, node, "serviceaccounts", &a.namespace, &a.name)
        }
        ("coordination.k8s.io", "leases") => {
            if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                return Err("can only get, create, update, patch, or delete a node lease".into());
            }
            if a.namespace != "kube-node-lease" {
                return Err(
                    "can only access leases in the \"kube-node-lease\" system namespace".into(),
                );
            }
            if verb != "create" && a.name != node {
                return Err(
                    "can only access node lease with the same name as the requesting node".into(),
                );
            }
            Ok(())
        }
        ("", "nodes") => match (sub, verb) {
            ("", "create" | "update" | "patch") | ("status", "update" | "patch") => Ok(()),
            ("", "get" | "list" | "watch") => {
                if a.name == node {
                    Ok(())
                } else if a.name.is_empty() {
                    Err(format!(
                        "node '{node}' cannot read all nodes, only its own Node object"
                    ))
                } else {
                    Err(format!(
                        "node '{node}' cannot read '{}', only its own Node object",
                        a.name
                    ))
                }
            }
            _ => Err(String::new()),
        },
        ("", "pods") => match (sub, verb) {
            ("", "get") => related(st, node, "pods", &a.namespace, &a.name),
            ("", "list" | "watch") => {
                if field_equals(&a.field_selector, "spec.nodeName").as_deref() == Some(node) {
                    return Ok(());
                }
                if !a.name.is_empty() {
                    return related(st, node, "pods", &a.namespace, &a.name);
                }
                Err("can only list/watch pods with spec.nodeName field selector".into())
            }
            ("", "create" | "delete") | ("status", "update" | "patch") | ("eviction", "create") => {
                Ok(())
            }
            _ => Err(String::new()),
        },
        _ if static_rules_allow(a) => Ok(()),
        _ => Err(String::new()),
    }
}

/// The statically allowed node rules (`bootstrappolicy.NodeRules`) for resources the Node
/// authorizer does not subdivide.
fn static_rules_allow(a: &Attributes) -> bool {
    let (g, r, s, v) = (
        a.group.as_str(),
        a.resource.as_str(),
        a.subresource.as_str(),
        a.verb.as_str(),
    );
    let read = matches!(v, "get" | "list" | "watch");
    match (g, r, s) {
        ("authentication.k8s.io", "tokenreviews", "") => v == "create",
        ("authorization.k8s.io", "subjectaccessreviews" | "localsubjectaccessreviews", "") => {
            v == "create"
        }
        ("", "services", "") => read,
        ("", "events", "") | ("events.k8s.io", "events", "") => {
            matches!(v, "create" | "update" | "patch")
        }
        ("", "endpoints", "") => v == "get",
        _ => false,
    }
}

/// `value` of an exact-match requirement `field=value` (or `==`) of a field selector.
pub fn field_equals(selector: &str, field: &str) -> Option<String> {
    selector.split(',').find_map(|req| {
        let req = req.trim();
        let (k, v) = req
            .split_once("==")
            .or_else(|| req.split_once('='))
            .filter(|(k, _)| !k.ends_with('!'))?;
        (k.trim() == field).then(|| v.trim().to_string())
    })
}

/// Whether the graph node → pod → object holds (pods bound to the node, and what they
/// reference).
fn related(st: &Store, node: &str, resource: &str, ns: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("No Object name found".into());
    }
    let no = || {
        Err(format!(
            "no relationship found between node '{node}' and this object"
        ))
    };
    let Some(pods) = st.objects.get("/pods") else {
        return no();
    };
    let found = pods
        .iter()
        .filter(|((pns, _), p)| pns == ns && p["spec"]["nodeName"].as_str() == Some(node))
        .any(|((_, pname), p)| match resource {
            "pods" => pname == name,
            "serviceaccounts" => {
                p["spec"]["serviceAccountName"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default")
                    == name
            }
            "configmaps" => references(p, true).contains(&name.to_string()),
            "secrets" => references(p, false).contains(&name.to_string()),
            _ => false,
        });
    if found { Ok(()) } else { no() }
}

/// Names of the ConfigMaps (`configmaps`) or Secrets a pod references.
fn references(p: &Value, configmaps: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |v: &Value| {
        if let Some(s) = v.as_str() {
            out.push(s.to_string());
        }
    };
    let spec = &p["spec"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if configmaps {
            add(&v["configMap"]["name"]);
        } else {
            add(&v["secret"]["secretName"]);
        }
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(&src[if configmaps { "configMap" } else { "secret" }]["name"]);
        }
    }
    if !configmaps {
        for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            add(&s["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(&e["valueFrom"][if configmaps {
                    "configMapKeyRef"
                } else {
                    "secretKeyRef"
                }]["name"]);
            }
            for f in c["envFrom"].as_array().into_iter().flatten() {
                add(&f[if configmaps {
                    "configMapRef"
                } else {
                    "secretRef"
                }]["name"]);
            }
        }
    }
    out
}

fn forbidden(resource: &str, group: &str, name: &str, msg: String) -> ApiError {
    ApiError::forbidden_msg(
        Target {
            group,
            resource,
            name,
        },
        msg,
    )
}

/// Labels a node may not add, change or remove on its own Node (`getForbiddenLabels`), sorted.
fn forbidden_labels(old: &Value, new: &Value) -> Vec<String> {
    let (o, n) = (&old["metadata"]["labels"], &new["metadata"]["labels"]);
    let mut keys: Vec<String> = o
        .as_object()
        .into_iter()
        .chain(n.as_object())
        .flat_map(|m| m.keys().cloned())
        .filter(|k| o[k.as_str()] != n[k.as_str()])
        .collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| {
        let ns = k.split_once('/').map(|(p, _)| p).unwrap_or_default();
        let under = |d: &str| ns == d || ns.ends_with(&format!(".{d}"));
        under("node-restriction.kubernetes.io")
            || ((under("kubernetes.io") || under("k8s.io")) && !is_kubelet_label(k, ns))
    });
    keys
}

fn is_kubelet_label(key: &str, ns: &str) -> bool {
    const LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    LABELS.contains(&key)
        || ["kubelet.kubernetes.io", "node.kubernetes.io"]
            .iter()
            .any(|d| ns == *d || ns.ends_with(&format!(".{d}")))
}

/// NodeRestriction for a create (`old` None) or an update of `new` by node `node`.
pub fn admit(
    node: &str,
    group: &str,
    resource: &str,
    sub: Option<&str>,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    match (group, resource) {
        ("", "nodes") => {
            if name != node {
                return Err(forbidden(
                    "nodes",
                    "",
                    name,
                    format!("node \"{node}\" is not allowed to modify node \"{name}\""),
                ));
            }
            let Some(old) = old else {
                let bad = forbidden_labels(&json!({}), new);
                if !bad.is_empty() {
                    return Err(forbidden(
                        "nodes",
                        "",
                        name,
                        format!(
                            "node \"{node}\" is not allowed to set the following labels: {}",
                            bad.join(", ")
                        ),
                    ));
                }
                return Ok(());
            };
            let taints = |o: &Value| {
                o["spec"]["taints"]
                    .as_array()
                    .filter(|t| !t.is_empty())
                    .cloned()
            };
            if taints(old) != taints(new) {
                return Err(forbidden(
                    "nodes",
                    "",
                    name,
                    format!("node \"{node}\" is not allowed to modify taints"),
                ));
            }
            let owners = |o: &Value| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .filter(|t| !t.is_empty())
                    .cloned()
            };
            if owners(old) != owners(new) {
                return Err(forbidden(
                    "nodes",
                    "",
                    name,
                    format!("node \"{node}\" is not allowed to modify ownerReferences"),
                ));
            }
            let bad = forbidden_labels(old, new);
            if !bad.is_empty() {
                return Err(forbidden(
                    "nodes",
                    "",
                    name,
                    format!("is not allowed to modify labels: {}", bad.join(", ")),
                ));
            }
            Ok(())
        }
        ("", "pods") => match (sub, old) {
            (None, None) => {
                let mirror =
                    new["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string();
                if !mirror {
                    return Err(forbidden(
                        "pods",
                        "",
                        name,
                        format!(
                            "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                        ),
                    ));
                }
                if new["spec"]["nodeName"].as_str() != Some(node) {
                    return Err(forbidden(
                        "pods",
                        "",
                        name,
                        format!(
                            "node \"{node}\" can only create pods with spec.nodeName set to itself"
                        ),
                    ));
                }
                Ok(())
            }
            (Some("status"), Some(old)) => {
                if old["spec"]["nodeName"].as_str() != Some(node) {
                    return Err(forbidden(
                        "pods",
                        "",
                        name,
                        format!(
                            "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                        ),
                    ));
                }
                let labels = |o: &Value| {
                    o["metadata"]["labels"]
                        .as_object()
                        .filter(|m| !m.is_empty())
                        .cloned()
                };
                if labels(old) != labels(new) {
                    return Err(forbidden(
                        "pods",
                        "",
                        name,
                        format!("node \"{node}\" cannot update labels through pod status"),
                    ));
                }
                Ok(())
            }
            (None, Some(_)) => Err(forbidden(
                "pods",
                "",
                name,
                format!(
                    "unexpected operation \"UPDATE\", node \"{node}\" can only create and delete mirror pods"
                ),
            )),
            _ => Ok(()),
        },
        ("coordination.k8s.io", "leases") if old.is_none() && name != node => Err(forbidden(
            "leases",
            "coordination.k8s.io",
            name,
            "can only access node lease with the same name as the requesting node".into(),
        )),
        _ => Ok(()),
    }
}

/// NodeRestriction for a pod delete or eviction by node `node`.
pub fn admit_pod_delete(node: &str, pod: &Value, eviction: bool) -> Result<(), ApiError> {
    if pod["spec"]["nodeName"].as_str() == Some(node) {
        return Ok(());
    }
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let msg = if eviction {
        format!("node {node} can only evict pods with spec.nodeName set to itself")
    } else {
        format!("node \"{node}\" can only delete pods with spec.nodeName set to itself")
    };
    Err(forbidden("pods", "", name, msg))
}

/// NodeRestriction for a TokenRequest by node `node`: bound to a pod, with its uid, on this
/// node.
pub fn admit_token(
    st: &Store,
    node: &str,
    ns: &str,
    sa: &str,
    bound: Option<&(String, String, Option<String>)>,
) -> Result<(), ApiError> {
    let f = |m: &str| forbidden("serviceaccounts", "", sa, m.to_string());
    let Some((_, pod, uid)) = bound.filter(|b| b.0 == "Pod") else {
        return Err(f("node requested token not bound to a pod"));
    };
    let Some(uid) = uid.as_deref().filter(|u| !u.is_empty()) else {
        return Err(f("node requested token with a pod binding without a uid"));
    };
    let Some(p) = st.get("/pods", ns, pod) else {
        return Err(ApiError::not_found(Target {
            group: "",
            resource: "pods",
            name: pod,
        }));
    };
    if p["metadata"]["uid"].as_str() != Some(uid) {
        return Err(f(&format!(
            "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
        )));
    }
    if p["spec"]["nodeName"].as_str() != Some(node) {
        return Err(f(
            "node requested token bound to a pod scheduled on a different node",
        ));
    }
    Ok(())
}

/// Condition → NoSchedule taint key, as the node lifecycle controller maps them.
const CONDITION_TAINTS: &[(&str, &str, &str)] = &[
    ("Ready", "False", "node.kubernetes.io/not-ready"),
    ("Ready", "Unknown", "node.kubernetes.io/unreachable"),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// TaintNodesByCondition admission: a new Node starts with `node.kubernetes.io/not-ready:NoSchedule`.
pub fn taint_new_node(node: &mut Value) {
    let taint = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
    match node["spec"]["taints"].as_array_mut() {
        Some(t) => {
            if !t
                .iter()
                .any(|x| x["key"] == taint["key"] && x["effect"] == "NoSchedule")
            {
                t.push(taint);
            }
        }
        None => node["spec"]["taints"] = json!([taint]),
    }
}

/// The NoSchedule tainting pass of the node lifecycle controller (`doNoScheduleTaintingPass`):
/// the condition taints and `node.kubernetes.io/unschedulable` follow the conditions and
/// `spec.unschedulable`. Returns the new node when its taints change.
pub fn reconcile_taints(node: &Value) -> Option<Value> {
    let mut want: Vec<&str> = Vec::new();
    for c in node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (ty, status, key) in CONDITION_TAINTS {
            if c["type"] == *ty && c["status"] == *status {
                want.push(key);
            }
        }
    }
    if node["spec"]["unschedulable"] == true {
        want.push("node.kubernetes.io/unschedulable");
    }
    let managed = |k: &str| {
        k == "node.kubernetes.io/unschedulable" || CONDITION_TAINTS.iter().any(|(_, _, t)| *t == k)
    };
    let taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut next: Vec<Value> = taints
        .iter()
        .filter(|t| {
            let k = t["key"].as_str().unwrap_or_default();
            t["effect"] != "NoSchedule" || !managed(k) || want.contains(&k)
        })
        .cloned()
        .collect();
    for k in want {
        if !next
            .iter()
            .any(|t| t["key"] == k && t["effect"] == "NoSchedule")
        {
            next.push(json!({"key": k, "effect": "NoSchedule"}));
        }
    }
    if next == taints {
        return None;
    }
    let mut n = node.clone();
    if next.is_empty() {
        if let Some(spec) = n["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        n["spec"]["taints"] = Value::Array(next);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selector_exact_match() {
        assert_eq!(
            field_equals("spec.nodeName=n1", "spec.nodeName").as_deref(),
            Some("n1")
        );
        assert_eq!(
            field_equals("a=b,spec.nodeName==n2", "spec.nodeName").as_deref(),
            Some("n2")
        );
        assert_eq!(field_equals("spec.nodeName!=n1", "spec.nodeName"), None);
    }

    #[test]
    fn labels_a_node_may_not_touch() {
        let old = json!({"metadata": {"labels": {"kubernetes.io/hostname": "a"}}});
        let new = json!({"metadata": {"labels": {"kubernetes.io/hostname": "b", "node-role.kubernetes.io/control-plane": "", "foo.k8s.io/x": "1", "node.kubernetes.io/y": "1", "plain": "1"}}});
        assert_eq!(
            forbidden_labels(&old, &new),
            vec!["foo.k8s.io/x", "node-role.kubernetes.io/control-plane"]
        );
    }

    #[test]
    fn taints_follow_conditions() {
        let mut n = json!({"metadata": {"name": "n"}, "spec": {}});
        taint_new_node(&mut n);
        assert_eq!(
            n["spec"]["taints"][0]["key"],
            "node.kubernetes.io/not-ready"
        );
        let mut ready = n.clone();
        ready["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        let r = reconcile_taints(&ready).expect("taint removed");
        assert!(r["spec"]["taints"].is_null());
        let mut not_ready = n.clone();
        not_ready["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        assert!(reconcile_taints(&not_ready).is_none());
    }
}
