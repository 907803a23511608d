//! Patch semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch
//! with the list-merge keys of the built-in types, and a server-side-apply field-ownership model.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Merge key of a list field under strategic merge patch, by field name.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses" => "name",
        "readinessGates" => "conditionType",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "ports" => "containerPort",
        _ => return None,
    })
}

/// Lists of primitives that strategic merge treats as sets.
fn primitive_merge(field: &str) -> bool {
    field == "finalizers"
}

/// Apply a strategic merge patch to `doc`.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    smp_map(doc, patch, "");
}

fn smp_map(doc: &mut Value, patch: &Value, _field: &str) {
    let Some(pm) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = pm.clone();
        p.remove("$patch");
        *doc = Value::Object(p);
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let dm = doc.as_object_mut().expect("object");
    for (k, v) in pm {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (dm.get_mut(f), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                dm.remove(k);
            }
            Value::Object(_) => smp_map(dm.entry(k.clone()).or_insert(Value::Null), v, k),
            Value::Array(items) => {
                if let Some(key) = merge_key(k) {
                    let cur = dm.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                    smp_list(cur, items, key);
                } else if primitive_merge(k) {
                    let cur = dm.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                    if let Value::Array(c) = cur {
                        for i in items {
                            if !c.contains(i) {
                                c.push(i.clone());
                            }
                        }
                    }
                } else {
                    dm.insert(k.clone(), v.clone());
                }
            }
            _ => {
                dm.insert(k.clone(), v.clone());
            }
        }
    }
}

fn smp_list(cur: &mut Value, items: &[Value], key: &str) {
    if !cur.is_array() {
        *cur = Value::Array(vec![]);
    }
    let list = cur.as_array_mut().expect("array");
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *list = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return;
    }
    for item in items {
        // Service ports merge by `port`, container ports by `containerPort`.
        let key = if key == "containerPort" && item.get(key).is_none() {
            "port"
        } else {
            key
        };
        let Some(kv) = item.get(key) else {
            list.push(item.clone());
            continue;
        };
        let pos = list.iter().position(|e| e.get(key) == Some(kv));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                list.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => smp_map(&mut list[p], item, ""),
            None => {
                let mut fresh = Value::Object(Map::new());
                smp_map(&mut fresh, item, "");
                list.push(fresh);
            }
        }
    }
}

/// Fields that are never owned by a manager.
fn ignored(path: &[String]) -> bool {
    match path {
        [a] => a == "apiVersion" || a == "kind",
        [m, f, ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
        ),
        _ => false,
    }
}

/// A set of leaf field paths (maps are walked; lists and scalars are leaves).
pub type FieldSet = BTreeSet<Vec<String>>;

/// Leaf paths of a configuration.
pub fn leaves(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    walk(v, &mut vec![], &mut out);
    out
}

fn walk(v: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
    if ignored(path) {
        return;
    }
    match v {
        // An empty map claims nothing (so `metadata: {}` does not own all of metadata).
        Value::Object(m) if m.is_empty() => {}
        Value::Object(m) => {
            for (k, c) in m {
                path.push(k.clone());
                walk(c, path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// Leaf paths whose value differs between `old` and `new` (added, changed or removed).
pub fn changed(old: &Value, new: &Value) -> FieldSet {
    let (a, b) = (leaves(old), leaves(new));
    a.union(&b)
        .filter(|p| get(old, p) != get(new, p))
        .cloned()
        .collect()
}

/// Value at a path.
pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    Some(cur)
}

/// Remove the value at a path, pruning emptied parent maps.
pub fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *v;
    for p in parents {
        match cur.get_mut(p) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
    if !parents.is_empty()
        && get(v, parents)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        remove(v, parents);
    }
}

/// Deep-merge maps of `config` into `doc`; lists and scalars replace.
pub fn apply_merge(doc: &mut Value, config: &Value) {
    match (doc.as_object_mut(), config.as_object()) {
        (Some(d), Some(c)) => {
            for (k, v) in c {
                if v.is_object() && d.get(k).is_some_and(Value::is_object) {
                    apply_merge(d.get_mut(k).expect("present"), v);
                } else {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *doc = config.clone(),
    }
}

/// Encode a field set as `fieldsV1`.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for path in set {
        let mut cur = &mut root;
        for p in path {
            cur = cur
                .as_object_mut()
                .expect("object")
                .entry(format!("f:{p}"))
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

/// Decode `fieldsV1` into leaf paths.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn rec(v: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        let keys: Vec<&String> = m.keys().filter(|k| k.starts_with("f:")).collect();
        if keys.is_empty() && !path.is_empty() {
            out.insert(path.clone());
        }
        for k in keys {
            path.push(k[2..].to_string());
            rec(&m[k], path, out);
            path.pop();
        }
    }
    rec(v, &mut vec![], &mut out);
    out
}

/// Whether `a` is `b` or a prefix of it, or vice versa.
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut doc = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}, "metadata": {"finalizers": ["f1"]}});
        strategic_merge(
            &mut doc,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}, {"name": "a", "$patch": "delete"}]}, "metadata": {"finalizers": ["f2"]}}),
        );
        assert_eq!(
            doc["spec"]["containers"],
            json!([{"name": "b", "image": "z"}, {"name": "c", "image": "w"}])
        );
        assert_eq!(doc["metadata"]["finalizers"], json!(["f1", "f2"]));
    }

    #[test]
    fn fields_v1_round_trip() {
        let set = leaves(
            &json!({"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"r": 1, "l": [1]}}),
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        assert_eq!(set.len(), 3);
    }
}
