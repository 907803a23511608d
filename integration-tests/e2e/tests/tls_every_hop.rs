//! TLS on every hop, end to end, with a test CA made here (rcgen) and client certificates
//! required everywhere (mutual TLS): the real `autocrane` binary as VersionWatcher,
//! DataRepository, WatchdogListener, DataDeployer and controller, each on `https://` URLs, with
//! its certificates in a directory written the way the kubelet writes a Secret volume (a
//! timestamped directory, `..data` swapped to it, the visible names linked through `..data`).
//!
//! - `every_hop_runs_over_mutual_tls`: DataRepository → VersionWatcher (the source syncs), the
//!   test → both servers, DataDeployer → DataRepository (the data lands) and → WatchdogListener
//!   (its `data-<source>` watchdog lands on the pod), controller → VersionWatcher (the app
//!   version of a directory source reaches the pods' image) and → DataRepository (the data
//!   version reaches the pods' annotations, and the injected deployers get the TLS Secret); a
//!   client without a certificate, with one from another CA, trusting another CA, or in
//!   plaintext is refused.
//! - `certificates_rotate_mid_stream_without_restart`: with a `WatchSynced` stream open to the
//!   DataRepository (and the DataRepository's `WatchVersions` stream open to the
//!   VersionWatcher), the servers' certificate (new serial, same CA), the client-CA bundle (a
//!   second CA added) and the DataRepository's client certificate are rotated; both streams go on
//!   delivering the next version, a new connection sees the new server certificate, a client of
//!   the second CA is let in, the DataRepository's next connection presents its new client
//!   certificate, and no process restarted (same PID, one "listening" line each); the servers
//!   log at `--log trace`, and no private key, nor any line of one, shows in a log or command
//!   line.
//!
//! The admin listeners (`/metrics`, `/healthz`) stay plaintext by design; they are off here.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use autocrane_api::proto::{
    data_v1::{self as pb, data_repository_client::DataRepositoryClient},
    version_v1::{self as vpb, version_watcher_client::VersionWatcherClient},
};
use autocrane_runtime::{args::ClientTlsArgs, client};
use autocrane_test_support::{
    ClusterOptions, Running, TestCluster, accepting, assert_no_secrets, assert_traced,
    autocrane_bin, command_line, eventually, field, free_port, is_alive, workspace_root,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// A test PKI.

/// A CA: its issuer and its certificate as PEM.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn authority(name: &str) -> Authority {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Authority {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A leaf certificate: PEM, key PEM, DER.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

/// A server certificate for 127.0.0.1 and localhost, or a client certificate named `name`.
fn leaf(ca: &Authority, name: &str, serial: u64, server: bool) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let names = if server {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        vec![name.to_string()]
    };
    let mut params = CertificateParams::new(names).unwrap();
    params.serial_number = Some(serial.into());
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// A Secret volume as the kubelet keeps it: `tls.crt`, `tls.key`, `ca.crt` through `..data`.
struct SecretDir {
    dir: PathBuf,
    generation: u32,
    /// Every private key it ever held (secrets no log may show).
    keys: Vec<String>,
}

impl SecretDir {
    fn new(dir: &Path, leaf: &Leaf, ca_bundle: &str) -> SecretDir {
        std::fs::create_dir_all(dir).unwrap();
        let mut secret = SecretDir {
            dir: dir.to_path_buf(),
            generation: 0,
            keys: Vec::new(),
        };
        secret.write(leaf, ca_bundle);
        secret
    }

    /// A new version of the Secret, swapped in atomically (the old directory is then removed,
    /// as the kubelet does).
    fn write(&mut self, leaf: &Leaf, ca_bundle: &str) {
        self.keys.push(leaf.key.clone());
        self.generation += 1;
        let name = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation, self.generation
        );
        let version = self.dir.join(&name);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("tls.crt"), &leaf.cert).unwrap();
        std::fs::write(version.join("tls.key"), &leaf.key).unwrap();
        std::fs::write(version.join("ca.crt"), ca_bundle).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            let link = self.dir.join(file);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{file}"), &link).unwrap();
            }
        }
        if self.generation > 1 {
            let previous = format!(
                "..2026_01_01_00_00_{:02}.{}",
                self.generation - 1,
                self.generation - 1
            );
            std::fs::remove_dir_all(self.dir.join(previous)).unwrap();
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    /// The flags of a server verifying clients against this Secret's `ca.crt`.
    fn server_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("tls.crt"),
            "--tls-key".into(),
            self.path("tls.key"),
            "--tls-client-ca".into(),
            self.path("ca.crt"),
        ]
    }

    /// The flags of a client presenting this Secret's certificate and trusting its `ca.crt`.
    fn client_flags(&self) -> Vec<String> {
        vec![
            "--client-tls-ca".into(),
            self.path("ca.crt"),
            "--client-tls-cert".into(),
            self.path("tls.crt"),
            "--client-tls-key".into(),
            self.path("tls.key"),
        ]
    }

    fn client_args(&self) -> ClientTlsArgs {
        ClientTlsArgs {
            client_tls_ca: Some(self.path("ca.crt").into()),
            client_tls_cert: Some(self.path("tls.crt").into()),
            client_tls_key: Some(self.path("tls.key").into()),
            client_tls_server_name: None,
        }
    }
}

