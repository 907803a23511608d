//! The VersionWatcher's own fixtures: a real registry (Debian `docker-registry`) pushed to over
//! the distribution API, the watcher in-process or as the real `autocrane` binary, and helpers on
//! its watch stream. Everything general (processes, ports, git, waiting) is the workspace harness,
//! `autocrane_test_support`, re-exported here.
//!
//! Every tool is required: a missing one fails the test with the command that installs it.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use autocrane_api::proto::version_v1::{self as pb, version_watcher_client::VersionWatcherClient};
use autocrane_runtime::{
    args::{OptionalAddr, ServerArgs},
    process::Process,
    shutdown::{Shutdown, ShutdownTrigger},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tonic::{Streaming, transport::Channel};

pub(crate) use autocrane_test_support::{
    Running, accepting, autocrane_bin, eventually, free_port, system_tool,
};

pub(crate) type Grpc = VersionWatcherClient<Channel>;

// ---- HTTP ---------------------------------------------------------------------------------

pub(crate) async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Bytes) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

// ---- registry -----------------------------------------------------------------------------

/// A `docker-registry` process on 127.0.0.1 with its own root directory.
pub(crate) struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Running>,
    /// `Authorization` for pushes when the registry requires basic auth.
    authorization: Option<String>,
}

impl Registry {
    /// Starts a registry; with `notify`, its notifications go to that URL.
    pub(crate) async fn start(notify: Option<&str>) -> Registry {
        Self::start_with(notify, None).await
    }

    /// Starts a registry that requires basic auth as `user:password` (an htpasswd file with a
    /// bcrypt hash made by python3's `crypt`).
    pub(crate) async fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::start_with(None, Some((user, password))).await
    }

    async fn start_with(notify: Option<&str>, basic: Option<(&str, &str)>) -> Registry {
        system_tool("docker-registry");
        // tmpfs when there is one: this disk is mounted with `discard`, where removing the ~30,000
        // files of a 5,000-tag repository takes tens of seconds.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("vw-registry-")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let port = free_port();
        let (auth, authorization) = match basic {
            None => (String::new(), None),
            Some((user, password)) => {
                let python = system_tool("python3");
                let hash = Command::new(python)
                    .args(["-W", "ignore", "-c", "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1024)))", password])
                    .output()
                    .expect("hashing the password with python3");
                let hash = String::from_utf8(hash.stdout).unwrap().trim().to_string();
                assert!(
                    hash.starts_with("$2"),
                    "python3 crypt made no bcrypt hash: {hash:?}"
                );
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                let token = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{user}:{password}"),
                );
                (
                    format!(
                        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                        htpasswd.display()
                    ),
                    Some(format!("Basic {token}")),
                )
            }
        };
        let notifications = match notify {
            Some(url) => format!(
                "notifications:\n  endpoints:\n    - name: autocrane\n      url: {url}\n      timeout: 2s\n      threshold: 5\n      backoff: 200ms\n      ignoredmediatypes:\n        - application/octet-stream\n"
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n{notifications}{auth}",
            root = dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = Registry {
            port,
            dir,
            process: None,
            authorization,
        };
        registry.spawn().await;
        registry
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(system_tool("docker-registry"));
        command.arg("serve").arg(self.dir.path().join("config.yml"));
        self.process = Some(
            Running::builder(command)
                .log_to(self.dir.path().join("registry.log"))
                .start(),
        );
        let (url, port) = (self.url(), self.port);
        eventually(
            Duration::from_secs(10),
            &format!("docker-registry to serve on port {}", self.port),
            || {
                let url = url.clone();
                async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                        && matches!(
                            http("GET", &format!("{url}/v2/"), &[], vec![]).await.0,
                            200 | 401
                        )
                }
            },
        )
        .await;
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the registry (its data stays).
    pub(crate) fn stop(&mut self) {
        self.process = None;
    }

    /// Starts it again on the same port and data.
    pub(crate) async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// An HTTP call with the registry's credentials, if it has any.
    async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, http::HeaderMap, Bytes) {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(authorization) = &self.authorization {
            all.push(("authorization", authorization));
        }
        http(method, url, &all, body).await
    }

    async fn upload_blob(&self, repository: &str, blob: &[u8]) -> String {
        let digest = sha256(blob);
        let base = self.url();
        let (status, _, _) = self
            .call(
                "HEAD",
                &format!("{base}/v2/{repository}/blobs/{digest}"),
                &[],
                vec![],
            )
            .await;
        if status == 200 {
            return digest;
        }
        let (status, headers, _) = self
            .call(
                "POST",
                &format!("{base}/v2/{repository}/blobs/uploads/"),
                &[],
                vec![],
            )
            .await;
        assert_eq!(status, 202, "starting a blob upload");
        let location = headers["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let (status, _, body) = self
            .call(
                "PUT",
                &format!("{location}{separator}digest={digest}"),
                &[("content-type", "application/octet-stream")],
                blob.to_vec(),
            )
            .await;
        assert_eq!(status, 201, "finishing a blob upload: {body:?}");
        digest
    }

    /// A manifest for a new image whose config names `label`; returns the manifest bytes.
    async fn manifest(&self, repository: &str, label: &str) -> Vec<u8> {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"v":"{label}"}}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        );
        let layer = b"autocrane test layer".to_vec();
        let config_digest = self.upload_blob(repository, config.as_bytes()).await;
        let layer_digest = self.upload_blob(repository, &layer).await;
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        )
        .into_bytes()
    }

    async fn put_manifest(&self, repository: &str, tag: &str, manifest: Vec<u8>) -> String {
        let (status, headers, body) = self
            .call(
                "PUT",
                &format!("{}/v2/{repository}/manifests/{tag}", self.url()),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                manifest,
            )
            .await;
        assert_eq!(
            status, 201,
            "pushing the manifest of {repository}:{tag}: {body:?}"
        );
        headers["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Pushes a new image as `repository:tag` over the distribution API; returns its digest.
    pub(crate) async fn push_tag(&self, repository: &str, tag: &str) -> String {
        self.publish(repository, tag).await.0
    }

    /// Like `push_tag`, also returning when the publishing request (the manifest PUT, after the
    /// blobs are uploaded) started: the moment a version is published.
    pub(crate) async fn publish(&self, repository: &str, tag: &str) -> (String, Instant) {
        let manifest = self.manifest(repository, tag).await;
        let started = Instant::now();
        (self.put_manifest(repository, tag, manifest).await, started)
    }

    /// Pushes one image under every tag of `tags` (16 requests in flight).
    pub(crate) async fn push_many(&self, repository: &str, tags: &[String]) {
        use futures::StreamExt;
        let manifest = self.manifest(repository, "many").await;
        futures::stream::iter(tags)
            .for_each_concurrent(16, |tag| {
                let manifest = manifest.clone();
                async move {
                    self.put_manifest(repository, tag, manifest).await;
                }
            })
            .await;
    }
}

// ---- the watcher ----------------------------------------------------------------------------

/// The watcher running in this test process.
pub(crate) struct InProcess {
    pub grpc_url: String,
    pub webhook: SocketAddr,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), autocrane_version_watcher::Error>>,
}

