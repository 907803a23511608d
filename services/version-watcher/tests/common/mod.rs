//! Test fixtures: a real registry (Debian `docker-registry`), a real `git daemon`, the watcher
//! in-process or as the real `autocrane` binary, and stream helpers.
//!
//! Every tool is required: a missing one fails the test with the command that installs it.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use autocrane_api::proto::version_v1::{self as pb, version_watcher_client::VersionWatcherClient};
use autocrane_api::runtime::{
    args::{OptionalAddr, ServerArgs},
    process::Process,
    shutdown::{Shutdown, ShutdownTrigger},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tonic::{Streaming, transport::Channel};

pub type Grpc = VersionWatcherClient<Channel>;

/// A free TCP port on 127.0.0.1 (bound and released; the race is acceptable for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of `tool` on PATH, or a loud failure naming how to install it.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
    {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{tool}` is required by this test but missing; install it with: {install}");
}

// ---- HTTP ---------------------------------------------------------------------------------

pub async fn http(
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
pub struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `Authorization` for pushes when the registry requires basic auth.
    authorization: Option<String>,
}

impl Registry {
    /// Starts a registry; with `notify`, its notifications go to that URL.
    pub async fn start(notify: Option<&str>) -> Registry {
        Self::start_with(notify, None).await
    }

    /// Starts a registry that requires basic auth as `user:password` (an htpasswd file with a
    /// bcrypt hash made by python3's `crypt`).
    pub async fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::start_with(None, Some((user, password))).await
    }

    async fn start_with(notify: Option<&str>, basic: Option<(&str, &str)>) -> Registry {
        require_tool("docker-registry", "apt-get install -y docker-registry");
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
                let python = require_tool("python3", "apt-get install -y python3");
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
            child: None,
            authorization,
        };
        registry.spawn().await;
        registry
    }

    async fn spawn(&mut self) {
        let binary = require_tool("docker-registry", "apt-get install -y docker-registry");
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                let (status, _, _) = http("GET", &format!("{}/v2/", self.url()), &[], vec![]).await;
                if status == 200 || status == 401 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the registry (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
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
    pub async fn push_tag(&self, repository: &str, tag: &str) -> String {
        self.publish(repository, tag).await.0
    }

    /// Like `push_tag`, also returning when the publishing request (the manifest PUT, after the
    /// blobs are uploaded) started: the moment a version is published.
    pub async fn publish(&self, repository: &str, tag: &str) -> (String, Instant) {
        let manifest = self.manifest(repository, tag).await;
        let started = Instant::now();
        (self.put_manifest(repository, tag, manifest).await, started)
    }

    /// Pushes one image under every tag of `tags` (16 requests in flight).
    pub async fn push_many(&self, repository: &str, tags: &[String]) {
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

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- git ----------------------------------------------------------------------------------

/// A `git daemon` on 127.0.0.1 serving bare repositories from a temp base path.
pub struct GitServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl GitServer {
    pub async fn start() -> GitServer {
        require_tool("git", "apt-get install -y git");
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("srv");
        std::fs::create_dir_all(&base).unwrap();
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--base-path={}", base.display()))
            .arg(format!("--port={port}"))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting git daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "git daemon did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        GitServer { port, dir, child }
    }

    /// Creates `name.git` with one commit on main; returns (url, work tree).
    pub fn create_repo(&self, name: &str) -> (String, PathBuf) {
        let bare = self.dir.path().join("srv").join(format!("{name}.git"));
        git(
            self.dir.path(),
            &["init", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        let work = self.dir.path().join(format!("{name}-work"));
        git(
            self.dir.path(),
            &["init", "-b", "main", work.to_str().unwrap()],
        );
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        git(&work, &["commit", "--allow-empty", "-m", "first"]);
        git(&work, &["push", "-q", "origin", "main"]);
        (format!("git://127.0.0.1:{}/{name}.git", self.port), work)
    }

    /// Commits in `work` and pushes over git://; returns the commit.
    pub fn commit_and_push(&self, work: &Path, message: &str) -> String {
        git(work, &["commit", "--allow-empty", "-m", message]);
        let url = format!("git://127.0.0.1:{}/{}", self.port, bare_name(work));
        git(work, &["push", "-q", &url, "main"]);
        git(work, &["rev-parse", "HEAD"])
    }

    /// Tags HEAD in `work` and pushes the tag over git://.
    pub fn tag_and_push(&self, work: &Path, tag: &str) -> String {
        git(work, &["tag", tag]);
        let url = format!("git://127.0.0.1:{}/{}", self.port, bare_name(work));
        git(work, &["push", "-q", &url, tag]);
        git(work, &["rev-parse", "HEAD"])
    }
}

fn bare_name(work: &Path) -> String {
    let name = work.file_name().unwrap().to_str().unwrap();
    format!("{}.git", name.trim_end_matches("-work"))
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the watcher ----------------------------------------------------------------------------

/// The watcher running in this test process.
pub struct InProcess {
    pub grpc_url: String,
    pub webhook: SocketAddr,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), autocrane_version_watcher::Error>>,
}

impl InProcess {
    pub async fn start(state_dir: &Path) -> InProcess {
        Self::start_with_credentials(state_dir, None).await
    }

    /// Starts with `--registry-credentials FILE`.
    pub async fn start_with_credentials(
        state_dir: &Path,
        credentials: Option<PathBuf>,
    ) -> InProcess {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let args = autocrane_version_watcher::Args {
            server: ServerArgs::local(grpc),
            state_dir: state_dir.to_path_buf(),
            webhook_listen: OptionalAddr(Some(webhook)),
            webhook_token: None,
            registry_credentials: credentials,
            upstream_rate: 200.0,
            upstream_burst: 200,
            upstream_timeout_secs: 5,
            probe_timeout_secs: 30,
            // Tests keep their directory sources in temporary directories.
            directories: autocrane_api::runtime::local_dirs::LocalDirectoryArgs {
                allow_directories: vec![std::env::temp_dir()],
            },
        };
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(autocrane_version_watcher::run(args, Process::new(shutdown)));
        let grpc_url = format!("http://{grpc}");
        wait_for_port(grpc).await;
        InProcess {
            grpc_url,
            webhook,
            trigger,
            task,
        }
    }

    pub async fn client(&self) -> Grpc {
        connect(&self.grpc_url).await
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

async fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the watcher did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn connect(url: &str) -> Grpc {
    VersionWatcherClient::connect(url.to_string())
        .await
        .expect("connecting to the watcher")
}

/// The workspace's `autocrane` binary, built (incrementally) on first use, so it is never older
/// than this crate's sources.
pub fn autocrane_binary() -> PathBuf {
    autocrane_integration_tests::autocrane_bin()
}

/// The real `autocrane version-watcher` process.
pub struct BinaryWatcher {
    pub grpc_url: String,
    pub webhook: SocketAddr,
    child: Child,
}

impl BinaryWatcher {
    pub async fn start(state_dir: &Path) -> BinaryWatcher {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(autocrane_binary())
            .args(["version-watcher", "--admin-listen", "off"])
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--webhook-listen")
            .arg(webhook.to_string())
            .arg("--state-dir")
            .arg(state_dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting autocrane version-watcher");
        wait_for_port(grpc).await;
        BinaryWatcher {
            grpc_url: format!("http://{grpc}"),
            webhook,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> Grpc {
        connect(&self.grpc_url).await
    }

    /// SIGTERM, then wait for the exit (without blocking the runtime, whose tasks must close
    /// their connections for the server to finish draining).
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the watcher did not exit within 30 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for BinaryWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- specs and streams ----------------------------------------------------------------------

pub fn oci_spec(
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

pub fn semver_any() -> Option<pb::version_policy::Policy> {
    Some(pb::version_policy::Policy::Semver(pb::SemverPolicy {
        range: String::new(),
        include_prereleases: false,
        allow_v_prefix: true,
    }))
}

pub async fn watch(
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

pub async fn next(
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
pub async fn until(
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

pub fn current_name(message: &pb::WatchVersionsResponse) -> Option<String> {
    message
        .sources
        .first()?
        .current
        .as_ref()
        .map(|v| v.name.clone())
}

pub fn has_event(
    message: &pb::WatchVersionsResponse,
    kind: pb::VersionEventKind,
    version: &str,
) -> bool {
    message
        .events
        .iter()
        .any(|e| e.kind == kind as i32 && e.version.as_ref().is_some_and(|v| v.name == version))
}

pub fn events_of(messages: &[pb::WatchVersionsResponse]) -> Vec<(pb::VersionEventKind, String)> {
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

pub fn health(state: &pb::SourceState) -> pb::SourceHealth {
    pb::SourceHealth::try_from(state.status.as_ref().unwrap().health).unwrap()
}
