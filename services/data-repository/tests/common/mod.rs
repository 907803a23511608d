//! The DataRepository's own fixtures: its gRPC API and the VersionWatcher's, called on a
//! [`DataStack`] (both services as real `autocrane` processes, from the workspace harness
//! `autocrane_test_support`, like every general helper these tests use), and source specs.
#![allow(dead_code, unused_imports)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use autocrane_api::proto::{
    data_v1::{self as pb, data_repository_client::DataRepositoryClient},
    version_v1::{self as vpb, version_watcher_client::VersionWatcherClient},
};
pub(crate) use autocrane_test_support::DataStack as Stack;
use autocrane_test_support::{DataStack, eventually};
use tonic::transport::Channel;

/// A channel to a gRPC server, once it answers.
pub(crate) async fn channel(url: &str) -> Channel {
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

/// The DataRepository's and the VersionWatcher's API on a running [`DataStack`].
pub(crate) trait Api {
    /// The stack the calls go to.
    fn stack(&self) -> &DataStack;

    /// A DataRepository client.
    async fn repository(&self) -> DataRepositoryClient<Channel> {
        DataRepositoryClient::new(channel(&self.stack().repo_url).await)
            .max_decoding_message_size(8 << 20)
    }

    /// A VersionWatcher client.
    async fn version_watcher(&self) -> VersionWatcherClient<Channel> {
        VersionWatcherClient::new(channel(&self.stack().vw_url).await)
    }

    /// Tracks `spec`; returns the source id.
    async fn track(&self, spec: vpb::SourceSpec) -> String {
        let response = self
            .repository()
            .await
            .track_source(pb::TrackSourceRequest { source: Some(spec) })
            .await
            .expect("TrackSource");
        response.into_inner().source.unwrap().source_id
    }

    /// Asks the VersionWatcher to probe now (instead of waiting for the poll).
    async fn probe(&self, source_id: &str) {
        let _ = self
            .version_watcher()
            .await
            .probe(vpb::ProbeRequest {
                source_id: source_id.to_string(),
            })
            .await;
    }

    /// Waits until `version` of `source_id` is synced; returns its manifest.
    async fn synced(&self, source_id: &str, version: &str) -> pb::Manifest {
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
    async fn status_until(
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

impl Api for DataStack {
    fn stack(&self) -> &DataStack {
        self
    }
}

/// A git source spec polling every second.
pub(crate) fn git_spec(url: &str, path: &str) -> vpb::SourceSpec {
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
pub(crate) fn http_spec(url: &str) -> vpb::SourceSpec {
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
pub(crate) fn dir_spec(path: &Path) -> vpb::SourceSpec {
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