impl InProcess {
    pub(crate) async fn start(state_dir: &Path) -> InProcess {
        Self::start_with_credentials(state_dir, None).await
    }

    /// Starts with `--registry-credentials FILE`.
    pub(crate) async fn start_with_credentials(
        state_dir: &Path,
        credentials: Option<PathBuf>,
    ) -> InProcess {
        Self::start_with(state_dir, credentials, &["127.0.0.1"]).await
    }

    /// Starts with `--registry-credentials FILE` and `--allow-upstream-host` for each of
    /// `allowed` (the other constructors allow 127.0.0.1, where the tests' upstreams listen).
    pub(crate) async fn start_with(
        state_dir: &Path,
        credentials: Option<PathBuf>,
        allowed: &[&str],
    ) -> InProcess {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let args = autocrane_version_watcher::Args {
            server: ServerArgs::local(grpc),
            state_dir: state_dir.to_path_buf(),
            webhook_listen: OptionalAddr(Some(webhook)),
            webhook_token_file: None,
            registry_credentials: credentials,
            upstream_rate: 200.0,
            upstream_burst: 200,
            upstream_timeout_secs: 5,
            probe_timeout_secs: 30,
            // Tests keep their directory sources in temporary directories.
            directories: autocrane_runtime::upstream::local_dirs::LocalDirectoryArgs {
                allow_directories: vec![std::env::temp_dir()],
            },
            egress: autocrane_runtime::upstream::egress::EgressArgs {
                allow_upstream_hosts: allowed.iter().map(|p| p.parse().unwrap()).collect(),
            },
            // No cluster here: callers send no token.
            auth: autocrane_runtime::auth::AuthArgs {
                insecure_allow_anonymous: true,
                token_audiences: Vec::new(),
            },
        };
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(autocrane_version_watcher::run(args, Process::new(shutdown)));
        let grpc_url = format!("http://{grpc}");
        accepting(grpc).await;
        InProcess {
            grpc_url,
            webhook,
            trigger,
            task,
        }
    }

    pub(crate) async fn client(&self) -> Grpc {
        connect(&self.grpc_url).await
    }

