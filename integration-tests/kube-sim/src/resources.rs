//! The resource types the simulator serves: the built-in ones and those each stored
//! CustomResourceDefinition defines, plus the discovery and OpenAPI documents built from them.

use std::sync::Arc;

use serde_json::{Value, json};

/// Standard verbs of a stored resource.
const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One served resource type (one group/version/plural).
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group, "" for core.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Plural name, e.g. `pods`.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Verbs on the main resource (empty list = create-only review types get `["create"]`).
    pub verbs: Vec<String>,
    /// Subresources served (`status`, `log`, `eviction`, `token`).
    pub subresources: Vec<String>,
    /// Categories (e.g. `all`).
    pub categories: Vec<String>,
    /// For custom resources: the CRD version's `openAPIV3Schema`.
    pub schema: Option<Value>,
    /// For custom resources: `additionalPrinterColumns`.
    pub printer_columns: Vec<Value>,
    /// For custom resources with a scale subresource: spec replicas, status replicas and
    /// label selector paths (`.spec.replicas` style).
    pub scale: Option<(String, String, Option<String>)>,
    /// True for custom resources.
    pub custom: bool,
    /// True when objects are not stored (TokenReview, SubjectAccessReview).
    pub virtual_only: bool,
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key shared by all versions of the resource.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// Whether a `status` subresource exists.
    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s == "status")
    }

    /// `/api/v1` or `/apis/g/v`.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    subs: &[&str],
    virtual_only: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        verbs: if virtual_only {
            vec!["create".into()]
        } else {
            CRUD.iter().map(|s| s.to_string()).collect()
        },
        subresources: subs.iter().map(|s| s.to_string()).collect(),
        categories: if matches!(plural, "pods" | "services") && group.is_empty() {
            vec!["all".into()]
        } else {
            vec![]
        },
        schema: None,
        printer_columns: vec![],
        scale: None,
        custom: false,
        virtual_only,
    }
}

/// The built-in resource types.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            &["status", "finalize"],
            false,
        ),
        builtin(
            "",
            "v1",
            "pods",
            "Pod",
            true,
            &["po"],
            &["status", "eviction", "log", "binding"],
            false,
        ),
        builtin("", "v1", "events", "Event", true, &["ev"], &[], false),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            &[],
            false,
        ),
        builtin("", "v1", "secrets", "Secret", true, &[], &[], false),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            &["token"],
            false,
        ),
        builtin(
            "",
            "v1",
            "services",
            "Service",
            true,
            &["svc"],
            &["status"],
            false,
        ),
        builtin(
            "",
            "v1",
            "endpoints",
            "Endpoints",
            true,
            &["ep"],
            &[],
            false,
        ),
        builtin(
            "",
            "v1",
            "nodes",
            "Node",
            false,
            &["no"],
            &["status"],
            false,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            &[],
            false,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            &[],
            false,
        ),
        builtin(
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
            "TokenReview",
            false,
            &[],
            &[],
            true,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews",
            "SubjectAccessReview",
            false,
            &[],
            &[],
            true,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
            &[],
            true,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "localsubjectaccessreviews",
            "LocalSubjectAccessReview",
            true,
            &[],
            &[],
            true,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            &["status"],
            false,
        ),
    ]
}

/// The resource types one stored CRD defines (one per served version).
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] == Value::Bool(false) {
            continue;
        }
        let mut subs = Vec::new();
        if v["subresources"]["status"].is_object() {
            subs.push("status".to_string());
        }
        if v["subresources"]["scale"].is_object() {
            subs.push("scale".to_string());
        }
        out.push(ResourceType {
            group: group.into(),
            version: v["name"].as_str().unwrap_or_default().into(),
            plural: names["plural"].as_str().unwrap_or_default().into(),
            singular: names["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| names["kind"].as_str().unwrap_or_default().to_lowercase()),
            kind: names["kind"].as_str().unwrap_or_default().into(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strs(&names["shortNames"]),
            verbs: CRUD.iter().map(|s| s.to_string()).collect(),
            subresources: subs,
            categories: strs(&names["categories"]),
            schema: v["schema"].get("openAPIV3Schema").cloned(),
            printer_columns: v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            scale: v["subresources"]["scale"].as_object().map(|s| {
                let p = |k: &str| s.get(k).and_then(Value::as_str).map(String::from);
                (
                    p("specReplicasPath").unwrap_or_default(),
                    p("statusReplicasPath").unwrap_or_default(),
                    p("labelSelectorPath"),
                )
            }),
            custom: true,
            virtual_only: false,
        });
    }
    out
}

