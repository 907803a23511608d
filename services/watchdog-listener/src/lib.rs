//! # WatchdogListener
//!
//! Stores pod watchdogs as annotations plus the rollup label `status.autocrane.io/health`, and serves them over gRPC (`autocrane.watchdog.v1`).
//!
//! Status: the gRPC service is served with the shared runtime (health, reflection, limits, TLS,
//! tracing, graceful shutdown), but its RPCs are not implemented yet and answer UNIMPLEMENTED;
//! issue #5 implements them.

use autocrane_api::{
    proto::watchdog_v1::watchdog_listener_server::{WatchdogListener, WatchdogListenerServer},
    runtime::{RuntimeError, args::ServerArgs, process::Process, server::GrpcServer},
};

/// Flags of `autocrane watchdog-listener`.
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
    #[error("serving the WatchdogListener API")]
    Serve(#[source] RuntimeError),
}

/// The service; every RPC currently answers UNIMPLEMENTED (generated default stubs).
#[derive(Clone, Debug, Default)]
pub struct Service;

#[tonic::async_trait]
impl WatchdogListener for Service {}

/// Runs the component until the process shuts down.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let Args { server } = args;
    let grpc = GrpcServer::new(&server)
        .map_err(Error::Serve)?
        .add_service(WatchdogListenerServer::new(Service));
    process.serve(&server, grpc).await.map_err(Error::Serve)
}
