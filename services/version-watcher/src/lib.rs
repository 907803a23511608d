//! # VersionWatcher
//!
//! Discovers new versions of upstream sources (OCI registries, git, HTTP, directories) and streams
//! them (`autocrane.version.v1`).
//!
//! Data flow: a client sends a source spec → [`spec`] validates and canonicalises it into a stable
//! id → [`hub`] starts one prober per source (shared by every watcher of it) → the prober asks
//! [`upstream`] for the versions, on its poll interval, on a `Probe` call, or when [`webhook`]
//! receives a push → [`state`] turns the listing into events, choosing the current version with
//! [`policy`] and skipping quarantined ones → [`commit`] persists it with the other changes of the
//! moment (one journal write and fsync per group, [`store`]) → the change is broadcast to the
//! `WatchVersions` streams of [`grpc`].
//!
//! The sans-IO core is `spec`, `policy`, `state` and `schedule`; `upstream`, `store`, `commit`
//! and `webhook` do I/O; `grpc` is the only tonic module; this file wires them.

pub mod commit;
pub mod grpc;
pub mod hub;
pub mod metrics;
pub mod policy;
pub mod schedule;
pub mod spec;
pub mod state;
pub mod store;
pub mod upstream;
pub mod webhook;

use std::{path::PathBuf, sync::Arc, time::Duration};

use autocrane_api::proto::version_v1::version_watcher_server::VersionWatcherServer;
use autocrane_runtime::{
    RuntimeError,
    args::{OptionalAddr, ServerArgs, parse_optional_addr},
    auth::{AuthArgs, Authorizer},
    process::Process,
    server::GrpcServer,
    upstream::{egress::EgressArgs, git::GitSandbox, local_dirs::LocalDirectoryArgs},
};

/// Flags of `autocrane version-watcher`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Where and how the gRPC server listens.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Directory for persisted state: sources, seen versions, quarantines, resume positions.
    #[arg(
        long,
        env = "AUTOCRANE_STATE_DIR",
        default_value = "/var/lib/autocrane/version-watcher"
    )]
    pub state_dir: PathBuf,

    /// Address of the webhook listener (registry notifications at POST /notifications, and
    /// POST /hooks/<source_id>); `off` disables it.
    #[arg(long, env = "AUTOCRANE_WEBHOOK_LISTEN", default_value = "127.0.0.1:7071", value_parser = parse_optional_addr)]
    pub webhook_listen: OptionalAddr,

    /// File holding the bearer token the webhook requires (`Authorization: Bearer <token>`), for
    /// example a mounted Secret; unset accepts any caller (a webhook only brings a probe forward,
    /// it changes no state). A file, not a flag value: a token on the command line would show in
    /// every process list.
    #[arg(long, env = "AUTOCRANE_WEBHOOK_TOKEN_FILE")]
    pub webhook_token_file: Option<PathBuf>,

    /// Registry credentials, a docker config.json (`{"auths": {"host": {"auth": "…"}}}`).
    #[arg(long, env = "AUTOCRANE_REGISTRY_CREDENTIALS")]
    pub registry_credentials: Option<PathBuf>,

    /// Requests per second to one upstream host (registry, git server, HTTP server). The default
    /// fits 1,000 sources on one host polled every 10 s: an OCI probe sends 2 requests (tag list,
    /// manifest HEAD), 1,000 × 2 / 10 s = 200/s, plus 25% headroom.
    #[arg(long, env = "AUTOCRANE_UPSTREAM_RATE", default_value_t = upstream::limiter::DEFAULT_RATE)]
    pub upstream_rate: f64,

    /// Requests to one upstream host allowed in a burst above the rate. The default lets the
    /// first probes of 1,000 sources added (or restored) together go out at once: 1,000 × 2.
    #[arg(long, env = "AUTOCRANE_UPSTREAM_BURST", default_value_t = upstream::limiter::DEFAULT_BURST)]
    pub upstream_burst: u32,

    /// Timeout of one upstream request, in seconds.
    #[arg(long, env = "AUTOCRANE_UPSTREAM_TIMEOUT_SECS", default_value_t = 10)]
    pub upstream_timeout_secs: u64,

    /// Timeout of one whole probe (all its requests), in seconds.
    #[arg(long, env = "AUTOCRANE_PROBE_TIMEOUT_SECS", default_value_t = 60)]
    pub probe_timeout_secs: u64,

    /// Local directories that directory sources may list.
    #[command(flatten)]
    pub directories: LocalDirectoryArgs,

    /// Non-public hosts OCI, HTTP and git sources may reach (`--allow-upstream-host`).
    #[command(flatten)]
    pub egress: EgressArgs,

    /// Who may call: `--insecure-allow-anonymous`, `--token-audience` (default
    /// `autocrane-version-watcher`). Callers need RBAC on `versions.autocrane.io`.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The audience callers' tokens are reviewed for when `--token-audience` is not given.
pub const DEFAULT_AUDIENCE: &str = "autocrane-version-watcher";

