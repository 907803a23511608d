//! The gRPC server every AutoCrane component runs.
//!
//! [`GrpcServer`] always adds `grpc.health.v1` (so Kubernetes gRPC probes work) and server
//! reflection in both v1 and v1alpha (grpcurl 1.8 speaks only v1alpha), applies the message-size
//! limit to every service, a default deadline for unary calls, a per-connection concurrency limit
//! (calls beyond it get RESOURCE_EXHAUSTED),
//! optional TLS with optional client-certificate verification (certificate, key and client CA
//! re-read when their files change, see [`crate::tls`]), a span per RPC whose parent is the
//! caller's W3C trace context, per-method metrics, and graceful shutdown: on the signal the health
//! status turns NOT_SERVING, the listener stops accepting, open response streams end with OK (see
//! [`crate::stream_shutdown`]; clients resume with their token), and
//! in-flight calls get a bounded drain period.

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::Server,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::Service;

use crate::{
    RuntimeError,
    admin::GrpcMetrics,
    args::ServerArgs,
    shutdown::Shutdown,
    tls::{self, ServerTls},
    trace_context,
};

/// How long in-flight calls may run after the shutdown signal before the server stops anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A generated tonic server whose message-size limits can be set; implemented for the AutoCrane
/// services so that [`GrpcServer::add_service`] can apply the configured limit to each.
pub trait MessageLimits: Sized {
    /// Limits decoded and encoded messages to `bytes`.
    fn with_message_limit(self, bytes: usize) -> Self;
}

macro_rules! impl_message_limits {
    ($($server:ident<$trait:path>),* $(,)?) => {$(
        impl<T: $trait> MessageLimits for $server<T> {
            fn with_message_limit(self, bytes: usize) -> Self {
                self.max_decoding_message_size(bytes).max_encoding_message_size(bytes)
            }
        }
    )*};
}

use autocrane_api::proto::{
    data_v1::data_repository_server::{DataRepository, DataRepositoryServer},
    version_v1::version_watcher_server::{VersionWatcher, VersionWatcherServer},
    watchdog_v1::watchdog_listener_server::{WatchdogListener, WatchdogListenerServer},
};

impl_message_limits!(
    WatchdogListenerServer<WatchdogListener>,
    VersionWatcherServer<VersionWatcher>,
    DataRepositoryServer<DataRepository>,
);

/// A gRPC server under construction: add services, then [`GrpcServer::serve`].
#[derive(Debug)]
pub struct GrpcServer {
    args: ServerArgs,
    routes: RoutesBuilder,
    health: HealthReporter,
    service_names: Vec<&'static str>,
    metrics: Option<GrpcMetrics>,
    tls: Option<Arc<ServerTls>>,
}

impl GrpcServer {
    /// A server configured by `args`, serving health now and reflection (of the services added)
    /// once it serves. The TLS files are read here: a bad flag or file fails now, naming the flag.
    pub fn new(args: &ServerArgs) -> Result<Self, RuntimeError> {
        let tls = ServerTls::load(&args.tls)?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Ok(Self {
            args: args.clone(),
            routes,
            health,
            service_names: Vec::new(),
            metrics: None,
            tls,
        })
    }

    /// Records per-method request counts and latencies into `metrics`.
    pub fn with_metrics(mut self, metrics: GrpcMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Adds a service, with the configured message-size limit, reported SERVING by health checks
    /// (under its own name and the empty name) from the moment the server serves.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: MessageLimits
            + Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes
            .add_service(service.with_message_limit(self.args.max_message_bytes));
        self.service_names.push(S::NAME);
        self
    }

