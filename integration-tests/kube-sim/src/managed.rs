//! `managedFields` bookkeeping: which manager owns which fields, for server-side apply and
//! for the Update entries every other write records.

use serde_json::{Value, json};

use crate::patch::{self, FieldSet};
use crate::verbs::now;

pub(crate) fn managed_entry(
    manager: &str,
    op: &str,
    api_version: &str,
    set: &FieldSet,
    sub: Option<&str>,
) -> Value {
    let mut e = json!({"manager": manager, "operation": op, "apiVersion": api_version, "time": now(), "fieldsType": "FieldsV1", "fieldsV1": patch::to_fields_v1(set)});
    if let Some(s) = sub {
        e["subresource"] = json!(s);
    }
    e
}

/// Managed-field entries of an object: (manager, operation, subresource, set, raw).
pub(crate) fn managers(obj: &Value) -> Vec<(String, String, Option<String>, FieldSet)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_string(),
                e["operation"].as_str().unwrap_or_default().to_string(),
                e["subresource"].as_str().map(String::from),
                patch::from_fields_v1(&e["fieldsV1"]),
            )
        })
        .collect()
}

pub(crate) fn write_managers(
    obj: &mut Value,
    api_version: &str,
    ms: Vec<(String, String, Option<String>, FieldSet)>,
) {
    let entries: Vec<Value> = ms
        .iter()
        .filter(|m| !m.3.is_empty())
        .map(|(m, op, sub, set)| managed_entry(m, op, api_version, set, sub.as_deref()))
        .collect();
    if entries.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(entries);
    }
}

/// Record an Update by `manager` of the fields that changed between `old` and `new`.
pub(crate) fn track_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    sub: Option<&str>,
) {
    let mut ms = managers(old);
    let changed = patch::changed(old, new);
    if changed.is_empty() {
        new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        return;
    }
    let present: FieldSet = changed
        .iter()
        .filter(|p| patch::get(new, p).is_some())
        .cloned()
        .collect();
    for m in ms.iter_mut() {
        m.3.retain(|q| !changed.iter().any(|p| patch::overlaps(p, q)));
    }
    let sub = sub.map(String::from);
    match ms
        .iter_mut()
        .find(|m| m.0 == manager && m.1 == "Update" && m.2 == sub)
    {
        Some(m) => m.3.extend(present),
        None => ms.push((manager.to_string(), "Update".into(), sub, present)),
    }
    write_managers(new, api_version, ms);
}