/// Errors of the component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server could not start or failed.
    #[error("serving the VersionWatcher API")]
    Serve(#[source] RuntimeError),
    /// The state directory could not be opened or read.
    #[error("opening the state directory")]
    OpenState(#[source] store::StoreError),
    /// The webhook token file could not be read, or is empty.
    #[error("{0}")]
    WebhookToken(String),
    /// The registry credentials could not be read.
    #[error("loading registry credentials")]
    LoadCredentials(#[source] upstream::oci::CredentialsError),
    /// The webhook listener could not bind.
    #[error("starting the webhook listener")]
    BindWebhook(#[source] RuntimeError),
    /// No Kubernetes API to review callers with (and anonymous calls are not allowed).
    #[error("setting up caller authentication")]
    Auth(#[source] RuntimeError),
    /// The private `HOME` of `git` could not be created.
    #[error("creating the git home directory")]
    GitHome(#[source] std::io::Error),
}

/// Runs the component until the process shuts down.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let Args {
        server,
        state_dir,
        webhook_listen,
        webhook_token_file,
        registry_credentials,
        upstream_rate,
        upstream_burst,
        upstream_timeout_secs,
        probe_timeout_secs,
        directories,
        egress,
        auth: auth_args,
    } = args;
    // First: a server that cannot check its callers must not start serving anything.
    let authorizer = Authorizer::from_args(&auth_args, grpc::VERSIONS, DEFAULT_AUDIENCE)
        .await
        .map_err(Error::Auth)?;
    let directories = directories.allowed();
    let egress = egress.policy();
    tracing::info!(allowed = ?egress.patterns().iter().map(ToString::to_string).collect::<Vec<_>>(), "Upstream egress policy");
    let git =
        GitSandbox::new(egress.clone(), state_dir.join("git-home")).map_err(Error::GitHome)?;
    let auth = match &registry_credentials {
        Some(path) => {
            upstream::oci::Auth::from_docker_config(path).map_err(Error::LoadCredentials)?
        }
        None => upstream::oci::Auth::anonymous(),
    };
    let limiter = Arc::new(upstream::RateLimiter::new(upstream_rate, upstream_burst));
    process
        .registry
        .lock()
        .expect("metrics registry poisoned")
        .register(
            "version_watcher_upstream_throttled",
            "Upstream requests that waited for the per-host rate limit or a Retry-After pause",
            limiter.throttled(),
        );
    let upstreams = upstream::Upstreams::new(
        limiter,
        Arc::new(auth),
        Duration::from_secs(upstream_timeout_secs.max(1)),
        directories.clone(),
        git,
    );
    let store = store::Store::open(&state_dir).map_err(Error::OpenState)?;
    let metrics = metrics::Metrics::register(&process.registry);
    let hub = hub::Hub::start(
        store,
        upstreams,
        process.shutdown.clone(),
        metrics,
        hub::HubConfig {
            probe_timeout: Duration::from_secs(probe_timeout_secs.max(1)),
        },
    )
    .map_err(Error::OpenState)?;
    if let OptionalAddr(Some(addr)) = webhook_listen {
        let webhook_token = webhook_token_file
            .as_deref()
            .map(webhook::read_token_file)
            .transpose()
            .map_err(Error::WebhookToken)?;
        let (_, serve) = webhook::bind(addr, hub.clone(), webhook_token)
            .await
            .map_err(Error::BindWebhook)?;
        tokio::spawn(serve);
    }
    let grpc =
        GrpcServer::new(&server)
            .map_err(Error::Serve)?
            .add_service(VersionWatcherServer::new(grpc::Service::new(
                hub,
                directories,
                egress,
                authorizer,
            )));
    process.serve(&server, grpc).await.map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_upstream_limits_fit_a_thousand_sources_every_ten_seconds() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        // The module docs of `upstream::limiter` give the arithmetic; its tests simulate it.
        let (sources, requests_per_probe, interval_secs) = (1000.0, 2.0, 10.0);
        assert!(cli.args.upstream_rate >= sources * requests_per_probe / interval_secs);
        assert!(f64::from(cli.args.upstream_burst) >= sources * requests_per_probe);
    }

    #[test]
    fn a_bad_upstream_pattern_is_a_usage_error_naming_the_flag() {
        let cli = Cli::try_parse_from([
            "x",
            "--allow-upstream-host",
            "registry.internal,10.0.0.0/8",
            "--allow-upstream-host",
            "*.corp.example",
        ])
        .unwrap();
        let patterns: Vec<String> = cli
            .args
            .egress
            .allow_upstream_hosts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            patterns,
            ["registry.internal", "10.0.0.0/8", "*.corp.example"]
        );
        for bad in ["10.0.0.1/8", "http://registry", "2130706433", ""] {
            let err = Cli::try_parse_from(["x", "--allow-upstream-host", bad]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains("--allow-upstream-host"), "{err}");
        }
    }

    #[test]
    fn webhook_can_be_turned_off() {
        let cli =
            Cli::try_parse_from(["x", "--webhook-listen", "off", "--state-dir", "/tmp/x"]).unwrap();
        assert_eq!(cli.args.webhook_listen, OptionalAddr(None));
    }
}
