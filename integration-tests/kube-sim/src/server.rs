//! HTTP front: request parsing, authentication, authorization, fault injection, routing to
//! discovery, the read verbs (get, list, watch), the write verbs and the review APIs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::Instrument;

use crate::auth::{self, Attributes, UserInfo};
use crate::faults::Faults;
use crate::resources::{self, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Target};
use crate::store::Store;
use crate::table;
use crate::verbs::{self, Ctx, DeleteOpts};

/// Response body type.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// State shared by all connections.
#[derive(Debug)]
pub struct Shared {
    /// The object store.
    pub store: Arc<Mutex<Store>>,
    /// Whether bearer tokens are required.
    pub auth: bool,
    /// The administrator's token.
    pub admin_token: String,
    /// Fault injection.
    pub faults: Faults,
    /// Bumped to close every open watch.
    pub close_rx: watch::Receiver<u64>,
    /// `host:port` of the plain listener (for `/api`).
    pub server_addr: Mutex<String>,
    /// Delay after which the emulated kubelet removes a gracefully deleted pod (None: never).
    pub kubelet_delay: Option<Duration>,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Where `pods/log` reads containers' output (the kubelet simulator), once attached.
    pub pod_logs: Mutex<Option<kubelet_sim::LogReader>>,
}

pub(crate) fn full(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(
            Full::new(body.into())
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("response")
}

pub(crate) fn json_resp(code: u16, v: &Value, warnings: &[String]) -> Response<Body> {
    let mut r = full(
        code,
        "application/json",
        serde_json::to_vec(v).expect("json"),
    );
    for w in warnings {
        if let Ok(h) = http::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\"")))
        {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

fn err_resp(e: &ApiError) -> Response<Body> {
    let mut r = json_resp(e.code, &e.to_status(), &[]);
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, s.into());
    }
    r
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a query string, tolerating `?&` and empty pairs.
fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn version_json() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-kube-sim", "gitCommit": "0000000000000000000000000000000000000000",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64"})
}

/// Serve one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(err_resp(&ApiError::bad_request(
                "could not read the request body",
            )));
        }
    };
    let span = tracing::debug_span!("request", method = %parts.method, path = %parts.uri.path());
    let resp = route(&shared, parts, body)
        .instrument(span)
        .await
        .unwrap_or_else(|e| err_resp(&e));
    tracing::debug!(code = resp.status().as_u16(), "Responded");
    Ok(resp)
}

pub(crate) struct ReqInfo {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: HashMap<String, String>,
    pub(crate) accept: String,
    pub(crate) content_type: String,
    pub(crate) user_agent: String,
    pub(crate) user: UserInfo,
    pub(crate) body: Bytes,
}

async fn route(
    shared: &Arc<Shared>,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let query = parse_query(parts.uri.query());
    let h = |n: header::HeaderName| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    if path.starts_with("/_sim") {
        return crate::subresources::sim_admin(shared, &parts.method, &path, &query, &body);
    }
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let public = matches!(
        path.as_str(),
        "/version" | "/healthz" | "/readyz" | "/livez"
    );
    let authz = h(header::AUTHORIZATION);
    let user = match authz.strip_prefix("Bearer ").map(str::trim) {
        Some(token) => {
            let st = shared.store.lock().expect("store");
            match auth::resolve(&st, &shared.admin_token, token, &[]) {
                Ok((u, _)) => u,
                Err(_) if public => UserInfo::admin(),
                Err(_) => return Err(ApiError::unauthorized()),
            }
        }
        None if shared.auth && !public => return Err(ApiError::unauthorized()),
        None if shared.auth => UserInfo {
            username: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: Default::default(),
        },
        None => UserInfo::admin(),
    };
    let user = impersonate(shared, &parts.headers, user)?;
    let info = ReqInfo {
        method: parts.method.clone(),
        path,
        query,
        accept: h(header::ACCEPT),
        content_type: h(header::CONTENT_TYPE),
        user_agent: h(header::USER_AGENT),
        user,
        body,
    };
    if let Some(r) = non_resource(shared, &info)? {
        return Ok(r);
    }
    resource(shared, info).await
}

