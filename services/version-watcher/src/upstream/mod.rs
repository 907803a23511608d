//! I/O against upstreams: OCI registries, git remotes, HTTP resources, local directories.
//!
//! Every request to a remote goes through [`Upstreams::request`] (or, for git, takes a token from
//! the same per-host [`RateLimiter`]), which enforces the per-upstream request rate, a
//! per-request timeout, a response size limit, and turns `429`/`503` with `Retry-After` into a
//! per-host pause that every source on that host honours.

pub mod directory;
pub mod git;
pub mod http_source;
pub mod limiter;
pub mod oci;

use std::{sync::Arc, time::Duration};

use autocrane_runtime::{
    errors::error_chain,
    upstream::{git::GitSandbox, local_dirs::AllowedDirectories},
};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;

pub use limiter::RateLimiter;

use crate::{
    spec::{Spec, Upstream},
    state::Listing,
};

/// Largest response body read from an upstream.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A failed probe.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProbeError {
    /// What failed, for people (shown as the source's `last_error`).
    pub message: String,
    /// How long the upstream asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ProbeError {
    /// An error without a retry hint.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry_after: None,
        }
    }
}

type HttpsClient = Client<autocrane_runtime::upstream::http::UpstreamConnector, Full<Bytes>>;

/// Shared I/O context of all probers.
#[derive(Clone, Debug)]
pub struct Upstreams {
    client: HttpsClient,
    /// Per-host request rate limit and `Retry-After` pauses.
    pub limiter: Arc<RateLimiter>,
    /// Registry credentials and cached tokens.
    pub oci_auth: Arc<oci::Auth>,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Where directory sources may be read (checked again at every probe, so a source restored
    /// from state after the list changed cannot read outside it either).
    pub directories: AllowedDirectories,
    /// How `git` runs: remotes checked against the egress policy, environment isolated.
    pub git: GitSandbox,
}

/// A response: status, headers, body.
#[derive(Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Upstreams {
    /// A context with the system's root certificates, reaching only what `git`'s egress policy
    /// allows (the same policy guards HTTP and OCI requests).
    pub fn new(
        limiter: Arc<RateLimiter>,
        oci_auth: Arc<oci::Auth>,
        request_timeout: Duration,
        directories: AllowedDirectories,
        git: GitSandbox,
    ) -> Self {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(autocrane_runtime::upstream::http::connector(
                git.policy().clone(),
            ));
        Self {
            client,
            limiter,
            oci_auth,
            request_timeout,
            directories,
            git,
        }
    }

    /// Sends one request to `url`, rate-limited per host; `429`/`503` with `Retry-After` pause the
    /// host and come back as errors carrying the delay.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(http::HeaderName, String)],
    ) -> Result<Response, ProbeError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| ProbeError::new(format!("bad URL {url}: {e}")))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        self.limiter.acquire(&host).await;
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        builder = builder.header(http::header::USER_AGENT, "autocrane-version-watcher");
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| ProbeError::new(format!("building request to {url}: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ProbeError::new(format!("{method} {url}: {}", error_chain(&e))))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| ProbeError::new(format!("{method} {url}: reading body: {e}")))?
                .to_bytes();
            Ok::<_, ProbeError>(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let response = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| {
                ProbeError::new(format!(
                    "{method} {url}: timed out after {:?}",
                    self.request_timeout
                ))
            })??;
        if response.status == StatusCode::TOO_MANY_REQUESTS
            || response.status == StatusCode::SERVICE_UNAVAILABLE
        {
            let retry_after = retry_after(&response.headers);
            if let Some(delay) = retry_after {
                self.limiter.pause(&host, delay);
            }
            return Err(ProbeError {
                message: format!("{method} {url}: {}", response.status),
                retry_after,
            });
        }
        Ok(response)
    }
}

/// The `Retry-After` header as a delay (seconds or an HTTP date), capped at one hour.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(Duration::from_secs(3600)))
}

/// Probes `spec`'s upstream. `pick_digests` chooses, from the listed tag names, those worth a
/// digest request (OCI only).
pub async fn probe(
    ctx: &Upstreams,
    spec: &Spec,
    pick_digests: impl FnOnce(&[String]) -> Vec<String>,
    previous_validator: Option<String>,
) -> Result<Listing, ProbeError> {
    match &spec.upstream {
        Upstream::Oci {
            registry,
            repository,
            resolve_digests,
        } => oci::probe(ctx, registry, repository, *resolve_digests, pick_digests).await,
        Upstream::Git { url, git_ref, .. } => git::probe(ctx, url, git_ref).await,
        Upstream::Http { url, json_pointer } => {
            http_source::probe(ctx, url, json_pointer, previous_validator).await
        }
        Upstream::Directory { path, version_file } => {
            ctx.directories
                .check(std::path::Path::new(path))
                .map_err(ProbeError::new)?;
            directory::probe(path, version_file).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let delay = retry_after(&headers).unwrap();
        assert!(
            delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
            "{delay:?}"
        );
        headers.insert(http::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3600)));
    }
}