/// All types, built-ins first, then every stored CRD's.
pub fn all_types(crds: &[Arc<Value>]) -> Vec<ResourceType> {
    let mut t = builtins();
    for c in crds {
        t.extend(from_crd(c));
    }
    t
}

/// `/api` body.
pub fn api_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

/// Group -> versions in first-seen order.
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone());
                }
            }
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

fn group_json(g: &str, vs: &[String]) -> Value {
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
}

/// `/apis` body.
pub fn api_group_list(types: &[ResourceType]) -> Value {
    let gs: Vec<Value> = groups(types)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/<group>` body, if the group exists.
pub fn api_group(types: &[ResourceType], group: &str) -> Option<Value> {
    groups(types)
        .iter()
        .find(|(g, _)| g == group)
        .map(|(g, vs)| {
            let mut v = group_json(g, vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        })
}

/// `/api/v1` or `/apis/<g>/<v>` body, if that group-version exists.
pub fn api_resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut r = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": t.verbs,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        for s in &t.subresources {
            let (kind, verbs): (&str, Vec<&str>) = match s.as_str() {
                "status" => (&t.kind, vec!["get", "patch", "update"]),
                "eviction" => ("Eviction", vec!["create"]),
                "binding" => ("Binding", vec!["create"]),
                "log" => ("Pod", vec!["get"]),
                "token" => ("TokenRequest", vec!["create"]),
                "finalize" => ("Namespace", vec!["update"]),
                "scale" => ("Scale", vec!["get", "patch", "update"]),
                _ => continue,
            };
            let mut sr = json!({"name": format!("{}/{s}", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": kind, "verbs": verbs});
            if s == "eviction" {
                sr["group"] = json!("policy");
                sr["version"] = json!("v1");
            } else if s == "token" {
                sr["group"] = json!("authentication.k8s.io");
                sr["version"] = json!("v1");
            }
            resources.push(sr);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// `/openapi/v3` index: one entry per group-version; `hash` changes when the set of types does.
pub fn openapi_index(types: &[ResourceType], hash: &str) -> Value {
    let mut paths = serde_json::Map::new();
    paths.insert(
        "api/v1".into(),
        json!({"serverRelativeURL": format!("/openapi/v3/api/v1?hash={hash}")}),
    );
    for (g, vs) in groups(types) {
        for v in vs {
            paths.insert(
                format!("apis/{g}/{v}"),
                json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// One group-version's OpenAPI v3 document: enough for kubectl to see that the server validates
/// fields (the `fieldValidation` parameter) and to know each path's group-version-kind.
pub fn openapi_gv(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let mut found = false;
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        found = true;
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let params = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}]);
        let base = if t.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", t.gv_path(), t.plural)
        } else {
            format!("{}/{}", t.gv_path(), t.plural)
        };
        let op = json!({"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch", "parameters": params, "responses": {}});
        paths.insert(format!("{base}/{{name}}"), json!({"patch": op, "put": op}));
        paths.insert(base, json!({"post": op}));
        let id = schema_id(t);
        let mut schema = t.schema.clone().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(id, schema);
    }
    found.then(|| {
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths, "components": {"schemas": schemas}})
    })
}

fn schema_id(t: &ResourceType) -> String {
    let g = if t.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else {
        t.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{g}.{}.{}", t.version, t.kind)
}
