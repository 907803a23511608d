//! Server-side apply (`application/apply-patch+yaml`): field ownership per manager in
//! `managedFields`, conflicts with the real message, `force`, and removal of fields a manager
//! stops applying.

use serde_json::{Value, json};

use super::create::create_as;
use super::update::finish_update;
use super::{Ctx, Out, check_kind, set_or_remove, target};
use crate::managed::{managers, write_managers};
use crate::patch::{self, FieldSet};
use crate::status::{ApiError, Cause};
use crate::store::Store;

/// Server-side apply: create when missing; otherwise merge the configuration, remove fields the
/// manager stopped applying that no one else owns, and refuse to take fields another manager
/// set to a different value unless `force`.
pub(super) fn apply(
    st: &mut Store,
    ctx: &Ctx<'_>,
    name: &str,
    sub: Option<&str>,
    mut cfg: Value,
    force: bool,
) -> Result<Out, ApiError> {
    let rt = ctx.rt;
    if !ctx.manager_explicit {
        return Err(ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![Cause {
                reason: "FieldValueRequired",
                message: "Required value: is required for apply patch".into(),
                field: "fieldManager".into(),
            }],
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
                        "conflict with \"{m}\"{}",
                        if op == "Update" {
                            format!(" using {}", rt.api_version())
                        } else {
                            String::new()
                        }
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
