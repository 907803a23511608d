//! # DataRepository
//!
//! Stores data versions content-addressed and streams them to the DataDeployers
//! (`autocrane.data.v1`).
//!
//! Data flow: `TrackSource` asks the VersionWatcher for the source's id → [`follow`] holds a
//! `WatchVersions` stream per tracked source → for each new current version [`origin`] fetches
//! the content (git, HTTP archive, directory) → [`stage`] checks every entry ([`autocrane_api::manifest`] holds the
//! pure rules) and writes blobs into a staging directory → [`store`] moves the blobs into the
//! content-addressed store and only then writes the manifest, applies retention, and announces
//! the change → [`grpc`] serves manifests, `WatchSynced` and `Fetch`, checking requests with
//! [`validate`] and turning every [`Error`] into a status in one place ([`grpc::status`]).

pub mod follow;
pub mod grpc;
pub mod metrics;
pub mod origin;
pub mod stage;
pub mod store;
pub mod validate;

use std::path::PathBuf;

use autocrane_api::proto::data_v1::data_repository_server::DataRepositoryServer;
use autocrane_runtime::{
    RuntimeError,
    args::{ClientTlsArgs, ServerArgs},
    auth::{AuthArgs, Authorizer},
    client,
    process::Process,
    server::GrpcServer,
    upstream::{egress::EgressArgs, git::GitSandbox, local_dirs::LocalDirectoryArgs},
};

/// Flags of `autocrane data-repository`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Where and how the gRPC server listens.
    #[command(flatten)]
    pub server: ServerArgs,

    /// The store directory (blobs, manifests, tracked sources, pins); it survives restarts.
    #[arg(
        long,
        env = "AUTOCRANE_STORE",
        default_value = "/var/lib/autocrane/data-repository"
    )]
    pub store: PathBuf,

    /// URL of the VersionWatcher (`http://host:port` or `https://host:port`).
    #[arg(
        long,
        env = "AUTOCRANE_VERSION_WATCHER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub version_watcher: String,

    /// TLS towards the VersionWatcher.
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,

    /// Largest version accepted (sum of its file sizes, as actually read), in bytes.
    #[arg(long, env = "AUTOCRANE_MAX_VERSION_BYTES", default_value_t = 4 << 30)]
    pub max_version_bytes: u64,

    /// How many newest versions of each source are kept, besides the pinned ones.
    #[arg(long, env = "AUTOCRANE_KEEP_VERSIONS", default_value_t = 5)]
    pub keep_versions: usize,

    /// Concurrent Fetch streams; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "AUTOCRANE_MAX_CONCURRENT_FETCHES", default_value_t = 64)]
    pub max_concurrent_fetches: usize,

    /// Bytes per second one Fetch stream may send; 0 means unlimited.
    #[arg(long, env = "AUTOCRANE_FETCH_BYTES_PER_SECOND", default_value_t = 0)]
    pub fetch_bytes_per_second: u64,

    /// Local directories that directory sources may copy from.
    #[command(flatten)]
    pub directories: LocalDirectoryArgs,

    /// Non-public hosts git and HTTP-archive sources may be fetched from
    /// (`--allow-upstream-host`).
    #[command(flatten)]
    pub egress: EgressArgs,

    /// Who may call: `--insecure-allow-anonymous`, `--token-audience` (default
    /// `autocrane-data-repository`). Callers need RBAC on `datasources.autocrane.io`; a pod-bound
    /// token may always `GetManifest` and `Fetch`.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// File holding the bearer token sent to the VersionWatcher (re-read on every call, as
    /// projected ServiceAccount tokens rotate); unset sends none.
    #[arg(long, env = "AUTOCRANE_VERSION_WATCHER_TOKEN_FILE")]
    pub version_watcher_token_file: Option<PathBuf>,
}

/// The audience callers' tokens are reviewed for when `--token-audience` is not given.
pub const DEFAULT_AUDIENCE: &str = "autocrane-data-repository";

