//! W3C trace context across gRPC hops.
//!
//! Servers open one span per RPC whose parent is the `traceparent` the caller sent
//! ([`server_span`], installed by [`crate::server::GrpcServer`]). Clients wrap their channel in
//! [`TracedChannel`], which opens a client span per call and injects its context into the request
//! headers, so the server span becomes its child in the trace.

use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector};
use tracing::{Instrument, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Splits `/package.Service/Method` into (service, method).
fn rpc_parts(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// The span of one incoming RPC, child of the caller's trace context if it sent one.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = rpc_parts(path);
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Without an OpenTelemetry layer installed there is nothing to attach to; that is fine.
    let _ = span.set_parent(parent);
    span
}

/// Injects the current span's context into outgoing headers (for hand-made HTTP calls).
pub fn inject_current(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// A gRPC channel (or any HTTP service) that opens a client span per call and propagates it,
/// and sets the caller's bearer token when it has one.
#[derive(Clone, Debug)]
pub struct TracedChannel<S> {
    inner: S,
    token: Option<crate::client::TokenFile>,
}

impl<S> TracedChannel<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner, token: None }
    }

    /// Sets `authorization: Bearer <token>` on every call that has none, from `token` read at the
    /// call (`None`: send no token).
    pub fn with_token(mut self, token: Option<crate::client::TokenFile>) -> Self {
        self.token = token;
        self
    }
}

impl<S, B> tower::Service<http::Request<B>> for TracedChannel<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let (service, method) = rpc_parts(&path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(request.headers_mut()));
        });
        if let Some(token) = &self.token
            && !request.headers().contains_key(http::header::AUTHORIZATION)
        {
            match token.header() {
                Ok(value) => {
                    request
                        .headers_mut()
                        .insert(http::header::AUTHORIZATION, value);
                }
                // The call goes out without a token, and the server's UNAUTHENTICATED says so;
                // the log says why (the path and the error, never the token).
                Err(err) => {
                    tracing::warn!(parent: &span, error = %err, "Sending the call without a token")
                }
            }
        }
        self.inner.call(request).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_path_splits_into_service_and_method() {
        assert_eq!(
            rpc_parts("/autocrane.watchdog.v1.WatchdogListener/PostWatchdog"),
            ("autocrane.watchdog.v1.WatchdogListener", "PostWatchdog")
        );
        assert_eq!(rpc_parts("/odd"), ("odd", ""));
    }

    #[test]
    fn traceparent_round_trips_through_headers() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::TraceContextExt;
        use opentelemetry_sdk::propagation::TraceContextPropagator;

        let propagator = TraceContextPropagator::new();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let context = propagator.extract(&HeaderExtractor(&headers));
        let span_context = context.span().span_context().clone();
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = http::HeaderMap::new();
        propagator.inject_context(&context, &mut HeaderInjector(&mut out));
        assert_eq!(
            out.get("traceparent").unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
