//! What one AutoCrane process shares between its parts: the shutdown signal and the metrics
//! registry; and the standard way a server component serves (admin listener + gRPC server).

use crate::{
    RuntimeError,
    admin::{GrpcMetrics, SharedRegistry, registry, serve_admin},
    args::ServerArgs,
    server::GrpcServer,
    shutdown::Shutdown,
};

/// The process-wide context handed to every component.
#[derive(Clone, Debug)]
pub struct Process {
    /// Fires on SIGTERM/SIGINT (or a test's trigger).
    pub shutdown: Shutdown,
    /// Where components register their metrics; served on the admin listener.
    pub registry: SharedRegistry,
}

impl Process {
    /// A process context stopping on `shutdown`, with an empty registry.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            shutdown,
            registry: registry(),
        }
    }

    /// Serves the admin listener (unless `--admin-listen off`) and `server` on `args.listen` until
    /// shutdown, recording gRPC metrics into the registry.
    pub async fn serve(&self, args: &ServerArgs, server: GrpcServer) -> Result<(), RuntimeError> {
        let server = server.with_metrics(GrpcMetrics::register(&self.registry));
        if let Some(addr) = args.admin_listen.0 {
            let (_, admin) =
                serve_admin(addr, self.registry.clone(), self.shutdown.clone()).await?;
            tokio::spawn(admin);
        }
        server.serve(self.shutdown.clone()).await
    }
}
