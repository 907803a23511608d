//! Deletion as the API server and its controllers do it: preconditions, finalizers, graceful pod
//! deletion finished by the emulated kubelet, namespace deletion, and owner-reference garbage
//! collection with Background, Foreground and Orphan propagation.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::store::{CRD_KEY, Store};
use crate::verbs::{Ctx, Out, now, set_or_remove, target};

/// DeleteOptions as read from the body and query.
#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    /// `Orphan`, `Background` or `Foreground`.
    pub propagation: Option<String>,
    /// Grace period override.
    pub grace: Option<i64>,
    /// Precondition uid.
    pub uid: Option<String>,
    /// Precondition resourceVersion.
    pub rv: Option<String>,
}

/// Delete an object, honouring finalizers, graceful pod deletion and propagation policy.
pub fn delete(
    st: &mut Store,
    ctx: &Ctx<'_>,
    name: &str,
    opts: &DeleteOpts,
) -> Result<Out, ApiError> {
    let rt = ctx.rt;
    let key = rt.store_key();
    let old = st
        .get(&key, &ctx.ns, name)
        .ok_or_else(|| ApiError::not_found(target(rt, name)))?;
    if let Some(u) = &opts.uid
        && old["metadata"]["uid"].as_str() != Some(u.as_str())
    {
        return Err(ApiError::conflict_msg(
            target(rt, name),
            format!(
                "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        ));
    }
    if let Some(r) = &opts.rv
        && old["metadata"]["resourceVersion"].as_str() != Some(r.as_str())
    {
        return Err(ApiError::conflict_msg(
            target(rt, name),
            format!(
                "Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {}",
                old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
            ),
        ));
    }
    if ctx.dry_run {
        return Ok(Out {
            code: 200,
            object: (*old).clone(),
            warnings: vec![],
        });
    }
    let policy = opts
        .propagation
        .clone()
        .unwrap_or_else(|| "Background".into());
    let mut obj = (*old).clone();
    let uid = obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if policy == "Orphan" {
        orphan_dependents(st, &uid);
    }
    let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if policy == "Foreground"
        && has_dependents(st, &uid)
        && !finalizers.contains(&json!("foregroundDeletion"))
    {
        finalizers.push(json!("foregroundDeletion"));
    }
    let is_pod = rt.kind == "Pod" && rt.group.is_empty();
    let grace = if is_pod {
        let g = opts.grace.unwrap_or_else(|| {
            obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30)
        });
        if obj["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
            0
        } else {
            g
        }
    } else {
        0
    };
    let already = obj["metadata"]["deletionTimestamp"].is_string();
    if !finalizers.is_empty() || grace > 0 || (rt.kind == "Namespace" && rt.group.is_empty()) {
        if !already {
            obj["metadata"]["deletionTimestamp"] = json!(if grace > 0 {
                crate::verbs::rfc3339_secs(
                    jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace),
                )
            } else {
                now()
            });
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if !finalizers.is_empty() {
                obj["metadata"]["finalizers"] = Value::Array(finalizers);
            }
            if rt.kind == "Namespace" {
                obj["status"]["phase"] = json!("Terminating");
            }
            let stored = st.put(&key, obj);
            if is_pod && grace > 0 {
                st_pending(st, &ctx.ns, name, &uid);
            }
            if rt.kind == "Namespace" && rt.group.is_empty() {
                finish_namespace(st, name);
                if let Some(n) = st.get(&key, "", name) {
                    return Ok(Out {
                        code: 200,
                        object: (*n).clone(),
                        warnings: vec![],
                    });
                }
            }
            gc(st);
            return Ok(Out {
                code: 200,
                object: (*stored).clone(),
                warnings: vec![],
            });
        }
        if is_pod && opts.grace == Some(0) && finalizers.is_empty() {
            let last = st.remove(&key, &ctx.ns, name).expect("present");
            gc(st);
            return Ok(Out {
                code: 200,
                object: (*last).clone(),
                warnings: vec![],
            });
        }
        return Ok(Out {
            code: 200,
            object: (*old).clone(),
            warnings: vec![],
        });
    }
    let last = st.remove(&key, &ctx.ns, name).expect("present");
    if key == CRD_KEY {
        let plural = old["spec"]["names"]["plural"].as_str().unwrap_or_default();
        let group = old["spec"]["group"].as_str().unwrap_or_default();
        let ck = format!("{group}/{plural}");
        let items: Vec<(String, String)> = st
            .objects
            .get(&ck)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, n) in items {
            st.remove(&ck, &ns, &n);
        }
    }
    gc(st);
    Ok(Out {
        code: 200,
        object: (*last).clone(),
        warnings: vec![],
    })
}

fn st_pending(st: &mut Store, ns: &str, name: &str, uid: &str) {
    st.pending_pods
        .push((ns.to_string(), name.to_string(), uid.to_string()));
}

