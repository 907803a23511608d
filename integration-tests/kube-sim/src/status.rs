//! `Status` errors exactly as the real API server writes them (kind, apiVersion, status Failure,
//! message, reason, details, code), so clients map them to the same error types.

use serde_json::{Value, json};

/// One field error inside an `Invalid` Status (`details.causes[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// Machine reason, e.g. `FieldValueRequired`.
    pub reason: &'static str,
    /// Human message, e.g. `Required value`.
    pub message: String,
    /// Field path, e.g. `spec.replicas`.
    pub field: String,
}

impl Cause {
    /// The text the API server shows for one cause: `field: message`.
    pub fn line(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// An API error: an HTTP code and the `Status` object sent as body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `reason` field.
    pub reason: &'static str,
    /// `message` field.
    pub message: String,
    /// `details` object (may be null).
    pub details: Value,
    /// Seconds for a `Retry-After` header (429 and some 500s).
    pub retry_after: Option<u64>,
}

/// The resource half of an error's details.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// API group ("" for core).
    pub group: &'a str,
    /// Plural resource name, e.g. `pods`.
    pub resource: &'a str,
    /// Object name.
    pub name: &'a str,
}

impl Target<'_> {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self) -> Value {
        let mut d = json!({"kind": self.resource});
        if !self.name.is_empty() {
            d["name"] = json!(self.name);
        }
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>, details: Value) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details,
            retry_after: None,
        }
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(t: Target<'_>) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", t.qualified(), t.name),
            t.details(),
        )
    }

    /// 404 for an unknown path or resource type.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        )
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(t: Target<'_>) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", t.qualified(), t.name),
            t.details(),
        )
    }

    /// 409 optimistic-concurrency conflict.
    pub fn conflict(t: Target<'_>) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                t.qualified(),
                t.name
            ),
            t.details(),
        )
    }

    /// 409 with a custom message (preconditions, apply conflicts).
    pub fn conflict_msg(t: Target<'_>, msg: impl Into<String>) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                t.qualified(),
                t.name,
                msg.into()
            ),
            t.details(),
        )
    }

    /// 409 server-side apply conflict, with one cause per conflicting field.
    pub fn apply_conflict(t: Target<'_>, causes: Vec<Cause>) -> Self {
        // As structured-merge-diff's `getConflictMessage`: one conflict inline, several grouped
        // by manager (sorted); each cause's message is `conflict with <manager>`.
        let msg = if causes.len() == 1 {
            format!(
                "Apply failed with 1 conflict: {}: {}",
                causes[0].message, causes[0].field
            )
        } else {
            let mut by: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for c in &causes {
                let m = c
                    .message
                    .strip_prefix("conflict with ")
                    .unwrap_or(&c.message);
                by.entry(m).or_default().push(&c.field);
            }
            let mut lines = Vec::new();
            for (m, fields) in by {
                lines.push(format!("conflicts with {m}:"));
                lines.extend(fields.iter().map(|f| format!("- {f}")));
            }
            format!(
                "Apply failed with {} conflicts: {}",
                causes.len(),
                lines.join("\n")
            )
        };
        let mut d = t.details();
        d["causes"] = causes_json(&causes);
        Self::new(409, "Conflict", msg, d)
    }

    /// 422 `Kind.group "x" is invalid: field: message`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let qk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let body = if causes.len() == 1 {
            causes[0].line()
        } else {
            format!(
                "[{}]",
                causes
                    .iter()
                    .map(Cause::line)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut d = json!({"name": name, "kind": kind, "causes": causes_json(&causes)});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        Self::new(
            422,
            "Invalid",
            format!("{qk} \"{name}\" is invalid: {body}"),
            d,
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg, Value::Null)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized", Value::Null)
    }

    /// 403 Forbidden with the real RBAC message.
    pub fn forbidden(
        t: Target<'_>,
        user: &str,
        verb: &str,
        subresource: &str,
        namespace: &str,
    ) -> Self {
        let res = if subresource.is_empty() {
            t.resource.to_string()
        } else {
            format!("{}/{}", t.resource, subresource)
        };
        let what = if t.name.is_empty() {
            t.qualified()
        } else {
            format!("{} \"{}\"", t.qualified(), t.name)
        };
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{namespace}\"")
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{res}\" in API group \"{}\" {scope}",
                t.group
            ),
            t.details(),
        )
    }

    /// 403 Forbidden with a custom message.
    pub fn forbidden_msg(t: Target<'_>, msg: impl Into<String>) -> Self {
        let what = format!("{} \"{}\"", t.qualified(), t.name);
        Self::new(
            403,
            "Forbidden",
            format!("{what} is forbidden: {}", msg.into()),
            t.details(),
        )
    }

    /// 403 for a non-resource URL.
    pub fn forbidden_path(user: &str, verb: &str, path: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\""),
            json!({}),
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            json!({}),
        )
    }

    /// 410 Expired, as sent in-stream on a watch.
    pub fn expired(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg, Value::Null)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media(msg: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", msg, json!({}))
    }

    /// 500 InternalError.
    pub fn internal(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {msg}"),
            json!({"causes": [{"message": msg}]}),
        )
    }

    /// 429 TooManyRequests with Retry-After.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            json!({"retryAfterSeconds": retry_after}),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            s["details"] = self.details.clone();
        }
        s
    }
}

fn causes_json(causes: &[Cause]) -> Value {
    Value::Array(
        causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect(),
    )
}

/// A `Status` with `status: Success`.
pub fn success(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
