//! # DataRepository
//!
//! Stores data versions content-addressed and streams them to the DataDeployers (`autocrane.data.v1`).
//!
//! Status: the gRPC service is served with the shared runtime (health, reflection, limits, TLS,
//! tracing, graceful shutdown), but its RPCs are not implemented yet and answer UNIMPLEMENTED;
//! issue #7 implements them.

use autocrane_api::{
    proto::data_v1::data_repository_server::{DataRepository, DataRepositoryServer},
    runtime::{RuntimeError, args::ServerArgs, process::Process, server::GrpcServer},
};

/// Flags of `autocrane data-repository`.
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
    #[error("serving the DataRepository API")]
    Serve(#[source] RuntimeError),
}

/// The service; every RPC currently answers UNIMPLEMENTED (generated default stubs).
#[derive(Clone, Debug, Default)]
pub struct Service;

#[tonic::async_trait]
impl DataRepository for Service {}

/// Runs the component until the process shuts down.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let Args { server } = args;
    let grpc = GrpcServer::new(&server)
        .map_err(Error::Serve)?
        .add_service(DataRepositoryServer::new(Service));
    process.serve(&server, grpc).await.map_err(Error::Serve)
}
