//! Response and request-body helpers: JSON and plain bodies with the API server's headers,
//! `Status` errors (with `Retry-After`), `Warning` headers, and request bodies in JSON, YAML or
//! kubectl's protobuf.

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::{Body, ReqInfo};
use crate::resources::ResourceType;
use crate::status::ApiError;

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

pub(super) fn err_resp(e: &ApiError) -> Response<Body> {
    let mut r = json_resp(e.code, &e.to_status(), &[]);
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, s.into());
    }
    r
}

pub(crate) fn with_version(rt: &ResourceType, o: &Value) -> Value {
    let mut o = o.clone();
    o["apiVersion"] = json!(rt.api_version());
    o
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
        serde_saphyr::from_slice(&r.body)
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
