//! [`VersionWatcherProcess`], the one way tests start the VersionWatcher as a process, and
//! [`DataStack`]: it and a DataRepository as real `autocrane` processes, the upstream every data
//! test needs (the DataRepository's own tests, the DataDeployer's). Only the
//! processes live here; the gRPC calls belong to each crate's tests, which know the API.
//!
//! The tests' origins (`git daemon`, HTTP servers) listen on 127.0.0.1, which both servers refuse
//! unless allowed, so [`DataStack::start`] allows it by name (`--allow-upstream-host 127.0.0.1`)
//! as an operator with a local origin would; [`DataStack::start_with_egress`] chooses.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{Running, eventually, free_port, strings};

/// A VersionWatcher and a DataRepository, started with `autocrane`, logging into the test's
/// directory; without a cluster, both run with `--insecure-allow-anonymous` (their
/// authentication has its own test, `services/data-repository/tests/auth.rs`).
#[derive(Debug)]
pub struct DataStack {
    /// The test's directory: logs, the watcher's state, the store; directory sources must lie
    /// below it.
    pub dir: PathBuf,
    /// The VersionWatcher process.
    pub vw: Running,
    /// `http://127.0.0.1:<port>` of the VersionWatcher.
    pub vw_url: String,
    /// The DataRepository process.
    pub repo: Running,
    /// The DataRepository's port.
    pub repo_port: u16,
    /// `http://127.0.0.1:<port>` of the DataRepository.
    pub repo_url: String,
    /// The DataRepository's store.
    pub store: PathBuf,
    /// The DataRepository's command line (without the binary), for restarts.
    pub repo_args: Vec<String>,
}

impl DataStack {
    /// Starts both, the repository with `repo_args` added, both allowed to reach 127.0.0.1, and
    /// waits until both accept connections.
    pub async fn start(dir: &Path, repo_args: &[&str]) -> DataStack {
        Self::start_with_egress(dir, repo_args, &["127.0.0.1"], &["127.0.0.1"]).await
    }

    /// Like [`DataStack::start`], with `--allow-upstream-host` for each pattern of `vw_allowed`
    /// on the VersionWatcher and of `repo_allowed` on the DataRepository.
    pub async fn start_with_egress(
        dir: &Path,
        repo_args: &[&str],
        vw_allowed: &[&str],
        repo_allowed: &[&str],
    ) -> DataStack {
        let VersionWatcherProcess {
            process: vw,
            url: vw_url,
        } = VersionWatcherProcess::start_allowing(dir, vw_allowed).await;
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
            "--insecure-allow-anonymous",
        ]);
        args.extend(allow_upstream_hosts(repo_allowed));
        args.extend(strings(repo_args));
        let repo = Running::autocrane("data-repository", &args, dir);
        accepting(([127, 0, 0, 1], repo_port).into()).await;
        DataStack {
            dir: dir.to_path_buf(),
            vw,
            vw_url,
            repo,
            repo_port,
            repo_url: format!("http://127.0.0.1:{repo_port}"),
            store,
            repo_args: args,
        }
    }

    /// Kills the repository with SIGKILL.
    pub fn kill_repository(&mut self) {
        self.repo.kill();
    }

    /// Starts the repository again on the same port and store, and waits until it accepts
    /// connections.
    pub async fn restart_repository(&mut self) {
        self.repo.kill();
        self.repo = Running::autocrane("data-repository", &self.repo_args, &self.dir);
        accepting(([127, 0, 0, 1], self.repo_port).into()).await;
    }
}

/// The VersionWatcher as the real `autocrane version-watcher` process on a free port of
/// 127.0.0.1, logging to `<dir>/version-watcher.log`, its state in `<dir>/vw-state`, directory
/// sources allowed under `dir` only, callers anonymous (no cluster to review tokens with: its
/// authentication has its own tests). Every test that runs it as a process starts it here, so a
/// flag each of them needs is added once.
#[derive(Debug)]
pub struct VersionWatcherProcess {
    /// The process (killed on drop).
    pub process: Running,
    /// `http://127.0.0.1:<port>`, its gRPC endpoint.
    pub url: String,
}

impl VersionWatcherProcess {
    /// Starts it, allowed to reach upstreams on 127.0.0.1 (the tests' registries, `git daemon`s
    /// and HTTP origins), and waits until it accepts connections.
    pub async fn start(dir: &Path) -> VersionWatcherProcess {
        Self::start_allowing(dir, &["127.0.0.1"]).await
    }

    /// Starts it with `--allow-upstream-host` for each of `allowed`, and waits until it accepts
    /// connections.
    pub async fn start_allowing(dir: &Path, allowed: &[&str]) -> VersionWatcherProcess {
        let port = free_port();
        let mut args = strings(&[
            "version-watcher",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "off",
            "--webhook-listen",
            "off",
            "--state-dir",
            dir.join("vw-state").to_str().unwrap(),
            // Directory sources live under the test's directory; nothing else is readable.
            "--allow-directory",
            dir.to_str().unwrap(),
            // No cluster to review tokens with: the callers send none.
            "--insecure-allow-anonymous",
        ]);
        args.extend(allow_upstream_hosts(allowed));
        let process = Running::autocrane("version-watcher", &args, dir);
        accepting(([127, 0, 0, 1], port).into()).await;
        VersionWatcherProcess {
            process,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// `--allow-upstream-host PATTERN` for each pattern.
fn allow_upstream_hosts(patterns: &[&str]) -> Vec<String> {
    patterns
        .iter()
        .flat_map(|pattern| ["--allow-upstream-host".to_string(), pattern.to_string()])
        .collect()
}

/// Waits until `address` accepts TCP connections.
pub async fn accepting(address: SocketAddr) {
    eventually(
        Duration::from_secs(30),
        &format!("{address} to accept connections"),
        || async move { tokio::net::TcpStream::connect(address).await.is_ok() },
    )
    .await;
}
