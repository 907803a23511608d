//! # VersionWatcher
//!
//! Discovers new versions of upstream sources (OCI registries, git, HTTP, directories) and streams them (`autocrane.version.v1`).
//!
//! Status: the gRPC service is served with the shared runtime (health, reflection, limits, TLS,
//! tracing, graceful shutdown), but its RPCs are not implemented yet and answer UNIMPLEMENTED;
//! issue #6 implements them.

use autocrane_api::{
    proto::version_v1::version_watcher_server::{VersionWatcher, VersionWatcherServer},
    runtime::{RuntimeError, args::ServerArgs, process::Process, server::GrpcServer},
};

/// Flags of `autocrane version-watcher`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Where and how the gRPC server listens.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Errors of the component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server could not start or failed.
    #[error("serving the VersionWatcher API")]
    Serve(#[source] RuntimeError),
}

/// The service; every RPC currently answers UNIMPLEMENTED (generated default stubs).
#[derive(Clone, Debug, Default)]
pub struct Service;

#[tonic::async_trait]
impl VersionWatcher for Service {}

/// Runs the component until the process shuts down.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let Args { server } = args;
    let grpc = GrpcServer::new(&server)
        .map_err(Error::Serve)?
        .add_service(VersionWatcherServer::new(Service));
    process.serve(&server, grpc).await.map_err(Error::Serve)
}
