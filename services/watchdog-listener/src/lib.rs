//! # WatchdogListener
//!
//! Stores pod watchdogs as annotations plus the rollup label `status.autocrane.io/health`, and
//! serves them over gRPC (`autocrane.watchdog.v1`); also the HTTP prober and the
//! `autocrane watchdog …` client commands.
//!
//! Data flow: `grpc` (tonic) validates (`validate`) and authorizes (`auth`, TokenReview +
//! SubjectAccessReview) a call, then hands it to the `writer`, which batches the operations on one
//! pod, plans one merge patch (`coalesce`, over `annotation` + `rollup`) and applies it (`kube`).
//! Watch streams are fed by Kubernetes watches (`watch` holds each stream's state). The `prober`
//! posts through the same writer. Sans-IO modules: `annotation`, `rollup`, `validate`, `coalesce`,
//! `watch`.

pub mod annotation;
pub mod auth;
pub mod cli;
pub mod coalesce;
pub mod grpc;
pub mod kube;
pub mod prober;
pub mod rollup;
pub mod validate;
pub mod watch;
pub mod writer;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use autocrane_api::{
    proto::watchdog_v1::watchdog_listener_server::WatchdogListenerServer,
    runtime::{
        RuntimeError, args::ServerArgs, process::Process, server::GrpcServer, shutdown::Shutdown,
    },
};

use crate::{auth::Authorizer, kube::Pods, prober::ProberArgs, writer::Writer};

/// Flags of `autocrane watchdog-listener`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Where and how the gRPC server listens.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Allow calls without a bearer token to do everything. For local play only.
    #[arg(long, env = "AUTOCRANE_INSECURE_ALLOW_ANONYMOUS")]
    pub insecure_allow_anonymous: bool,

    /// Shared flags of the write path.
    #[command(flatten)]
    pub write: WriteArgs,

    /// Also run the HTTP prober in this process (see `autocrane watchdog-prober`).
    #[arg(long, env = "AUTOCRANE_PROBER")]
    pub prober: bool,

    /// Prober settings (used with --prober).
    #[command(flatten)]
    pub probe: ProberArgs,
}

/// Flags of the write path, shared by the listener and the standalone prober.
#[derive(clap::Args, Clone, Debug)]
pub struct WriteArgs {
    /// Per pod, at most one patch per this many milliseconds; posts arriving meanwhile are
    /// written together in the next patch.
    #[arg(long, env = "AUTOCRANE_COALESCE_WINDOW_MS", default_value_t = 50)]
    pub coalesce_window_ms: u64,

    /// Follow (expiry timers, label repair, probe targets) only the pods of this namespace; all
    /// namespaces when unset.
    #[arg(long, env = "AUTOCRANE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
}

/// Flags of `autocrane watchdog-prober`.
#[derive(clap::Args, Clone, Debug)]
pub struct ProberProcessArgs {
    /// Shared flags of the write path.
    #[command(flatten)]
    pub write: WriteArgs,

    /// Prober settings.
    #[command(flatten)]
    pub probe: ProberArgs,
}

