//! OCI registries (distribution API v2): tag lists with `Link` pagination, tags resolved to
//! manifest digests with `HEAD`, and anonymous, basic and bearer-token auth.
//!
//! Credentials come from a docker `config.json` (`--registry-credentials`); bearer tokens are
//! cached per registry and repository until a request gets 401 again.

use std::{collections::HashMap, path::Path, sync::Mutex};

use base64::Engine;
use http::{Method, StatusCode, header};

use super::{ProbeError, Response, Upstreams};
use crate::state::{Listing, Observed};

/// Tags requested per page (registries may return fewer, or ignore it).
const PAGE_SIZE: usize = 1000;
/// Pages followed per probe; 100 pages of 1,000 tags is far more than any sane repository.
const MAX_PAGES: usize = 100;
/// Digest requests per probe, newest tags first; older ones are resolved by later probes.
pub const DIGESTS_PER_PROBE: usize = 32;

/// The manifest media types a digest `HEAD` accepts: without the OCI ones, distribution 2.8
/// answers 404 for OCI images.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Registry credentials and the tokens obtained with them.
#[derive(Debug, Default)]
pub struct Auth {
    /// `host[:port]` → (user, password).
    credentials: HashMap<String, (String, String)>,
    /// (registry, repository) → `Authorization` header value.
    cache: Mutex<HashMap<(String, String), String>>,
}

/// A credentials file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("reading registry credentials from {path}: {message}")]
pub struct CredentialsError {
    path: String,
    message: String,
}

impl Auth {
    /// Anonymous access only.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Reads a docker `config.json` (`{"auths": {"host": {"auth": base64(user:password)} or
    /// {"username", "password"}}}`).
    pub fn from_docker_config(path: &Path) -> Result<Self, CredentialsError> {
        let fail = |message: String| CredentialsError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Self::parse_docker_config(&text).map_err(fail)
    }