/// Apply `Impersonate-User` / `Impersonate-Group` headers; only administrators may impersonate.
fn impersonate(
    shared: &Arc<Shared>,
    headers: &http::HeaderMap,
    user: UserInfo,
) -> Result<UserInfo, ApiError> {
    let Some(target) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(user);
    };
    let st = shared.store.lock().expect("store");
    let attrs = Attributes {
        verb: "impersonate".into(),
        resource: "users".into(),
        name: target.into(),
        ..Default::default()
    };
    if !auth::authorize(&st, &user, &attrs).0 {
        return Err(ApiError::forbidden(
            Target {
                group: "",
                resource: "users",
                name: target,
            },
            &user.username,
            "impersonate",
            "",
            "",
        ));
    }
    let mut groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect();
    if let Some(rest) = target.strip_prefix("system:serviceaccount:")
        && let Some((ns, _)) = rest.split_once(':')
    {
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    groups.push("system:authenticated".into());
    Ok(UserInfo {
        username: target.into(),
        uid: String::new(),
        groups,
        extra: Default::default(),
    })
}

fn non_resource(shared: &Arc<Shared>, r: &ReqInfo) -> Result<Option<Response<Body>>, ApiError> {
    let p = r.path.as_str();
    let is_discovery = matches!(
        p,
        "/version" | "/healthz" | "/readyz" | "/livez" | "/api" | "/apis" | "/api/v1"
    ) || p.starts_with("/openapi")
        || (p.starts_with("/apis/") && p.split('/').count() <= 4);
    if !is_discovery {
        return Ok(None);
    }
    if r.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let st = shared.store.lock().expect("store");
    let (ok, _) = auth::authorize(
        &st,
        &r.user,
        &Attributes {
            verb: "get".into(),
            path: Some(p.to_string()),
            ..Default::default()
        },
    );
    if !ok {
        return Err(ApiError::forbidden_path(&r.user.username, "get", p));
    }
    let types = &st.types;
    let found = |v: Option<Value>| {
        v.map(|v| json_resp(200, &v, &[]))
            .ok_or_else(ApiError::no_route)
    };
    let resp = match p {
        "/version" => json_resp(200, &version_json(), &[]),
        "/healthz" | "/readyz" | "/livez" => full(200, "text/plain", "ok"),
        "/api" => json_resp(
            200,
            &resources::api_versions(&shared.server_addr.lock().expect("addr")),
            &[],
        ),
        "/apis" => json_resp(200, &resources::api_group_list(types), &[]),
        "/api/v1" => found(resources::api_resource_list(types, "", "v1"))?,
        "/openapi/v3" => json_resp(
            200,
            &resources::openapi_index(types, &format!("{:016X}", st.types_gen)),
            &[],
        ),
        "/openapi/v3/api/v1" => found(resources::openapi_gv(types, "", "v1"))?,
        p if p.starts_with("/openapi/v3/apis/") => {
            let rest: Vec<&str> = p["/openapi/v3/apis/".len()..].split('/').collect();
            match rest.as_slice() {
                [g, v] => found(resources::openapi_gv(types, g, v))?,
                _ => return Err(ApiError::no_route()),
            }
        }
        p if p.starts_with("/openapi") => return Err(ApiError::no_route()),
        p => {
            let rest: Vec<&str> = p["/apis/".len()..].split('/').collect();
            match rest.as_slice() {
                [g] => found(resources::api_group(types, g))?,
                [g, v] => found(resources::api_resource_list(types, g, v))?,
                _ => return Ok(None),
            }
        }
    };
    Ok(Some(resp))
}

/// A parsed resource request path.
pub(crate) struct Addr {
    pub(crate) rt: ResourceType,
    pub(crate) ns: String,
    pub(crate) name: Option<String>,
    pub(crate) sub: Option<String>,
}

