//! The VersionWatcher and the DataRepository as the controller sees them: calls behind traits
//! ([`VersionCalls`], [`DataCalls`]) so that a controller started without them still runs every
//! deployment that needs neither, and followers that hold each source's latest state in a
//! `tokio::sync::watch` receiver (the runtime's reconnecting [`WatchClient`], resume tokens kept)
//! and trigger a reconcile of every deployment using the source when it changes.
//!
//! A follower starts the first time a reconcile asks for its source and lives as long as the
//! process. Until its first message the source is reported with no versions, which the core
//! treats as "nothing new": pods keep running and the failing limit keeps working.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    path::Path,
    sync::{Arc, Mutex},
};

use autocrane_api::{
    crd::{self, AutoCraneDeployment, DataSource, RegexOrder},
    proto::{
        data_v1::{self as data_pb, data_repository_client::DataRepositoryClient},
        version_v1::{self as pb, version_watcher_client::VersionWatcherClient},
    },
};
use autocrane_controller::model::{AppVersions, DataSourceInfo, Timestamp};
use autocrane_runtime::{
    args::ClientTlsArgs,
    client::{AutoCraneChannel, channel_with_token},
    shutdown::Shutdown,
    watch_client::{Backoff, WatchClient},
};
use futures::future::BoxFuture;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument;

use crate::Error;

/// What the controller knows of an app version source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppSource {
    /// The VersionWatcher's id of the source.
    pub source_id: String,
    /// The version the policy chooses now (quarantined versions are never chosen).
    pub current: Option<String>,
    /// Versions seen quarantined.
    pub quarantined: BTreeSet<String>,
    /// When the VersionWatcher first saw the current version (the version → first-pod
    /// reaction time starts there).
    pub current_seen_at: Option<Timestamp>,
}

/// One version the DataRepository has synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncedVersion {
    /// The version name.
    pub version: String,
    /// When it finished syncing (the synced → applied reaction time starts there).
    pub synced_at: Option<Timestamp>,
}

/// A protobuf timestamp as the core's.
pub fn timestamp(t: &prost_types::Timestamp) -> Option<Timestamp> {
    Timestamp::new(t.seconds, t.nanos).ok()
}

/// What a follower holds: the latest state, or none before the first message.
pub type Follower<S> = WatchClient<S>;

/// VersionWatcher calls.
pub trait VersionCalls: Send + Sync + fmt::Debug {
    /// `QuarantineVersion`.
    fn quarantine(
        &self,
        source_id: String,
        version: String,
        reason: String,
    ) -> BoxFuture<'static, Result<(), Status>>;
    /// `WatchVersions` of one source, folded into an [`AppSource`].
    fn follow(&self, spec: pb::SourceSpec, shutdown: Shutdown) -> Follower<AppSource>;
}

/// DataRepository calls.
pub trait DataCalls: Send + Sync + fmt::Debug {
    /// `TrackSource`: the source id.
    fn track(&self, spec: pb::SourceSpec) -> BoxFuture<'static, Result<String, Status>>;
    /// `WatchSynced` of one source: its synced versions, newest first.
    fn follow(&self, source_id: String, shutdown: Shutdown) -> Follower<Vec<SyncedVersion>>;
    /// `PinVersion`.
    fn pin(
        &self,
        source_id: String,
        version: String,
        holder: String,
    ) -> BoxFuture<'static, Result<(), Status>>;
    /// `UnpinVersion`.
    fn unpin(
        &self,
        source_id: String,
        version: String,
        holder: String,
    ) -> BoxFuture<'static, Result<(), Status>>;
}

/// The gRPC VersionWatcher.
#[derive(Clone, Debug)]
pub struct GrpcVersions(VersionWatcherClient<AutoCraneChannel>);

impl VersionCalls for GrpcVersions {
    fn quarantine(
        &self,
        source_id: String,
        version: String,
        reason: String,
    ) -> BoxFuture<'static, Result<(), Status>> {
        let mut client = self.0.clone();
        Box::pin(async move {
            client
                .quarantine_version(pb::QuarantineVersionRequest {
                    source_id,
                    version,
                    reason,
                })
                .await
                .map(|_| ())
        })
    }

    fn follow(&self, spec: pb::SourceSpec, shutdown: Shutdown) -> Follower<AppSource> {
        let client = self.0.clone();
        WatchClient::spawn(
            "version-watcher",
            Backoff::default(),
            shutdown,
            move |token: Option<String>| {
                let mut client = client.clone();
                let request = pb::WatchVersionsRequest {
                    sources: vec![spec.clone()],
                    resume_token: token.unwrap_or_default(),
                };
                async move { client.watch_versions(request).await.map(|r| r.into_inner()) }
            },
            fold_versions,
            |m: &pb::WatchVersionsResponse| Some(m.resume_token.clone()).filter(|t| !t.is_empty()),
        )
    }
}

