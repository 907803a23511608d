//! The admin HTTP listener every process runs: `GET /metrics` (Prometheus text format) and
//! `GET /healthz` (200 while serving, 503 once shutdown began), plus the per-method gRPC metrics.
//!
//! It is plain HTTP/1.1 on its own port (default loopback) so that scrapers and kubelet probes need
//! no gRPC; it carries no secrets.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::{RuntimeError, shutdown::Shutdown};

/// The process's metrics registry, shared by whoever registers metrics and the admin listener.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// A new, empty shared registry.
pub fn registry() -> SharedRegistry {
    Arc::new(Mutex::new(Registry::default()))
}

/// Buckets for latencies from 0.5 ms to ~30 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// Per-method gRPC server metrics.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handling: Family<MethodLabels, Histogram>,
}

impl GrpcMetrics {
    /// Registers `grpc_server_started` and `grpc_server_handling_seconds` in `registry`.
    pub fn register(registry: &SharedRegistry) -> Self {
        let started = Family::<MethodLabels, Counter>::default();
        let handling = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let mut registry = registry.lock().expect("metrics registry poisoned");
        registry.register(
            "grpc_server_started",
            "gRPC calls started, by method",
            started.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a gRPC call's arrival to its response headers, by method",
            handling.clone(),
        );
        Self { started, handling }
    }
}

/// A tower layer recording [`GrpcMetrics`]; a no-op without metrics.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: Option<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`, if any.
    pub fn new(metrics: Option<GrpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] produces.
#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Option<GrpcMetrics>,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let labels = self.metrics.as_ref().map(|_| MethodLabels {
            method: method_label(request.uri().path()),
        });
        let future = self.inner.call(request);
        let (Some(metrics), Some(labels)) = (self.metrics.clone(), labels) else {
            return Box::pin(future);
        };
        metrics.started.get_or_create(&labels).inc();
        let started = Instant::now();
        Box::pin(async move {
            let result = future.await;
            metrics
                .handling
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// The method label of a request path: AutoCrane, health and reflection methods by name, anything
/// else folded into `other`, so that a scanner cannot create unbounded series.
fn method_label(path: &str) -> String {
    let known = path.starts_with("/autocrane.")
        || path.starts_with("/grpc.health.")
        || path.starts_with("/grpc.reflection.");
    let well_formed = path.len() < 128 && path.matches('/').count() == 2;
    if known && well_formed {
        path.trim_start_matches('/').to_string()
    } else {
        "other".to_string()
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` fires; returns the bound address
/// and the serving future.
pub async fn serve_admin(
    addr: SocketAddr,
    registry: SharedRegistry,
    shutdown: Shutdown,
) -> Result<(SocketAddr, impl Future<Output = ()>), RuntimeError> {
    let (listener, local) = crate::server::bind_listener(addr, "--admin-listen").await?;
    tracing::info!(address = %local, "Admin listener serving /metrics and /healthz");
    let serving = async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.wait() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let registry = registry.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = route(&request, &registry, &shutdown);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    Ok((local, serving))
}

fn route(
    request: &Request<Incoming>,
    registry: &SharedRegistry,
    shutdown: &Shutdown,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if request.method() != http::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            let encoded = {
                let registry = registry.lock().expect("metrics registry poisoned");
                prometheus_client::encoding::text::encode(&mut text, &registry)
            };
            match encoded {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(err) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics: {err}\n"),
                ),
            }
        }
        "/healthz" | "/readyz" => {
            if shutdown.is_triggered() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n".into(),
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/autocrane.watchdog.v1.WatchdogListener/PostWatchdog"),
            "autocrane.watchdog.v1.WatchdogListener/PostWatchdog"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/evil.Scanner/Probe1"), "other");
        assert_eq!(method_label("/autocrane.x/a/b/c"), "other");
    }
}
