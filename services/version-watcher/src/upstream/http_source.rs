//! HTTP resources: the version is the response's validator (ETag, else Last-Modified) or a string
//! at a JSON pointer in the body. Probes are conditional (`If-None-Match`) so an unchanged
//! resource costs a 304.

use http::{Method, StatusCode, header};

use super::{ProbeError, Upstreams};
use crate::state::{Listing, Observed};

/// Probes `url`; `previous_validator` is the ETag of the last version seen, if any.
pub async fn probe(
    ctx: &Upstreams,
    url: &str,
    json_pointer: &str,
    previous_validator: Option<String>,
) -> Result<Listing, ProbeError> {
    let mut headers = vec![(header::ACCEPT, "application/json, */*".to_string())];
    if let Some(etag) = previous_validator.filter(|v| !v.is_empty()) {
        headers.push((header::IF_NONE_MATCH, etag));
    }
    let response = ctx.request(Method::GET, url, &headers).await?;
    if response.status == StatusCode::NOT_MODIFIED {
        return Ok(Listing::default());
    }
    if !response.status.is_success() {
        return Err(ProbeError::new(format!("GET {url}: {}", response.status)));
    }
    let header_text = |name: header::HeaderName| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header_text(header::ETAG).unwrap_or_default();
    let last_modified = header_text(header::LAST_MODIFIED);
    let published_at = last_modified
        .as_deref()
        .and_then(|t| httpdate::parse_http_date(t).ok());
    let name = if json_pointer.is_empty() {
        let bare = etag.trim_start_matches("W/").trim_matches('"').to_string();
        if !bare.is_empty() {
            bare
        } else {
            last_modified.ok_or_else(|| {
                ProbeError::new(format!("GET {url}: neither ETag nor Last-Modified"))
            })?
        }
    } else {
        let body: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|e| ProbeError::new(format!("GET {url}: body is not JSON: {e}")))?;
        match body.pointer(json_pointer) {
            Some(serde_json::Value::String(text)) if !text.trim().is_empty() => {
                text.trim().to_string()
            }
            Some(serde_json::Value::Number(number)) => number.to_string(),
            _ => {
                return Err(ProbeError::new(format!(
                    "GET {url}: no string or number at {json_pointer}"
                )));
            }
        }
    };
    Ok(Listing {
        items: vec![Observed {
            name,
            digest: etag,
            published_at,
        }],
        complete: false,
    })
}