/// Applies one `WatchVersions` message.
pub fn fold_versions(state: &mut Option<AppSource>, message: pb::WatchVersionsResponse) {
    let source = state.get_or_insert_with(AppSource::default);
    for s in message.sources {
        source.source_id = s.source_id;
        source.current_seen_at = s.current.as_ref().and_then(|v| {
            v.discovered_at
                .as_ref()
                .or(v.published_at.as_ref())
                .and_then(timestamp)
        });
        source.current = s.current.map(|v| v.name);
    }
    for event in message.events {
        let Some(version) = event.version else {
            continue;
        };
        match pb::VersionEventKind::try_from(event.kind) {
            Ok(pb::VersionEventKind::Quarantined) => {
                source.quarantined.insert(version.name);
            }
            Ok(pb::VersionEventKind::Released) => {
                source.quarantined.remove(&version.name);
            }
            _ => {}
        }
    }
}

/// The gRPC DataRepository.
#[derive(Clone, Debug)]
pub struct GrpcData(DataRepositoryClient<AutoCraneChannel>);

impl DataCalls for GrpcData {
    fn track(&self, spec: pb::SourceSpec) -> BoxFuture<'static, Result<String, Status>> {
        let mut client = self.0.clone();
        Box::pin(async move {
            let response = client
                .track_source(data_pb::TrackSourceRequest { source: Some(spec) })
                .await?;
            Ok(response
                .into_inner()
                .source
                .map(|s| s.source_id)
                .unwrap_or_default())
        })
    }

    fn follow(&self, source_id: String, shutdown: Shutdown) -> Follower<Vec<SyncedVersion>> {
        let client = self.0.clone();
        WatchClient::spawn(
            "data-repository",
            Backoff::default(),
            shutdown,
            move |token: Option<String>| {
                let mut client = client.clone();
                let request = data_pb::WatchSyncedRequest {
                    source_ids: vec![source_id.clone()],
                    resume_token: token.unwrap_or_default(),
                };
                async move { client.watch_synced(request).await.map(|r| r.into_inner()) }
            },
            |state: &mut Option<Vec<SyncedVersion>>, message: data_pb::WatchSyncedResponse| {
                for source in message.sources {
                    *state = Some(
                        source
                            .versions
                            .into_iter()
                            .map(|v| SyncedVersion {
                                synced_at: v.synced_at.as_ref().and_then(timestamp),
                                version: v.version,
                            })
                            .collect(),
                    );
                }
                state.get_or_insert_with(Vec::new);
            },
            |m: &data_pb::WatchSyncedResponse| {
                Some(m.resume_token.clone()).filter(|t| !t.is_empty())
            },
        )
    }

    fn pin(
        &self,
        source_id: String,
        version: String,
        holder: String,
    ) -> BoxFuture<'static, Result<(), Status>> {
        let mut client = self.0.clone();
        Box::pin(async move {
            client
                .pin_version(data_pb::PinVersionRequest {
                    source_id,
                    version,
                    holder,
                })
                .await
                .map(|_| ())
        })
    }

    fn unpin(
        &self,
        source_id: String,
        version: String,
        holder: String,
    ) -> BoxFuture<'static, Result<(), Status>> {
        let mut client = self.0.clone();
        Box::pin(async move {
            client
                .unpin_version(data_pb::UnpinVersionRequest {
                    source_id,
                    version,
                    holder,
                })
                .await
                .map(|_| ())
        })
    }
}

type Ref = ObjectRef<AutoCraneDeployment>;

/// Per data source name: what the core's `Input` needs — the source's id and sync times, and its
/// synced versions, newest first.
pub type DataState = (
    BTreeMap<String, DataSourceInfo>,
    BTreeMap<String, Vec<String>>,
);

