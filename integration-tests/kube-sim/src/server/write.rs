//! The write routes: create (with the `token`, `binding` and `eviction` subresources and the
//! review APIs), update, patch (and `scale`), delete and deletecollection, then the emulated
//! kubelet's removal of gracefully deleted pods.

use std::collections::HashMap;
use std::sync::Arc;

use http::Response;
use serde_json::{Value, json};

use super::{Addr, Body, ReqInfo, Shared, json_resp, parse_body, selectors, with_version};
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::verbs::{self, Ctx, DeleteOpts};

pub(super) fn write(
    shared: &Arc<Shared>,
    r: &ReqInfo,
    addr: &Addr,
    verb: &str,
) -> Result<Response<Body>, ApiError> {
    let q = &r.query;
    let rt = &addr.rt;
    let explicit = q.get("fieldManager").filter(|m| !m.is_empty()).cloned();
    let manager = explicit.clone().unwrap_or_else(|| {
        r.user_agent
            .split('/')
            .next()
            .unwrap_or("unknown")
            .to_string()
    });
    let ctx = Ctx {
        rt,
        ns: addr.ns.clone(),
        manager,
        manager_explicit: explicit.is_some(),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        field_validation: q
            .get("fieldValidation")
            .cloned()
            .unwrap_or_else(|| "Warn".into()),
        node: crate::node_auth::node_name(&r.user).map(String::from),
    };
    let name = addr.name.clone().unwrap_or_default();
    let sub = addr.sub.as_deref();
    let mut st = shared.store.lock().expect("store");
    if let Some(node) = &ctx.node
        && rt.group.is_empty()
        && rt.plural == "pods"
        && (verb == "delete" || sub == Some("eviction"))
    {
        // NodeRestriction: a node deletes and evicts only the pods bound to it.
        let pod = st.get("/pods", &addr.ns, &name).ok_or_else(|| {
            crate::status::ApiError::not_found(crate::status::Target {
                group: "",
                resource: "pods",
                name: &name,
            })
        })?;
        crate::node_auth::admit_pod_delete(node, &pod, sub == Some("eviction"))?;
    }
    let result = match (verb, sub) {
        ("create", _) if rt.virtual_only => {
            return crate::subresources::review(shared, &mut st, r, addr);
        }
        ("create", Some("token")) => {
            crate::subresources::token_request(&mut st, r, addr, ctx.node.as_deref())
        }
        ("create", Some("binding")) => crate::subresources::pod_binding(&mut st, r, addr),
        ("create", Some("eviction")) => {
            let body = parse_body(r)?;
            let opts = delete_opts(&body["deleteOptions"], q);
            verbs::delete(&mut st, &ctx, &name, &opts).map(|_| verbs::Out { code: 201, object: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}), warnings: vec![] })
        }
        ("create", _) => verbs::create(&mut st, &ctx, parse_body(r)?),
        ("update" | "patch", Some("scale")) => {
            crate::subresources::scale_write(&mut st, &ctx, r, &name, verb)
        }
        ("update", _) => verbs::update(&mut st, &ctx, &name, sub, parse_body(r)?),
        ("patch", _) => verbs::patch(
            &mut st,
            &ctx,
            &name,
            sub,
            &r.content_type,
            &r.body,
            q.get("force").is_some_and(|f| f == "true"),
        ),
        ("delete", _) => {
            let body = parse_body(r)?;
            verbs::delete(&mut st, &ctx, &name, &delete_opts(&body, q)).map(|mut out| {
                // A deletion that completes at once answers with a Status, except for the
                // resources whose registry returns the deleted object (`ReturnDeletedObject`).
                let returns_object = rt.group.is_empty()
                    && matches!(
                        rt.plural.as_str(),
                        "pods"
                            | "services"
                            | "namespaces"
                            | "serviceaccounts"
                            | "persistentvolumes"
                            | "persistentvolumeclaims"
                            | "resourcequotas"
                            | "podtemplates"
                    );
                if !ctx.dry_run
                    && !returns_object
                    && st.get(&rt.store_key(), &addr.ns, &name).is_none()
                {
                    let mut details = json!({"name": name, "kind": rt.plural, "uid": out.object["metadata"]["uid"]});
                    if !rt.group.is_empty() {
                        details["group"] = json!(rt.group);
                    }
                    out.object = crate::status::success(details);
                }
                out
            })
        }
        ("deletecollection", _) => {
            let body = parse_body(r)?;
            let (ls, fs) = selectors(rt, q, None)?;
            let names: Vec<String> = st
                .objects
                .get(&rt.store_key())
                .map(|b| {
                    b.iter()
                        .filter(|((n, _), o)| {
                            (addr.ns.is_empty() || *n == addr.ns) && ls.matches(o) && fs.matches(o)
                        })
                        .map(|((_, n), _)| n.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut items = Vec::new();
            for n in names {
                if let Ok(o) = verbs::delete(&mut st, &ctx, &n, &delete_opts(&body, q)) {
                    items.push(o.object);
                }
            }
            Ok(verbs::Out {
                code: 200,
                object: verbs::list_object(rt, items, st.rv, None, None),
                warnings: vec![],
            })
        }
        _ => Err(ApiError::method_not_allowed()),
    };
    let pending = std::mem::take(&mut st.pending_pods);
    let nodes = std::mem::take(&mut st.pending_nodes);
    drop(st);
    if !nodes.is_empty() {
        // The node lifecycle controller's NoSchedule tainting pass, shortly after the write
        // (asynchronous, as in a real cluster: the write's response still shows the old taints).
        let store = shared.store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut st = store.lock().expect("store");
            for n in nodes {
                let next = st
                    .get("/nodes", "", &n)
                    .and_then(|node| crate::node_auth::reconcile_taints(&node));
                if let Some(next) = next {
                    st.put("/nodes", next);
                }
            }
        });
    }
    if let Some(delay) = shared.kubelet_delay {
        for (ns, n, uid) in pending {
            let store = shared.store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut st = store.lock().expect("store");
                verbs::kubelet_remove(&mut st, &ns, &n, &uid);
            });
        }
    }
    let out = result?;
    Ok(json_resp(
        out.code,
        &with_version_if_obj(rt, out.object),
        &out.warnings,
    ))
}

fn with_version_if_obj(rt: &ResourceType, o: Value) -> Value {
    if o["kind"] == json!(rt.kind) && !rt.virtual_only {
        with_version(rt, &o)
    } else {
        o
    }
}

fn delete_opts(body: &Value, q: &HashMap<String, String>) -> DeleteOpts {
    DeleteOpts {
        propagation: body["propagationPolicy"]
            .as_str()
            .map(String::from)
            .or_else(|| q.get("propagationPolicy").cloned()),
        grace: body["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        uid: body["preconditions"]["uid"].as_str().map(String::from),
        rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
    }
}