/// The test's PKI: one CA; the servers' Secret (a server certificate; `ca.crt` the CAs whose
/// clients are let in); the clients' Secret (a client certificate; `ca.crt` the CA of the
/// servers); the DataRepository's own client Secret.
struct Pki {
    ca: Authority,
    servers: SecretDir,
    clients: SecretDir,
    repository_client: SecretDir,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = authority("autocrane test CA");
        let servers = SecretDir::new(
            &dir.join("tls/servers"),
            &leaf(&ca, "autocrane servers", 1, true),
            &ca.pem,
        );
        let clients = SecretDir::new(
            &dir.join("tls/clients"),
            &leaf(&ca, "autocrane client", 100, false),
            &ca.pem,
        );
        let repository_client = SecretDir::new(
            &dir.join("tls/repository-client"),
            &leaf(&ca, "autocrane data-repository", 200, false),
            &ca.pem,
        );
        Pki {
            ca,
            servers,
            clients,
            repository_client,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The servers.

/// `autocrane <args>` logged to `<dir>/<name>.log` with `log` as filter.
fn start(name: &str, args: &[String], dir: &Path, kubeconfig: Option<&Path>) -> Running {
    let mut command = Command::new(autocrane_bin());
    command
        .args(args)
        // Every crate's trace output (rustls's and h2's included), where key material would show;
        // the TLS module's debug lines name each accepted client's certificate.
        .args(["--log", "trace"]);
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    Running::logged(name, command, dir)
}

/// A VersionWatcher and a DataRepository over mutual TLS, the repository reaching the watcher on
/// `https://` with its own client certificate.
struct Stack {
    vw: Running,
    vw_addr: SocketAddr,
    vw_args: Vec<String>,
    repo: Running,
    repo_addr: SocketAddr,
    dir: PathBuf,
}

impl Stack {
    async fn start(dir: &Path, pki: &Pki) -> Stack {
        let vw_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut vw_args: Vec<String> = [
            "version-watcher",
            "--listen",
            &vw_addr.to_string(),
            "--admin-listen",
            "off",
            "--webhook-listen",
            "off",
            "--state-dir",
            dir.join("vw-state").to_str().unwrap(),
            "--allow-directory",
            dir.to_str().unwrap(),
            "--insecure-allow-anonymous",
        ]
        .map(String::from)
        .to_vec();
        vw_args.extend(pki.servers.server_flags());
        let vw = start("version-watcher", &vw_args, dir, None);

        let repo_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut repo_args: Vec<String> = [
            "data-repository",
            "--listen",
            &repo_addr.to_string(),
            "--admin-listen",
            "off",
            "--store",
            dir.join("store").to_str().unwrap(),
            "--version-watcher",
            &format!("https://{vw_addr}"),
            "--allow-directory",
            dir.to_str().unwrap(),
            "--insecure-allow-anonymous",
        ]
        .map(String::from)
        .to_vec();
        repo_args.extend(pki.servers.server_flags());
        repo_args.extend(pki.repository_client.client_flags());
        let repo = start("data-repository", &repo_args, dir, None);
        accepting(vw_addr).await;
        accepting(repo_addr).await;
        Stack {
            vw,
            vw_addr,
            vw_args,
            repo,
            repo_addr,
            dir: dir.to_path_buf(),
        }
    }

    async fn repository(&self, pki: &Pki) -> DataRepositoryClient<Channel> {
        DataRepositoryClient::new(connect(self.repo_addr, &pki.clients.client_args()).await)
    }
}

/// A channel over mutual TLS through the runtime's own client (the one every component uses).
async fn connect(addr: SocketAddr, tls: &ClientTlsArgs) -> Channel {
    client::endpoint(&format!("https://{addr}"), tls)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting to {addr} over TLS: {err:?}"))
}

/// Whether a health check over TLS with `tls` succeeds.
async fn health_ok(addr: SocketAddr, tls: &ClientTlsArgs) -> bool {
    let Ok(endpoint) = client::endpoint(&format!("https://{addr}"), tls) else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.into_inner().status == 1)
}

/// Whether a plaintext health check succeeds.
async fn plaintext_ok(addr: SocketAddr) -> bool {
    let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok()
}

/// The certificate a server presents to a new connection (DER), through a bare rustls
/// handshake trusting `ca_pem` and presenting `client`.
async fn presented_certificate(addr: SocketAddr, ca_pem: &str, client: &Leaf) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, connection) = tls.get_ref();
    assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    connection.peer_certificates().unwrap()[0].to_vec()
}

