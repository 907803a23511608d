//! `kube-sim --listen 127.0.0.1:0 --kubeconfig PATH [--auth]`: serve until killed.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Kubernetes API server emulator for tests and the local playground.
#[derive(Debug, Parser)]
#[command(name = "kube-sim", version)]
struct Args {
    /// Address of the plain-HTTP listener.
    #[arg(long, env = "KUBE_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address of the HTTPS listener.
    #[arg(long, env = "KUBE_SIM_HTTPS_LISTEN", default_value = "127.0.0.1:0")]
    https_listen: SocketAddr,
    /// Where to write the kubeconfig once serving.
    #[arg(long, env = "KUBE_SIM_KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Require bearer tokens and authorize with RBAC.
    #[arg(long, env = "KUBE_SIM_AUTH")]
    auth: bool,
    /// Where to write the CA certificate (PEM).
    #[arg(long, env = "KUBE_SIM_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Load state from this file at start (if present) and save it there on exit.
    #[arg(long, env = "KUBE_SIM_SNAPSHOT")]
    snapshot: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let Args {
        listen,
        https_listen,
        kubeconfig,
        auth,
        ca_file,
        snapshot,
    } = Args::parse();
    let mut builder = kube_sim::KubeSim::builder()
        .auth(auth)
        .listen(listen)
        .https_listen(https_listen);
    if let Some(p) = snapshot {
        builder = builder.snapshot(p);
    }
    let sim = builder.start().await?;
    sim.write_kubeconfig(&kubeconfig)?;
    if let Some(p) = ca_file {
        std::fs::write(&p, sim.ca_pem())?;
    }
    println!("{}", sim.url());
    println!("https {}", sim.https_url());
    if auth {
        println!("admin-token {}", sim.admin_token());
    }
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn args_are_consistent() {
        super::Args::command().debug_assert();
    }
}
