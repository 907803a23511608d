//! Subresources and virtual resources: `/scale`, `serviceaccounts/token` (TokenRequest),
//! TokenReview, (Self/Local)SubjectAccessReview, and the `/_sim` admin endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use serde_json::{Value, json};

use crate::auth;
use crate::faults::FaultConfig;
use crate::resources::ResourceType;
use crate::server::{Addr, Body, ReqInfo, Shared, full, json_resp, parse_body};
use crate::status::{ApiError, Target, success};
use crate::store::{Store, TokenInfo};
use crate::verbs::{self, Ctx};

fn path_parts(p: &str) -> Vec<String> {
    p.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The `autoscaling/v1` Scale view of an object with a scale subresource.
pub(crate) fn scale_of(rt: &ResourceType, o: &Value) -> Value {
    let (spec_p, status_p, sel_p) = rt.scale.clone().unwrap_or_default();
    let get = |p: &str| crate::patch::get(o, &path_parts(p)).cloned();
    let m = &o["metadata"];
    let mut status = json!({"replicas": get(&status_p).unwrap_or(json!(0))});
    if let Some(sel) = sel_p.and_then(|p| get(&p)) {
        status["selector"] = sel;
    }
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
           "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
           "spec": {"replicas": get(&spec_p).unwrap_or(json!(0))}, "status": status})
}

/// Update or patch through `/scale`: only the replica count reaches the object.
pub(crate) fn scale_write(
    st: &mut Store,
    ctx: &Ctx<'_>,
    r: &ReqInfo,
    name: &str,
    verb: &str,
) -> Result<verbs::Out, ApiError> {
    let rt = ctx.rt;
    let o = st.get(&rt.store_key(), &ctx.ns, name).ok_or_else(|| {
        ApiError::not_found(Target {
            group: &rt.group,
            resource: &rt.plural,
            name,
        })
    })?;
    let mut scale = scale_of(rt, &o);
    if verb == "update" {
        scale = parse_body(r)?;
    } else {
        let p = parse_body(r)?;
        if r.content_type.starts_with("application/json-patch+json") {
            let p: json_patch::Patch =
                serde_json::from_value(p).map_err(|e| ApiError::bad_request(e.to_string()))?;
            json_patch::patch(&mut scale, &p).map_err(|e| ApiError::bad_request(e.to_string()))?;
        } else {
            json_patch::merge(&mut scale, &p);
        }
    }
    let replicas = scale["spec"]["replicas"].clone();
    let (spec_p, _, _) = rt.scale.clone().unwrap_or_default();
    let mut patch = json!({});
    let parts = path_parts(&spec_p);
    let mut cur = &mut patch;
    for (i, p) in parts.iter().enumerate() {
        cur[p.as_str()] = if i + 1 == parts.len() {
            replicas.clone()
        } else {
            json!({})
        };
        cur = &mut cur[p.as_str()];
    }
    let out = verbs::patch(
        st,
        ctx,
        name,
        None,
        "application/merge-patch+json",
        &serde_json::to_vec(&patch).expect("json"),
        false,
    )?;
    Ok(verbs::Out {
        code: 200,
        object: scale_of(rt, &out.object),
        warnings: out.warnings,
    })
}

pub(crate) fn token_request(
    st: &mut Store,
    r: &ReqInfo,
    addr: &Addr,
    node: Option<&str>,
) -> Result<verbs::Out, ApiError> {
    let body = parse_body(r)?;
    let sa_name = addr.name.clone().unwrap_or_default();
    let spec = &body["spec"];
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let bound = spec["boundObjectRef"].as_object().map(|b| {
        (
            b.get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            b.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            b.get("uid").and_then(Value::as_str).map(String::from),
        )
    });
    if let Some(secs) = spec["expirationSeconds"].as_i64() {
        let bad = if secs < 600 {
            Some("may not specify a duration less than 10 minutes")
        } else if secs > 1 << 32 {
            Some("may not specify a duration larger than 2^32 seconds")
        } else {
            None
        };
        if let Some(m) = bad {
            return Err(ApiError::invalid(
                "TokenRequest",
                "authentication.k8s.io",
                "",
                vec![crate::status::Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Invalid value: {secs}: {m}"),
                    field: "spec.expirationSeconds".into(),
                }],
            ));
        }
    }
    if st.get("/serviceaccounts", &addr.ns, &sa_name).is_none() {
        return Err(ApiError::not_found(Target {
            group: "",
            resource: "serviceaccounts",
            name: &sa_name,
        }));
    }
    if let Some(node) = node {
        crate::node_auth::admit_token(st, node, &addr.ns, &sa_name, bound.as_ref())?;
    }
    let (token, exp) = issue_token(
        st,
        &addr.ns,
        &sa_name,
        audiences.clone(),
        spec["expirationSeconds"].as_i64(),
        bound,
    )?;
    let sa_meta = st
        .get("/serviceaccounts", &addr.ns, &sa_name)
        .map(|o| o["metadata"].clone())
        .unwrap_or_default();
    let mut spec_out = spec.clone();
    if spec_out["audiences"].is_null() {
        spec_out["audiences"] = json!([auth::API_AUDIENCE]);
    }
    spec_out["expirationSeconds"] = json!(spec["expirationSeconds"].as_i64().unwrap_or(3600));
    let ts = verbs::rfc3339_secs(
        jiff::Timestamp::from_second(exp).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    );
    Ok(verbs::Out {
        code: 201,
        object: json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": sa_name, "namespace": addr.ns, "uid": sa_meta["uid"], "creationTimestamp": sa_meta["creationTimestamp"]},
                       "spec": spec_out, "status": {"token": token, "expirationTimestamp": ts}}),
        warnings: vec![],
    })
}

