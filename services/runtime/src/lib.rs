//! # autocrane-runtime: the one way every AutoCrane server and client starts
//!
//! Kept out of the contracts crate (`autocrane-api`) so that a client in another Rust project can
//! depend on the generated code and CRD types without this crate's server and telemetry stack.
//!
//! - [`args`]: the clap flags every server shares (listen address, TLS, limits, admin port, logs);
//! - [`telemetry`]: log filter and format, OTLP trace export, W3C trace-context propagation;
//! - [`server`]: a gRPC server that always serves `grpc.health.v1` and reflection v1 + v1alpha,
//!   enforces message-size limits and deadlines, opens a span per RPC (child of the caller's trace)
//!   and shuts down gracefully;
//! - [`auth`]: who may call: bearer tokens resolved with a TokenReview, RBAC asked with a
//!   SubjectAccessReview (both cached), pod-bound identities, `--insecure-allow-anonymous`;
//! - [`client`]: channels to AutoCrane servers with TLS and trace-context injection;
//! - [`admin`]: the per-process admin HTTP listener (`/metrics`, `/healthz`);
//! - [`watch_client`]: holds a server-streaming `Watch…` call as a `tokio::sync::watch` receiver,
//!   reconnecting with jittered exponential backoff;
//! - [`shutdown`]: SIGTERM/SIGINT as a cloneable signal;
//! - [`errors`]: errors for people: a chain on one line with each cause once, and the report a
//!   process prints when a component cannot start (one line per cause, a hint on what to do);
//! - [`fs`]: durable atomic file writes;
//! - [`upstream`]: reaching upstream sources safely — the HTTPS connector that refuses cloud
//!   metadata addresses, and the `--allow-directory` list directory sources must stay under.

pub mod admin;
pub mod args;
pub mod auth;
pub mod client;
pub mod errors;
pub mod fs;
pub mod process;
pub mod server;
pub mod shutdown;
pub mod stream_shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod upstream;
pub mod watch_client;

/// Errors of the shared runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A TLS file could not be read or parsed.
    #[error("loading TLS material from {path} ({flag})")]
    LoadTls {
        /// The file.
        path: std::path::PathBuf,
        /// The flag that named it (`--tls-cert`, …), for the hint.
        flag: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration is incomplete or inconsistent.
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(String),
    /// The listener could not bind.
    #[error("binding {addr} ({flag})")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The flag that chose the address (`--listen`, `--admin-listen`, …), for the hint.
        flag: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving gRPC")]
    Serve(#[source] tonic::transport::Error),
    /// A client endpoint is malformed or could not be configured.
    #[error("configuring the connection to {endpoint}")]
    Endpoint {
        /// The endpoint URL.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// Telemetry could not be initialised.
    #[error("initialising telemetry: {0}")]
    Telemetry(String),
    /// Reflection could not be built from the descriptor set.
    #[error("building gRPC reflection")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// No Kubernetes client could be configured (in-cluster or `KUBECONFIG`) to review callers.
    #[error("connecting to Kubernetes to review callers' tokens")]
    ConnectKube(#[source] kube::Error),
    /// The caller presented no valid token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this (boxed: every error of every crate that wraps this one would
    /// otherwise carry its size).
    #[error("permission denied: {0}")]
    PermissionDenied(Box<auth::Denial>),
    /// The TokenReview call failed.
    #[error("reviewing the caller's token")]
    ReviewToken(#[source] kube::Error),
    /// The SubjectAccessReview call failed.
    #[error("reviewing the caller's permissions")]
    ReviewAccess(#[source] kube::Error),
}
