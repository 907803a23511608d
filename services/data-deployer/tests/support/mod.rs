//! Helpers of the DataDeployer end-to-end tests: the pod's annotations file written like the
//! kubelet writes it, deployer processes, and checks on the live tree and the deployer's log.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use autocrane_data_deployer::desired::version_dir;

use crate::common::{Proc, Stack, eventually, strings};

/// The downward-API annotations file, updated like the kubelet does: a new timestamped directory,
/// then `..data` swapped to it with a rename; `annotations` links through `..data`.
pub struct PodInfo {
    dir: PathBuf,
    generation: u32,
}

impl PodInfo {
    pub fn new(dir: &Path) -> PodInfo {
        std::fs::create_dir_all(dir).unwrap();
        PodInfo {
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("annotations")
    }

    pub fn write(&mut self, annotations: &[(&str, &str)]) {
        self.generation += 1;
        let name = format!("..2026_11_26_{:04}", self.generation);
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        let mut text =
            String::from("kubernetes.io/config.seen=\"2026-11-26T20:00:00.000000000Z\"\n");
        for (key, value) in annotations {
            text.push_str(&format!(
                "{key}=\"{}\"\n",
                value.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        std::fs::write(data.join("annotations"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if !self.file().exists() {
            std::os::unix::fs::symlink("..data/annotations", self.file()).unwrap();
        }
        if self.generation > 1 {
            let _ = std::fs::remove_dir_all(
                self.dir
                    .join(format!("..2026_11_26_{:04}", self.generation - 1)),
            );
        }
    }

    pub fn want(&mut self, name: &str, version: &str) {
        self.write(&[(&format!("data.autocrane.io/{name}"), version)]);
    }
}

/// Starts `autocrane data-deployer <mode>` for one source (`(name, source id)`).
pub fn deployer(
    mode: &str,
    stack: &Stack,
    root: &Path,
    pod: &PodInfo,
    (name, source_id): (&str, &str),
    extra: &[&str],
    log: &str,
) -> Proc {
    let mut args = strings(&[
        "data-deployer",
        mode,
        "--repository",
        &stack.repo_url,
        "--root",
        root.to_str().unwrap(),
        "--desired-file",
        pod.file().to_str().unwrap(),
        "--source",
        &format!("{name}={source_id}"),
    ]);
    args.extend(strings(extra));
    Proc::autocrane(log, &args, &stack.dir)
}

pub async fn wait_current(root: &Path, name: &str, version: &str, timeout: Duration) {
    let link = root.join(name).join("current");
    let want = version_dir(version);
    eventually(timeout, &format!("{} -> {want}", link.display()), || {
        let ok = std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&want));
        async move { ok.then_some(()) }
    })
    .await;
}

pub fn assert_tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        assert_eq!(
            std::fs::read(dir.join(path)).unwrap(),
            *content,
            "{}",
            dir.join(path).display()
        );
    }
}

/// The deployer's last "Version applied" log line for `version` that contains every one of
/// `also` (the line is written right after the swap, so it is waited for).
pub async fn applied_line(deployer: &Proc, version: &str, also: &[&str]) -> String {
    let needle = format!("version={version} ");
    eventually(
        Duration::from_secs(10),
        &format!("the log line of {version}"),
        || {
            let line = deployer
                .log_text()
                .lines()
                .rev()
                .find(|l| {
                    l.contains("Version applied")
                        && l.contains(&needle)
                        && also.iter().all(|a| l.contains(a))
                })
                .map(str::to_string);
            async move { line }
        },
    )
    .await
}

/// The value of `field=` on the last log line containing `needle`.
pub fn log_field(log: &str, needle: &str, field: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
