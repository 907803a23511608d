//! # WatchdogListener
//!
//! Stores pod watchdogs as annotations plus the rollup label `status.autocrane.io/health`, and
//! serves them over gRPC (`autocrane.watchdog.v1`); also the HTTP prober and the
//! `autocrane watchdog …` client commands.
//!
//! Data flow: `grpc` (tonic) validates (`validate`) and authorizes (`auth`, TokenReview +
//! SubjectAccessReview) a call, then hands it to the `writer`, which batches the operations on one
//! pod, plans one merge patch (`coalesce`, over the watchdog codec and rollup of
//! `autocrane_api::watchdog`) and applies it (`pods`); on pods with the readiness gate
//! `autocrane.io/healthy` it then brings that condition in step with the rollup (`readiness`,
//! one `pods/status` patch at most per window).
//! One Kubernetes watch of pods per process (`pods::feed_index`) feeds the pod `index`; the
//! writer (expiry timers, label repair), the `prober` (targets) and every WatchPodHealth stream
//! (`watch` holds each stream's state) subscribe to it. The `prober` posts through the same
//! writer. Sans-IO modules: `validate`, `coalesce`, `readiness`, `selector`, `index`, `watch`.

pub mod auth;
pub mod cli;
pub mod coalesce;
pub mod grpc;
pub mod index;
pub mod pods;
pub mod prober;
pub mod readiness;
pub mod selector;
pub mod validate;
pub mod watch;
pub mod writer;

use std::{net::SocketAddr, sync::Arc};

use autocrane_api::{
    duration::Duration, proto::watchdog_v1::watchdog_listener_server::WatchdogListenerServer,
};
use autocrane_runtime::{
    RuntimeError, admin::SharedRegistry, args::ServerArgs, auth::AuthArgs, process::Process,
    server::GrpcServer, shutdown::Shutdown,
};
use prometheus_client::metrics::counter::Counter;
use tracing::Instrument;

use crate::{auth::Authorizer, index::PodIndex, pods::Pods, prober::ProberArgs, writer::Writer};

/// The audience callers' tokens are reviewed for when `--token-audience` is not given (the
/// audience of the projected tokens the controller gives its pods).
pub const DEFAULT_AUDIENCE: &str = "autocrane-watchdog-listener";

/// Flags of `autocrane watchdog-listener`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Where and how the gRPC server listens.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Who may call: `--insecure-allow-anonymous`, `--token-audience` (default
    /// `autocrane-watchdog-listener`).
    #[command(flatten)]
    pub auth: AuthArgs,

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
    /// Per pod, at most one patch per this window (`50ms`, `1s`); posts arriving meanwhile are
    /// written together in the next patch.
    #[arg(
        long,
        env = "AUTOCRANE_COALESCE_WINDOW",
        value_name = "DURATION",
        default_value = "50ms"
    )]
    pub coalesce_window: Duration,

    /// The old spelling of --coalesce-window, in milliseconds (hidden; still accepted).
    #[arg(
        long,
        env = "AUTOCRANE_COALESCE_WINDOW_MS",
        value_name = "MS",
        hide = true,
        conflicts_with = "coalesce_window"
    )]
    pub coalesce_window_ms: Option<u64>,

    /// Follow (expiry timers, label repair, probe targets) only the pods of this namespace; all
    /// namespaces when unset.
    #[arg(long, env = "AUTOCRANE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
}

impl WriteArgs {
    /// Write-path flags with coalescing window `window` over all namespaces.
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            coalesce_window: window.into(),
            coalesce_window_ms: None,
            watch_namespace: None,
        }
    }

    /// The coalescing window, from whichever spelling was given.
    pub fn window(&self) -> std::time::Duration {
        let Self {
            coalesce_window,
            coalesce_window_ms,
            watch_namespace: _,
        } = self;
        coalesce_window_ms.map_or(coalesce_window.as_std(), std::time::Duration::from_millis)
    }
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
    /// The caller is unauthenticated or not allowed, or could not be reviewed (the message names
    /// the user, verb and resource).
    #[error(transparent)]
    Auth(RuntimeError),
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
    /// The pod index every consumer reads.
    pub index: PodIndex,
    /// Watch requests this listener sent to the API server
    /// (`autocrane_watchdog_kube_watches_started_total`).
    pub kube_watches: Counter,
    /// The server task.
    pub task: tokio::task::JoinHandle<Result<(), Error>>,
}

/// What every mode of the process shares: one pod watch feeding the index, and the writer
/// following it.
struct Components {
    client: ::kube::Client,
    pods: Pods,
    index: PodIndex,
    writer: Writer,
    kube_watches: Counter,
}

impl Components {
    fn start(args: &WriteArgs, client: ::kube::Client, shutdown: &Shutdown) -> Self {
        let kube_watches = Counter::default();
        let client = pods::count_watches(client, kube_watches.clone());
        let index = PodIndex::new(args.watch_namespace.clone());
        let pods = Pods::new(client.clone());
        let writer = Writer::new(pods.clone(), index.clone(), args.window());
        let span = tracing::info_span!(
            "pod_index",
            namespace = args.watch_namespace.as_deref().unwrap_or("*")
        );
        spawn_until(
            shutdown,
            pods::feed_index(client.clone(), index.clone()),
            span,
        );
        spawn_until(
            shutdown,
            writer.clone().follow(index.clone()),
            tracing::info_span!("writer_follow"),
        );
        Self {
            client,
            pods,
            index,
            writer,
            kube_watches,
        }
    }

