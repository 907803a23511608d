//! Test harness shared by the DataRepository and DataDeployer end-to-end tests: the real
//! `target/debug/autocrane` binary run as separate processes, real origins (git repositories
//! through `file://` or `git daemon`, an HTTP server handing out archives with ETags), and gRPC
//! clients.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use autocrane_api::proto::{
    data_v1::{self as pb, data_repository_client::DataRepositoryClient},
    version_v1::{self as vpb, version_watcher_client::VersionWatcherClient},
};
use tonic::transport::Channel;

/// The workspace's `autocrane` binary, built (incrementally) on first use.
pub fn autocrane_bin() -> PathBuf {
    autocrane_integration_tests::autocrane_bin()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) when dropped; its stderr and stdout go to a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `autocrane <args>`.
    pub fn autocrane(name: &str, args: &[String], log_dir: &Path) -> Proc {
        Self::spawn(name, &autocrane_bin(), args, log_dir)
    }

    /// Starts any program.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(program)
            .args(args)
            .env("AUTOCRANE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A channel to a gRPC server, once it answers.
pub async fn channel(url: &str) -> Channel {
    let url = url.to_string();
    eventually(
        Duration::from_secs(30),
        &format!("{url} to accept connections"),
        || {
            let url = url.clone();
            async move {
                tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                    .ok()
            }
        },
    )
    .await
}

/// A VersionWatcher and a DataRepository, as real processes.
#[derive(Debug)]
pub struct Stack {
    pub dir: PathBuf,
    pub vw: Proc,
    pub vw_url: String,
    pub repo: Proc,
    pub repo_port: u16,
    pub repo_url: String,
    pub store: PathBuf,
    pub repo_args: Vec<String>,
}

impl Stack {
    /// Starts both, the repository with `repo_args` added.
    pub async fn start(dir: &Path, repo_args: &[&str]) -> Stack {
        let vw_port = free_port();
        let vw_url = format!("http://127.0.0.1:{vw_port}");
        let vw = Proc::autocrane(
            "version-watcher",
            &strings(&[
                "version-watcher",
                "--listen",
                &format!("127.0.0.1:{vw_port}"),
                "--admin-listen",
                "off",
                "--webhook-listen",
                "off",
                "--state-dir",
                dir.join("vw-state").to_str().unwrap(),
                // Directory sources live under the test's directory; nothing else is readable.
                "--allow-directory",
                dir.to_str().unwrap(),
            ]),
            dir,
        );
        let repo_port = free_port();
        let store = dir.join("store");
        let mut args = strings(&[
            "data-repository",
            "--listen",
            &format!("127.0.0.1:{repo_port}"),
            "--admin-listen",
            "off",
            "--store",
            store.to_str().unwrap(),
            "--version-watcher",
            &vw_url,
            "--allow-directory",
            dir.to_str().unwrap(),
        ]);
        args.extend(strings(repo_args));
        let repo = Proc::autocrane("data-repository", &args, dir);
        let repo_url = format!("http://127.0.0.1:{repo_port}");
        channel(&vw_url).await;
        channel(&repo_url).await;
        Stack {
            dir: dir.to_path_buf(),
            vw,
            vw_url,
            repo,
            repo_port,
            repo_url,
            store,
            repo_args: args,
        }
    }

    /// Kills the repository with SIGKILL.
    pub fn kill_repository(&mut self) {
        self.repo.kill();
    }

    /// Starts the repository again on the same port and store.
    pub async fn restart_repository(&mut self) {
        self.repo.kill();
        self.repo = Proc::autocrane("data-repository", &self.repo_args, &self.dir);
        channel(&self.repo_url).await;
    }

    /// A DataRepository client.
    pub async fn repository(&self) -> DataRepositoryClient<Channel> {
        DataRepositoryClient::new(channel(&self.repo_url).await).max_decoding_message_size(8 << 20)
    }

    /// A VersionWatcher client.
    pub async fn version_watcher(&self) -> VersionWatcherClient<Channel> {
        VersionWatcherClient::new(channel(&self.vw_url).await)
    }

    /// Tracks `spec`; returns the source id.
    pub async fn track(&self, spec: vpb::SourceSpec) -> String {
        let response = self
            .repository()
            .await
            .track_source(pb::TrackSourceRequest { source: Some(spec) })
            .await
            .expect("TrackSource");
        response.into_inner().source.unwrap().source_id
    }

    /// Asks the VersionWatcher to probe now (instead of waiting for the poll).
    pub async fn probe(&self, source_id: &str) {
        let _ = self
            .version_watcher()
            .await
            .probe(vpb::ProbeRequest {
                source_id: source_id.to_string(),
            })
            .await;
    }

    /// Waits until `version` of `source_id` is synced; returns its manifest.
    pub async fn synced(&self, source_id: &str, version: &str) -> pb::Manifest {
        let client = self.repository().await;
        let probe_every = Duration::from_millis(500);
        let mut last_probe = Instant::now();
        eventually(
            Duration::from_secs(60),
            &format!("version {version} of {source_id} to sync"),
            || {
                let mut client = client.clone();
                let due = last_probe.elapsed() > probe_every;
                if due {
                    last_probe = Instant::now();
                }
                async move {
                    if due {
                        self.probe(source_id).await;
                    }
                    client
                        .get_manifest(pb::GetManifestRequest {
                            source_id: source_id.to_string(),
                            version: version.to_string(),
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().manifest)
                }
            },
        )
        .await
    }

    /// The source's sync status, once it matches `predicate`.
    pub async fn status_until(
        &self,
        source_id: &str,
        what: &str,
        predicate: impl Fn(&pb::SyncStatus) -> bool,
    ) -> pb::SyncStatus {
        let client = self.repository().await;
        let predicate = &predicate;
        eventually(Duration::from_secs(60), what, || {
            let mut client = client.clone();
            async move {
                let sources = client
                    .list_sources(pb::ListSourcesRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .sources;
                let status = sources
                    .into_iter()
                    .find(|s| s.source_id == source_id)?
                    .status?;
                predicate(&status).then_some(status)
            }
        })
        .await
    }
}

/// `&[&str]` → `Vec<String>`.
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A git source spec polling every second.
pub fn git_spec(url: &str, path: &str) -> vpb::SourceSpec {
    vpb::SourceSpec {
        upstream: Some(vpb::source_spec::Upstream::Git(vpb::GitSource {
            url: url.to_string(),
            r#ref: "refs/heads/main".to_string(),
            path: path.to_string(),
        })),
        policy: None,
        poll_interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    }
}

/// An HTTP archive source spec polling every second.
pub fn http_spec(url: &str) -> vpb::SourceSpec {
    vpb::SourceSpec {
        upstream: Some(vpb::source_spec::Upstream::Http(vpb::HttpSource {
            url: url.to_string(),
            json_pointer: String::new(),
        })),
        policy: None,
        poll_interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    }
}

/// A directory source spec (each sub-directory a version), polling every second.
pub fn dir_spec(path: &Path) -> vpb::SourceSpec {
    vpb::SourceSpec {
        upstream: Some(vpb::source_spec::Upstream::Directory(
            vpb::DirectorySource {
                path: path.to_str().unwrap().to_string(),
                version_file: String::new(),
            },
        )),
        policy: Some(vpb::VersionPolicy {
            policy: Some(vpb::version_policy::Policy::Regex(vpb::RegexPolicy {
                pattern: r"v(?P<n>\d+)".to_string(),
                capture: "n".to_string(),
                order: vpb::RegexOrder::Numeric as i32,
            })),
        }),
        poll_interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    }
}

/// A git working repository on branch `main`.
#[derive(Debug)]
pub struct GitRepo {
    pub path: PathBuf,
}

impl GitRepo {
    /// `git init -b main` at `path`.
    pub fn init(path: &Path) -> GitRepo {
        std::fs::create_dir_all(path).unwrap();
        let repo = GitRepo {
            path: path.to_path_buf(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// Runs git in the repository; returns stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args([
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Writes `files` (path, content), removes `removed`, commits everything; returns the sha.
    pub fn commit(&self, files: &[(&str, &[u8])], removed: &[&str]) -> String {
        for (path, content) in files {
            let full = self.path.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, content).unwrap();
        }
        for path in removed {
            std::fs::remove_file(self.path.join(path)).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", "change"]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// The `file://` URL.
    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

/// `git daemon` serving `base` on a free port; killed on drop.
pub fn git_daemon(base: &Path, log_dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let proc = Proc::spawn(
        "git-daemon",
        Path::new("git"),
        &strings(&[
            "daemon",
            "--reuseaddr",
            &format!("--base-path={}", base.display()),
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            base.to_str().unwrap(),
        ]),
        log_dir,
    );
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "git daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc, port)
}

/// Served files: path → (body, ETag).
type Files = Arc<Mutex<HashMap<String, (Vec<u8>, String)>>>;

/// A small HTTP/1.1 origin serving byte blobs with strong ETags (a new ETag on every `put`),
/// answering `If-None-Match` with 304, one connection per request.
#[derive(Clone, Debug)]
pub struct HttpOrigin {
    pub port: u16,
    files: Files,
}

impl HttpOrigin {
    /// Starts serving on a free port (a background thread).
    pub fn start() -> HttpOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let origin = HttpOrigin {
            port,
            files: Arc::default(),
        };
        let files = origin.files.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let files = files.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut if_none_match = None;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("if-none-match")
                        {
                            if_none_match = Some(v.trim().to_string());
                        }
                    }
                    let entry = files.lock().unwrap().get(&path).cloned();
                    let head = match &entry {
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                        Some((_, etag)) if if_none_match.as_deref() == Some(etag.as_str()) => {
                            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
                        }
                        Some((body, etag)) => format!(
                            "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        ),
                    };
                    let _ = stream.write_all(head.as_bytes());
                    if let Some((body, etag)) = entry
                        && if_none_match.as_deref() != Some(etag.as_str())
                    {
                        let _ = stream.write_all(&body);
                    }
                    let _ = stream.flush();
                });
            }
        });
        origin
    }

    /// Serves `body` at `path` under a new ETag; returns the version name (the bare ETag).
    pub fn put(&self, path: &str, body: Vec<u8>) -> String {
        let digest = ring_free_hash(&body);
        let etag = format!("\"{digest:016x}\"");
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), (body, etag));
        format!("{digest:016x}")
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn ring_free_hash(bytes: &[u8]) -> u64 {
    // FNV-1a: distinct archives get distinct ETags.
    let mut hash = 0xcbf29ce484222325u64;
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// Deterministic pseudo-random bytes (incompressible content without a rand dependency).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar archive from (path, content) pairs; paths are written raw (no sanitising), so tests can
/// build hostile archives.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_old();
        let name = entry.path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_mode(0o644);
        header.set_mtime(0);
        match &entry.link {
            Some(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.content.len() as u64);
                header.set_cksum();
                builder.append(&header, entry.content.as_slice()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// One entry of [`raw_tar`].
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub path: String,
    pub content: Vec<u8>,
    pub link: Option<String>,
}

/// A regular file entry.
pub fn file(path: &str, content: &[u8]) -> RawEntry {
    RawEntry {
        path: path.into(),
        content: content.to_vec(),
        link: None,
    }
}

/// A symlink entry.
pub fn symlink(path: &str, target: &str) -> RawEntry {
    RawEntry {
        path: path.into(),
        content: Vec::new(),
        link: Some(target.into()),
    }
}

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Reads a whole file.
pub fn read(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}
