//! The write verbs (create, update, patch, server-side apply, delete) with the API server's
//! metadata rules: uid, generation, resourceVersion, managedFields, status subresource,
//! finalizers, graceful pod deletion and owner-reference garbage collection.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::builtin::builtin_prepare;
use crate::managed::{managed_entry, managers, track_update, write_managers};
use crate::patch::{self, FieldSet};
use crate::resources::ResourceType;
use crate::status::{ApiError, Cause, Target};
use crate::store::Store;
use crate::validate;

pub use crate::delete::{DeleteOpts, delete, gc, kubelet_remove};

/// Per-request write context.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The resource type addressed.
    pub rt: &'a ResourceType,
    /// Namespace from the path ("" for cluster scope).
    pub ns: String,
    /// Field manager (from `fieldManager` or the User-Agent).
    pub manager: String,
    /// Whether `fieldManager` was given (server-side apply requires it).
    pub manager_explicit: bool,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation`: Strict, Warn or Ignore.
    pub field_validation: String,
}

/// A successful write.
#[derive(Debug)]
pub struct Out {
    /// HTTP code (200 or 201).
    pub code: u16,
    /// Response body.
    pub object: Value,
    /// `Warning` headers.
    pub warnings: Vec<String>,
}

/// RFC 3339 now, second precision, as the API server writes timestamps.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn target<'a>(rt: &'a ResourceType, name: &'a str) -> Target<'a> {
    Target {
        group: &rt.group,
        resource: &rt.plural,
        name,
    }
}

pub(crate) fn uid() -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    let r: String = (0..32)
        .map(|_| HEX[rand::random_range(0..16)] as char)
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &r[0..8],
        &r[8..12],
        &r[12..16],
        &r[16..20],
        &r[20..32]
    )
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
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

pub(crate) fn set_or_remove(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        if v.is_null() {
            m.remove(key);
        } else {
            m.insert(key.into(), v);
        }
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

fn has_generation(rt: &ResourceType) -> bool {
    rt.custom
        || matches!(
            rt.kind.as_str(),
            "Pod" | "Service" | "CustomResourceDefinition" | "Node"
        )
}

/// Schema check for custom resources; returns warnings or the 422.
fn schema_check(
    ctx: &Ctx<'_>,
    obj: &mut Value,
    old: Option<&Value>,
    sub: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    let Some(schema) = &ctx.rt.schema else {
        return Ok(vec![]);
    };
    let check_status = !ctx.rt.has_status() || sub == Some("status");
    let out = validate::check(schema, obj, old, check_status);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !out.unknown.is_empty() && ctx.field_validation == "Strict" {
        let list: Vec<String> = out
            .unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        return Err(ApiError::bad_request(
            format!(".{}: strict decoding error: {}", "", list.join(", "))
                .trim_start_matches(".: ")
                .to_string(),
        ));
    }
    if !out.causes.is_empty() {
        return Err(ApiError::invalid(
            &ctx.rt.kind,
            &ctx.rt.group,
            &name,
            out.causes,
        ));
    }
    Ok(if ctx.field_validation == "Ignore" {
        vec![]
    } else {
        out.unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect()
    })
}

/// Create an object.
pub fn create(st: &mut Store, ctx: &Ctx<'_>, obj: Value) -> Result<Out, ApiError> {
    create_as(st, ctx, obj, "Update")
}

fn create_as(
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
    Ok(Out {
        code: 201,
        object: (*stored).clone(),
        warnings,
    })
}

fn after_create(st: &mut Store, rt: &ResourceType, obj: &Value) {
    if rt.group.is_empty() && rt.kind == "Namespace" {
        let ns = obj["metadata"]["name"].as_str().unwrap_or_default();
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns, "uid": uid(), "creationTimestamp": now()}});
        st.put("/serviceaccounts", sa);
    }
}

fn check_kind(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(k) = obj["kind"].as_str()
        && !k.is_empty()
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            obj["apiVersion"].as_str().unwrap_or_default(),
            rt.api_version()
        )));
    }
    Ok(())
}

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
                &rt.kind,
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

/// Patch an object or its status with one of the four patch types.
pub fn patch(
    st: &mut Store,
    ctx: &Ctx<'_>,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    body: &[u8],
    force: bool,
) -> Result<Out, ApiError> {
    let rt = ctx.rt;
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    if ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor" {
        let cfg: Value = serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        return apply(st, ctx, name, sub, cfg, force);
    }
    let old = st
        .get(&rt.store_key(), &ctx.ns, name)
        .ok_or_else(|| ApiError::not_found(target(rt, name)))?;
    let mut new = (*old).clone();
    let parse = |b: &[u8]| {
        serde_json::from_slice::<Value>(b)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
    };
    match ct {
        "application/merge-patch+json" => {
            let p = parse(body)?;
            check_patch_rv(rt, name, &old, &p)?;
            json_patch::merge(&mut new, &p);
        }
        "application/strategic-merge-patch+json" => {
            if rt.custom {
                return Err(ApiError::unsupported_media(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            let p = parse(body)?;
            check_patch_rv(rt, name, &old, &p)?;
            patch::strategic_merge(&mut new, &p);
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut new, &p).map_err(|e| {
                ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    vec![Cause {
                        reason: "FieldValueInvalid",
                        message: e.to_string(),
                        field: String::new(),
                    }],
                )
            })?;
            if new["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                return Err(ApiError::conflict(target(rt, name)));
            }
        }
        other => {
            return Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other})"
            )));
        }
    }
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    finish_update(st, ctx, &old, new, sub, None)
}

fn check_patch_rv(rt: &ResourceType, name: &str, old: &Value, p: &Value) -> Result<(), ApiError> {
    if let Some(rv) = p["metadata"]["resourceVersion"].as_str()
        && rv
            != old["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
    {
        return Err(ApiError::conflict(target(rt, name)));
    }
    Ok(())
}

/// Server-side apply: create when missing; otherwise merge the configuration, remove fields the
/// manager stopped applying that no one else owns, and refuse to take fields another manager
/// set to a different value unless `force`.
fn apply(
    st: &mut Store,
    ctx: &Ctx<'_>,
    name: &str,
    sub: Option<&str>,
    mut cfg: Value,
    force: bool,
) -> Result<Out, ApiError> {
    let rt = ctx.rt;
    if !ctx.manager_explicit {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    check_kind(rt, &cfg)?;
    if cfg["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            cfg["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    cfg["metadata"]["name"] = json!(name);
    let Some(old) = st.get(&rt.store_key(), &ctx.ns, name) else {
        return create_as(st, ctx, cfg, "Apply");
    };
    let mut cfg_scoped = cfg.clone();
    if rt.has_status() {
        if sub == Some("status") {
            let status = cfg_scoped["status"].take();
            cfg_scoped = json!({});
            set_or_remove(&mut cfg_scoped, "status", status);
        } else {
            set_or_remove(&mut cfg_scoped, "status", Value::Null);
        }
    }
    let new_set = patch::leaves(&cfg_scoped);
    let mut ms = managers(&old);
    let sub_s = sub.map(String::from);
    let mut conflicts = Vec::new();
    for (m, op, msub, set) in &ms {
        if m == &ctx.manager && op == "Apply" && *msub == sub_s {
            continue;
        }
        for p in &new_set {
            if let Some(q) = set.iter().find(|q| patch::overlaps(p, q))
                && patch::get(&old, q) != patch::get(&cfg_scoped, q)
            {
                conflicts.push(Cause {
                    reason: "FieldManagerConflict",
                    message: format!(
                        "conflict with \"{m}\"{}: .{}",
                        if op == "Update" {
                            format!(" using {}", rt.api_version())
                        } else {
                            String::new()
                        },
                        q.join(".")
                    ),
                    field: format!(".{}", q.join(".")),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.dedup();
        return Err(ApiError::apply_conflict(target(rt, name), conflicts));
    }
    let prev: FieldSet = ms
        .iter()
        .find(|(m, op, msub, _)| m == &ctx.manager && op == "Apply" && *msub == sub_s)
        .map(|x| x.3.clone())
        .unwrap_or_default();
    let mut new = (*old).clone();
    for p in prev.difference(&new_set) {
        let owned_by_other = ms.iter().any(|(m, op, _, set)| {
            !(m == &ctx.manager && op == "Apply") && set.iter().any(|q| patch::overlaps(p, q))
        });
        if !owned_by_other {
            patch::remove(&mut new, p);
        }
    }
    patch::apply_merge(&mut new, &cfg_scoped);
    if force {
        for (m, op, _, set) in ms.iter_mut() {
            if !(m == &ctx.manager && op == "Apply") {
                set.retain(|q| {
                    !new_set.iter().any(|p| {
                        patch::overlaps(p, q) && patch::get(&old, q) != patch::get(&cfg_scoped, q)
                    })
                });
            }
        }
    }
    match ms
        .iter_mut()
        .find(|(m, op, msub, _)| m == &ctx.manager && op == "Apply" && *msub == sub_s)
    {
        Some(e) => e.3 = new_set,
        None => ms.push((ctx.manager.clone(), "Apply".into(), sub_s, new_set)),
    }
    write_managers(&mut new, &rt.api_version(), ms);
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    finish_update(st, ctx, &old, new, sub, Some(()))
}

/// Common tail of update, patch and apply.
fn finish_update(
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
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {}",
                        serde_json::to_string(&added).unwrap_or_default()
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

/// Build the object map for list responses.
pub fn list_object(
    rt: &ResourceType,
    items: Vec<Value>,
    rv: u64,
    cont: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    if let Some(c) = cont {
        meta.insert("continue".into(), json!(c));
    }
    if let Some(r) = remaining {
        meta.insert("remainingItemCount".into(), json!(r));
    }
    json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items})
}