    pub(crate) async fn stop(self) {
        self.trigger.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

pub(crate) async fn connect(url: &str) -> Grpc {
    VersionWatcherClient::connect(url.to_string())
        .await
        .expect("connecting to the watcher")
}

/// The real `autocrane version-watcher` process.
pub(crate) struct BinaryWatcher {
    pub grpc_url: String,
    pub webhook: SocketAddr,
    process: Running,
}

impl BinaryWatcher {
    pub(crate) async fn start(state_dir: &Path) -> BinaryWatcher {
        Self::start_with_env(state_dir, &[]).await
    }

    /// Starts it with `env` added to this process's environment.
    pub(crate) async fn start_with_env(state_dir: &Path, env: &[(&str, &Path)]) -> BinaryWatcher {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(autocrane_bin());
        command
            .args(["version-watcher", "--admin-listen", "off"])
            // No cluster to review tokens with: the tests call without one.
            .arg("--insecure-allow-anonymous")
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--webhook-listen")
            .arg(webhook.to_string())
            .arg("--state-dir")
            .arg(state_dir)
            // The tests' registries and git servers listen on 127.0.0.1.
            .args(["--allow-upstream-host", "127.0.0.1"])
            .envs(env.iter().copied());
        let process = Running::builder(command)
            .log_to(state_dir.with_extension("log"))
            .start();
        accepting(grpc).await;
        BinaryWatcher {
            grpc_url: format!("http://{grpc}"),
            webhook,
            process,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(crate) async fn client(&self) -> Grpc {
        connect(&self.grpc_url).await
    }

    /// SIGTERM, then wait for the exit (without blocking the runtime, whose tasks must close
    /// their connections for the server to finish draining).
    pub(crate) async fn stop(mut self) -> std::process::ExitStatus {
        self.process
            .terminate_async(Duration::from_secs(30))
            .await
            .expect("the watcher did not exit within 30 s of SIGTERM")
    }

    /// SIGKILL: a crash, with no chance to flush or clean up.
    pub(crate) fn kill(mut self) {
        self.process.kill();
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

// ---- specs and streams ----------------------------------------------------------------------

pub(crate) fn oci_spec(
    registry: &str,
    repository: &str,
    policy: Option<pb::version_policy::Policy>,
    poll_secs: i64,
) -> pb::SourceSpec {
    pb::SourceSpec {
        upstream: Some(pb::source_spec::Upstream::Oci(pb::OciSource {
            registry: registry.to_string(),
            repository: repository.to_string(),
            resolve_digests: None,
        })),
        policy: policy.map(|p| pb::VersionPolicy { policy: Some(p) }),
        poll_interval: Some(prost_types::Duration {
            seconds: poll_secs,
            nanos: 0,
        }),
    }
}

pub(crate) fn semver_any() -> Option<pb::version_policy::Policy> {
    Some(pb::version_policy::Policy::Semver(pb::SemverPolicy {
        range: String::new(),
        include_prereleases: false,
        allow_v_prefix: true,
    }))
}

pub(crate) async fn watch(
    client: &mut Grpc,
    specs: Vec<pb::SourceSpec>,
    token: &str,
) -> Streaming<pb::WatchVersionsResponse> {
    client
        .watch_versions(pb::WatchVersionsRequest {
            sources: specs,
            resume_token: token.to_string(),
        })
        .await
        .expect("WatchVersions")
        .into_inner()
}

pub(crate) async fn next(
    stream: &mut Streaming<pb::WatchVersionsResponse>,
    limit: Duration,
) -> pb::WatchVersionsResponse {
    tokio::time::timeout(limit, stream.message())
        .await
        .expect("timed out waiting for a watch message")
        .expect("watch stream failed")
        .expect("watch stream ended")
}

/// Reads messages until `done` holds for one; returns every message read.
pub(crate) async fn until(
    stream: &mut Streaming<pb::WatchVersionsResponse>,
    limit: Duration,
    mut done: impl FnMut(&pb::WatchVersionsResponse) -> bool,
) -> Vec<pb::WatchVersionsResponse> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out; messages so far: {seen:#?}"))
            .expect("watch stream failed")
            .expect("watch stream ended");
        let finished = done(&message);
        seen.push(message);
        if finished {
            return seen;
        }
    }
}

pub(crate) fn current_name(message: &pb::WatchVersionsResponse) -> Option<String> {
    message
        .sources
        .first()?
        .current
        .as_ref()
        .map(|v| v.name.clone())
}

pub(crate) fn has_event(
    message: &pb::WatchVersionsResponse,
    kind: pb::VersionEventKind,
    version: &str,
) -> bool {
    message
        .events
        .iter()
        .any(|e| e.kind == kind as i32 && e.version.as_ref().is_some_and(|v| v.name == version))
}

pub(crate) fn events_of(
    messages: &[pb::WatchVersionsResponse],
) -> Vec<(pb::VersionEventKind, String)> {
    messages
        .iter()
        .flat_map(|m| m.events.iter())
        .map(|e| {
            (
                pb::VersionEventKind::try_from(e.kind).unwrap(),
                e.version
                    .as_ref()
                    .map(|v| v.name.clone())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The status of the source `spec` names (answered at once once the source was probed).
pub(crate) async fn status_of(mut client: Grpc, spec: pb::SourceSpec) -> Option<pb::SourceStatus> {
    let request = pb::GetSourceRequest { source: Some(spec) };
    let source = client.get_source(request).await.ok()?.into_inner().source?;
    source.status
}

pub(crate) fn health(state: &pb::SourceState) -> pb::SourceHealth {
    pb::SourceHealth::try_from(state.status.as_ref().unwrap().health).unwrap()
}