    fn parse_docker_config(text: &[u8]) -> Result<Self, String> {
        let config: serde_json::Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let mut credentials = HashMap::new();
        let auths = config
            .get("auths")
            .and_then(|a| a.as_object())
            .ok_or("no \"auths\" object")?;
        for (key, entry) in auths {
            let host = key
                .split_once("://")
                .map_or(key.as_str(), |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let pair = if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .map_err(|e| format!("auths.{key}.auth: {e}"))?;
                let decoded =
                    String::from_utf8(decoded).map_err(|e| format!("auths.{key}.auth: {e}"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth: expected user:password"))?;
                (user.to_string(), password.to_string())
            } else {
                let field = |name: &str| {
                    entry
                        .get(name)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                (field("username"), field("password"))
            };
            credentials.insert(host, pair);
        }
        Ok(Self {
            credentials,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn basic(&self, registry: &str) -> Option<String> {
        let host = registry.split_once("://").map_or(registry, |(_, h)| h);
        self.credentials.get(host).map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        })
    }
}

/// Lists the tags of `repository`, resolves the chosen ones to digests.
pub async fn probe(
    ctx: &Upstreams,
    registry: &str,
    repository: &str,
    resolve_digests: bool,
    pick_digests: impl FnOnce(&[String]) -> Vec<String>,
) -> Result<Listing, ProbeError> {
    let tags = list_tags(ctx, registry, repository).await?;
    let mut digests = HashMap::new();
    if resolve_digests {
        for tag in pick_digests(&tags) {
            match resolve_digest(ctx, registry, repository, &tag).await? {
                Some(digest) => {
                    digests.insert(tag, digest);
                }
                None => continue,
            }
        }
    }
    let items = tags
        .into_iter()
        .map(|name| Observed {
            digest: digests.remove(&name).unwrap_or_default(),
            name,
            published_at: None,
        })
        .collect();
    Ok(Listing {
        items,
        complete: true,
    })
}

/// Every tag of the repository, following `Link: <…>; rel="next"` pages.
pub async fn list_tags(
    ctx: &Upstreams,
    registry: &str,
    repository: &str,
) -> Result<Vec<String>, ProbeError> {
    #[derive(serde::Deserialize)]
    struct TagList {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    let mut url = format!("{registry}/v2/{repository}/tags/list?n={PAGE_SIZE}");
    let mut tags = Vec::new();
    for _ in 0..MAX_PAGES {
        let response = send(
            ctx,
            Method::GET,
            &url,
            "application/json",
            registry,
            repository,
        )
        .await?;
        if !response.status.is_success() {
            return Err(status_error(&url, &response));
        }
        let page: TagList = serde_json::from_slice(&response.body)
            .map_err(|e| ProbeError::new(format!("GET {url}: malformed tag list: {e}")))?;
        tags.extend(page.tags.unwrap_or_default());
        match next_link(&response.headers) {
            Some(next) if next.starts_with('/') => url = format!("{registry}{next}"),
            Some(next) => url = next,
            None => return Ok(tags),
        }
    }
    Err(ProbeError::new(format!(
        "{registry}/v2/{repository}/tags/list: more than {MAX_PAGES} pages"
    )))
}

/// The manifest digest of `tag`; `None` when the tag vanished meanwhile.
pub async fn resolve_digest(
    ctx: &Upstreams,
    registry: &str,
    repository: &str,
    tag: &str,
) -> Result<Option<String>, ProbeError> {
    let url = format!("{registry}/v2/{repository}/manifests/{tag}");
    let response = send(
        ctx,
        Method::HEAD,
        &url,
        MANIFEST_ACCEPT,
        registry,
        repository,
    )
    .await?;
    if response.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status.is_success() {
        return Err(status_error(&url, &response));
    }
    Ok(response
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string))
}

fn status_error(url: &str, response: &Response) -> ProbeError {
    let detail = String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
        .trim()
        .to_string();
    ProbeError::new(
        format!("{url}: {} {detail}", response.status)
            .trim()
            .to_string(),
    )
}

/// Sends with the cached authorization; on 401 obtains one (basic or bearer) and retries once.
async fn send(
    ctx: &Upstreams,
    method: Method,
    url: &str,
    accept: &str,
    registry: &str,
    repository: &str,
) -> Result<Response, ProbeError> {
    let key = (registry.to_string(), repository.to_string());
    let cached = ctx
        .oci_auth
        .cache
        .lock()
        .expect("auth cache poisoned")
        .get(&key)
        .cloned();
    let mut headers = vec![(header::ACCEPT, accept.to_string())];
    if let Some(auth) = &cached {
        headers.push((header::AUTHORIZATION, auth.clone()));
    }
    let response = ctx.request(method.clone(), url, &headers).await?;
    if response.status != StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    let challenge = response
        .headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let authorization = authorize(ctx, &challenge, registry, repository).await?;
    ctx.oci_auth
        .cache
        .lock()
        .expect("auth cache poisoned")
        .insert(key, authorization.clone());
    headers.retain(|(name, _)| name != header::AUTHORIZATION);
    headers.push((header::AUTHORIZATION, authorization));
    let response = ctx.request(method, url, &headers).await?;
    if response.status == StatusCode::UNAUTHORIZED {
        return Err(ProbeError::new(format!(
            "{url}: 401 Unauthorized with the credentials given"
        )));
    }
    Ok(response)
}

async fn authorize(
    ctx: &Upstreams,
    challenge: &str,
    registry: &str,
    repository: &str,
) -> Result<String, ProbeError> {
    let basic = ctx.oci_auth.basic(registry);
    let (scheme, params) = parse_challenge(challenge);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => basic
            .ok_or_else(|| ProbeError::new(format!("{registry}: needs credentials (basic auth)"))),
        "bearer" => {
            let realm = params.get("realm").ok_or_else(|| {
                ProbeError::new(format!("{registry}: bearer challenge without realm"))
            })?;
            let mut url = format!(
                "{realm}?scope={}",
                percent(&format!("repository:{repository}:pull"))
            );
            if let Some(service) = params.get("service") {
                url.push_str(&format!("&service={}", percent(service)));
            }
            let mut headers = Vec::new();
            if let Some(basic) = basic {
                headers.push((header::AUTHORIZATION, basic));
            }
            let response = ctx.request(Method::GET, &url, &headers).await?;
            if !response.status.is_success() {
                return Err(status_error(&url, &response));
            }
            let body: serde_json::Value = serde_json::from_slice(&response.body)
                .map_err(|e| ProbeError::new(format!("{url}: malformed token response: {e}")))?;
            let token = body
                .get("token")
                .or_else(|| body.get("access_token"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| ProbeError::new(format!("{url}: no token in the response")))?;
            Ok(format!("Bearer {token}"))
        }
        _ => Err(ProbeError::new(format!(
            "{registry}: 401 with unsupported challenge {challenge:?}"
        ))),
    }
}

/// `Bearer realm="…",service="…"` → ("Bearer", {realm, service}).
fn parse_challenge(challenge: &str) -> (String, HashMap<String, String>) {
    let challenge = challenge.trim();
    let (scheme, rest) = challenge.split_once(' ').unwrap_or((challenge, ""));
    let pairs = regex::Regex::new(r#"([A-Za-z_]+)\s*=\s*"([^"]*)""#).expect("static regex");
    let params = pairs
        .captures_iter(rest)
        .map(|c| (c[1].to_ascii_lowercase(), c[2].to_string()))
        .collect();
    (scheme.to_string(), params)
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `rel="next"` target of a `Link` header.
fn next_link(headers: &http::HeaderMap) -> Option<String> {
    headers.get_all(header::LINK).iter().find_map(|value| {
        let value = value.to_str().ok()?;
        value.split(',').find_map(|link| {
            let (target, params) = link.split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            params
                .split(';')
                .any(|p| {
                    let p = p.trim().replace(' ', "");
                    p == "rel=\"next\"" || p == "rel=next"
                })
                .then(|| target.to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::LINK,
            r#"</v2/acme/app/tags/list?last=b&n=2>; rel="next""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("/v2/acme/app/tags/list?last=b&n=2")
        );
        headers.insert(
            header::LINK,
            r#"<https://x/a>; rel="prev", <https://x/b>; rel="next""#
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("https://x/b"));
        headers.insert(
            header::LINK,
            r#"<https://x/a>; rel="prev""#.parse().unwrap(),
        );
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
    }

    #[test]
    fn docker_config_credentials() {
        let auth = Auth::parse_docker_config(
            br#"{"auths": {"https://reg.example:5000/v1/": {"auth": "dXNlcjpwYXNz"}, "other": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        assert_eq!(
            auth.basic("https://reg.example:5000").as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert!(auth.basic("http://other").is_some());
        assert!(auth.basic("https://unknown").is_none());
        assert!(Auth::parse_docker_config(b"{}").is_err());
    }
}
