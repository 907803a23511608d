//! A tiny in-cluster workload for the simulator's tests: builds a `kube::Client` the way every
//! AutoCrane service does (`Client::try_default()`, which falls back to the in-cluster config:
//! `KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted token and CA) and prints the names of the
//! pods in its namespace, one per line.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await?;
    let pods: Api<Pod> = Api::default_namespaced(client);
    for p in pods.list(&ListParams::default()).await? {
        println!("{}", p.metadata.name.unwrap_or_default());
    }
    Ok(())
}