/// The followers started so far and the deployments using each.
#[derive(Default)]
struct Followers {
    apps: HashMap<String, Follower<AppSource>>,
    /// Data source spec (canonical JSON) → source id, once tracked.
    tracked: HashMap<String, String>,
    data: HashMap<String, Follower<Vec<SyncedVersion>>>,
    users: HashMap<String, HashSet<Ref>>,
}

/// The upstream services of one controller process.
#[derive(Clone)]
pub struct Upstream {
    versions: Option<Arc<dyn VersionCalls>>,
    data: Option<Arc<dyn DataCalls>>,
    shutdown: Shutdown,
    followers: Arc<Mutex<Followers>>,
    triggers: mpsc::UnboundedSender<Ref>,
    trigger_rx: Arc<Mutex<Option<mpsc::UnboundedReceiver<Ref>>>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("versions", &self.versions.is_some())
            .field("data", &self.data.is_some())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Upstreams from explicit implementations (tests).
    pub fn new(
        versions: Option<Arc<dyn VersionCalls>>,
        data: Option<Arc<dyn DataCalls>>,
        shutdown: Shutdown,
    ) -> Self {
        let (triggers, receiver) = mpsc::unbounded_channel();
        Self {
            versions,
            data,
            shutdown,
            followers: Arc::default(),
            triggers,
            trigger_rx: Arc::new(Mutex::new(Some(receiver))),
        }
    }

    /// gRPC clients for the given URLs, each sending the token of its file when it has one
    /// (lazily connecting: a service that is down only stalls the deployments that need it).
    pub fn connect(
        version_watcher: Option<(&str, Option<&Path>)>,
        data_repository: Option<(&str, Option<&Path>)>,
        tls: &ClientTlsArgs,
        shutdown: Shutdown,
    ) -> Result<Self, Error> {
        let versions = version_watcher
            .map(|(url, token)| {
                channel_with_token(url, tls, token)
                    .map_err(|e| Error::Runtime("the VersionWatcher client", e))
            })
            .transpose()?
            .map(|c| Arc::new(GrpcVersions(VersionWatcherClient::new(c))) as Arc<dyn VersionCalls>);
        let data = data_repository
            .map(|(url, token)| {
                channel_with_token(url, tls, token)
                    .map_err(|e| Error::Runtime("the DataRepository client", e))
            })
            .transpose()?
            .map(|c| Arc::new(GrpcData(DataRepositoryClient::new(c))) as Arc<dyn DataCalls>);
        Ok(Self::new(versions, data, shutdown))
    }

