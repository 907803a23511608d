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
//! queue on slow endpoints. With `--webhook-token-file` every request needs
//! `Authorization: Bearer <token>` (compared in constant time; the token is read from a file, as
//! a mounted Secret, so it never shows in the process list).

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

/// Reads the webhook token from `path` (`--webhook-token-file`): the file's text without
/// surrounding whitespace, which must not be empty (an empty token would be a typo that opens the
/// webhook to everyone).
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("--webhook-token-file {}: {err}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "--webhook-token-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// Whether an `Authorization` header carries `Bearer <token>`. The comparison takes the same time
/// wherever the first difference is, so response times do not reveal the token byte by byte.
fn bearer_matches(header: Option<&http::HeaderValue>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    header
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| bool::from(given.ct_eq(token.as_bytes())))
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
    if let Some(token) = token.as_deref()
        && !bearer_matches(request.headers().get(http::header::AUTHORIZATION), token)
    {
        return Ok(reply(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ));
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
    fn only_the_exact_bearer_token_is_accepted() {
        let header = |text: &str| http::HeaderValue::from_str(text).unwrap();
        assert!(bearer_matches(Some(&header("Bearer s3cret")), "s3cret"));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cretX",
            "bearer s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(!bearer_matches(Some(&header(wrong)), "s3cret"), "{wrong}");
        }
        assert!(!bearer_matches(None, "s3cret"));
    }

    #[test]
    fn the_token_file_is_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("vw-webhook-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_token_file(&file).unwrap(), "s3cret");
        std::fs::write(&file, " \n").unwrap();
        let empty = read_token_file(&file).unwrap_err();
        assert!(
            empty.contains("--webhook-token-file") && empty.contains("empty"),
            "{empty}"
        );
        let missing = read_token_file(&dir.join("absent")).unwrap_err();
        assert!(missing.contains("--webhook-token-file"), "{missing}");
        assert!(!missing.contains("s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
