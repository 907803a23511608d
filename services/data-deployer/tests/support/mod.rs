//! The DataDeployer's own fixtures: the pod's annotations file written like the kubelet writes
//! it, deployer processes, checks on the live tree and the deployer's log, and the calls that
//! prepare its upstream (a source tracked and synced by a [`DataStack`] from the workspace
//! harness `autocrane_test_support`, which gives every general helper these tests use).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use autocrane_api::proto::{
    data_v1::{self as pb, data_repository_client::DataRepositoryClient},
    version_v1::{self as vpb, version_watcher_client::VersionWatcherClient},
};
use autocrane_data_deployer::desired::version_dir;
pub(crate) use autocrane_test_support::DataStack as Stack;
use autocrane_test_support::{DataStack, Running, eventually, strings};
use tonic::transport::Channel;

/// What the deployer tests ask of the upstream: a source tracked, and a version synced.
pub(crate) trait Upstream {
    /// A DataRepository client.
    async fn repository(&self) -> DataRepositoryClient<Channel>;
    /// Tracks `spec`; returns the source id.
    async fn track(&self, spec: vpb::SourceSpec) -> String;
    /// Asks the VersionWatcher to probe `source_id` now.
    async fn probe(&self, source_id: &str);
    /// Waits until `version` of `source_id` is synced (probing every 500 ms); returns its
    /// manifest.
    async fn synced(&self, source_id: &str, version: &str) -> pb::Manifest;
}

impl Upstream for DataStack {
    async fn repository(&self) -> DataRepositoryClient<Channel> {
        let channel = Channel::from_shared(self.repo_url.clone())
            .unwrap()
            .connect()
            .await
            .expect("connecting to the DataRepository");
        DataRepositoryClient::new(channel).max_decoding_message_size(8 << 20)
    }

    async fn track(&self, spec: vpb::SourceSpec) -> String {
        let request = pb::TrackSourceRequest { source: Some(spec) };
        let response = self.repository().await.track_source(request).await;
        response
            .expect("TrackSource")
            .into_inner()
            .source
            .unwrap()
            .source_id
    }

    async fn probe(&self, source_id: &str) {
        if let Ok(mut watcher) = VersionWatcherClient::connect(self.vw_url.clone()).await {
            let source_id = source_id.to_string();
            let _ = watcher.probe(vpb::ProbeRequest { source_id }).await;
        }
    }

    async fn synced(&self, source_id: &str, version: &str) -> pb::Manifest {
        let client = self.repository().await;
        let mut probed = Instant::now();
        let what = format!("version {version} of {source_id} to sync");
        eventually(Duration::from_secs(60), &what, || {
            let nudge = std::mem::replace(&mut probed, Instant::now()).elapsed()
                > Duration::from_millis(500);
            let request = pb::GetManifestRequest {
                source_id: source_id.to_string(),
                version: version.to_string(),
            };
            let mut client = client.clone();
            async move {
                if nudge {
                    self.probe(source_id).await;
                }
                let response = client.get_manifest(request).await.ok()?;
                response.into_inner().manifest
            }
        })
        .await
    }
}

/// A source spec polling every second.
fn spec(
    upstream: vpb::source_spec::Upstream,
    policy: Option<vpb::VersionPolicy>,
) -> vpb::SourceSpec {
    vpb::SourceSpec {
        upstream: Some(upstream),
        policy,
        poll_interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    }
}

/// The branch `main` of a git repository, the tree below `path`.
pub(crate) fn git_spec(url: &str, path: &str) -> vpb::SourceSpec {
    let git = vpb::GitSource {
        url: url.to_string(),
        r#ref: "refs/heads/main".to_string(),
        path: path.to_string(),
    };
    spec(vpb::source_spec::Upstream::Git(git), None)
}

/// An HTTP archive, versioned by its ETag.
pub(crate) fn http_spec(url: &str) -> vpb::SourceSpec {
    let http = vpb::HttpSource {
        url: url.to_string(),
        json_pointer: String::new(),
    };
    spec(vpb::source_spec::Upstream::Http(http), None)
}

/// A directory whose sub-directories `v<n>` are the versions, newest `n` current.
pub(crate) fn dir_spec(path: &Path) -> vpb::SourceSpec {
    let directory = vpb::DirectorySource {
        path: path.to_str().unwrap().to_string(),
        version_file: String::new(),
    };
    let regex = vpb::RegexPolicy {
        pattern: r"v(?P<n>\d+)".to_string(),
        capture: "n".to_string(),
        order: vpb::RegexOrder::Numeric as i32,
    };
    let policy = vpb::VersionPolicy {
        policy: Some(vpb::version_policy::Policy::Regex(regex)),
    };
    spec(
        vpb::source_spec::Upstream::Directory(directory),
        Some(policy),
    )
}

/// The downward-API annotations file, updated like the kubelet does: a new timestamped directory,
/// then `..data` swapped to it with a rename; `annotations` links through `..data`.
pub(crate) struct PodInfo {
    dir: PathBuf,
    generation: u32,
}

impl PodInfo {
    pub(crate) fn new(dir: &Path) -> PodInfo {
        std::fs::create_dir_all(dir).unwrap();
        PodInfo {
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    pub(crate) fn file(&self) -> PathBuf {
        self.dir.join("annotations")
    }

    pub(crate) fn write(&mut self, annotations: &[(&str, &str)]) {
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

    pub(crate) fn want(&mut self, name: &str, version: &str) {
        self.write(&[(&format!("data.autocrane.io/{name}"), version)]);
    }
}

/// Starts `autocrane data-deployer <mode>` for one source (`(name, source id)`).
pub(crate) fn deployer(
    mode: &str,
    stack: &Stack,
    root: &Path,
    pod: &PodInfo,
    (name, source_id): (&str, &str),
    extra: &[&str],
    log: &str,
) -> Running {
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
    Running::autocrane(log, &args, &stack.dir)
}

pub(crate) async fn wait_current(root: &Path, name: &str, version: &str, timeout: Duration) {
    let link = root.join(name).join("current");
    let want = version_dir(version);
    eventually(timeout, &format!("{} -> {want}", link.display()), || {
        let ok = std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&want));
        async move { ok.then_some(()) }
    })
    .await;
}

pub(crate) fn assert_tree(dir: &Path, files: &[(&str, &[u8])]) {
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
pub(crate) async fn applied_line(deployer: &Running, version: &str, also: &[&str]) -> String {
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
pub(crate) fn log_field(log: &str, needle: &str, field: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
