//! The one test harness of the workspace (`autocrane_test_support`): every crate's tests use it
//! instead of carrying their own copy.
//!
//! | module | what it gives |
//! |---|---|
//! | this file | the workspace root, real binaries and third-party tools (installed by `scripts/install-test-tools.sh`), free ports, [`eventually`], one-shot commands |
//! | [`cluster`] | [`TestCluster`]: the Kubernetes API server of every test, kube-sim or the real control plane as `AUTOCRANE_TEST_CLUSTER=sim\|real` says, with a kubelet-sim node when pods must run |
//! | [`process`] | [`Running`]: a process killed on drop, its whole process group when asked; [`processes_in_group`] to prove nothing outlived it |
//! | [`git`] | [`GitRepo`] work trees and [`GitServer`], one `git daemon` whose group is killed on drop |
//! | [`http_origin`] | [`HttpOrigin`], archives served with ETags; [`post_sink`], bodies POSTed recorded |
//! | [`data`] | deterministic bytes, raw tar archives, gzip |
//! | [`registry`] | [`Registry`]: a real OCI registry (`docker-registry`) tags are pushed to; [`http`], a plain HTTP client |
//! | [`secrets`] | [`assert_no_secrets`] in logs and [`command_line`]s: tokens and keys the test handled, and anything shaped like a credential |
//! | [`stack`] | [`VersionWatcherProcess`] and [`DataStack`]: the VersionWatcher (and a DataRepository) as `autocrane` processes |
//!
//! A missing tool is a test failure with a message saying how to install it, never a skip. It
//! depends on no AutoCrane crate, so any crate can dev-depend on it; the simulators it starts
//! (kube-sim, kubelet-sim) dev-depend on it too, which cargo allows (their tests link the same
//! library). The gRPC clients of a service's API stay in that service's tests.

pub mod cluster;
pub mod data;
pub mod git;
pub mod http_origin;
pub mod process;
pub mod registry;
pub mod secrets;
pub mod stack;

pub use cluster::{Backend, ClusterOptions, KubectlOutput, TestCluster};
pub use data::{RawEntry, file, gzip, noise, raw_tar, strings, symlink};
pub use git::{GitRepo, GitServer, git};
pub use http_origin::{HttpOrigin, post_sink};
pub use process::{Launch, Running, is_alive, processes_in_group};
pub use registry::{Registry, http};
pub use secrets::{assert_no_secrets, assert_traced, command_line};
pub use stack::{DataStack, VersionWatcherProcess, accepting};

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// The workspace root (the directory holding `proto/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("integration-tests/e2e lives two levels below the workspace root")
        .to_path_buf()
}

/// A third-party tool installed by `scripts/install-test-tools.sh`; panics with instructions when
/// it is missing.
pub fn tool(name: &str) -> PathBuf {
    let root = workspace_root();
    let path = match name {
        "grpcurl" | "python" => root.join(".venv/bin").join(name),
        "buf" => root.join(".tools/node_modules/.bin/buf"),
        other => panic!("unknown tool {other}"),
    };
    assert!(
        path.exists(),
        "{name} is missing at {}: run scripts/install-test-tools.sh (the README's test command does)",
        path.display()
    );
    path
}

/// A program on PATH (for example `kubectl`, `git`); panics when it is missing.
pub fn system_tool(name: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH: run scripts/install-test-tools.sh"))
}

/// The value of `key=value` in a log line (values end at whitespace).
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let marker = format!("{key}=");
    let start = line
        .find(&marker)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + marker.len();
    line[start..].split_whitespace().next().unwrap_or_default()
}

/// Runs a command to completion and returns (success, stdout, stderr).
pub fn run(command: &mut Command) -> (bool, String, String) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("running {command:?}: {err}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `autocrane` binary of this workspace, built (incrementally) on first use.
pub fn autocrane_bin() -> PathBuf {
    workspace_binary("autocrane")
}

/// A binary of this workspace (`autocrane`, `kubelet-sim`, `kube-sim`, …) in the target
/// directory, after one `cargo build --workspace --all-targets` per test process. With
/// `AUTOCRANE_TEST_BIN_DIR` set, the binaries are taken from that directory as they are, nothing
/// built: for running one suite against binaries built elsewhere (another checkout, a release
/// build) while this workspace does not build as a whole.
pub fn workspace_binary(name: &str) -> PathBuf {
    static TARGET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let bin = TARGET
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("AUTOCRANE_TEST_BIN_DIR") {
                return PathBuf::from(dir);
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut command = Command::new(cargo);
            // `cargo test` gives each test process the variables of its own package
            // (CARGO_MANIFEST_DIR, CARGO_PKG_*, …). Passed on, they would differ from what the
            // outer cargo saw, and build scripts that watch them (ring's does) would rerun,
            // rebuilding everything above them once per test package.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                let from_the_test_harness = name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_EXE_")
                    || matches!(
                        name.as_ref(),
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "CARGO_RUSTC_CURRENT_DIR"
                            | "OUT_DIR"
                    );
                if from_the_test_harness {
                    command.env_remove(name.as_ref());
                }
            }
            let status = command
                // The whole workspace with every target, as CI builds it before testing: with
                // `-p autocrane` alone, cargo unifies features differently, rebuilds half the
                // dependency graph and leaves a binary the next `cargo test --workspace` rebuilds.
                .args(["build", "--quiet", "--workspace", "--all-targets"])
                .current_dir(workspace_root())
                .status()
                .expect("running cargo build --workspace --all-targets");
            assert!(
                status.success(),
                "cargo build --workspace --all-targets failed"
            );
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"))
                .join("debug")
        })
        .join(name);
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// `GET path` over plain HTTP/1.1 (an admin listener's `/metrics`, `/healthz`): the status code
/// and the whole response, headers included.
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// A free TCP port on 127.0.0.1 (bound, read, released: start the server on it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding 127.0.0.1:0")
}

/// What a condition checked by [`eventually`] returns: `true`/`Some(value)` when it holds.
pub trait Satisfied {
    /// What [`eventually`] returns once the condition holds.
    type Value;
    /// `Some` when the condition holds.
    fn satisfied(self) -> Option<Self::Value>;
}

impl Satisfied for bool {
    type Value = ();
    fn satisfied(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Satisfied for Option<T> {
    type Value = T;
    fn satisfied(self) -> Option<T> {
        self
    }
}

/// Checks `check` every 25 ms until it holds (`true` or `Some(value)`), and returns its value;
/// panics naming `what` after `timeout`. Tests wait on the condition a sleep would stand for, with
/// a generous deadline: how fast it happens is a benchmark's business, not a test's.
pub async fn eventually<O, F, Fut>(timeout: Duration, what: &str, mut check: F) -> O::Value
where
    O: Satisfied,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = O>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await.satisfied() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A host name other than `localhost` that `/etc/hosts` maps to a loopback address: it resolves
/// without any DNS server, and nothing in the name says "loopback", so only a check of the
/// *resolved* address refuses it (the egress tests' stand-in for a name that rebinds to
/// 127.0.0.1). Panics when `/etc/hosts` has none.
pub fn loopback_alias() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").expect("reading /etc/hosts");
    hosts
        .lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            let address: std::net::IpAddr = words.next()?.parse().ok()?;
            (address == std::net::IpAddr::from([127, 0, 0, 1])).then_some(words)
        })
        .flatten()
        .find(|name| !name.contains("localhost"))
        .expect("/etc/hosts maps no name besides localhost to 127.0.0.1 (add e.g. `127.0.0.1 vm`)")
        .to_string()
}
