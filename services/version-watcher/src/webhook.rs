//! The webhook listener (HTTP/1.1, `--webhook-listen`): pushes from upstreams trigger an
//! immediate probe, so a new version reaches watchers in the time of one probe instead of one poll
//! interval.
//!
//! - `POST /notifications`: the distribution registry's notification envelope
//!   (`application/vnd.docker.distribution.events.v1+json`, configured under `notifications:
//!   endpoints:` in the registry's config.yml). Every `push` of a manifest probes the OCI sources of
//!   that repository.
//! - `POST /hooks/<source_id>`: probes one source (for git hosting webhooks, CI jobs, people).
//!
//! Both answer at once (202) and never wait for the probe: a registry blocks its notification
//! queue on slow endpoints. With `--webhook-token` every request needs
//! `Authorization: Bearer <token>`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use autocrane_runtime::{RuntimeError, server::bind_listener};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::hub::Hub;

/// Largest notification body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// The notification envelope (only the fields used).
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    events: Vec<NotificationEvent>,
}

#[derive(Debug, Deserialize)]
struct NotificationEvent {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Target,
    #[serde(default)]
    request: RequestInfo,
}

#[derive(Debug, Default, Deserialize)]
struct Target {
    #[serde(default, rename = "mediaType")]
    media_type: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
}

#[derive(Debug, Default, Deserialize)]
struct RequestInfo {
    #[serde(default)]
    host: String,
}

/// A manifest push: the registry host the pusher used, the repository, the tag (empty for a
/// push by digest).
pub type Push = (String, String, String);

/// The manifest pushes a notification body reports, sorted and without duplicates; blob pushes
/// are ignored, since the manifest push follows. Public for the fuzz target
/// (`fuzz/fuzz_targets/registry_notification.rs`): the body comes from any HTTP client.
pub fn pushed_repositories(body: &[u8]) -> Result<Vec<Push>, serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(body)?;
    let mut out: Vec<Push> = envelope
        .events
        .into_iter()
        .filter(|e| e.action == "push" && !e.target.repository.is_empty())
        .filter(|e| {
            !e.target.tag.is_empty()
                || e.target.media_type.contains("manifest")
                || e.target.media_type.contains("index")
        })
        .map(|e| {
            (
                e.request.host.to_ascii_lowercase(),
                e.target.repository,
                e.target.tag,
            )
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Binds `addr`; returns the bound address and the serving future (ends on shutdown).
pub async fn bind(
    addr: SocketAddr,
    hub: Arc<Hub>,
    token: Option<String>,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), RuntimeError> {
    let (listener, local) = bind_listener(addr, "--webhook-listen").await?;
    let shutdown = hub.shutdown().clone();
    let token = Arc::new(token);
    let serve = async move {
        tracing::info!(address = %local, "Webhook listener listening");
        loop {
            let accepted = tokio::select! {
                () = shutdown.wait() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "Accepting a webhook connection failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let hub = hub.clone();
            let token = token.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| handle(hub.clone(), token.clone(), request));
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    () = shutdown.wait() => {}
                }
            });
        }
        tracing::info!("Webhook listener stopped");
    };
    Ok((local, serve))
}

fn reply(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.into() + "\n")))
        .expect("static response parts")
}

async fn handle(
    hub: Arc<Hub>,
    token: Arc<Option<String>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(token) = token.as_deref() {
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token) {
            return Ok(reply(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            ));
        }
    }
    if request.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    let path = request.uri().path().to_string();
    if let Some(id) = path.strip_prefix("/hooks/") {
        return Ok(match hub.trigger(id) {
            Ok(_) => {
                tracing::debug!(source_id = id, "Probe requested by hook");
                reply(StatusCode::ACCEPTED, "probe requested")
            }
            Err(_) => reply(StatusCode::NOT_FOUND, format!("no source {id}")),
        });
    }
    if path != "/notifications" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "POST /notifications or /hooks/<source_id>",
        ));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("reading body: {error}"),
            ));
        }
    };
    match pushed_repositories(&body) {
        Ok(pushed) => {
            for (host, repository, tag) in pushed {
                let host = (!host.is_empty()).then_some(host.as_str());
                let tag = (!tag.is_empty()).then_some(tag.as_str());
                let triggered = hub.trigger_oci(host, &repository, tag);
                tracing::debug!(
                    repository,
                    tag,
                    sources = triggered.len(),
                    "Registry push notification"
                );
            }
            Ok(reply(StatusCode::ACCEPTED, "ok"))
        }
        Err(error) => Ok(reply(
            StatusCode::BAD_REQUEST,
            format!("not a notification envelope: {error}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_pushes_are_picked_from_the_envelope() {
        let body = br#"{"events":[
            {"id":"1","action":"push","target":{"mediaType":"application/octet-stream","repository":"acme/app","digest":"sha256:a"},"request":{"host":"127.0.0.1:5000"}},
            {"id":"2","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"acme/app","tag":"1.0.0"},"request":{"host":"127.0.0.1:5000"}},
            {"id":"3","action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"acme/other","tag":"1.0.0"}},
            {"id":"4","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"acme/app","tag":"1.0.1"},"request":{"host":"127.0.0.1:5000"}}
        ]}"#;
        let pushes = pushed_repositories(body).unwrap();
        let tags: Vec<_> = pushes
            .iter()
            .map(|(h, r, t)| format!("{h} {r} {t}"))
            .collect();
        assert_eq!(
            tags,
            [
                "127.0.0.1:5000 acme/app 1.0.0",
                "127.0.0.1:5000 acme/app 1.0.1"
            ]
        );
        assert!(pushed_repositories(b"nope").is_err());
    }
}
