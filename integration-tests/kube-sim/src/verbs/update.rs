//! `update` (PUT) and the tail every change goes through (update, patch, apply): the status
//! subresource split, immutable metadata, pod spec immutability, validation, finalizer rules,
//! generation, managedFields, no-op writes and the final removal of a deleted object.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Ctx, Out, check_kind, has_generation, schema_check, set_or_remove, target};
use crate::builtin::builtin_prepare;
use crate::managed::track_update;
use crate::resources::ResourceType;
use crate::status::{ApiError, Cause};
use crate::store::Store;

use super::gc;

/// Update (PUT) an object or its status.
pub fn update(
    st: &mut Store,
    ctx: &Ctx<'_>,
    name: &str,
    sub: Option<&str>,
    new: Value,
) -> Result<Out, ApiError> {
    let rt = ctx.rt;
    check_kind(rt, &new)?;
    if let Some(n) = new["metadata"]["name"].as_str()
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let old = st
        .get(&rt.store_key(), &ctx.ns, name)
        .ok_or_else(|| ApiError::not_found(target(rt, name)))?;
    match new["metadata"]["resourceVersion"].as_str() {
        Some(rv)
            if !rv.is_empty()
                && rv
                    != old["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default() =>
        {
            return Err(ApiError::conflict(target(rt, name)));
        }
        None | Some("") if rt.custom => {
            return Err(ApiError::invalid(
                &rt.plural,
                &rt.group,
                name,
                vec![Cause {
                    reason: "FieldValueInvalid",
                    message: "Invalid value: 0: must be specified for an update".into(),
                    field: "metadata.resourceVersion".into(),
                }],
            ));
        }
        _ => {}
    }
    finish_update(st, ctx, &old, new, sub, None)
}

/// Remove fields the main resource may not change when a status subresource exists, and
/// everything but status on `/status`.
fn scope_to(rt: &ResourceType, old: Option<&Value>, new: &mut Value, sub: Option<&str>) {
    if !rt.has_status() {
        return;
    }
    let old_status = old.map(|o| o["status"].clone()).unwrap_or(Value::Null);
    if sub == Some("status") {
        let status = new["status"].take();
        let mut base = old.cloned().unwrap_or_else(|| json!({}));
        // Real status strategies keep the new labels/annotations? No: they keep old metadata
        // except resourceVersion (used for the precondition) and managedFields.
        base["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
        set_or_remove(&mut base, "status", status);
        *new = base;
    } else {
        set_or_remove(new, "status", old_status);
    }
}

/// The part of an object whose change bumps `generation`.
fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

/// Common tail of update, patch and apply.
pub(super) fn finish_update(
    st: &mut Store,
    ctx: &Ctx<'_>,
    old: &Arc<Value>,
    mut new: Value,
    sub: Option<&str>,
    managed_set: Option<()>,
) -> Result<Out, ApiError> {
    let rt = ctx.rt;
    let name = old["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is not a valid JSON object",
        ));
    }
    new["apiVersion"] = json!(rt.api_version());
    new["kind"] = json!(rt.kind);
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    if let Some(node) = &ctx.node {
        // NodeRestriction sees the object as sent (before the status strategy drops metadata).
        crate::node_auth::admit(node, &rt.group, &rt.plural, sub, Some(old), &new)?;
    }
    scope_to(rt, Some(old), &mut new, sub);
    for f in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        set_or_remove(&mut new["metadata"], f, old["metadata"][f].clone());
    }
    if rt.kind == "Node" && rt.group.is_empty() && !ctx.dry_run {
        st.pending_nodes.push(name.clone());
    }
    if rt.kind == "Pod" && rt.group.is_empty() && sub != Some("status") {
        // Pod specs are immutable except for images and a few fields.
        let mut a = old["spec"].clone();
        let mut b = new["spec"].clone();
        for s in [&mut a, &mut b] {
            for c in s["containers"].as_array_mut().into_iter().flatten() {
                c.as_object_mut().map(|m| m.remove("image"));
            }
            s.as_object_mut().map(|m| {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations")
            });
        }
        if a != b {
            return Err(ApiError::invalid(&rt.kind, &rt.group, &name, vec![Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                field: "spec".into(),
            }]));
        }
    }
    builtin_prepare(rt, &mut new, false)
        .map_err(|c| ApiError::invalid(&rt.kind, &rt.group, &name, c))?;
    let warnings = schema_check(ctx, &mut new, Some(old), sub)?;
    if old["metadata"]["deletionTimestamp"].is_string() {
        let before: Vec<&Value> = old["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let added: Vec<&Value> = new["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| !before.contains(f))
            .collect();
        if !added.is_empty() {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                &name,
                vec![Cause {
                    reason: "FieldValueForbidden",
                    message: format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                        added
                            .iter()
                            .map(|f| f.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    field: "metadata.finalizers".into(),
                }],
            ));
        }
    }
    if has_generation(rt) && spec_part(old) != spec_part(&new) {
        new["metadata"]["generation"] =
            json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    }
    if managed_set.is_none() {
        track_update(old, &mut new, &ctx.manager, &rt.api_version(), sub);
    }
    // No-op writes do not change resourceVersion or notify watchers.
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(m) = c["metadata"].as_object_mut() {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        c
    };
    if strip(old) == strip(&new) {
        return Ok(Out {
            code: 200,
            object: (**old).clone(),
            warnings,
        });
    }
    if ctx.dry_run {
        return Ok(Out {
            code: 200,
            object: new,
            warnings,
        });
    }
    let finalizers_done = new["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    if new["metadata"]["deletionTimestamp"].is_string()
        && finalizers_done
        && !(rt.kind == "Pod"
            && rt.group.is_empty()
            && new["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0)
    {
        let ns = new["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        st.put(&rt.store_key(), new);
        let last = st.remove(&rt.store_key(), &ns, &name).expect("present");
        gc(st);
        return Ok(Out {
            code: 200,
            object: (*last).clone(),
            warnings,
        });
    }
    let stored = st.put(&rt.store_key(), new);
    Ok(Out {
        code: 200,
        object: (*stored).clone(),
        warnings,
    })
}
