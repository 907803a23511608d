//! Structural-schema validation of custom resources as the API server does it: pruning of
//! unknown fields, defaults, types, required, enum, bounds, lengths, patterns, and
//! `x-kubernetes-validations` CEL rules (evaluated with `kube-cel`).

use serde_json::{Map, Value};

use crate::status::Cause;

/// The result of checking one object.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Field errors (non-empty means 422 Invalid).
    pub causes: Vec<Cause>,
    /// Paths of unknown fields that were pruned.
    pub unknown: Vec<String>,
}

/// Default, prune and validate a custom resource in place against its version's schema.
pub fn check(schema: &Value, obj: &mut Value, old: Option<&Value>, check_status: bool) -> Outcome {
    check_with(schema, obj, old, check_status, |_| Vec::new())
}

/// [`check`], with `extra` validation (the scale subresource's) after the schema's and before
/// the CEL rules, in the real validator's order. As in the real API server, CEL rules are not
/// evaluated when a type or required-field error blocks them, which adds a `<nil>` cause.
pub fn check_with(
    schema: &Value,
    obj: &mut Value,
    old: Option<&Value>,
    check_status: bool,
    extra: impl FnOnce(&Value) -> Vec<Cause>,
) -> Outcome {
    let mut out = Outcome::default();
    let defaulted = kube_cel::apply_defaults(schema, obj);
    *obj = defaulted;
    let props = &schema["properties"];
    let keys: Vec<String> = obj
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if k == "status" && !check_status {
            continue;
        }
        match props.get(&k) {
            Some(s) => {
                let child = obj.get_mut(&k).expect("present");
                prune(s, child, &k, &mut out.unknown);
                validate(s, child, &k, &mut out.causes);
            }
            None if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) => {}
            None => {
                out.unknown.push(k.clone());
                obj.as_object_mut().expect("object").remove(&k);
            }
        }
    }
    for r in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if obj.get(r).is_none() {
            out.causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: r.into(),
            });
        }
    }
    out.causes.extend(extra(obj));
    let blocking = out
        .causes
        .iter()
        .any(|c| matches!(c.reason, "FieldValueTypeInvalid" | "FieldValueRequired"));
    if blocking {
        if schema.to_string().contains("\"x-kubernetes-validations\"") {
            out.causes.push(Cause {
                reason: "FieldValueInvalid",
                message: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
                field: "<nil>".into(),
            });
        }
    } else if let Err(errs) = kube_cel::validate(&strip_non_cel(schema, check_status), obj, old) {
        for e in errs.as_slice() {
            out.causes.push(Cause {
                reason: "FieldValueInvalid",
                message: cel_message(obj, &e.field_path, &e.message),
                field: e.field_path.clone(),
            });
        }
    }
    out
}

/// A failed CEL rule's message as kube-apiserver v1.37 words it: the value when the rule sits on a
/// scalar (`Invalid value: "bad": msg`), none when it sits on an object or a list (`Invalid value:
/// msg`).
fn cel_message(obj: &Value, path: &str, message: &str) -> String {
    match value_at(obj, path) {
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
            format!("Invalid value: {}: {message}", show(v))
        }
        _ => format!("Invalid value: {message}"),
    }
}

/// The value at a field path such as `spec.rollout.steps[0].percent`.
fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = obj;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        let name = pieces.next().unwrap_or_default();
        if !name.is_empty() {
            v = v.get(name)?;
        }
        for index in pieces {
            let index = index.strip_suffix(']')?;
            v = match index.parse::<usize>() {
                Ok(i) => v.get(i)?,
                Err(_) => v.get(index.trim_matches('"'))?,
            };
        }
    }
    Some(v)
}

/// The schema without `metadata` (and without `status` on the main resource), for CEL.
fn strip_non_cel(schema: &Value, check_status: bool) -> Value {
    let mut s = schema.clone();
    if let Some(p) = s["properties"].as_object_mut() {
        p.remove("metadata");
        if !check_status {
            p.remove("status");
        }
    }
    s
}

fn preserve(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
        || schema["x-kubernetes-embedded-resource"] == Value::Bool(true)
            && schema["properties"].is_null()
}

fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object() {
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    let cp = format!("{path}.{k}");
                    match props.get(&k) {
                        Some(s) => prune(s, m.get_mut(&k).expect("present"), &cp, unknown),
                        None if preserve(schema) => {}
                        None if schema["x-kubernetes-embedded-resource"] == Value::Bool(true)
                            && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                        None => {
                            unknown.push(cp);
                            m.remove(&k);
                        }
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, c) in m.iter_mut() {
                    prune(ap, c, &format!("{path}.{k}"), unknown);
                }
            } else if !preserve(schema)
                && schema["type"] == "object"
                && schema.get("additionalProperties").is_none()
            {
                for k in m.keys() {
                    unknown.push(format!("{path}.{k}"));
                }
                m.clear();
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, c) in items.iter_mut().enumerate() {
                prune(&schema["items"], c, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// A float as Go's `%v` prints it (`0`, not `0.0`).
fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    let invalid = |msg: String| Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {}: {msg}", show(v)),
        field: path.into(),
    };
    if v.is_null() {
        if schema["nullable"] != Value::Bool(true) && schema["type"].is_string() {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or_default()
                ),
                field: path.into(),
            });
        }
        return;
    }
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(v);
        let ok = t == actual || (t == "number" && actual == "integer");
        let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true)
            && matches!(actual, "integer" | "string");
        if !ok && !int_or_string {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!(
                    "Invalid value: \"{}\": {path} in body must be of type {t}: {}",
                    type_name(v),
                    show_type_arg(v)
                ),
                field: path.into(),
            });
            return;
        }
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        let sup: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                v,
                sup.join(", ")
            ),
            field: path.into(),
        });
    }
    if let Some(n) = v.as_f64() {
        if let Some(max) = schema["maximum"].as_f64() {
            let excl = schema["exclusiveMaximum"] == Value::Bool(true);
            if n > max || (excl && n == max) {
                let rel = if excl {
                    "less than"
                } else {
                    "less than or equal to"
                };
                causes.push(invalid(format!(
                    "{path} in body should be {rel} {}",
                    go_float(max)
                )));
            }
        }
        if let Some(min) = schema["minimum"].as_f64() {
            let excl = schema["exclusiveMinimum"] == Value::Bool(true);
            if n < min || (excl && n == min) {
                let rel = if excl {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                causes.push(invalid(format!(
                    "{path} in body should be {rel} {}",
                    go_float(min)
                )));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(max) = schema["maxLength"].as_u64()
            && len > max
        {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: may not be more than {max} bytes"),
                field: path.into(),
            });
        }
        if let Some(min) = schema["minLength"].as_u64()
            && len < min
        {
            causes.push(invalid(format!(
                "{path} in body should be at least {min} chars long"
            )));
        }
        if let Some(p) = schema["pattern"].as_str()
            && regex::Regex::new(p).is_ok_and(|re| !re.is_match(s))
        {
            causes.push(invalid(format!("{path} in body should match '{p}'")));
        }
    }
    match v {
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {}: must have at most {max} items", items.len()),
                    field: path.into(),
                });
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                causes.push(invalid(format!(
                    "{path} in body should have at least {min} items"
                )));
            }
            if schema["items"].is_object() {
                for (i, c) in items.iter().enumerate() {
                    validate(&schema["items"], c, &format!("{path}[{i}]"), causes);
                }
            }
        }
        Value::Object(m) => {
            for r in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                        field: format!("{path}.{r}"),
                    });
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && m.len() as u64 > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {}: must have at most {max} items", m.len()),
                    field: path.into(),
                });
            }
            let props = schema["properties"].as_object();
            let ap = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, c) in m {
                if let Some(s) = props.and_then(|p: &Map<String, Value>| p.get(k)).or(ap) {
                    validate(s, c, &format!("{path}.{k}"), causes);
                }
            }
        }
        _ => {}
    }
}

fn show_type_arg(v: &Value) -> String {
    format!("\"{}\"", type_name(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["image"], "properties": {
            "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
            "image": {"type": "string", "minLength": 1, "pattern": "^[a-z]+$"},
            "mode": {"type": "string", "enum": ["a", "b"]}
        }, "x-kubernetes-validations": [{"rule": "self.replicas < 5 || self.mode == 'b'", "message": "many replicas need mode b"}]}}})
    }

    #[test]
    fn defaults_and_prunes() {
        let mut o = json!({"spec": {"image": "x", "extra": 1}});
        let out = check(&schema(), &mut o, None, true);
        assert!(out.causes.is_empty(), "{:?}", out.causes);
        assert_eq!(o["spec"]["replicas"], 1);
        assert_eq!(out.unknown, vec!["spec.extra".to_string()]);
    }

    #[test]
    fn reports_each_rule() {
        let mut o = json!({"spec": {"replicas": 11, "image": "X", "mode": "c"}});
        let out = check(&schema(), &mut o, None, true);
        let lines: Vec<String> = out.causes.iter().map(Cause::line).collect();
        assert!(lines.contains(&"spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10".to_string()), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("spec.mode: Unsupported value: \"c\"")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("should match")),
            "{lines:?}"
        );
        let mut o = json!({"spec": {}});
        assert_eq!(
            check(&schema(), &mut o, None, true).causes[0].line(),
            "spec.image: Required value"
        );
    }

    #[test]
    fn cel_rule() {
        let mut o = json!({"spec": {"replicas": 7, "image": "x", "mode": "a"}});
        let out = check(&schema(), &mut o, None, true);
        assert_eq!(out.causes.len(), 1, "{:?}", out.causes);
        // A rule on an object names no value (kube-apiserver v1.37, not `"object"`).
        assert_eq!(
            out.causes[0].line(),
            "spec: Invalid value: many replicas need mode b",
            "{:?}",
            out.causes
        );
    }

    #[test]
    fn a_cel_rule_on_a_scalar_names_its_value_and_on_a_list_none() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "mode": {"type": "string", "x-kubernetes-validations": [{"rule": "self != 'bad'", "message": "mode is bad"}]},
            "size": {"type": "integer", "x-kubernetes-validations": [{"rule": "self != 3"}]},
            "steps": {"type": "array", "items": {"type": "integer"},
                      "x-kubernetes-validations": [{"rule": "self[size(self) - 1] == 100", "message": "the last step must be 100"}]},
        }}}});
        let mut o = json!({"spec": {"mode": "bad", "size": 3, "steps": [1, 2]}});
        let mut lines: Vec<String> = check(&schema, &mut o, None, true)
            .causes
            .iter()
            .map(Cause::line)
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "spec.mode: Invalid value: \"bad\": mode is bad",
                "spec.size: Invalid value: 3: failed rule: self != 3",
                "spec.steps: Invalid value: the last step must be 100",
            ]
        );
    }

    #[test]
    fn field_paths_reach_list_items() {
        let o = json!({"spec": {"steps": [{"percent": 34}, {"percent": 90}]}});
        assert_eq!(value_at(&o, "spec.steps[1].percent"), Some(&json!(90)));
        assert_eq!(value_at(&o, "spec.steps[2]"), None);
    }
}