/// Errors of the component: starting it, and answering a request ([`grpc::status`] maps each to
/// the status a caller sees).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server could not start or failed.
    #[error("serving the DataRepository API")]
    Serve(#[source] RuntimeError),
    /// The store could not be opened.
    #[error("opening the store")]
    OpenStore(#[source] store::StoreError),
    /// The private `HOME` of `git` could not be created.
    #[error("creating the git home directory")]
    GitHome(#[source] std::io::Error),
    /// The VersionWatcher URL or TLS settings are unusable.
    #[error("configuring the VersionWatcher client")]
    VersionWatcher(#[source] RuntimeError),
    /// No Kubernetes API to review callers with (and anonymous calls are not allowed).
    #[error("setting up caller authentication")]
    SetUpAuth(#[source] RuntimeError),
    /// The caller is unauthenticated or not allowed, or could not be reviewed (the message names
    /// the user, verb and resource).
    #[error(transparent)]
    Auth(RuntimeError),
    /// A request field is invalid.
    #[error("{0}")]
    Invalid(#[from] validate::Invalid),
    /// The request names a source the store does not know.
    #[error("source {id:?} is not known")]
    UnknownSource {
        /// The source id.
        id: String,
    },
    /// `WatchSynced` names a source that is not tracked.
    #[error("source_ids: {id:?} is not tracked")]
    NotTracked {
        /// The source id.
        id: String,
    },
    /// The source has no such version (never synced, or removed by retention).
    #[error("source {id:?} has no version {version:?}")]
    UnknownVersion {
        /// The source id.
        id: String,
        /// The version.
        version: String,
    },
    /// The version is being synced right now.
    #[error("version {version:?} of {id:?} is not synced yet")]
    NotSynced {
        /// The source id.
        id: String,
        /// The version.
        version: String,
    },
    /// Every Fetch slot is taken (`--max-concurrent-fetches`).
    #[error("too many concurrent fetches; retry later")]
    TooManyFetches,
    /// The server stops; a fetch is resumed elsewhere or later.
    #[error("the server is shutting down; resume the fetch")]
    ShuttingDown,
    /// A blob of the version went away during the fetch (retention removed the version).
    #[error("blob {digest} is gone ({source}); the version was removed")]
    BlobGone {
        /// The blob.
        digest: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A blob could not be read.
    #[error("reading blob {digest}: {source}")]
    ReadBlob {
        /// The blob.
        digest: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not record a change (tracking, pins).
    #[error(transparent)]
    WriteStore(store::StoreError),
    /// The VersionWatcher refused or failed `GetSource`.
    #[error("the VersionWatcher: {}", .0.message())]
    AskVersionWatcher(tonic::Status),
    /// The VersionWatcher's answer lacks a part.
    #[error("the VersionWatcher returned {0}")]
    VersionWatcherReply(&'static str),
}

/// Runs the component until the process shuts down.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let Args {
        server,
        store,
        version_watcher,
        client_tls,
        max_version_bytes,
        keep_versions,
        max_concurrent_fetches,
        fetch_bytes_per_second,
        directories,
        egress,
        auth,
        version_watcher_token_file,
    } = args;
    // First: a server that cannot check its callers must not start serving anything.
    let authorizer = Authorizer::from_args(&auth, grpc::DATASOURCES, DEFAULT_AUDIENCE)
        .await
        .map_err(Error::SetUpAuth)?;
    let directories = directories.allowed();
    let egress = egress.policy();
    tracing::info!(allowed = ?egress.patterns().iter().map(ToString::to_string).collect::<Vec<_>>(), "Upstream egress policy");
    let git = GitSandbox::new(egress.clone(), store.join("git-home")).map_err(Error::GitHome)?;
    let span = tracing::info_span!("open_store", path = %store.display());
    let store = tokio::task::spawn_blocking(move || {
        span.in_scope(|| store::Store::open(&store, keep_versions))
    })
    .await
    .expect("the store task does not panic")
    .map_err(Error::OpenStore)?;
    let channel = client::channel_with_token(
        &version_watcher,
        &client_tls,
        version_watcher_token_file.as_deref(),
    )
    .map_err(Error::VersionWatcher)?;
    let origins = origin::Origins::new(store.clone(), max_version_bytes, directories.clone(), git);
    let metrics = metrics::Metrics::register(&process.registry);
    let followers = follow::Followers::new(
        metrics.clone(),
        store.clone(),
        origins,
        channel,
        process.shutdown.clone(),
    );
    for (id, spec) in store.tracked() {
        followers.start(&id, spec);
    }
    let service = grpc::Service::new(
        store,
        followers,
        process.shutdown.clone(),
        grpc::FetchLimits {
            max_fetches: max_concurrent_fetches,
            bytes_per_second: fetch_bytes_per_second,
        },
        metrics,
        directories,
        egress,
        authorizer,
    );
    let grpc = GrpcServer::new(&server)
        .map_err(Error::Serve)?
        .add_service(DataRepositoryServer::new(service));
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
}