    /// The stream of deployments to reconcile because a source they use changed; the first call
    /// takes it, later calls get an empty stream.
    pub fn triggers(&self) -> impl futures::Stream<Item = Ref> + Send + 'static {
        let receiver = self.trigger_rx.lock().expect("trigger lock").take();
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            let next = receiver.recv().await?;
            Some((next, Some(receiver)))
        })
    }

    fn use_source(&self, key: &str, user: &Ref) {
        let mut followers = self.followers.lock().expect("followers lock");
        followers
            .users
            .entry(key.to_string())
            .or_default()
            .insert(user.clone());
    }

    /// Spawns the task turning changes of `follower` into reconciles of the users of `key`.
    fn relay<S: Clone + Send + Sync + 'static>(&self, key: String, follower: &Follower<S>) {
        let mut receiver = follower.receiver();
        let followers = self.followers.clone();
        let triggers = self.triggers.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        changed = receiver.changed() => if changed.is_err() { return },
                        () = shutdown.wait() => return,
                    }
                    let users: Vec<Ref> = followers
                        .lock()
                        .expect("followers lock")
                        .users
                        .get(&key)
                        .map(|u| u.iter().cloned().collect())
                        .unwrap_or_default();
                    for user in users {
                        if triggers.send(user).is_err() {
                            return;
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("source_relay")),
        );
    }

    /// The app versions offered for `spec` and the source id (once known), for `user`.
    pub fn app_versions(
        &self,
        user: &Ref,
        spec: &crd::SourceSpec,
    ) -> Result<(Option<String>, AppVersions), Error> {
        let versions = self.versions.as_ref().ok_or(Error::MissingUpstream {
            field: "spec.version.source",
            flag: "--version-watcher",
        })?;
        let proto = source_to_proto(spec);
        let key = format!("app:{}", serde_json::to_string(spec).unwrap_or_default());
        self.use_source(&key, user);
        let state = {
            let mut followers = self.followers.lock().expect("followers lock");
            match followers.apps.get(&key) {
                Some(f) => f.current(),
                None => {
                    let follower = versions.follow(proto, self.shutdown.clone());
                    self.relay(key.clone(), &follower);
                    followers.apps.insert(key, follower);
                    None
                }
            }
        };
        Ok(match state {
            Some(source) => (
                Some(source.source_id),
                AppVersions {
                    published: source
                        .current
                        .clone()
                        .zip(source.current_seen_at)
                        .into_iter()
                        .collect(),
                    candidates: source.current.into_iter().collect(),
                    quarantined: source.quarantined,
                },
            ),
            None => (None, AppVersions::default()),
        })
    }

    /// Per data source name: the source id and sync times, and the synced versions (newest
    /// first), for `user`. A source not tracked yet is tracked here (idempotent on the
    /// DataRepository).
    pub async fn data_versions(
        &self,
        user: &Ref,
        sources: &[DataSource],
    ) -> Result<DataState, Error> {
        let mut ids = BTreeMap::new();
        let mut versions = BTreeMap::new();
        if sources.is_empty() {
            return Ok((ids, versions));
        }
        let data = self.data.as_ref().ok_or(Error::MissingUpstream {
            field: "spec.data",
            flag: "--data-repository",
        })?;
        for source in sources {
            let spec_key = serde_json::to_string(&source.source).unwrap_or_default();
            let known = self
                .followers
                .lock()
                .expect("followers lock")
                .tracked
                .get(&spec_key)
                .cloned();
            let id = match known {
                Some(id) => id,
                None => {
                    let id = data
                        .track(source_to_proto(&source.source))
                        .await
                        .map_err(|s| upstream_error(format!("TrackSource {}", source.name), &s))?;
                    self.followers
                        .lock()
                        .expect("followers lock")
                        .tracked
                        .insert(spec_key, id.clone());
                    id
                }
            };
            let key = format!("data:{id}");
            self.use_source(&key, user);
            let synced = {
                let mut followers = self.followers.lock().expect("followers lock");
                match followers.data.get(&key) {
                    Some(f) => f.current().unwrap_or_default(),
                    None => {
                        let follower = data.follow(id.clone(), self.shutdown.clone());
                        self.relay(key.clone(), &follower);
                        followers.data.insert(key, follower);
                        Vec::new()
                    }
                }
            };
            let info = DataSourceInfo {
                source_id: Some(id),
                synced_at: synced
                    .iter()
                    .filter_map(|v| Some((v.version.clone(), v.synced_at?)))
                    .collect(),
            };
            ids.insert(source.name.clone(), info);
            versions.insert(
                source.name.clone(),
                synced.into_iter().map(|v| v.version).collect(),
            );
        }
        Ok((ids, versions))
    }

    /// `QuarantineVersion` on the VersionWatcher.
    pub async fn quarantine(
        &self,
        source_id: &str,
        version: &str,
        reason: &str,
    ) -> Result<(), Error> {
        let versions = self.versions.as_ref().ok_or(Error::MissingUpstream {
            field: "spec.version.source",
            flag: "--version-watcher",
        })?;
        versions
            .quarantine(source_id.into(), version.into(), reason.into())
            .await
            .map_err(|s| upstream_error(format!("QuarantineVersion {source_id}/{version}"), &s))
    }

    /// `PinVersion` (`pin = true`) or `UnpinVersion` on the DataRepository.
    pub async fn pin(
        &self,
        pin: bool,
        source_id: &str,
        version: &str,
        holder: &str,
    ) -> Result<(), Error> {
        let data = self.data.as_ref().ok_or(Error::MissingUpstream {
            field: "spec.data",
            flag: "--data-repository",
        })?;
        let (call, result) = if pin {
            (
                "PinVersion",
                data.pin(source_id.into(), version.into(), holder.into())
                    .await,
            )
        } else {
            (
                "UnpinVersion",
                data.unpin(source_id.into(), version.into(), holder.into())
                    .await,
            )
        };
        result.map_err(|s| upstream_error(format!("{call} {source_id}/{version}"), &s))
    }
}

fn upstream_error(call: String, status: &Status) -> Error {
    Error::Upstream {
        call,
        code: status.code(),
        message: status.message().to_string(),
    }
}

