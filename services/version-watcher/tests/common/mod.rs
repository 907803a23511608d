//! The VersionWatcher's own fixtures: the watcher in-process or as the real `autocrane` binary,
//! and helpers on its watch stream. Everything general (processes, ports, git, waiting, the real
//! registry `Registry` and the `http` client) is the workspace harness, `autocrane_test_support`,
//! re-exported here.
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
use tonic::{Streaming, transport::Channel};

#[allow(unused_imports)] // each test file uses its own part of the harness
pub(crate) use autocrane_test_support::{
    Registry, Running, accepting, autocrane_bin, eventually, free_port, http, system_tool,
};

pub(crate) type Grpc = VersionWatcherClient<Channel>;

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
