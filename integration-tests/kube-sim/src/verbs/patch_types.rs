//! `patch` (PATCH) with the three classic patch types — JSON merge patch (RFC 7386), JSON
//! patch (RFC 6902), strategic merge patch (built-ins only, 415 for custom resources) — with
//! resourceVersion preconditions; `apply-patch+yaml` goes to server-side apply.

use serde_json::Value;

use super::apply::apply;
use super::update::finish_update;
use super::{Ctx, Out, target};
use crate::patch;
use crate::resources::ResourceType;
use crate::status::{ApiError, Cause};
use crate::store::Store;

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
        let cfg: Value = serde_saphyr::from_slice(body)
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