fn parse_addr(st: &Store, path: &str) -> Result<Addr, ApiError> {
    let (group, version, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("", "v1", r)
    } else if let Some(r) = path.strip_prefix("/apis/") {
        let mut it = r.splitn(3, '/');
        let (g, v, rest) = (
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
        );
        (g, v, rest)
    } else {
        return Err(ApiError::no_route());
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (ns, segs) = if segs.first() == Some(&"namespaces")
        && segs.len() >= 3
        && !matches!(segs[2], "status" | "finalize")
    {
        (segs[1].to_string(), &segs[2..])
    } else {
        (String::new(), &segs[..])
    };
    let Some(plural) = segs.first() else {
        return Err(ApiError::no_route());
    };
    let rt = st
        .find_type(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if segs.len() > 3 || (!rt.namespaced && !ns.is_empty()) {
        return Err(ApiError::no_route());
    }
    let sub = segs.get(2).map(|s| s.to_string());
    if let Some(s) = &sub
        && !rt.subresources.contains(s)
    {
        return Err(ApiError::no_route());
    }
    Ok(Addr {
        rt,
        ns,
        name: segs.get(1).map(|s| s.to_string()),
        sub,
    })
}

fn verb_of(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method.as_str(), has_name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

pub(crate) fn with_version(rt: &ResourceType, o: &Value) -> Value {
    let mut o = o.clone();
    o["apiVersion"] = json!(rt.api_version());
    o
}

async fn resource(shared: &Arc<Shared>, r: ReqInfo) -> Result<Response<Body>, ApiError> {
    let q = &r.query;
    let watch = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    let (addr, verb) = {
        let st = shared.store.lock().expect("store");
        let addr = parse_addr(&st, &r.path)?;
        let verb = verb_of(&r.method, addr.name.is_some(), watch);
        if verb == "unknown" || (addr.rt.virtual_only && verb != "create") {
            return Err(ApiError::method_not_allowed());
        }
        let attrs = Attributes {
            verb: verb.into(),
            group: addr.rt.group.clone(),
            resource: addr.rt.plural.clone(),
            subresource: addr.sub.clone().unwrap_or_default(),
            namespace: addr.ns.clone(),
            name: addr.name.clone().unwrap_or_default(),
            path: None,
        };
        if !auth::authorize(&st, &r.user, &attrs).0 {
            let t = Target {
                group: &addr.rt.group,
                resource: &addr.rt.plural,
                name: &attrs.name,
            };
            return Err(ApiError::forbidden(
                t,
                &r.user.username,
                verb,
                &attrs.subresource,
                &addr.ns,
            ));
        }
        (addr, verb)
    };
    let name = addr.name.clone().unwrap_or_default();
    if let Some(e) = shared
        .faults
        .error_for(verb, &addr.rt.plural, &name, &addr.rt.group)
    {
        return Err(e);
    }
    let rt = &addr.rt;
    let table = table::wants_table(&r.accept);
    let include = q
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());
    match verb {
        "get" => {
            let st = shared.store.lock().expect("store");
            let o = st.get(&rt.store_key(), &addr.ns, &name).ok_or_else(|| {
                ApiError::not_found(Target {
                    group: &rt.group,
                    resource: &rt.plural,
                    name: &name,
                })
            })?;
            if addr.sub.as_deref() == Some("log") {
                drop(st);
                let reader = shared.pod_logs.lock().expect("pod_logs").clone();
                let source = reader.as_ref().map(|r| r as &dyn crate::pod_log::LogSource);
                let text = crate::pod_log::pod_log(&o, q, source)?;
                return Ok(full(200, "text/plain", text));
            }
            if addr.sub.as_deref() == Some("scale") {
                return Ok(json_resp(200, &crate::subresources::scale_of(rt, &o), &[]));
            }
            if table && addr.sub.is_none() {
                return Ok(json_resp(
                    200,
                    &table::build(
                        rt,
                        &[&o],
                        &include,
                        json!({"resourceVersion": o["metadata"]["resourceVersion"]}),
                    ),
                    &[],
                ));
            }
            Ok(json_resp(200, &with_version(rt, &o), &[]))
        }
        "list" => list(shared, rt, &addr.ns, q, table, &include),
        "watch" => crate::watching::watch_resp(
            shared,
            rt,
            &addr.ns,
            addr.name.as_deref(),
            q,
            table,
            &include,
        ),
        _ => write(shared, &r, &addr, verb),
    }
}

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

fn list(
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

pub(crate) fn parse_body(r: &ReqInfo) -> Result<Value, ApiError> {
    if r.body.is_empty() {
        return Ok(Value::Null);
    }
    if r.content_type.contains("protobuf")
        && let Some(v) = crate::protobuf::decode(&r.body)
    {
        return Ok(v);
    }
    if r.content_type.contains("protobuf") || r.content_type.contains("cbor") {
        return Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {})",
            r.content_type
        )));
    }
    if r.content_type.contains("yaml") {
        serde_yaml::from_slice(&r.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(&r.body).map_err(|e| {
            ApiError::bad_request(format!(
                "Object 'Kind' is missing in '{}': {e}",
                String::from_utf8_lossy(&r.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))
        })
    }
}

fn write(
    shared: &Arc<Shared>,
    r: &ReqInfo,
    addr: &Addr,
    verb: &str,
) -> Result<Response<Body>, ApiError> {
    let q = &r.query;
    let rt = &addr.rt;
    let explicit = q.get("fieldManager").filter(|m| !m.is_empty()).cloned();
    let manager = explicit.clone().unwrap_or_else(|| {
        r.user_agent
            .split('/')
            .next()
            .unwrap_or("unknown")
            .to_string()
    });
    let ctx = Ctx {
        rt,
        ns: addr.ns.clone(),
        manager,
        manager_explicit: explicit.is_some(),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        field_validation: q
            .get("fieldValidation")
            .cloned()
            .unwrap_or_else(|| "Warn".into()),
    };
    let name = addr.name.clone().unwrap_or_default();
    let sub = addr.sub.as_deref();
    let mut st = shared.store.lock().expect("store");
    let result = match (verb, sub) {
        ("create", _) if rt.virtual_only => {
            return crate::subresources::review(shared, &mut st, r, addr);
        }
        ("create", Some("token")) => crate::subresources::token_request(&mut st, r, addr),
        ("create", Some("binding")) => crate::subresources::pod_binding(&mut st, r, addr),
        ("create", Some("eviction")) => {
            let body = parse_body(r)?;
            let opts = delete_opts(&body["deleteOptions"], q);
            verbs::delete(&mut st, &ctx, &name, &opts).map(|_| verbs::Out { code: 201, object: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}), warnings: vec![] })
        }
        ("create", _) => verbs::create(&mut st, &ctx, parse_body(r)?),
        ("update" | "patch", Some("scale")) => {
            crate::subresources::scale_write(&mut st, &ctx, r, &name, verb)
        }
        ("update", _) => verbs::update(&mut st, &ctx, &name, sub, parse_body(r)?),
        ("patch", _) => verbs::patch(
            &mut st,
            &ctx,
            &name,
            sub,
            &r.content_type,
            &r.body,
            q.get("force").is_some_and(|f| f == "true"),
        ),
        ("delete", _) => {
            let body = parse_body(r)?;
            verbs::delete(&mut st, &ctx, &name, &delete_opts(&body, q))
        }
        ("deletecollection", _) => {
            let body = parse_body(r)?;
            let (ls, fs) = selectors(rt, q, None)?;
            let names: Vec<String> = st
                .objects
                .get(&rt.store_key())
                .map(|b| {
                    b.iter()
                        .filter(|((n, _), o)| {
                            (addr.ns.is_empty() || *n == addr.ns) && ls.matches(o) && fs.matches(o)
                        })
                        .map(|((_, n), _)| n.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut items = Vec::new();
            for n in names {
                if let Ok(o) = verbs::delete(&mut st, &ctx, &n, &delete_opts(&body, q)) {
                    items.push(o.object);
                }
            }
            Ok(verbs::Out {
                code: 200,
                object: verbs::list_object(rt, items, st.rv, None, None),
                warnings: vec![],
            })
        }
        _ => Err(ApiError::method_not_allowed()),
    };
    let pending = std::mem::take(&mut st.pending_pods);
    drop(st);
    if let Some(delay) = shared.kubelet_delay {
        for (ns, n, uid) in pending {
            let store = shared.store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut st = store.lock().expect("store");
                verbs::kubelet_remove(&mut st, &ns, &n, &uid);
            });
        }
    }
    let out = result?;
    Ok(json_resp(
        out.code,
        &with_version_if_obj(rt, out.object),
        &out.warnings,
    ))
}

fn with_version_if_obj(rt: &ResourceType, o: Value) -> Value {
    if o["kind"] == json!(rt.kind) && !rt.virtual_only {
        with_version(rt, &o)
    } else {
        o
    }
}

fn delete_opts(body: &Value, q: &HashMap<String, String>) -> DeleteOpts {
    DeleteOpts {
        propagation: body["propagationPolicy"]
            .as_str()
            .map(String::from)
            .or_else(|| q.get("propagationPolicy").cloned()),
        grace: body["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        uid: body["preconditions"]["uid"].as_str().map(String::from),
        rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
    }
}