    /// Adds a service that has no message-size knob (for example a third-party one).
    pub fn add_unlimited_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.service_names.push(S::NAME);
        self
    }

    /// The health reporter, to mark services NOT_SERVING while a dependency is down.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Binds `args.listen` and serves until `shutdown` fires.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), RuntimeError> {
        let (_, serving) = self.bind(shutdown).await?;
        serving.await
    }

    /// Binds `args.listen` and returns the bound address (useful with port 0) and the future that
    /// serves until `shutdown` fires.
    pub async fn bind(
        self,
        shutdown: Shutdown,
    ) -> Result<
        (
            SocketAddr,
            impl std::future::Future<Output = Result<(), RuntimeError>>,
        ),
        RuntimeError,
    > {
        let (listener, local) = bind_listener(self.args.listen, "--listen").await?;
        Ok((local, self.serve_with_listener(listener, shutdown)))
    }

    /// Serves on an already bound listener until `shutdown` fires.
    pub async fn serve_with_listener(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), RuntimeError> {
        let Self {
            args,
            routes,
            health,
            service_names,
            metrics,
            tls,
        } = self;
        let local = listener
            .local_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default();
        let server = Server::builder()
            .timeout(Duration::from_secs(args.default_deadline_secs))
            .concurrency_limit_per_connection(args.max_concurrent_requests)
            // Past the limit a call is refused at once with RESOURCE_EXHAUSTED (the contract for
            // "overloaded") instead of queueing without bound; clients back off and retry.
            .load_shed(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .tcp_nodelay(true)
            .trace_fn(trace_context::server_span);
        let tls_on = tls.is_some();

        for name in &service_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;

        let mut routes = routes;
        let (reflection_v1, reflection_v1alpha) = reflection(&service_names)?;
        routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let routes: Routes = routes.routes();
        // One semaphore for every connection: tonic's per-connection limit alone lets many
        // clients together queue without bound. Pending readiness here reaches the per-connection
        // load shedding above it, so the call is refused with RESOURCE_EXHAUSTED at once.
        let global_limit = tower::limit::GlobalConcurrencyLimitLayer::new(
            args.max_concurrent_requests_total.max(1),
        );
        let router = server
            .layer(global_limit)
            .layer(crate::admin::GrpcMetricsLayer::new(metrics))
            .layer(crate::stream_shutdown::StreamShutdownLayer::new(
                shutdown.clone(),
            ))
            .add_routes(routes);
        tracing::info!(
            address = %local,
            tls = tls_on,
            client_auth = tls.as_ref().is_some_and(|tls| tls.verifies_clients()),
            services = ?service_names,
            "gRPC server listening"
        );

        let health_on_shutdown = health.clone();
        let stop_signal = shutdown.clone();
        let signal = async move {
            stop_signal.wait().await;
            for name in &service_names {
                health_on_shutdown
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            health_on_shutdown
                .set_service_status("", ServingStatus::NotServing)
                .await;
            tracing::info!("gRPC server draining");
        };
        // TLS is ours, not tonic's: the acceptor reads the certificate files' current contents at
        // every handshake (see `tls`), so a rotated certificate is served without a restart.
        let serving: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match tls {
                Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                    tls::incoming(listener, tls, shutdown.clone()),
                    signal,
                )),
                None => {
                    // `Server::tcp_nodelay` only applies when tonic binds the listener itself;
                    // with our own listener Nagle's algorithm would stay on and delay small
                    // responses by ~40 ms under concurrency (delayed ACKs), so set TCP_NODELAY on
                    // every accepted socket here.
                    let incoming = tokio_stream::StreamExt::map(
                        TcpListenerStream::new(listener),
                        |accepted| {
                            if let Ok(stream) = &accepted {
                                let _ = stream.set_nodelay(true);
                            }
                            accepted
                        },
                    );
                    Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                }
            };
        let drain_deadline = async {
            shutdown.wait().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        tokio::select! {
            result = serving => result.map_err(RuntimeError::Serve)?,
            () = drain_deadline => tracing::warn!(timeout = ?DRAIN_TIMEOUT, "Calls still open after the drain period; stopping anyway"),
        }
        tracing::info!("gRPC server stopped");
        Ok(())
    }
}

/// Binds a TCP listener on `addr`, which the flag `flag` chose (named in the error, so that the
/// start-up report can say which flag to change); returns it with its bound address.
pub async fn bind_listener(
    addr: SocketAddr,
    flag: &'static str,
) -> Result<(TcpListener, SocketAddr), RuntimeError> {
    let bound = match TcpListener::bind(addr).await {
        Ok(listener) => listener.local_addr().map(|local| (listener, local)),
        Err(err) => Err(err),
    };
    bound.map_err(|source| RuntimeError::Bind { addr, flag, source })
}

/// Reflection v1 and v1alpha advertising exactly the services this server serves (plus health and
/// reflection itself), so `grpcurl list` never offers a service that would answer UNIMPLEMENTED.
fn reflection(
    service_names: &[&'static str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    RuntimeError,
> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(autocrane_api::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in service_names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok((
        builder().build_v1().map_err(RuntimeError::Reflection)?,
        builder()
            .build_v1alpha()
            .map_err(RuntimeError::Reflection)?,
    ))
}
