//! The write verbs (create, update, patch, server-side apply, delete) with the API server's
//! metadata rules: uid, generation, resourceVersion, managedFields, status subresource,
//! finalizers, graceful pod deletion and owner-reference garbage collection.
//!
//! One file per verb: [`create`](create()) (`create.rs`), [`update`](update()) and the common
//! tail of every change (`update.rs`), the three patch types (`patch_types.rs`), server-side
//! apply (`apply.rs`), delete (`crate::delete`). This module holds the request context and
//! the rules they share.

mod apply;
mod create;
mod patch_types;
mod update;

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;
use crate::status::{ApiError, Cause, Target};
use crate::validate;

pub use crate::delete::{DeleteOpts, delete, gc, kubelet_remove};
pub use create::create;
pub(crate) use create::root_ca_configmap;
pub use patch_types::patch;
pub use update::update;

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
    /// The node making the request (user `system:node:<name>`): NodeRestriction applies.
    pub node: Option<String>,
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
    rfc3339_secs(jiff::Timestamp::now())
}

/// `t` as the API server writes metadata times: RFC 3339 in UTC (`Z`), whole seconds
/// (`2026-01-01T12:00:00Z`).
pub fn rfc3339_secs(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
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

pub(crate) fn set_or_remove(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        if v.is_null() {
            m.remove(key);
        } else {
            m.insert(key.into(), v);
        }
    }
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
    let scale = ctx.rt.scale.clone().filter(|_| sub.is_none());
    let out = validate::check_with(schema, obj, old, check_status, |o| {
        scale
            .map(|(spec_path, _, _)| scale_causes(o, &spec_path))
            .unwrap_or_default()
    });
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
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
            ctx.rt.version,
            list.join(", "),
            kind = ctx.rt.kind
        )));
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

/// The scale subresource's check of the spec replicas (`.spec.replicas` style path).
fn scale_causes(o: &Value, spec_path: &str) -> Vec<Cause> {
    let parts: Vec<String> = spec_path
        .trim_start_matches('.')
        .split('.')
        .map(String::from)
        .collect();
    let Some(v) = crate::patch::get(o, &parts) else {
        return vec![];
    };
    let message = match v {
        Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => format!(
            "Invalid value: {}: should be a non-negative integer",
            n.as_i64().unwrap_or_default()
        ),
        Value::Number(n) if n.as_i64().is_some() => return vec![],
        other => {
            let (shown, ty) = match other {
                Value::String(s) => (s.clone(), "string"),
                Value::Bool(b) => (b.to_string(), "bool"),
                Value::Number(n) => (n.to_string(), "float64"),
                Value::Array(_) => (other.to_string(), "[]interface {}"),
                Value::Object(_) => (other.to_string(), "map[string]interface {}"),
                Value::Null => return vec![],
            };
            format!(
                "Invalid value: 0: {spec_path} accessor error: {shown} is of the type {ty}, expected int64"
            )
        }
    };
    vec![Cause {
        reason: "FieldValueInvalid",
        message,
        field: spec_path.to_string(),
    }]
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
