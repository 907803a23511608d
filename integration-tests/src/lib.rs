//! Test support for AutoCrane's end-to-end tests: locating the workspace, the real binaries and the
//! real third-party tools (installed by `scripts/install-test-tools.sh`), and running processes
//! that are killed when the test ends.
//!
//! A missing tool is a test failure with a message saying how to install it, never a skip.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

/// The workspace root (the directory holding `proto/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests lives in the workspace")
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

/// A child process killed (SIGKILL) and reaped when dropped, whose stderr is collected and echoed
/// to the test's output.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `command` with stderr captured (stdout inherited).
    pub fn spawn(mut command: Command) -> Self {
        command.stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("    | {line}");
                collected.lock().expect("stderr buffer").push(line.clone());
                let _ = sender.send(line);
            }
        });
        Self {
            child,
            stderr,
            lines,
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no stderr line containing {needle:?} within {timeout:?}; stderr so far:\n{}",
                    self.stderr_text()
                ),
            }
        }
    }

    /// Waits for the runtime's "gRPC server listening address=…" line and returns the address.
    pub fn grpc_address(&self) -> SocketAddr {
        let line = self.wait_for_line("gRPC server listening", Duration::from_secs(30));
        field(&line, "address")
            .parse()
            .unwrap_or_else(|err| panic!("bad address in {line:?}: {err}"))
    }

    /// Waits for the admin listener's line and returns its address.
    pub fn admin_address(&self) -> SocketAddr {
        let line = self.wait_for_line("Admin listener serving", Duration::from_secs(30));
        field(&line, "address")
            .parse()
            .unwrap_or_else(|err| panic!("bad address in {line:?}: {err}"))
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr buffer").join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
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
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            let bin = target.join("debug/autocrane");
            assert!(bin.exists(), "{} missing after build", bin.display());
            bin
        })
        .clone()
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
