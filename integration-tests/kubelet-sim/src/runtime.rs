//! Running a container as a local process. As root (the faithful mode) each container gets its own
//! mount and PID namespaces: `setpriv --pdeathsig KILL unshare --mount --pid --fork --kill-child
//! sh -c SCRIPT`, where the script mounts an overlay with `lowerdir=/` and a per-run upper/work
//! dir, binds the host's other mounts (`/dev`, `/sys`, …) and a fresh `/proc`, binds the pod's
//! volumes at their `mountPath` inside it, then `chroot`s into it and `exec`s the program, which is
//! PID 1 of its namespace (as in a real container: without a handler it ignores SIGTERM). The host
//! sees none of these mounts. When PID 1 dies the kernel kills everything else in the namespace,
//! and if the simulator dies, `unshare` gets SIGKILL (parent-death signal) and `--kill-child`
//! passes it on, so no container process can outlive the simulator. The spawned `unshare` leads
//! the container's process group, which is what gets signalled; it exits with the program's status.
//!
//! Without root the program runs directly on the host (no mount paths; see README).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};

/// Absolute paths of the host tools the runtime uses.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `unshare` (util-linux).
    pub unshare: PathBuf,
    /// `mount`.
    pub mount: PathBuf,
    /// `chroot`.
    pub chroot: PathBuf,
    /// `setpriv` (util-linux), to give containers a parent-death signal.
    pub setpriv: PathBuf,
    /// `nsenter`, for exec probes.
    pub nsenter: PathBuf,
    /// `/bin/sh`.
    pub sh: PathBuf,
}