/// Errors of the component and its client commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server could not start or failed.
    #[error("serving the WatchdogListener API")]
    Serve(#[source] RuntimeError),
    /// No Kubernetes client could be configured (in-cluster or KUBECONFIG).
    #[error("configuring the Kubernetes client")]
    ConnectKube(#[source] ::kube::Error),
    /// A request field is invalid.
    #[error("{0}")]
    Invalid(#[from] validate::Invalid),
    /// The pod does not exist.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Reading a pod failed.
    #[error("reading pod {pod}")]
    ReadPod {
        /// `namespace/name`.
        pod: String,
        /// The cause (shared by every caller of one batch).
        #[source]
        source: Arc<::kube::Error>,
    },
    /// Patching a pod failed.
    #[error("writing the watchdogs of pod {pod}")]
    WritePod {
        /// `namespace/name`.
        pod: String,
        /// The cause (shared by every caller of one batch).
        #[source]
        source: Arc<::kube::Error>,
    },
    /// Listing pods failed.
    #[error("listing pods in namespace {namespace}")]
    ListPods {
        /// Namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: ::kube::Error,
    },
    /// The caller presented no valid token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error(
        "permission denied: may not {verb} watchdogs.autocrane.io in namespace {namespace:?}: {reason}"
    )]
    PermissionDenied {
        /// The RBAC verb.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// Why.
        reason: String,
    },
    /// The TokenReview call failed.
    #[error("reviewing the caller's token")]
    ReviewToken(#[source] ::kube::Error),
    /// The SubjectAccessReview call failed.
    #[error("reviewing the caller's permissions")]
    ReviewAccess(#[source] ::kube::Error),
    /// The listener is shutting down.
    #[error("the listener is shutting down")]
    ShuttingDown,
    /// A client command could not reach the server.
    #[error("connecting to the WatchdogListener at {server}")]
    ConnectServer {
        /// The URL.
        server: String,
        /// The cause.
        #[source]
        source: RuntimeError,
    },
    /// A client call failed.
    #[error("{rpc} failed: {code:?}: {message}")]
    Call {
        /// The RPC.
        rpc: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// A client flag is unusable.
    #[error("{flag}: {reason}")]
    Usage {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The token file could not be read.
    #[error("reading the token file {path}")]
    ReadToken {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A listener running in this process (tests, benchmarks, embedding).
#[derive(Debug)]
pub struct Running {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The write path, for its counters.
    pub writer: Writer,
    /// The server task.
    pub task: tokio::task::JoinHandle<Result<(), Error>>,
}

fn start_components(
    args: &WriteArgs,
    client: ::kube::Client,
    shutdown: &Shutdown,
) -> (Pods, Writer) {
    let pods = Pods::new(client);
    let writer = Writer::new(pods.clone(), Duration::from_millis(args.coalesce_window_ms));
    let follower = writer.clone().follow_pods(args.watch_namespace.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = follower => {}
            () = stop.wait() => {}
        }
    });
    (pods, writer)
}

fn grpc_server(
    args: &Args,
    client: ::kube::Client,
    shutdown: &Shutdown,
) -> Result<(GrpcServer, Writer), Error> {
    let Args {
        server,
        insecure_allow_anonymous,
        write,
        prober,
        probe,
    } = args;
    let (pods, writer) = start_components(write, client.clone(), shutdown);
    if *insecure_allow_anonymous {
        tracing::warn!("Calls without a token are allowed everything (--insecure-allow-anonymous)");
    }
    if *prober {
        tokio::spawn(prober::run(
            client.clone(),
            write.watch_namespace.clone(),
            writer.clone(),
            probe.clone(),
            shutdown.clone(),
        ));
    }
    let service = grpc::Service::new(grpc::State {
        pods,
        writer: writer.clone(),
        auth: Authorizer::new(client, *insecure_allow_anonymous),
        shutdown: shutdown.clone(),
    });
    let grpc = GrpcServer::new(server)
        .map_err(Error::Serve)?
        .add_service(WatchdogListenerServer::new(service));
    Ok((grpc, writer))
}

/// Runs the component until the process shuts down.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let client = ::kube::Client::try_default()
        .await
        .map_err(Error::ConnectKube)?;
    let (grpc, writer) = grpc_server(&args, client, &process.shutdown)?;
    writer.register_metrics(&process.registry);
    process
        .serve(&args.server, grpc)
        .await
        .map_err(Error::Serve)
}

/// Starts the listener with `client` on `args.server.listen` (port 0 allowed) and returns once it
/// is bound. No admin listener.
pub async fn start(
    args: Args,
    client: ::kube::Client,
    shutdown: Shutdown,
) -> Result<Running, Error> {
    let (grpc, writer) = grpc_server(&args, client, &shutdown)?;
    let (addr, serving) = grpc.bind(shutdown).await.map_err(Error::Serve)?;
    let task = tokio::spawn(async move { serving.await.map_err(Error::Serve) });
    Ok(Running { addr, writer, task })
}

/// Runs the standalone prober (`autocrane watchdog-prober`) until the process shuts down.
pub async fn run_prober(args: ProberProcessArgs, process: Process) -> Result<(), Error> {
    let ProberProcessArgs { write, probe } = args;
    let client = ::kube::Client::try_default()
        .await
        .map_err(Error::ConnectKube)?;
    let (_pods, writer) = start_components(&write, client.clone(), &process.shutdown);
    writer.register_metrics(&process.registry);
    prober::run(
        client,
        write.watch_namespace,
        writer,
        probe,
        process.shutdown,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Listener {
        #[command(flatten)]
        args: Args,
    }

    #[derive(Parser, Debug)]
    struct ProberProcess {
        #[command(flatten)]
        args: ProberProcessArgs,
    }

    #[test]
    fn flags_are_consistent() {
        Listener::command().debug_assert();
        ProberProcess::command().debug_assert();
    }
}
