//! HTTP front: request parsing, authentication, impersonation, authorization, fault injection
//! and routing. What each route does lives beside it: the listeners (`listen.rs`), discovery
//! and health (`discovery.rs`), list (`list.rs`), the write verbs and review APIs
//! (`write.rs`), the response helpers (`response.rs`); get is here, watch in
//! `crate::watching`.

mod discovery;
mod list;
pub(crate) mod listen;
mod response;
mod write;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::watch;
use tracing::Instrument;

use crate::auth::{self, Attributes, UserInfo};
use crate::faults::Faults;
use crate::resources::ResourceType;
use crate::status::{ApiError, Target};
use crate::store::Store;
use crate::table;

pub(crate) use list::selectors;
use response::err_resp;
pub(crate) use response::{full, json_resp, parse_body, with_version};

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
    /// Where `pods/log` reads containers' output (a kubelet simulator), once attached.
    pub pod_logs: Mutex<Option<Arc<dyn crate::pod_log::LogSource>>>,
}

/// Parse a query string (`application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte),
/// tolerating `?&` and empty pairs; a repeated key keeps its last value.
fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
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
        // Anonymous requests are allowed through authentication (`--anonymous-auth`, on by
        // default) as `system:anonymous`; RBAC then refuses them with 403.
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
    if let Some(r) = discovery::non_resource(shared, &info)? {
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
        let field_selector = q.get("fieldSelector").cloned().unwrap_or_default();
        let mut name = addr.name.clone().unwrap_or_default();
        if name.is_empty() && matches!(verb, "list" | "watch") {
            // The real RequestInfo takes the name of a list/watch from an exact
            // `metadata.name` field selector (a node may watch its own Node that way).
            name = crate::node_auth::field_equals(&field_selector, "metadata.name")
                .filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
                .unwrap_or_default();
        }
        let attrs = Attributes {
            verb: verb.into(),
            group: addr.rt.group.clone(),
            resource: addr.rt.plural.clone(),
            subresource: addr.sub.clone().unwrap_or_default(),
            // A namespace's own requests are in that namespace (RequestInfo).
            namespace: if addr.rt.group.is_empty() && addr.rt.plural == "namespaces" {
                name.clone()
            } else {
                addr.ns.clone()
            },
            name,
            path: None,
            field_selector,
        };
        let (allowed, reason) = auth::authorize(&st, &r.user, &attrs);
        if !allowed {
            let t = Target {
                group: &addr.rt.group,
                resource: &addr.rt.plural,
                name: &attrs.name,
            };
            let mut e = ApiError::forbidden(
                t,
                &r.user.username,
                verb,
                &attrs.subresource,
                &attrs.namespace,
            );
            if !reason.is_empty() {
                e.message = format!("{}: node: {reason}", e.message);
            }
            return Err(e);
        }
        (addr, verb)
    };
    let name = addr.name.clone().unwrap_or_default();
    if let Some(e) = shared.faults.error_for(
        verb,
        &addr.rt.plural,
        &name,
        &addr.rt.group,
        &r.user.username,
    ) {
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
                return Ok(match crate::pod_log::pod_log(&o, q, reader.as_deref())? {
                    Some(text) => full(200, "text/plain", text),
                    None => full(204, "text/plain", String::new()),
                });
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
        "list" => list::list(shared, rt, &addr.ns, q, table, &include),
        "watch" => crate::watching::watch_resp(
            shared,
            rt,
            &addr.ns,
            addr.name.as_deref(),
            q,
            table,
            &include,
        ),
        _ => write::write(shared, &r, &addr, verb),
    }
}