    fn register_metrics(&self, registry: &SharedRegistry) {
        self.writer.register_metrics(registry);
        registry.lock().expect("metrics registry poisoned").register(
            "autocrane_watchdog_kube_watches_started",
            "Watch requests sent to the Kubernetes API server (one pod watch per process, plus its re-watches and re-lists)",
            self.kube_watches.clone(),
        );
    }
}

/// Spawns `task` in `span`, ending it at shutdown.
fn spawn_until(
    shutdown: &Shutdown,
    task: impl Future<Output = ()> + Send + 'static,
    span: tracing::Span,
) {
    let stop = shutdown.clone();
    tokio::spawn(
        async move {
            tokio::select! {
                () = task => {}
                () = stop.wait() => {}
            }
        }
        .instrument(span),
    );
}

fn grpc_server(
    args: &Args,
    client: ::kube::Client,
    shutdown: &Shutdown,
) -> Result<(GrpcServer, Components), Error> {
    let Args {
        server,
        auth,
        write,
        prober,
        probe,
    } = args;
    let components = Components::start(write, client, shutdown);
    if auth.insecure_allow_anonymous {
        tracing::warn!("Calls without a token are allowed everything (--insecure-allow-anonymous)");
    }
    if *prober {
        tokio::spawn(
            prober::run(
                components.client.clone(),
                components.index.clone(),
                components.writer.clone(),
                probe.clone(),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("prober")),
        );
    }
    let service = grpc::Service::new(grpc::State {
        pods: components.pods.clone(),
        index: components.index.clone(),
        writer: components.writer.clone(),
        auth: Authorizer::new(
            components.client.clone(),
            crate::auth::WATCHDOGS,
            auth.insecure_allow_anonymous,
            auth.audiences(DEFAULT_AUDIENCE),
        ),
        shutdown: shutdown.clone(),
    });
    let grpc = GrpcServer::new(server)
        .map_err(Error::Serve)?
        .add_service(WatchdogListenerServer::new(service));
    Ok((grpc, components))
}

/// Runs the component until the process shuts down.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let client = ::kube::Client::try_default()
        .await
        .map_err(Error::ConnectKube)?;
    let (grpc, components) = grpc_server(&args, client, &process.shutdown)?;
    components.register_metrics(&process.registry);
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
    let (grpc, components) = grpc_server(&args, client, &shutdown)?;
    let (addr, serving) = grpc.bind(shutdown).await.map_err(Error::Serve)?;
    let task = tokio::spawn(
        async move { serving.await.map_err(Error::Serve) }
            .instrument(tracing::info_span!("grpc_server", %addr)),
    );
    let Components {
        writer,
        index,
        kube_watches,
        ..
    } = components;
    Ok(Running {
        addr,
        writer,
        index,
        kube_watches,
        task,
    })
}

/// Runs the standalone prober (`autocrane watchdog-prober`) until the process shuts down.
pub async fn run_prober(args: ProberProcessArgs, process: Process) -> Result<(), Error> {
    let ProberProcessArgs { write, probe } = args;
    let client = ::kube::Client::try_default()
        .await
        .map_err(Error::ConnectKube)?;
    let components = Components::start(&write, client, &process.shutdown);
    components.register_metrics(&process.registry);
    prober::run(
        components.client.clone(),
        components.index.clone(),
        components.writer.clone(),
        probe,
        process.shutdown,
    )
    .instrument(tracing::info_span!("prober"))
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

    fn window(args: &[&str]) -> Result<std::time::Duration, clap::Error> {
        Listener::try_parse_from(std::iter::once("listener").chain(args.iter().copied()))
            .map(|l| l.args.write.window())
    }

    #[test]
    fn the_coalescing_window_takes_a_duration() {
        assert_eq!(window(&[]).unwrap(), std::time::Duration::from_millis(50));
        assert_eq!(
            window(&["--coalesce-window", "250ms"]).unwrap(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            window(&["--coalesce-window", "1s"]).unwrap(),
            std::time::Duration::from_secs(1)
        );
        assert!(
            window(&["--coalesce-window", "50"]).is_err(),
            "a unit is required"
        );
    }

    #[test]
    fn the_old_milliseconds_spelling_is_still_accepted_but_hidden() {
        assert_eq!(
            window(&["--coalesce-window-ms", "20"]).unwrap(),
            std::time::Duration::from_millis(20)
        );
        assert!(
            window(&["--coalesce-window", "1s", "--coalesce-window-ms", "20"]).is_err(),
            "both spellings at once are refused"
        );
        let help = Listener::command().render_long_help().to_string();
        for shown in [
            "--coalesce-window <DURATION>",
            "--probe-interval <DURATION>",
            "--probe-timeout <DURATION>",
        ] {
            assert!(help.contains(shown), "{shown} missing from:\n{help}");
        }
        for hidden in [
            "--coalesce-window-ms",
            "--probe-interval-secs",
            "--probe-timeout-ms",
        ] {
            assert!(!help.contains(hidden), "{hidden} shown in:\n{help}");
        }
    }
}
