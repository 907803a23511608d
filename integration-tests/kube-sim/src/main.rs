//! `kube-sim --listen 127.0.0.1:0 --kubeconfig PATH [--auth] [--kubelet]`: serve until killed.
//!
//! The one place the API server and the kubelet simulator meet: the kube-sim library does not
//! depend on kubelet-sim, this binary (feature `kubelet`) composes them and plugs the kubelet's
//! log files into `pods/log` through a closure.

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
    /// Also run the kubelet simulator: pods become local processes on node `sim-node`.
    #[arg(long, env = "KUBE_SIM_KUBELET")]
    kubelet: bool,
    /// With --kubelet: the program to run for images matching a pattern, as `PATTERN=PATH`
    /// (for example `autocrane:*=target/debug/autocrane`); repeatable.
    #[arg(long = "image", value_name = "PATTERN=PATH", value_parser = parse_image, requires = "kubelet")]
    images: Vec<(String, PathBuf)>,
}

fn parse_image(text: &str) -> Result<(String, PathBuf), String> {
    let (pattern, path) = text
        .split_once('=')
        .ok_or_else(|| format!("expected PATTERN=PATH, got {text:?}"))?;
    if pattern.is_empty() || path.is_empty() {
        return Err(format!("expected PATTERN=PATH, got {text:?}"));
    }
    Ok((pattern.to_string(), PathBuf::from(path)))
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
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
        kubelet,
        images,
    } = Args::parse();
    let mut builder = kube_sim::KubeSim::builder()
        .auth(auth)
        .listen(listen)
        .https_listen(https_listen)
        // With a kubelet, terminating pods go away when their containers have stopped, not after
        // the built-in 100 ms.
        .kubelet_delay((!kubelet).then_some(std::time::Duration::from_millis(100)));
    if let Some(p) = snapshot {
        builder = builder.snapshot(p);
    }
    let sim = builder.start().await?;
    sim.write_kubeconfig(&kubeconfig)?;
    if let Some(p) = ca_file {
        std::fs::write(&p, sim.ca_pem())?;
    }
    let node = if kubelet {
        let image_map: kubelet_sim::ImageMap = images.into_iter().collect();
        Some(
            kubelet_sim::Kubelet::builder(sim.client())
                .node_name("sim-node")
                .image_map(image_map)
                .api_server(sim.https_url(), sim.ca_pem())
                .start()
                .await?,
        )
    } else {
        None
    };
    if let Some(node) = &node {
        let reader = node.log_reader();
        sim.serve_pod_logs(
            move |ns: &str, pod: &str, container: &str, previous: bool| {
                reader.read(ns, pod, container, previous)
            },
        );
    }
    // The admin token is in the kubeconfig; it is not printed.
    println!("{}", sim.url());
    println!("https {}", sim.https_url());
    stop_signal().await?;
    if let Some(node) = node {
        node.shutdown().await;
    }
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
