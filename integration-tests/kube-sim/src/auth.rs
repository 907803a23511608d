//! Authentication (admin token, ServiceAccount tokens from TokenRequest) and RBAC authorization
//! evaluated from the Roles, ClusterRoles and bindings stored in the simulator.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use serde_json::{Value, json};

use crate::store::{Store, TokenInfo};

/// The default audience of issued tokens and of the simulated API server.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInfo {
    /// Username, e.g. `system:serviceaccount:ns:sa`.
    pub username: String,
    /// UID.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The cluster administrator.
    pub fn admin() -> Self {
        UserInfo {
            username: "kubernetes-admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    /// The JSON `UserInfo` of TokenReview.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.username, "uid": self.uid, "groups": self.groups});
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// A random alphanumeric string.
pub fn random_string(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    (0..n)
        .map(|_| CHARS[r.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Issue a JWT-shaped ServiceAccount token and remember it.
pub fn issue(store: &mut Store, info: TokenInfo) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"kube-sim"}"#);
    let mut ki = json!({"namespace": info.namespace, "serviceaccount": {"name": info.service_account, "uid": info.sa_uid}});
    if let Some((n, u)) = &info.pod {
        ki["pod"] = json!({"name": n, "uid": u});
    }
    if let Some((n, u)) = &info.node {
        ki["node"] = json!({"name": n, "uid": u});
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "aud": info.audiences, "exp": info.expires, "iat": now, "nbf": now, "jti": info.jti,
        "iss": API_AUDIENCE, "kubernetes.io": ki,
        "sub": format!("system:serviceaccount:{}:{}", info.namespace, info.service_account),
    });
    let token = format!(
        "{header}.{}.{}",
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        random_string(43)
    );
    store.tokens.insert(token.clone(), info);
    token
}

/// Why a token did not authenticate.
pub type AuthFailure = String;

/// Resolve a bearer token; the admin token maps to the administrator.
pub fn resolve(
    store: &Store,
    admin_token: &str,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), AuthFailure> {
    if token == admin_token {
        return Ok((UserInfo::admin(), vec![API_AUDIENCE.into()]));
    }
    if let Some(node) = store.node_tokens.get(token) {
        return Ok((crate::node_auth::node_user(node), vec![API_AUDIENCE.into()]));
    }
    let info = store
        .tokens
        .get(token)
        .ok_or_else(|| "invalid bearer token".to_string())?;
    if info.expires < jiff::Timestamp::now().as_second() {
        return Err("invalid bearer token, token has expired".into());
    }
    let want: Vec<String> = if audiences.is_empty() {
        vec![API_AUDIENCE.into()]
    } else {
        audiences.to_vec()
    };
    let matched: Vec<String> = want
        .iter()
        .filter(|a| info.audiences.contains(a))
        .cloned()
        .collect();
    if matched.is_empty() {
        return Err(
            "invalid bearer token, token audiences is invalid for the target audiences".into(),
        );
    }
    let sa = store.get("/serviceaccounts", &info.namespace, &info.service_account);
    if sa.as_ref().and_then(|s| s["metadata"]["uid"].as_str()) != Some(info.sa_uid.as_str()) {
        return Err(format!(
            "invalid bearer token, serviceaccounts \"{}\" not found",
            info.service_account
        ));
    }
    let mut extra = BTreeMap::new();
    if let Some((pn, pu)) = &info.pod {
        let pod = store.get("/pods", &info.namespace, pn);
        if pod.as_ref().and_then(|p| p["metadata"]["uid"].as_str()) != Some(pu.as_str()) {
            return Err(format!("invalid bearer token, pods \"{pn}\" not found"));
        }
        extra.insert(
            "authentication.kubernetes.io/pod-name".to_string(),
            vec![pn.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".to_string(),
            vec![pu.clone()],
        );
    }
    if let Some((nn, nu)) = &info.node {
        if info.pod.is_none() {
            let node = store.get("/nodes", "", nn);
            if node.as_ref().and_then(|n| n["metadata"]["uid"].as_str()) != Some(nu.as_str()) {
                return Err(format!("invalid bearer token, nodes \"{nn}\" not found"));
            }
        }
        extra.insert(
            "authentication.kubernetes.io/node-name".to_string(),
            vec![nn.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/node-uid".to_string(),
            vec![nu.clone()],
        );
    }
    extra.insert(
        "authentication.kubernetes.io/credential-id".to_string(),
        vec![format!("JTI={}", info.jti)],
    );
    Ok((
        UserInfo {
            username: format!(
                "system:serviceaccount:{}:{}",
                info.namespace, info.service_account
            ),
            uid: info.sa_uid.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", info.namespace),
                "system:authenticated".into(),
            ],
            extra,
        },
        matched,
    ))
}

/// What a request wants to do.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// Verb (`get`, `list`, `watch`, `create`, ...).
    pub verb: String,
    /// API group.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace ("" for cluster scope).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// For non-resource requests: the path.
    pub path: Option<String>,
    /// The raw `fieldSelector` of a list or watch (the Node authorizer reads `spec.nodeName`).
    pub field_selector: String,
}

fn contains(list: &Value, want: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|x| x == "*" || x == want)
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !contains(&rule["verbs"], &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return rule["nonResourceURLs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|u| {
                u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
            });
    }
    if !contains(&rule["apiGroups"], &a.group) {
        return false;
    }
    let full = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let res_ok = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| {
            r == "*"
                || r == full
                || (!a.subresource.is_empty() && r == format!("*/{}", a.subresource))
        });
    if !res_ok {
        return false;
    }
    match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => {
            names.iter().any(|n| n.as_str() == Some(a.name.as_str()))
        }
        _ => true,
    }
}

