//! Discovery and health: `/version`, `/healthz|readyz|livez`, `/api`, `/apis`, the group and
//! resource lists, and the small `/openapi/v3` kubectl's validation needs.

use std::sync::Arc;

use http::{Method, Response};
use serde_json::{Value, json};

use super::{Body, ReqInfo, Shared, full, json_resp};
use crate::auth::{self, Attributes};
use crate::resources;
use crate::status::ApiError;

fn version_json() -> Value {
    json!({"major": "1", "minor": "37", "gitVersion": "v1.37.2-kube-sim", "gitCommit": "0000000000000000000000000000000000000000",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64"})
}

pub(super) fn non_resource(
    shared: &Arc<Shared>,
    r: &ReqInfo,
) -> Result<Option<Response<Body>>, ApiError> {
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