/// The CRD's source spec as the VersionWatcher's.
pub fn source_to_proto(spec: &crd::SourceSpec) -> pb::SourceSpec {
    use pb::{source_spec::Upstream as U, version_policy::Policy as P};
    let upstream = if let Some(oci) = &spec.oci {
        Some(U::Oci(pb::OciSource {
            registry: oci.registry.clone(),
            repository: oci.repository.clone(),
            resolve_digests: None,
        }))
    } else if let Some(git) = &spec.git {
        Some(U::Git(pb::GitSource {
            url: git.url.clone(),
            r#ref: git.r#ref.clone().unwrap_or_default(),
            path: git.path.clone().unwrap_or_default(),
        }))
    } else if let Some(http) = &spec.http {
        Some(U::Http(pb::HttpSource {
            url: http.url.clone(),
            json_pointer: http.json_pointer.clone().unwrap_or_default(),
        }))
    } else {
        spec.directory.as_ref().map(|d| {
            U::Directory(pb::DirectorySource {
                path: d.path.clone(),
                version_file: d.version_file.clone().unwrap_or_default(),
            })
        })
    };
    let policy = spec.policy.as_ref().and_then(|p| {
        let policy = if let Some(s) = &p.semver {
            P::Semver(pb::SemverPolicy {
                range: s.range.clone().unwrap_or_default(),
                include_prereleases: s.include_prereleases,
                allow_v_prefix: false,
            })
        } else if let Some(r) = &p.regex {
            P::Regex(pb::RegexPolicy {
                pattern: r.pattern.clone(),
                capture: r.capture.clone().unwrap_or_default(),
                order: match r.order {
                    RegexOrder::Numeric => pb::RegexOrder::Numeric,
                    RegexOrder::Lexical => pb::RegexOrder::Lexical,
                    RegexOrder::Semver => pb::RegexOrder::Semver,
                } as i32,
            })
        } else if let Some(version) = &p.pin {
            P::Pin(pb::PinPolicy {
                version: version.clone(),
            })
        } else if p.newest.is_some() {
            P::Newest(pb::NewestPolicy {})
        } else {
            return None;
        };
        Some(pb::VersionPolicy {
            policy: Some(policy),
        })
    });
    pb::SourceSpec {
        upstream,
        policy,
        poll_interval: spec.poll_interval.map(|d| {
            let d = d.as_std();
            prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn source_specs_convert_field_by_field() {
        let spec: crd::SourceSpec = serde_json::from_value(json!({
            "git": {"url": "git://g/c", "ref": "refs/heads/main", "path": "conf"},
            "policy": {"regex": {"pattern": "v(?<n>\\d+)", "capture": "n", "order": "Lexical"}},
            "pollInterval": "90s"
        }))
        .unwrap();
        let proto = source_to_proto(&spec);
        assert_eq!(
            proto.upstream,
            Some(pb::source_spec::Upstream::Git(pb::GitSource {
                url: "git://g/c".into(),
                r#ref: "refs/heads/main".into(),
                path: "conf".into(),
            }))
        );
        let Some(pb::version_policy::Policy::Regex(regex)) = proto.policy.unwrap().policy else {
            panic!("regex policy expected");
        };
        assert_eq!(regex.order, pb::RegexOrder::Lexical as i32);
        assert_eq!(proto.poll_interval.unwrap().seconds, 90);
    }

    #[test]
    fn version_messages_fold_into_the_current_version_and_quarantines() {
        let version = |name: &str| pb::Version {
            name: name.into(),
            ..Default::default()
        };
        let mut state = None;
        fold_versions(
            &mut state,
            pb::WatchVersionsResponse {
                snapshot: true,
                sources: vec![pb::SourceState {
                    source_id: "oci-1".into(),
                    current: Some(version("1.1")),
                    ..Default::default()
                }],
                events: vec![pb::VersionEvent {
                    kind: pb::VersionEventKind::Quarantined as i32,
                    version: Some(version("1.2")),
                    ..Default::default()
                }],
                resume_token: "t1".into(),
            },
        );
        let state = state.unwrap();
        assert_eq!(state.source_id, "oci-1");
        assert_eq!(state.current.as_deref(), Some("1.1"));
        assert!(state.quarantined.contains("1.2"));
    }
}