/// Issue a token for a service account (optionally bound to a pod), as TokenRequest does.
pub(crate) fn issue_token(
    st: &mut Store,
    ns: &str,
    sa: &str,
    audiences: Vec<String>,
    expiration: Option<i64>,
    bound: Option<(String, String, Option<String>)>,
) -> Result<(String, i64), ApiError> {
    let sa_obj = st.get("/serviceaccounts", ns, sa).ok_or_else(|| {
        ApiError::not_found(Target {
            group: "",
            resource: "serviceaccounts",
            name: sa,
        })
    })?;
    let mismatch = |resource: &'static str, name: &str, uid: &str, rec: &str| {
        ApiError::conflict_msg(
            Target {
                group: "",
                resource,
                name,
            },
            format!(
                "the UID in the bound object reference ({uid}) does not match the UID in record ({rec}). The object might have been deleted and then recreated"
            ),
        )
    };
    let lookup = |st: &Store, key: &str, resource: &'static str, ns: &str, name: &str| {
        st.get(key, ns, name).ok_or_else(|| {
            ApiError::not_found(Target {
                group: "",
                resource,
                name,
            })
        })
    };
    let uid_of = |o: &Value| {
        o["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let node_of = |st: &Store, name: &str| {
        st.get("/nodes", "", name)
            .map(|n| (name.to_string(), uid_of(&n)))
    };
    let (pod, node) = match bound {
        Some((kind, name, uid)) if kind == "Pod" => {
            let p = lookup(st, "/pods", "pods", ns, &name)?;
            let puid = uid_of(&p);
            if let Some(u) = uid.as_ref().filter(|u| **u != puid) {
                return Err(mismatch("pods", &name, u, &puid));
            }
            let node = p["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .and_then(|n| node_of(st, n));
            (Some((name, puid)), node)
        }
        Some((kind, name, uid)) if kind == "Node" => {
            let n = lookup(st, "/nodes", "nodes", "", &name)?;
            let nuid = uid_of(&n);
            if let Some(u) = uid.as_ref().filter(|u| **u != nuid) {
                return Err(mismatch("nodes", &name, u, &nuid));
            }
            (None, Some((name, nuid)))
        }
        Some((kind, name, _)) if kind == "Secret" => {
            lookup(st, "/secrets", "secrets", ns, &name)?;
            (None, None)
        }
        Some((kind, _, _)) if !kind.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type /v1, Kind={kind}"
            )));
        }
        _ => (None, None),
    };
    let exp = jiff::Timestamp::now().as_second() + expiration.unwrap_or(3600).max(600);
    let info = TokenInfo {
        namespace: ns.into(),
        service_account: sa.into(),
        sa_uid: sa_obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .into(),
        pod,
        node,
        audiences: if audiences.is_empty() {
            vec![auth::API_AUDIENCE.into()]
        } else {
            audiences
        },
        expires: exp,
        jti: verbs::uid(),
    };
    Ok((auth::issue(st, info), exp))
}

