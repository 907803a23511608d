//! A gRPC server built only from the shared runtime and the generated contracts: it serves
//! `WatchdogListener`, `VersionWatcher` and `DataRepository` with the generated default handlers
//! (every RPC answers UNIMPLEMENTED), plus health and reflection. The contract and runtime tests run
//! real clients (grpcurl, Python, tonic) against it, independently of how far each component's
//! implementation has come.

use std::process::ExitCode;

use autocrane_api::proto::{
    data_v1::data_repository_server::{DataRepository, DataRepositoryServer},
    version_v1::version_watcher_server::{VersionWatcher, VersionWatcherServer},
    watchdog_v1::watchdog_listener_server::{WatchdogListener, WatchdogListenerServer},
};
use autocrane_runtime::{
    args::{ServerArgs, TelemetryArgs},
    errors,
    process::Process,
    server::GrpcServer,
    shutdown::Shutdown,
    telemetry,
};
use clap::Parser;

/// Serves the AutoCrane contracts with default (UNIMPLEMENTED) handlers.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[derive(Clone, Copy, Debug)]
struct Unimplemented;

#[tonic::async_trait]
impl WatchdogListener for Unimplemented {}
#[tonic::async_trait]
impl VersionWatcher for Unimplemented {}
#[tonic::async_trait]
impl DataRepository for Unimplemented {}

#[tokio::main]
async fn main() -> ExitCode {
    let Args { server, telemetry } = Args::parse();
    let guard = match telemetry::init("autocrane-runtime-server", &telemetry) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let process = Process::new(Shutdown::on_signals());
    let result = async {
        let grpc = GrpcServer::new(&server)?
            .add_service(WatchdogListenerServer::new(Unimplemented))
            .add_service(VersionWatcherServer::new(Unimplemented))
            .add_service(DataRepositoryServer::new(Unimplemented));
        process.serve(&server, grpc).await
    }
    .await;
    guard.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "{}",
                errors::StartupReport::new("autocrane-runtime-server", &err, &[])
            );
            ExitCode::FAILURE
        }
    }
}