fn subject_matches(s: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str().unwrap_or_default() {
        "User" => user.username == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = s["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// Requests every authenticated user may make (the bootstrap `system:basic-user`,
/// `system:discovery` and `system:public-info-viewer` roles).
fn always_allowed(a: &Attributes) -> bool {
    if let Some(p) = &a.path {
        return a.verb == "get"
            && (p == "/version"
                || p == "/healthz"
                || p == "/readyz"
                || p == "/livez"
                || p.starts_with("/api")
                || p.starts_with("/openapi"));
    }
    a.verb == "create"
        && a.group == "authorization.k8s.io"
        && matches!(
            a.resource.as_str(),
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        )
}

/// The decision of the `Node,RBAC` authorizer chain: `(true, why)` when allowed; `(false,
/// reason)` when denied, `reason` being the Node authorizer's (empty when it had none), which
/// the real 403 message carries as `…: node: <reason>`.
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> (bool, String) {
    if user.groups.iter().any(|g| g == "system:masters") {
        return (true, String::new());
    }
    let mut node_reason = String::new();
    if let Some(node) = crate::node_auth::node_name(user) {
        match crate::node_auth::authorize(store, node, a) {
            Ok(()) => return (true, String::new()),
            Err(r) => node_reason = r,
        }
    }
    let (allowed, why) = authorize_rbac(store, user, a);
    if allowed {
        (true, why)
    } else {
        (false, node_reason)
    }
}

fn authorize_rbac(store: &Store, user: &UserInfo, a: &Attributes) -> (bool, String) {
    if always_allowed(a) {
        return (
            true,
            "RBAC: allowed by ClusterRoleBinding \"system:basic-user\"".into(),
        );
    }
    let roles = |key: &str, ns: &str, name: &str| store.get(key, ns, name);
    let check = |role: Option<std::sync::Arc<Value>>| {
        role.is_some_and(|r| {
            r["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| rule_allows(rule, a))
        })
    };
    for (_, crb) in store
        .objects
        .get("rbac.authorization.k8s.io/clusterrolebindings")
        .into_iter()
        .flatten()
    {
        if crb["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, ""))
            && check(roles(
                "rbac.authorization.k8s.io/clusterroles",
                "",
                crb["roleRef"]["name"].as_str().unwrap_or_default(),
            ))
        {
            let reason = format!(
                "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{}\" to {}",
                crb["metadata"]["name"].as_str().unwrap_or_default(),
                crb["roleRef"]["name"].as_str().unwrap_or_default(),
                user.username
            );
            return (true, reason);
        }
    }
    if !a.namespace.is_empty() {
        for ((ns, _), rb) in store
            .objects
            .get("rbac.authorization.k8s.io/rolebindings")
            .into_iter()
            .flatten()
        {
            if *ns != a.namespace
                || !rb["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| subject_matches(s, user, ns))
            {
                continue;
            }
            let rname = rb["roleRef"]["name"].as_str().unwrap_or_default();
            let role = if rb["roleRef"]["kind"] == "ClusterRole" {
                roles("rbac.authorization.k8s.io/clusterroles", "", rname)
            } else {
                roles("rbac.authorization.k8s.io/roles", ns, rname)
            };
            if check(role) {
                let reason = format!(
                    "RBAC: allowed by RoleBinding \"{}/{ns}\" of {} \"{rname}\" to {}",
                    rb["metadata"]["name"].as_str().unwrap_or_default(),
                    rb["roleRef"]["kind"].as_str().unwrap_or_default(),
                    user.username
                );
                return (true, reason);
            }
        }
    }
    (false, String::new())
}

/// Read the attributes of a SubjectAccessReview spec.
pub fn sar_attributes(spec: &Value) -> Attributes {
    let ra = &spec["resourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if ra.is_object() {
        Attributes {
            verb: s(&ra["verb"]),
            group: s(&ra["group"]),
            resource: s(&ra["resource"]),
            subresource: s(&ra["subresource"]),
            namespace: s(&ra["namespace"]),
            name: s(&ra["name"]),
            path: None,
            field_selector: s(&ra["fieldSelector"]["rawSelector"]),
        }
    } else {
        let nra = &spec["nonResourceAttributes"];
        Attributes {
            verb: s(&nra["verb"]),
            path: Some(s(&nra["path"])),
            ..Default::default()
        }
    }
}

/// A user described by a SubjectAccessReview spec.
pub fn sar_user(spec: &Value) -> UserInfo {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut extra = BTreeMap::new();
    for (k, v) in spec["extra"].as_object().into_iter().flatten() {
        extra.insert(k.clone(), strs(v));
    }
    UserInfo {
        username: spec["user"].as_str().unwrap_or_default().into(),
        uid: spec["uid"].as_str().unwrap_or_default().into(),
        groups: strs(&spec["groups"]),
        extra,
    }
}

/// Bootstrap RBAC objects every cluster has.
pub fn bootstrap_roles() -> Vec<Value> {
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cluster-admin"},
               "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:auth-delegator"},
               "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                         {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "view"},
               "rules": [{"apiGroups": ["", "coordination.k8s.io", "events.k8s.io"], "resources": ["pods", "pods/log", "pods/status", "configmaps", "services", "events", "leases", "serviceaccounts", "namespaces"], "verbs": ["get", "list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "cluster-admin"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]}),
    ]
}