/// What the kubelet does after a graceful pod deletion: remove the pod for good.
pub fn kubelet_remove(st: &mut Store, ns: &str, name: &str, uid: &str) {
    if let Some(p) = st.get("/pods", ns, name)
        && p["metadata"]["uid"].as_str() == Some(uid)
        && p["metadata"]["deletionTimestamp"].is_string()
    {
        let mut p2 = (*p).clone();
        p2["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if p2["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            st.remove("/pods", ns, name);
            gc(st);
        } else {
            st.put("/pods", p2);
        }
    }
}

/// Namespace deletion: remove everything in it, then the namespace.
fn finish_namespace(st: &mut Store, ns: &str) {
    let keys: Vec<String> = st.objects.keys().cloned().collect();
    for k in keys {
        let items: Vec<(String, String)> = st
            .objects
            .get(&k)
            .map(|b| b.keys().filter(|(n, _)| n == ns).cloned().collect())
            .unwrap_or_default();
        for (n, name) in items {
            st.remove(&k, &n, &name);
        }
    }
    st.remove("/namespaces", "", ns);
}

fn owner_uids(o: &Value) -> Vec<String> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(String::from))
        .collect()
}

fn has_dependents(st: &Store, uid: &str) -> bool {
    st.objects
        .values()
        .flat_map(|b| b.values())
        .any(|o| owner_uids(o).iter().any(|u| u == uid))
}

fn orphan_dependents(st: &mut Store, uid: &str) {
    let deps: Vec<(String, Value)> = st
        .all()
        .into_iter()
        .filter(|(_, o)| owner_uids(o).iter().any(|u| u == uid))
        .map(|(k, o)| (k, (*o).clone()))
        .collect();
    for (k, mut o) in deps {
        if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| r["uid"].as_str() != Some(uid));
            if refs.is_empty() {
                set_or_remove(&mut o["metadata"], "ownerReferences", Value::Null);
            }
        }
        st.put(&k, o);
    }
}

/// Owner-reference garbage collection to a fixpoint: delete objects whose owners are all gone,
/// delete dependents of owners in foreground deletion, and release owners whose dependents are
/// gone.
pub fn gc(st: &mut Store) {
    for _ in 0..64 {
        let all = st.all();
        if !all.iter().any(|(_, o)| {
            o["metadata"]["ownerReferences"].is_array() || o["metadata"]["finalizers"].is_array()
        }) {
            return;
        }
        let live: std::collections::HashMap<String, &Arc<Value>> = all
            .iter()
            .filter_map(|(_, o)| o["metadata"]["uid"].as_str().map(|u| (u.to_string(), o)))
            .collect();
        let mut actions: Vec<(String, String, String, &'static str)> = Vec::new();
        for (k, o) in &all {
            let owners = owner_uids(o);
            if owners.is_empty() || o["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let all_gone = owners.iter().all(|u| !live.contains_key(u));
            let foreground = owners.iter().any(|u| {
                live.get(u).is_some_and(|ow| {
                    ow["metadata"]["deletionTimestamp"].is_string()
                        && ow["metadata"]["finalizers"]
                            .as_array()
                            .is_some_and(|f| f.contains(&json!("foregroundDeletion")))
                })
            });
            if all_gone || foreground {
                actions.push((
                    k.clone(),
                    o["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    o["metadata"]["name"].as_str().unwrap_or_default().into(),
                    "delete",
                ));
            }
        }
        for (k, o) in &all {
            let fin = o["metadata"]["finalizers"].as_array();
            if o["metadata"]["deletionTimestamp"].is_string()
                && fin.is_some_and(|f| f.contains(&json!("foregroundDeletion")))
            {
                let uid = o["metadata"]["uid"].as_str().unwrap_or_default();
                if !all
                    .iter()
                    .any(|(_, d)| owner_uids(d).iter().any(|u| u == uid))
                {
                    actions.push((
                        k.clone(),
                        o["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .into(),
                        o["metadata"]["name"].as_str().unwrap_or_default().into(),
                        "release",
                    ));
                }
            }
        }
        if actions.is_empty() {
            return;
        }
        for (k, ns, name, what) in actions {
            let Some(o) = st.get(&k, &ns, &name) else {
                continue;
            };
            let mut o = (*o).clone();
            let is_pod = k == "/pods";
            if what == "release" {
                if let Some(f) = o["metadata"]["finalizers"].as_array_mut() {
                    f.retain(|x| x != "foregroundDeletion");
                }
                if o["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                {
                    st.remove(&k, &ns, &name);
                } else {
                    st.put(&k, o);
                }
                continue;
            }
            let grace = if is_pod && o["spec"]["nodeName"].is_string() {
                o["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            } else {
                0
            };
            if o["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
                || grace > 0
            {
                o["metadata"]["deletionTimestamp"] = json!(now());
                o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                let uid = o["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                st.put(&k, o);
                if grace > 0 {
                    st_pending(st, &ns, &name, &uid);
                }
            } else {
                st.remove(&k, &ns, &name);
            }
        }
    }
}