pub(crate) fn review(
    shared: &Arc<Shared>,
    st: &mut Store,
    r: &ReqInfo,
    addr: &Addr,
) -> Result<Response<Body>, ApiError> {
    let body = parse_body(r)?;
    let spec = body["spec"].clone();
    let rt = &addr.rt;
    let status = match rt.plural.as_str() {
        "tokenreviews" => {
            let token = spec["token"].as_str().unwrap_or_default();
            let auds: Vec<String> = spec["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            match auth::resolve(st, &shared.admin_token, token, &auds) {
                Ok((u, a)) => {
                    json!({"authenticated": true, "user": u.to_json(), "audiences": a})
                }
                Err(e) => json!({"user": {}, "error": format!("[{e}]")}),
            }
        }
        _ => {
            let mut attrs = auth::sar_attributes(&spec);
            let user = if rt.plural == "selfsubjectaccessreviews" {
                r.user.clone()
            } else {
                auth::sar_user(&spec)
            };
            if rt.plural == "localsubjectaccessreviews" {
                attrs.namespace = addr.ns.clone();
            }
            let (allowed, reason) = auth::authorize(st, &user, &attrs);
            let mut s = json!({"allowed": allowed});
            if !reason.is_empty() {
                s["reason"] = json!(reason);
            }
            s
        }
    };
    let out = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"creationTimestamp": null}, "spec": spec, "status": status});
    Ok(json_resp(201, &out, &[]))
}

pub(crate) fn sim_admin(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let f = &shared.faults;
    match (method.as_str(), path) {
        ("GET", "/_sim/faults") => Ok(json_resp(
            200,
            &serde_json::to_value(f.get()).expect("json"),
            &[],
        )),
        ("PUT" | "POST", "/_sim/faults") => {
            let cfg: FaultConfig = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid fault config: {e}")))?;
            f.set(cfg);
            Ok(json_resp(
                200,
                &serde_json::to_value(f.get()).expect("json"),
                &[],
            ))
        }
        ("DELETE", "/_sim/faults") => {
            f.clear();
            Ok(json_resp(200, &success(json!({})), &[]))
        }
        ("GET", "/_sim/faults/injected") => {
            let by_verb = f.injected_by_verb();
            let total: u64 = by_verb.values().sum();
            Ok(json_resp(
                200,
                &json!({"total": total, "byVerb": by_verb}),
                &[],
            ))
        }
        ("POST", "/_sim/faults/close-watches") => {
            f.close_watches();
            Ok(json_resp(200, &success(json!({})), &[]))
        }
        ("POST", "/_sim/faults/compact") => {
            f.compact();
            Ok(json_resp(200, &success(json!({})), &[]))
        }
        ("POST", "/_sim/token") if q.contains_key("node") => {
            let node = q.get("node").cloned().unwrap_or_default();
            let token = format!("node-{}", auth::random_string(32));
            let mut st = shared.store.lock().expect("store");
            st.node_tokens.insert(token.clone(), node);
            Ok(full(200, "text/plain", token))
        }
        ("POST", "/_sim/token") => {
            let get = |k: &str| q.get(k).cloned().unwrap_or_default();
            let mut st = shared.store.lock().expect("store");
            let pod = q.get("pod").map(|p| ("Pod".to_string(), p.clone(), None));
            let (t, _) = issue_token(
                &mut st,
                &get("namespace"),
                &get("serviceAccount"),
                vec![],
                None,
                pod,
            )?;
            Ok(full(200, "text/plain", t))
        }
        _ => Err(ApiError::no_route()),
    }
}

/// `POST …/pods/NAME/binding` (what a scheduler sends): sets `spec.nodeName` once, with the
/// `PodScheduled` condition, as the API server's `BindingREST` does. A pod already on a node or
/// being deleted gets 409; a binding without a target node 422.
pub(crate) fn pod_binding(
    st: &mut Store,
    r: &ReqInfo,
    addr: &Addr,
) -> Result<verbs::Out, ApiError> {
    let body = parse_body(r)?;
    let name = addr.name.clone().unwrap_or_default();
    let target = Target {
        group: "",
        resource: "pods/binding",
        name: &name,
    };
    let node = body["target"]["name"].as_str().unwrap_or_default();
    let kind = body["target"]["kind"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    if node.is_empty() {
        causes.push(crate::status::Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: "target.name".into(),
        });
    }
    if !kind.is_empty() && kind != "Node" {
        causes.push(crate::status::Cause {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {kind:?}: supported values: \"Node\""),
            field: "target.kind".into(),
        });
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("Binding", "", &name, causes));
    }
    let pod = st.get("/pods", &addr.ns, &name).ok_or_else(|| {
        ApiError::not_found(Target {
            group: "",
            resource: "pods",
            name: &name,
        })
    })?;
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::conflict_msg(
            target,
            format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    if let Some(on) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Err(ApiError::conflict_msg(
            target,
            format!("pod {name} is already assigned to node {on:?}"),
        ));
    }
    let mut pod = (*pod).clone();
    pod["spec"]["nodeName"] = json!(node);
    let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": verbs::now()});
    match pod["status"]["conditions"].as_array_mut() {
        Some(conditions) => {
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(scheduled);
        }
        None => pod["status"]["conditions"] = json!([scheduled]),
    }
    st.put("/pods", pod);
    Ok(verbs::Out {
        code: 201,
        object: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        warnings: vec![],
    })
}
