//! Server-side printing: `meta.k8s.io/v1` Tables with a CRD's printer columns or the usual
//! columns of built-in types, rows carrying PartialObjectMetadata (or the object).

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Human age like kubectl's (`5s`, `3m2s`, `10m`, `5h`, `3d`).
pub fn human_age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let s = jiff::Timestamp::now().duration_since(t).as_secs().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn col(name: &str, typ: &str, format: &str, desc: &str, priority: i64) -> Value {
    json!({"name": name, "type": typ, "format": format, "description": desc, "priority": priority})
}

/// Simple JSONPath `.a.b` lookup (also `.a[0].b`).
fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path.trim_start_matches('.').split('.') {
        if part.is_empty() {
            continue;
        }
        let (name, idx) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = cur.get(name)?;
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let statuses = o["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    let mut status = o["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_string();
    if let Some(r) = o["status"]["reason"].as_str() {
        status = r.to_string();
    }
    for s in &statuses {
        if let Some(r) = s["state"]["waiting"]["reason"].as_str() {
            status = r.to_string();
        } else if let Some(r) = s["state"]["terminated"]["reason"].as_str() {
            status = r.to_string();
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        status = "Terminating".into();
    }
    let none = |v: &Value| {
        v.as_str()
            .map(String::from)
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(human_age(
            o["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
        )),
        json!(none(&o["status"]["podIP"])),
        json!(none(&o["spec"]["nodeName"])),
        json!("<none>"),
        json!("<none>"),
    ]
}

/// Computes the cells after the name for one object.
type CellsFn = dyn Fn(&Value) -> Vec<Value>;

/// Build a Table of `objects`.
pub fn build(rt: &ResourceType, objects: &[&Value], include: &str, list_meta: Value) -> Value {
    let age = |o: &Value| {
        json!(human_age(
            o["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
        ))
    };
    let mut columns = vec![col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )];
    let cells_of: Box<CellsFn> = if rt.custom && !rt.printer_columns.is_empty() {
        for c in &rt.printer_columns {
            columns.push(col(
                c["name"].as_str().unwrap_or_default(),
                c["type"].as_str().unwrap_or("string"),
                c["format"].as_str().unwrap_or_default(),
                c["description"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or(0),
            ));
        }
        let pcs = rt.printer_columns.clone();
        Box::new(move |o: &Value| {
            pcs.iter()
                .map(|c| {
                    let v = json_path(o, c["jsonPath"].as_str().unwrap_or_default())
                        .cloned()
                        .unwrap_or(Value::Null);
                    if c["type"] == "date" {
                        v.as_str()
                            .map(|s| json!(human_age(s)))
                            .unwrap_or(Value::Null)
                    } else {
                        v
                    }
                })
                .collect()
        })
    } else if rt.kind == "Pod" && rt.group.is_empty() {
        for (n, t, p) in [
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ] {
            columns.push(col(n, t, "", "", p));
        }
        Box::new(pod_cells)
    } else if rt.kind == "Namespace" {
        columns.push(col(
            "Status",
            "string",
            "",
            "The status of the namespace",
            0,
        ));
        columns.push(col("Age", "string", "", "", 0));
        Box::new(move |o: &Value| {
            vec![
                json!(o["status"]["phase"].as_str().unwrap_or("Active")),
                age(o),
            ]
        })
    } else if rt.kind == "Service" && rt.group.is_empty() {
        for (n, p) in [
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ] {
            columns.push(col(n, "string", "", "", p));
        }
        Box::new(move |o: &Value| {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            let selector: Vec<String> = o["spec"]["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            let none = |s: String| {
                if s.is_empty() {
                    "<none>".to_string()
                } else {
                    s
                }
            };
            vec![
                o["spec"]["type"].clone(),
                json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
                json!("<none>"),
                json!(none(ports.join(","))),
                age(o),
                json!(none(selector.join(","))),
            ]
        })
    } else if rt.kind == "ConfigMap" || rt.kind == "Secret" {
        columns.push(col("Data", "string", "", "", 0));
        columns.push(col("Age", "string", "", "", 0));
        Box::new(move |o: &Value| {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![json!(n), age(o)]
        })
    } else {
        columns.push(col("Age", "string", "", "", 0));
        Box::new(move |o: &Value| vec![age(o)])
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(cells_of(o));
            let object = match include {
                "None" => Value::Null,
                "Object" => (*o).clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows})
}
