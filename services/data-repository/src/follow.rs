//! Following the VersionWatcher: one task per tracked source holds a `WatchVersions` stream (a
//! reconnecting [`WatchClient`]) and, for each new current version, stages, verifies and commits
//! it. A failed sync is retried with back-off until it succeeds or the current version changes.

use std::{collections::BTreeMap, sync::Arc, sync::Mutex, time::Duration};

use autocrane_api::proto::{
    data_v1::SyncState,
    version_v1::{self as vpb, WatchVersionsRequest, version_watcher_client::VersionWatcherClient},
};
use autocrane_runtime::{
    client::AutoCraneChannel,
    errors::error_chain,
    shutdown::Shutdown,
    watch_client::{Backoff, WatchClient},
};
use tokio::task::JoinHandle;

use crate::{metrics::Metrics, origin::Origins, stage::StageError, store::Store};

/// The version a source's policy currently chooses (`None`: no version qualifies).
#[derive(Clone, Debug, Default)]
struct Current(Option<vpb::Version>);

/// Starts and stops the per-source followers.
#[derive(Clone, Debug)]
pub struct Followers {
    metrics: Metrics,
    store: Store,
    origins: Origins,
    channel: AutoCraneChannel,
    shutdown: Shutdown,
    tasks: Arc<Mutex<BTreeMap<String, JoinHandle<()>>>>,
}

impl Followers {
    /// Followers using `channel` to the VersionWatcher.
    pub fn new(
        metrics: Metrics,
        store: Store,
        origins: Origins,
        channel: AutoCraneChannel,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            metrics,
            store,
            origins,
            channel,
            shutdown,
            tasks: Arc::default(),
        }
    }

    /// A VersionWatcher client on the shared channel.
    pub fn version_watcher(&self) -> VersionWatcherClient<AutoCraneChannel> {
        VersionWatcherClient::new(self.channel.clone())
    }

    /// Follows `source_id` unless it is already followed.
    pub fn start(&self, source_id: &str, spec: vpb::SourceSpec) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.get(source_id).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let task = tokio::spawn(follow(
            source_id.to_string(),
            spec,
            self.store.clone(),
            self.origins.clone(),
            self.version_watcher(),
            self.shutdown.clone(),
            self.metrics.clone(),
        ));
        tasks.insert(source_id.to_string(), task);
    }

    /// Stops following `source_id`.
    pub fn stop(&self, source_id: &str) {
        if let Some(task) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(source_id)
        {
            task.abort();
        }
    }
}

#[tracing::instrument(name = "follow_source", skip_all, fields(source_id = %source_id))]
async fn follow(
    source_id: String,
    spec: vpb::SourceSpec,
    store: Store,
    origins: Origins,
    client: VersionWatcherClient<AutoCraneChannel>,
    shutdown: Shutdown,
    metrics: Metrics,
) {
    let request_spec = spec.clone();
    let watch: WatchClient<Current> = WatchClient::spawn(
        "version-watcher",
        Backoff::default(),
        shutdown.clone(),
        move |token| {
            let mut client = client.clone();
            let request = WatchVersionsRequest {
                sources: vec![request_spec.clone()],
                resume_token: token.unwrap_or_default(),
            };
            async move { client.watch_versions(request).await.map(|r| r.into_inner()) }
        },
        |state: &mut Option<Current>, message: vpb::WatchVersionsResponse| {
            if let Some(source) = message.sources.into_iter().last() {
                *state = Some(Current(source.current));
            }
        },
        |message| Some(message.resume_token.clone()).filter(|t| !t.is_empty()),
    );
    let mut receiver = watch.receiver();
    let mut attempt = 0u32;
    loop {
        let (current, terminal) = {
            let watched = receiver.borrow_and_update();
            (
                watched.state.clone().and_then(|c| c.0),
                watched.terminal.clone(),
            )
        };
        if let Some(status) = terminal {
            store.set_status(
                &source_id,
                SyncState::Failed,
                "",
                &format!(
                    "the VersionWatcher rejected the source: {}",
                    status.message()
                ),
            );
            return;
        }
        let mut retry = None;
        if let Some(version) = current.clone()
            && !store.has_version(&source_id, &version.name)
        {
            store.set_status(&source_id, SyncState::Syncing, &version.name, "");
            tracing::info!(version = %version.name, "Syncing a new version");
            let started = std::time::Instant::now();
            let result = match origins.stage(&source_id, &spec, &version).await {
                Ok(staged) => {
                    let store2 = store.clone();
                    let (id, name) = (source_id.clone(), version.name.clone());
                    let span = tracing::info_span!("commit", version = %name);
                    tokio::task::spawn_blocking(move || {
                        span.in_scope(|| store2.commit(&id, &name, staged))
                    })
                    .await
                    .map_err(|e| StageError::Io(e.to_string()))
                    .and_then(|r| r.map_err(|e| StageError::Io(error_chain(&e))))
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(record) => {
                    attempt = 0;
                    metrics.synced.inc();
                    metrics
                        .sync_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::info!(version = %version.name, files = record.files.len(), bytes = record.total_bytes(), elapsed = ?started.elapsed(), "Version synced");
                    store.set_status(&source_id, SyncState::Idle, &version.name, "");
                }
                Err(e) => {
                    metrics.sync_failures.inc();
                    tracing::warn!(version = %version.name, error = %e, "Sync failed; retrying with back-off");
                    store.set_status(&source_id, SyncState::Failed, &version.name, &e.to_string());
                    retry = Some(Duration::from_secs(1 << attempt.min(6)));
                    attempt += 1;
                }
            }
        } else if current.is_some() {
            store.set_status(
                &source_id,
                SyncState::Idle,
                current
                    .as_ref()
                    .map(|v| v.name.as_str())
                    .unwrap_or_default(),
                "",
            );
        }
        let delay = retry.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            changed = receiver.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return,
        }
    }
}
