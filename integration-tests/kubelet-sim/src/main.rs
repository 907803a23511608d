//! `kubelet-sim --kubeconfig PATH --node-name NAME [--image PATTERN=PATH]… [--state-dir DIR]`:
//! the kubelet simulator on its own, against any API server (kube-sim, or a real kube-apiserver
//! with a node identity `system:node:NAME`). It registers its Node and Lease, runs the pods bound
//! to the node as local processes, and on SIGTERM/SIGINT kills them and exits; the pods stay in
//! the API, as when a real kubelet stops.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubelet_sim::{ImageMap, Kubelet, KubeletApi};
use tracing::info;

/// A kubelet simulator: pods bound to NODE_NAME become real local processes (own loopback IP,
/// volumes, service-account token), with the kubelet's status reporting, probes, restarts and
/// graceful termination. It needs root for per-container mount and PID namespaces (without
/// root, programs run directly on the host and volumes are not at their mountPath).
///
/// Logs go to stderr; set RUST_LOG (default `info`) for more or less.
#[derive(Debug, Parser)]
#[command(name = "kubelet-sim", version)]
struct Args {
    /// Kubeconfig of the API server. Its credentials need the node's rights (a real cluster's
    /// `system:node:NAME` identity is enough); its server URL and CA are also what pods get
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted `ca.crt`).
    #[arg(long, env = "KUBELET_SIM_KUBECONFIG", value_name = "PATH")]
    kubeconfig: PathBuf,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, env = "KUBELET_SIM_CONTEXT", value_name = "NAME")]
    context: Option<String>,
    /// The Node to register; pods with this `spec.nodeName` run here.
    #[arg(
        long,
        env = "KUBELET_SIM_NODE_NAME",
        value_name = "NAME",
        default_value = "sim-node"
    )]
    node_name: String,
    /// The program to run for containers without `command` whose image matches PATTERN (an
    /// exact image or a prefix ending in `*`, e.g. `autocrane:*=target/debug/autocrane`);
    /// repeatable, first match wins. In the environment: comma-separated.
    #[arg(
        long = "image",
        env = "KUBELET_SIM_IMAGES",
        value_name = "PATTERN=PATH",
        value_parser = parse_image,
        value_delimiter = ','
    )]
    images: Vec<(String, PathBuf)>,
    /// Where pod directories (volumes, container layers, logs) live; kept on exit. Default: a
    /// fresh temporary directory, removed on exit.
    #[arg(long, env = "KUBELET_SIM_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Also act as the scheduler: bind pods without `spec.nodeName` to this node through
    /// `pods/binding` (a node identity on a real cluster may not; leave this off there).
    #[arg(long, env = "KUBELET_SIM_BIND_UNSCHEDULED")]
    bind_unscheduled: bool,
    /// Pod IPs come from 127.OCTET.0.0/16 (default: derived from the process id and time).
    #[arg(long, env = "KUBELET_SIM_POD_NETWORK", value_name = "OCTET")]
    pod_network: Option<u8>,
    /// Serve the kubelet API (what the API server proxies `kubectl logs` to) over HTTPS with
    /// this certificate (PEM), as the kubelet's flag of that name; needs the two below.
    #[arg(
        long,
        env = "KUBELET_SIM_TLS_CERT_FILE",
        value_name = "PATH",
        requires_all = ["tls_private_key_file", "client_ca_file"]
    )]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(
        long,
        env = "KUBELET_SIM_TLS_PRIVATE_KEY_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    tls_private_key_file: Option<PathBuf>,
    /// Only clients with a certificate signed by this CA (PEM) may use the kubelet API (the API
    /// server's --kubelet-client-certificate); others fail the TLS handshake.
    #[arg(
        long,
        env = "KUBELET_SIM_CLIENT_CA_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    client_ca_file: Option<PathBuf>,
    /// Port of the kubelet API on 127.0.0.1 (0: a free one); reported in the Node's
    /// `status.daemonEndpoints.kubeletEndpoint.Port`.
    #[arg(
        long,
        env = "KUBELET_SIM_PORT",
        value_name = "PORT",
        default_value_t = 10250
    )]
    port: u16,
}

fn parse_image(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((pattern, path)) if !pattern.is_empty() && !path.is_empty() => {
            Ok((pattern.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected PATTERN=PATH, got {text:?}")),
    }
}

/// The client for `context` of the kubeconfig at `path`, and the API server as pods should see
/// it: its URL and CA bundle (PEM; empty when the kubeconfig trusts the system roots).
async fn connect(
    path: &Path,
    context: Option<String>,
) -> anyhow::Result<(kube::Client, String, String)> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let options = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let ca_pem = config
        .root_cert
        .iter()
        .flatten()
        .map(|der| pem_certificate(der))
        .collect::<String>();
    let client = kube::Client::try_from(config).context("building the API client")?;
    Ok((client, url, ca_pem))
}

/// A DER certificate as PEM.
fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Args {
        kubeconfig,
        context,
        node_name,
        images,
        state_dir,
        bind_unscheduled,
        pod_network,
        tls_cert_file,
        tls_private_key_file,
        client_ca_file,
        port,
    } = Args::parse();
    let (client, url, ca_pem) = connect(&kubeconfig, context).await?;
    info!(api_server = %url, node = %node_name, "Connecting");
    let mut builder = Kubelet::builder(client)
        .node_name(&node_name)
        .image_map(images.into_iter().collect::<ImageMap>())
        .api_server(url, ca_pem)
        .bind_unscheduled(bind_unscheduled);
    if let Some(dir) = state_dir {
        builder = builder.state_dir(dir);
    }
    if let Some(octet) = pod_network {
        builder = builder.pod_network(octet);
    }
    if let (Some(cert), Some(key), Some(ca)) = (tls_cert_file, tls_private_key_file, client_ca_file)
    {
        builder = builder.kubelet_api(
            KubeletApi::from_files(&cert, &key, &ca, port).context("kubelet API credentials")?,
        );
    }
    let kubelet = builder.start().await?;
    info!(node = %node_name, state_dir = %kubelet.state_dir().display(), kubelet_port = kubelet.kubelet_port(), "Node registered; running its pods");
    let signal = stop_signal().await?;
    info!(%signal, "Stopping: killing the pods' processes");
    kubelet.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn args_are_consistent() {
        super::Args::command().debug_assert();
    }

    #[test]
    fn images_are_pattern_equals_path() {
        assert_eq!(
            super::parse_image("autocrane:*=/bin/autocrane").unwrap(),
            ("autocrane:*".to_string(), "/bin/autocrane".into())
        );
        assert!(super::parse_image("no-path=").is_err());
        assert!(super::parse_image("nothing").is_err());
    }
}
