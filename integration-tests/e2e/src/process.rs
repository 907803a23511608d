//! Processes a test starts: [`Running`] kills (SIGKILL) and reaps its process when dropped, and,
//! started in a process group of its own, every process of that group, so a program that forks
//! (`git daemon` runs `git-daemon` as a child) leaves nothing behind. Its output is either piped
//! and echoed to the test's output, or appended to a log file the test can read.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal};

use crate::{autocrane_bin, field};

/// How to start a [`Running`]: `Running::builder(command)…start()`.
#[derive(Debug)]
pub struct Launch {
    command: Command,
    log: Option<PathBuf>,
    own_group: bool,
}

impl Launch {
    /// Appends stdout and stderr to `file` instead of piping stderr.
    pub fn log_to(mut self, file: impl Into<PathBuf>) -> Self {
        self.log = Some(file.into());
        self
    }

    /// Starts the process as the leader of a new process group; dropping the [`Running`] kills
    /// the whole group (its children too, which a kill of the process alone would orphan).
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// Starts the process.
    pub fn start(self) -> Running {
        let Launch {
            mut command,
            log,
            own_group,
        } = self;
        command.stdin(Stdio::null());
        if own_group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        match &log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
                command
                    .stdout(file.try_clone().expect("cloning the log file"))
                    .stderr(file);
            }
            None => {
                command.stderr(Stdio::piped());
            }
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
        let output = match log {
            Some(path) => Output::File(path),
            None => Output::piped(&mut child),
        };
        Running {
            child,
            output,
            own_group,
        }
    }
}

/// Where a [`Running`]'s output goes.
#[derive(Debug)]
enum Output {
    /// stderr piped, echoed to the test's output and kept line by line.
    Piped {
        stderr: Arc<Mutex<Vec<String>>>,
        lines: mpsc::Receiver<String>,
    },
    /// stdout and stderr appended to this file.
    File(PathBuf),
}

impl Output {
    fn piped(child: &mut Child) -> Output {
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
        Output::Piped { stderr, lines }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, with its whole process group when it
/// was started in one ([`Launch::own_process_group`]).
#[derive(Debug)]
pub struct Running {
    child: Child,
    output: Output,
    own_group: bool,
}

impl Running {
    /// Starts `command` with stderr captured and echoed (stdout inherited).
    pub fn spawn(command: Command) -> Self {
        Self::builder(command).start()
    }

    /// Options for starting `command`: a log file, a process group of its own.
    pub fn builder(command: Command) -> Launch {
        Launch {
            command,
            log: None,
            own_group: false,
        }
    }

    /// Starts `command` with stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn logged(name: &str, command: Command, log_dir: &Path) -> Self {
        Self::builder(command)
            .log_to(log_dir.join(format!("{name}.log")))
            .start()
    }

    /// Starts `autocrane <args>` (info logs) logged to `<log_dir>/<name>.log`.
    pub fn autocrane(name: &str, args: &[String], log_dir: &Path) -> Self {
        let mut command = Command::new(autocrane_bin());
        command.args(args).env("AUTOCRANE_LOG", "info");
        Self::logged(name, command, log_dir)
    }

    /// Waits for an output line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let found = match &self.output {
                Output::Piped { lines, .. } => match lines.recv_timeout(left) {
                    Ok(line) => line.contains(needle).then_some(line),
                    Err(_) => None,
                },
                Output::File(_) => {
                    let found = self
                        .log_text()
                        .lines()
                        .find(|line| line.contains(needle))
                        .map(str::to_string);
                    if found.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    found
                }
            };
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no output line containing {needle:?} within {timeout:?}; output so far:\n{}",
                self.log_text()
            );
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

    /// Everything the process wrote so far (its stderr, or its log file).
    pub fn log_text(&self) -> String {
        match &self.output {
            Output::Piped { stderr, .. } => stderr.lock().expect("stderr buffer").join("\n"),
            Output::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    /// Everything the process wrote to stderr so far (the log file's text when logged to one).
    pub fn stderr_text(&self) -> String {
        self.log_text()
    }

    /// The process id (also the process group id with [`Launch::own_process_group`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (to the process, not its group) and waits up to `timeout` for the exit
    /// status, blocking the thread.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(Signal::TERM);
        self.wait_exit(timeout)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status without blocking the async
    /// runtime (whose tasks may hold connections the process waits for while it drains).
    pub async fn terminate_async(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(Signal::TERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits up to `timeout` for the process to exit, blocking the thread.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL (the whole group when started in one) and reap.
    pub fn kill(&mut self) {
        if self.own_group {
            // The group may already be empty; then there is nothing to kill.
            let _ = rustix::process::kill_process_group(pid_of(self.pid()), Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, signal: Signal) {
        let _ = rustix::process::kill_process(pid_of(self.pid()), signal);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(pid as i32).expect("a child's pid is positive")
}

/// Whether `pid` is a running process (not a zombie waiting to be reaped).
pub fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|fields| fields.first().map(String::as_str) != Some("Z"))
}

/// The fields of `/proc/<pid>/stat` after `pid (comm)`: state, ppid, pgrp, …
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: the fields start after the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The live (not zombie) processes of process group `pgid`, as (pid, command line), read from
/// `/proc`.
pub fn processes_in_group(pgid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            proc_stat(*pid).is_some_and(|fields| {
                fields.first().map(String::as_str) != Some("Z")
                    && fields.get(2) == Some(&pgid.to_string())
            })
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid, cmdline.trim().to_string())
        })
        .collect()
}