// ---------------------------------------------------------------------------------------------
// Sources and streams.

/// A directory source whose sub-directories `v<n>` are the versions, polled every second.
fn dir_spec(path: &Path) -> vpb::SourceSpec {
    vpb::SourceSpec {
        upstream: Some(vpb::source_spec::Upstream::Directory(
            vpb::DirectorySource {
                path: path.to_str().unwrap().to_string(),
                version_file: String::new(),
            },
        )),
        policy: Some(vpb::VersionPolicy {
            policy: Some(vpb::version_policy::Policy::Regex(vpb::RegexPolicy {
                pattern: r"v(?P<n>\d+)".into(),
                capture: "n".into(),
                order: vpb::RegexOrder::Numeric as i32,
            })),
        }),
        poll_interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    }
}

/// Writes version `v<n>` of the directory source at `root`.
fn publish(root: &Path, n: u32) {
    let version = root.join(format!("v{n}"));
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join("data.txt"), format!("version {n}\n")).unwrap();
}

async fn track(repository: &mut DataRepositoryClient<Channel>, root: &Path) -> String {
    repository
        .track_source(pb::TrackSourceRequest {
            source: Some(dir_spec(root)),
        })
        .await
        .expect("TrackSource over mutual TLS")
        .into_inner()
        .source
        .unwrap()
        .source_id
}

/// Waits until `version` of `source_id` is synced in the repository.
async fn synced(repository: &DataRepositoryClient<Channel>, source_id: &str, version: &str) {
    eventually(WAIT, &format!("{version} of {source_id} synced"), || {
        let mut repository = repository.clone();
        let request = pb::GetManifestRequest {
            source_id: source_id.to_string(),
            version: version.to_string(),
        };
        async move { repository.get_manifest(request).await.is_ok() }
    })
    .await;
}

