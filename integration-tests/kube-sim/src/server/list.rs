//! `list`: label and field selectors, `limit` + `continue` (+`remainingItemCount`), and
//! server-side printing (`as=Table`). Items are collected under the store lock as cheap `Arc`
//! clones and serialized after releasing it.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::Response;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Body, Shared, full, json_resp, with_version};
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::table;

pub(crate) fn selectors(
    rt: &ResourceType,
    q: &HashMap<String, String>,
    name: Option<&str>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(
        q.get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let mut fs = q.get("fieldSelector").cloned().unwrap_or_default();
    if let Some(n) = name {
        fs = if fs.is_empty() {
            format!("metadata.name={n}")
        } else {
            format!("{fs},metadata.name={n}")
        };
    }
    Ok((ls, FieldSelector::parse(&fs, &rt.kind)?))
}

#[derive(Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

pub(super) fn list(
    shared: &Arc<Shared>,
    rt: &ResourceType,
    ns: &str,
    q: &HashMap<String, String>,
    table: bool,
    include: &str,
) -> Result<Response<Body>, ApiError> {
    let (ls, fs) = selectors(rt, q, None)?;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let start = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let raw = B64.decode(c).map_err(|_| {
                ApiError::bad_request("continue key is not valid: illegal base64 data")
            })?;
            let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| {
                ApiError::bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion",
                )
            })?;
            Some(t)
        }
        None => None,
    };
    // Collect under the lock (cheap Arc clones), serialize after releasing it.
    let (items, cont, remaining, rv) = {
        let st = shared.store.lock().expect("store");
        let empty = Default::default();
        let bucket = st.objects.get(&rt.store_key()).unwrap_or(&empty);
        let lower = match &start {
            Some(t) => Bound::Excluded((t.ns.clone(), t.name.clone())),
            None => Bound::Included((ns.to_string(), String::new())),
        };
        let rv = start.as_ref().map_or(st.rv, |t| t.rv);
        let mut items: Vec<Arc<Value>> = Vec::new();
        let mut cont = None;
        let mut remaining = None;
        let mut iter = bucket
            .range((lower, Bound::Unbounded))
            .take_while(|((n, _), _)| ns.is_empty() || n == ns)
            .filter(|(_, o)| ls.matches(o) && fs.matches(o));
        for ((n, name), o) in iter.by_ref() {
            items.push(o.clone());
            if limit.is_some_and(|l| items.len() >= l) {
                let rest = iter.count();
                if rest > 0 {
                    let tok = ContinueToken {
                        rv,
                        ns: n.clone(),
                        name: name.clone(),
                    };
                    cont = Some(B64.encode(serde_json::to_vec(&tok).expect("json")));
                    if ls.is_empty() {
                        remaining = Some(rest);
                    }
                }
                break;
            }
        }
        (items, cont, remaining, rv)
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = &cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    if table {
        let refs: Vec<&Value> = items.iter().map(|a| a.as_ref()).collect();
        return Ok(json_resp(200, &table::build(rt, &refs, include, meta), &[]));
    }
    let api_version = rt.api_version();
    let converted: Vec<Value>;
    let refs: Vec<&Value> = if items
        .iter()
        .all(|o| o["apiVersion"].as_str() == Some(api_version.as_str()))
    {
        items.iter().map(|a| a.as_ref()).collect()
    } else {
        converted = items.iter().map(|o| with_version(rt, o)).collect();
        converted.iter().collect()
    };
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ListOut<'a> {
        kind: String,
        api_version: &'a str,
        metadata: Value,
        items: Vec<&'a Value>,
    }
    let body = serde_json::to_vec(&ListOut {
        kind: format!("{}List", rt.kind),
        api_version: &api_version,
        metadata: meta,
        items: refs,
    })
    .expect("json");
    Ok(full(200, "application/json", body))
}