impl Tools {
    /// Find the tools on `PATH` (plus the sbin directories). Names the first missing one.
    pub fn find() -> Result<Tools, String> {
        let f = |name: &str| {
            which(name).ok_or_else(|| {
                format!("required tool `{name}` not found on PATH or in /usr/sbin, /sbin")
            })
        };
        Ok(Tools {
            unshare: f("unshare")?,
            mount: f("mount")?,
            chroot: f("chroot")?,
            setpriv: f("setpriv")?,
            nsenter: f("nsenter")?,
            sh: f("sh")?,
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Top-level host mounts other than `/` (from `/proc/self/mountinfo`), which an overlay of `/`
/// does not include and so are bound recursively into every container's root. Mounts under
/// `exclude` (the simulator's state directory) are left out.
pub fn host_mounts(exclude: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p != Path::new("/"))
        .collect();
    points.sort();
    points.dedup();
    let mut top: Vec<PathBuf> = Vec::new();
    for p in points {
        if !top.iter().any(|t| p.starts_with(t)) && !p.starts_with(exclude) {
            top.push(p);
        }
    }
    top
}

/// One volume mount of a container.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Host directory (the volume).
    pub source: PathBuf,
    /// `mountPath` inside the container.
    pub target: String,
    /// `readOnly`.
    pub read_only: bool,
}

/// Per-run directories of the container's root overlay.
#[derive(Debug, Clone)]
pub struct RootFs {
    /// Overlay upper dir (the container's writable layer).
    pub upper: PathBuf,
    /// Overlay work dir.
    pub work: PathBuf,
    /// Where the overlay is mounted (inside the private namespace only).
    pub merged: PathBuf,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Program (resolved on the container's `PATH`).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Full environment.
    pub env: Vec<(String, String)>,
    /// `workingDir` (default `/`).
    pub working_dir: String,
    /// Volume mounts.
    pub mounts: Vec<Mount>,
    /// The root overlay; None runs the program directly on the host.
    pub root: Option<RootFs>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

/// The script run inside the new mount namespace. Positional args: mount, chroot, merged, upper,
/// work, workdir, N host mounts, N paths, M volumes, M × (source, target, ro|rw), program, args.
const SCRIPT: &str = r#"set -e
MOUNT=$1; CHROOT=$2; M=$3; U=$4; W=$5; WD=$6; shift 6
"$MOUNT" --make-rprivate /
"$MOUNT" -t overlay overlay -o "lowerdir=/,upperdir=$U,workdir=$W" "$M"
n=$1; shift
while [ "$n" -gt 0 ]; do
  "$MOUNT" --rbind "$1" "$M$1" 2>/dev/null || echo "kubelet-sim: cannot bind host mount $1" >&2
  shift; n=$((n-1))
done
"$MOUNT" -t proc proc "$M/proc"
n=$1; shift
while [ "$n" -gt 0 ]; do
  d=$("$CHROOT" "$M" /bin/sh -c 'mkdir -p "$1" && cd "$1" && pwd -P' sh "$2")
  "$MOUNT" --bind "$1" "$M$d"
  if [ "$3" = ro ]; then "$MOUNT" -o remount,bind,ro "$M$d"; fi
  shift 3; n=$((n-1))
done
exec "$CHROOT" "$M" /bin/sh -c 'mkdir -p "$1" && cd "$1" && shift && exec "$@"' sh "$WD" "$@"
"#;

/// Start the container's process, in its own process group, with stdout and stderr appended to
/// `launch.log`.
pub fn spawn(tools: &Tools, host_mounts: &[PathBuf], launch: &Launch) -> io::Result<Child> {
    if let Some(parent) = launch.log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    let mut cmd = Command::new(&tools.setpriv);
    cmd.arg("--pdeathsig").arg("KILL").arg("--");
    match &launch.root {
        Some(root) => {
            for d in [&root.upper, &root.work, &root.merged] {
                std::fs::create_dir_all(d)?;
            }
            cmd.arg(&tools.unshare)
                .args([
                    "--mount",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--propagation",
                    "private",
                    "--",
                ])
                .arg(&tools.sh)
                .arg("-c")
                .arg(SCRIPT)
                .arg("sh");
            cmd.arg(&tools.mount)
                .arg(&tools.chroot)
                .arg(&root.merged)
                .arg(&root.upper)
                .arg(&root.work)
                .arg(&launch.working_dir);
            cmd.arg(host_mounts.len().to_string()).args(host_mounts);
            cmd.arg(launch.mounts.len().to_string());
            for m in &launch.mounts {
                cmd.arg(&m.source)
                    .arg(&m.target)
                    .arg(if m.read_only { "ro" } else { "rw" });
            }
            cmd.arg(&launch.program).args(&launch.args);
        }
        None => {
            cmd.arg(&launch.program).args(&launch.args);
            let wd = Path::new(&launch.working_dir);
            if wd.is_dir() {
                cmd.current_dir(wd);
            }
        }
    }
    cmd.env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.process_group(0).kill_on_drop(true);
    cmd.spawn()
}

/// The container's PID 1 as the host sees it: the child `unshare` forked.
fn forked_child(outer: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn exited(pid: u32) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next().map(String::from))
        });
    state.is_none_or(|s| s == "Z" || s == "X")
}

/// Wait (up to 5 s) until a just-spawned isolated container has finished its mount setup and
/// chrooted into its root, so "running" means the program runs, as with a real runtime. Returns
/// the host pid of the container's PID 1 (for exec probes), or None if it exited first.
pub async fn wait_rooted(outer: u32) -> Option<u32> {
    for _ in 0..200 {
        if let Some(inner) = forked_child(outer)
            && std::fs::read_link(format!("/proc/{inner}/root")).is_ok_and(|r| r != Path::new("/"))
        {
            return Some(inner);
        }
        if exited(outer) {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    forked_child(outer)
}

/// Send `sig` to one process (errors such as "no such process" ignored).
pub fn signal_pid(pid: u32, sig: Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Send `sig` to the container's whole process group (errors such as "no such process" ignored).
pub fn signal_group(pid: u32, sig: Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// Whether this process can create mount namespaces (runs as root).
pub fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mounts_keep_only_top_level_points_outside_the_state_dir() {
        let m = host_mounts(Path::new("/nonexistent/state"));
        assert!(!m.iter().any(|p| p == Path::new("/")));
        for (i, a) in m.iter().enumerate() {
            for (j, b) in m.iter().enumerate() {
                assert!(i == j || !b.starts_with(a), "{b:?} is under {a:?}");
            }
        }
    }
}