/// The next message of `stream` naming `version` as synced, within [`WAIT`].
async fn next_synced(stream: &mut tonic::Streaming<pb::WatchSyncedResponse>, version: &str) {
    let wait = async {
        loop {
            let message = stream
                .message()
                .await
                .expect("the stream goes on")
                .expect("the stream does not end");
            if message
                .sources
                .iter()
                .any(|s| s.versions.iter().any(|v| v.version == version))
            {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no WatchSynced message with {version} within {WAIT:?}"));
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_runs_over_mutual_tls() {
    let _ = autocrane_bin();
    let cluster = TestCluster::start(ClusterOptions::new()).await;
    let crd = workspace_root().join("deploy/crds/autocranedeployment.yaml");
    cluster
        .kubectl_ok(&["apply", "-f", crd.to_str().unwrap()])
        .await;
    cluster.kubectl_ok(&["create", "namespace", NS]).await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let pki = Pki::new(dir);
    let stack = Stack::start(dir, &pki).await;

    let wl_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut wl_args: Vec<String> = [
        "watchdog-listener",
        "--listen",
        &wl_addr.to_string(),
        "--admin-listen",
        "off",
        "--insecure-allow-anonymous",
    ]
    .map(String::from)
    .to_vec();
    wl_args.extend(pki.servers.server_flags());
    let _listener = start(
        "watchdog-listener",
        &wl_args,
        dir,
        Some(cluster.kubeconfig()),
    );
    accepting(wl_addr).await;

    // Who is refused, on every server: no client certificate, a certificate of another CA, a
    // client trusting another CA, plaintext.
    let stranger = authority("stranger CA");
    let foreign = SecretDir::new(
        &dir.join("tls/foreign"),
        &leaf(&stranger, "foreign client", 7, false),
        &pki.ca.pem,
    );
    let misled = SecretDir::new(
        &dir.join("tls/misled"),
        &leaf(&pki.ca, "misled client", 8, false),
        &stranger.pem,
    );
    let anonymous = ClientTlsArgs {
        client_tls_cert: None,
        client_tls_key: None,
        ..pki.clients.client_args()
    };
    for addr in [stack.vw_addr, stack.repo_addr, wl_addr] {
        assert!(
            health_ok(addr, &pki.clients.client_args()).await,
            "{addr} over mutual TLS"
        );
        assert!(
            !health_ok(addr, &anonymous).await,
            "{addr} must refuse a client without a certificate"
        );
        assert!(
            !health_ok(addr, &foreign.client_args()).await,
            "{addr} must refuse a certificate of another CA"
        );
        assert!(
            !health_ok(addr, &misled.client_args()).await,
            "a client trusting another CA must not accept {addr}"
        );
        assert!(!plaintext_ok(addr).await, "{addr} must not speak plaintext");
    }

    // DataRepository → VersionWatcher: a tracked source syncs.
    let catalog = dir.join("catalog");
    publish(&catalog, 1);
    let mut repository = stack.repository(&pki).await;
    let source_id = track(&mut repository, &catalog).await;
    synced(&repository, &source_id, "v1").await;
    let mut watcher =
        VersionWatcherClient::new(connect(stack.vw_addr, &pki.clients.client_args()).await);
    let state = watcher
        .get_source(vpb::GetSourceRequest {
            source: Some(dir_spec(&catalog)),
        })
        .await
        .expect("GetSource over mutual TLS")
        .into_inner();
    assert!(format!("{state:?}").contains("v1"), "{state:?}");

    // DataDeployer → DataRepository and → WatchdogListener, for a pod of the cluster.
    // On the real control plane the namespace's default ServiceAccount, which admission wants,
    // comes a moment after the namespace.
    eventually(WAIT, "pod web-0 created", || async {
        let args = [
            "-n",
            NS,
            "run",
            "web-0",
            "--image=registry.local/web:1",
            "--restart=Never",
        ];
        cluster.kubectl(&args).await.ok
    })
    .await;
    let podinfo = dir.join("podinfo");
    std::fs::create_dir_all(&podinfo).unwrap();
    std::fs::write(
        podinfo.join("annotations"),
        "data.autocrane.io/catalog=\"v1\"\n",
    )
    .unwrap();
    let root = dir.join("data");
    let mut deployer_args: Vec<String> = [
        "data-deployer",
        "sidecar",
        "--repository",
        &format!("https://{}", stack.repo_addr),
        "--watchdog-listener",
        &format!("https://{wl_addr}"),
        "--root",
        root.to_str().unwrap(),
        "--desired-file",
        podinfo.join("annotations").to_str().unwrap(),
        "--source",
        &format!("catalog={source_id}"),
        "--pod-namespace",
        NS,
        "--pod-name",
        "web-0",
    ]
    .map(String::from)
    .to_vec();
    deployer_args.extend(pki.clients.client_flags());
    let deployer = start("data-deployer", &deployer_args, dir, None);
    eventually(WAIT, "the data of v1 in the pod's root", || {
        let text = std::fs::read_to_string(root.join("catalog/current/data.txt"));
        async move { text.is_ok_and(|t| t == "version 1\n") }
    })
    .await;
    eventually(WAIT, "the deployer's watchdog on the pod", || async {
        let annotations = cluster
            .kubectl(&[
                "-n",
                NS,
                "get",
                "pod",
                "web-0",
                "-o",
                "jsonpath={.metadata.annotations}",
            ])
            .await;
        annotations
            .stdout
            .contains("status.autocrane.io/data-catalog")
    })
    .await;
    drop(deployer);

    // Controller → VersionWatcher (the app version) and → DataRepository (the data version).
    let apps = dir.join("apps");
    std::fs::create_dir_all(apps.join("1.4.0")).unwrap();
    let mut controller_args: Vec<String> = [
        "controller",
        "--version-watcher",
        &format!("https://{}", stack.vw_addr),
        "--data-repository",
        &format!("https://{}", stack.repo_addr),
        "--watchdog-listener",
        &format!("https://{wl_addr}"),
        "--data-deployer-image",
        "autocrane:test",
        "--data-deployer-tls-secret",
        "autocrane-data-deployer-tls",
        "--leader-election",
        "false",
        "--admin-listen",
        "off",
        "--watch-namespace",
        NS,
    ]
    .map(String::from)
    .to_vec();
    controller_args.extend(pki.clients.client_flags());
    let _controller = start(
        "controller",
        &controller_args,
        dir,
        Some(cluster.kubeconfig()),
    );
    let manifest = dir.join("deployment.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: autocrane.io/v1alpha1
kind: AutoCraneDeployment
metadata: {{name: shop-web, namespace: {NS}}}
spec:
  replicas: 1
  version:
    source:
      directory: {{path: "{apps}"}}
      policy: {{semver: {{}}}}
      pollInterval: 1s
  data:
    - name: catalog
      mountPath: /data
      source:
        directory: {{path: "{catalog}"}}
        policy: {{regex: {{pattern: 'v(?P<n>\d+)', capture: "n", order: Numeric}}}}
        pollInterval: 1s
  template:
    metadata:
      labels: {{app: shop-web}}
    spec:
      containers:
        - name: web
          image: registry.local/web:placeholder
          command: ["sleep", "3600"]
"#,
            apps = apps.display(),
            catalog = catalog.display(),
        ),
    )
    .unwrap();
    cluster
        .kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()])
        .await;
    let pod = eventually(
        WAIT,
        "a pod of shop-web on 1.4.0 with catalog v1",
        || async {
            let out = cluster
                .kubectl(&[
                    "-n",
                    NS,
                    "get",
                    "pods",
                    "-l",
                    "autocrane.io/deployment=shop-web",
                    "-o",
                    "json",
                ])
                .await;
            let pods: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            pods["items"]
                .as_array()?
                .iter()
                .find(|p| {
                    p["spec"]["containers"][0]["image"] == "registry.local/web:1.4.0"
                        && p["metadata"]["annotations"]["data.autocrane.io/catalog"] == "v1"
                })
                .cloned()
        },
    )
    .await;
    // The injected deployers reach both servers on `https://` with the TLS Secret.
    let init = &pod["spec"]["initContainers"][0];
    let args = init["args"].to_string();
    assert!(
        args.contains(&format!("https://{}", stack.repo_addr)),
        "{args}"
    );
    assert!(args.contains(&format!("https://{wl_addr}")), "{args}");
    assert!(
        init["env"].to_string().contains("/autocrane/tls/ca.crt"),
        "{init}"
    );
    assert!(
        pod["spec"]["volumes"]
            .to_string()
            .contains("autocrane-data-deployer-tls"),
        "{pod}"
    );

    // Every server saw only certified clients: the DataRepository's own certificate at the
    // VersionWatcher, the shared client certificate at the rest.
    let vw_log = stack.vw.log_text();
    assert!(
        vw_log.contains("client_subject=CN=autocrane data-repository"),
        "{vw_log}"
    );
    assert!(
        vw_log.contains("client_subject=CN=autocrane client"),
        "{vw_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_mid_stream_without_restart() {
    let _ = autocrane_bin();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut pki = Pki::new(dir);
    let mut stack = Stack::start(dir, &pki).await;
    let (vw_pid, repo_pid) = (stack.vw.pid(), stack.repo.pid());

    let catalog = dir.join("catalog");
    publish(&catalog, 1);
    let mut repository = stack.repository(&pki).await;
    let source_id = track(&mut repository, &catalog).await;
    synced(&repository, &source_id, "v1").await;
    let mut stream = repository
        .watch_synced(pb::WatchSyncedRequest {
            source_ids: vec![source_id.clone()],
            resume_token: String::new(),
        })
        .await
        .expect("WatchSynced over mutual TLS")
        .into_inner();
    next_synced(&mut stream, "v1").await;

    // Rotate, mid-stream: the servers' certificate (new serial, same CA) with a second CA added
    // to the bundle they accept clients of; the DataRepository's client certificate.
    let second_ca = authority("second test CA");
    let rotated = leaf(&pki.ca, "autocrane servers", 2, true);
    pki.servers
        .write(&rotated, &format!("{}{}", pki.ca.pem, second_ca.pem));
    let repository_client = leaf(&pki.ca, "autocrane data-repository rotated", 201, false);
    pki.repository_client.write(&repository_client, &pki.ca.pem);

    // The open streams go on: a new version travels VersionWatcher → DataRepository → the test
    // over the connections made before the rotation.
    publish(&catalog, 2);
    next_synced(&mut stream, "v2").await;

    // New connections see the new certificate, at both servers.
    let probe = leaf(&pki.ca, "probe client", 300, false);
    for addr in [stack.vw_addr, stack.repo_addr] {
        let presented = presented_certificate(addr, &pki.ca.pem, &probe).await;
        assert!(
            presented == rotated.der,
            "{addr} presents the rotated certificate"
        );
    }
    for log in [stack.vw.log_text(), stack.repo.log_text()] {
        let serial = |message: &str| {
            let line = log
                .lines()
                .find(|l| l.contains(message) && l.contains("flag=--tls-cert"))
                .unwrap_or_else(|| panic!("no {message:?} line in {log}"));
            field(line, "serial").to_string()
        };
        assert_ne!(
            serial("TLS certificate loaded"),
            serial("TLS certificate reloaded"),
            "the reload is logged with the new serial"
        );
        assert!(log.contains("TLS CA bundle reloaded"), "{log}");
        assert_eq!(
            log.matches("gRPC server listening").count(),
            1,
            "no restart"
        );
    }
    assert_eq!((stack.vw.pid(), stack.repo.pid()), (vw_pid, repo_pid));
    assert!(is_alive(vw_pid) && is_alive(repo_pid));

    // The new client CA is in force: a client of the second CA is let in.
    let second = SecretDir::new(
        &dir.join("tls/second"),
        &leaf(&second_ca, "second-CA client", 9, false),
        &pki.ca.pem,
    );
    assert!(health_ok(stack.repo_addr, &second.client_args()).await);
    assert!(health_ok(stack.vw_addr, &second.client_args()).await);

    // The DataRepository's next connection to the VersionWatcher presents its new client
    // certificate: restart the watcher (not the repository), which makes it reconnect.
    stack.vw.kill();
    stack.vw = start("version-watcher-2", &stack.vw_args, &stack.dir, None);
    accepting(stack.vw_addr).await;
    publish(&catalog, 3);
    next_synced(&mut stream, "v3").await;
    let vw_log = stack.vw.log_text();
    assert!(
        vw_log.contains("client_subject=CN=autocrane data-repository rotated"),
        "{vw_log}"
    );

    // No private key, whole or any line of its base64, in any log or command line (the servers
    // logged at trace through loads, handshakes and reloads).
    let keys: Vec<String> = [&pki.servers, &pki.clients, &pki.repository_client, &second]
        .iter()
        .flat_map(|secret| secret.keys.iter())
        .chain([&probe.key])
        .flat_map(|pem| pem.lines().filter(|line| !line.starts_with("-----")))
        .map(str::to_string)
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for (name, process) in [
        ("VersionWatcher", &stack.vw),
        ("DataRepository", &stack.repo),
    ] {
        let log = process.log_text();
        assert_traced(name, &log, 100);
        assert_no_secrets(&format!("the {name}'s log"), &log, &keys);
        assert_no_secrets(
            &format!("the {name}'s command line"),
            &command_line(process.pid()),
            &keys,
        );
    }

    // The repository is still the same process, which started listening once.
    assert_eq!(stack.repo.pid(), repo_pid);
    assert!(is_alive(repo_pid));
    assert_eq!(
        stack
            .repo
            .log_text()
            .matches("gRPC server listening")
            .count(),
        1
    );
}
