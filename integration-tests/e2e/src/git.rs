//! Real git for tests: [`GitRepo`], a working repository on `main`, and [`GitServer`], one
//! `git daemon` on 127.0.0.1 serving a directory over `git://` (pushes enabled). The daemon runs
//! in a process group of its own, which is killed as a whole when the server is dropped: killing
//! only the `git` that was started would leave its `git-daemon` child running.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{Running, free_port, system_tool};

/// Runs `git <args>` in `dir` with a test identity and `main` as the default branch; returns its
/// trimmed stdout, panicking with its stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(system_tool("git"))
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
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A git working repository on branch `main`. The servers take no `file://` or local-path
/// remotes: serve it with [`GitServer::serve`] on its parent directory.
#[derive(Debug)]
pub struct GitRepo {
    /// The work tree.
    pub path: PathBuf,
}

impl GitRepo {
    /// `git init -b main` at `path` (created if missing).
    pub fn init(path: &Path) -> GitRepo {
        std::fs::create_dir_all(path).unwrap();
        let repo = GitRepo {
            path: path.to_path_buf(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// Runs git in the repository; returns its trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
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
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A `git daemon` on 127.0.0.1 serving the repositories under its base directory (`--export-all`,
/// pushes enabled); it and every process it forked are killed when dropped.
#[derive(Debug)]
pub struct GitServer {
    /// The port it listens on.
    pub port: u16,
    base: PathBuf,
    /// Its log and pid file, and the base and work trees of [`GitServer::start`].
    state: tempfile::TempDir,
    daemon: Running,
}

impl GitServer {
    /// Serves a new, empty base directory; add repositories with [`GitServer::create_repo`].
    pub fn start() -> GitServer {
        let state = tempfile::tempdir().unwrap();
        let base = state.path().join("srv");
        std::fs::create_dir_all(&base).unwrap();
        Self::launch(base, state)
    }

    /// Serves the repositories already under `base` (`git://…/<name>` is `base/<name>`).
    pub fn serve(base: &Path) -> GitServer {
        Self::launch(base.to_path_buf(), tempfile::tempdir().unwrap())
    }

    fn launch(base: PathBuf, state: tempfile::TempDir) -> GitServer {
        let port = free_port();
        let mut command = Command::new(system_tool("git"));
        command
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!(
                "--pid-file={}",
                state.path().join("git-daemon.pid").display()
            ))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base);
        let daemon = Running::builder(command)
            .log_to(state.path().join("git-daemon.log"))
            .own_process_group()
            .start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen on port {port}: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        GitServer {
            port,
            base,
            state,
            daemon,
        }
    }

    /// The directory it serves.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `git://127.0.0.1:<port>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// The process group of the daemon (the pid of the `git` that was started).
    pub fn process_group(&self) -> u32 {
        self.daemon.pid()
    }

    /// The pid of the `git-daemon` process (from its `--pid-file`).
    pub fn daemon_pid(&self) -> u32 {
        let file = self.state.path().join("git-daemon.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "no pid in {}", file.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates the bare `name.git` with one empty commit on main; returns (url, work tree).
    pub fn create_repo(&self, name: &str) -> (String, PathBuf) {
        let bare = self.base.join(format!("{name}.git"));
        let state = self.state.path();
        git(
            state,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        let work = state.join(format!("{name}-work"));
        git(state, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        git(&work, &["commit", "--allow-empty", "-m", "first"]);
        git(&work, &["push", "-q", "origin", "main"]);
        (self.url(&format!("{name}.git")), work)
    }

    /// Commits in `work` (from [`GitServer::create_repo`]) and pushes over git://; returns the
    /// commit.
    pub fn commit_and_push(&self, work: &Path, message: &str) -> String {
        git(work, &["commit", "--allow-empty", "-m", message]);
        git(work, &["push", "-q", &self.work_url(work), "main"]);
        git(work, &["rev-parse", "HEAD"])
    }

    /// Tags HEAD in `work` and pushes the tag over git://; returns the commit.
    pub fn tag_and_push(&self, work: &Path, tag: &str) -> String {
        git(work, &["tag", tag]);
        git(work, &["push", "-q", &self.work_url(work), tag]);
        git(work, &["rev-parse", "HEAD"])
    }

    /// The git:// URL of the bare repository behind a work tree of [`GitServer::create_repo`].
    fn work_url(&self, work: &Path) -> String {
        let name = work.file_name().unwrap().to_str().unwrap();
        self.url(&format!("{}.git", name.trim_end_matches("-work")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{is_alive, processes_in_group};

    #[tokio::test]
    async fn a_dropped_git_server_leaves_no_process_of_its_group() {
        let server = GitServer::start();
        let (url, work) = server.create_repo("app");
        let pushed = server.commit_and_push(&work, "second");
        let clone = tempfile::tempdir().unwrap();
        git(clone.path(), &["clone", "-q", &url, "app"]);
        assert_eq!(
            git(&clone.path().join("app"), &["rev-parse", "HEAD"]),
            pushed
        );

        let group = server.process_group();
        let daemon = server.daemon_pid();
        let members = processes_in_group(group);
        assert!(
            members.iter().any(|(pid, _)| *pid == daemon),
            "git-daemon (pid {daemon}) runs in the server's group {group}: {members:?}"
        );
        assert_ne!(daemon, group, "git-daemon is a child of the `git` started");

        drop(server);
        // SIGKILL is delivered asynchronously; a zombie left for init to reap is not running.
        crate::eventually(
            Duration::from_secs(10),
            "the git server's process group to be empty",
            || async { processes_in_group(group).is_empty() },
        )
        .await;
        assert!(!is_alive(daemon), "git-daemon {daemon} outlived its server");
    }
}
