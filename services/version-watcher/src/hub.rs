//! The watcher's live state: every source with one prober task each, the process-wide event
//! sequence, persistence, and the broadcast of changes that every stream subscribes to.
//!
//! One lock guards all sources and the sequence. A change is applied under it and queued for the
//! group commit ([`crate::commit`]) in sequence order; the committer writes and fsyncs a whole
//! batch of changes at once, then broadcasts their events under the lock, in order. So no event
//! goes out before the state it describes is durable, and 1,000 sources added together cost one
//! fsync rather than one each. A stream takes its snapshot under the lock once every queued
//! change is published (it never shows a state that could still be lost), and subscribes there,
//! so it sees every change after its snapshot exactly once. Callers that report a change
//! (adding sources, quarantines, probes) wait for its ticket before they answer.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use autocrane_runtime::shutdown::Shutdown;
use tokio::sync::{Notify, broadcast, watch};
use tracing::Instrument;

use crate::{
    commit::{Batch, CommitCounters, Committer, SEGMENT_LIMIT, Ticket},
    metrics::Metrics,
    schedule,
    spec::{Spec, Upstream},
    state::{Event, Seq, Source, Status, VersionView},
    store::{self, Store, StoreError},
    upstream::{self, Upstreams, oci::DIGESTS_PER_PROBE},
};

/// How many changes a slow stream may fall behind before it is re-synchronised from the logs.
const BROADCAST_CAPACITY: usize = 4096;

/// A failed hub operation.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No source has this id.
    #[error("source {0} not found")]
    SourceNotFound(String),
    /// The source has no such version.
    #[error("version {version} of source {source_id} not found")]
    VersionNotFound {
        /// The source.
        source_id: String,
        /// The version.
        version: String,
    },
    /// The version is not quarantined.
    #[error("version {version} of source {source_id} is not quarantined")]
    NotQuarantined {
        /// The source.
        source_id: String,
        /// The version.
        version: String,
    },
    /// The state could not be persisted.
    #[error("persisting source state")]
    Persist(#[source] Arc<StoreError>),
}

/// A source's state as reported to clients.
#[derive(Clone, Debug)]
pub struct SourceView {
    /// The id.
    pub id: String,
    /// The canonical spec.
    pub spec: Spec,
    /// The current version.
    pub current: Option<VersionView>,
    /// Known versions.
    pub version_count: usize,
    /// Prober status.
    pub status: Status,
}

/// One broadcast change: a source's events and its state afterwards.
#[derive(Clone, Debug)]
pub struct Change {
    /// The source.
    pub source_id: String,
    /// The events, in order (non-empty).
    pub events: Vec<Event>,
    /// The state after them.
    pub view: SourceView,
}

impl Change {
    /// The sequence number of the last event.
    pub fn last_seq(&self) -> Seq {
        self.events.last().map_or(0, |e| e.seq)
    }
}

/// What a new stream starts from.
#[derive(Debug)]
pub struct Subscription {
    /// The state of each requested source, in request order.
    pub views: Vec<SourceView>,
    /// The events after the resume token with their source ids, in sequence order (empty without
    /// a token).
    pub events: Vec<(String, Event)>,
    /// The sequence position of the snapshot: later changes have higher numbers.
    pub through: Seq,
    /// Changes after the snapshot.
    pub receiver: broadcast::Receiver<Arc<Change>>,
}

#[derive(Debug)]
struct Control {
    /// Probe requests so far (Probe RPC, webhooks).
    requested: AtomicU64,
    /// Wakes the prober.
    notify: Notify,
    /// The value of `requested` when the last finished probe started; `None` before the first.
    completed: watch::Sender<Option<u64>>,
    /// Tags a registry notification announced that a probe has not found yet. Distribution sends
    /// the push event when the manifest is stored, a moment before the tag points at it, so the
    /// prober re-probes shortly until the tags show up (or a few tries pass).
    awaited_tags: Mutex<Vec<String>>,
}

/// Follow-up probes for announced tags, at 50 ms, 100 ms, 200 ms, … after each other.
const TAG_FOLLOW_UPS: u32 = 6;
const TAG_FOLLOW_UP_FIRST: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Entry {
    source: Source,
    control: Arc<Control>,
    /// The commit ticket of the source's creation (0: loaded from disk).
    created: Ticket,
}

#[derive(Debug, Default)]
struct Inner {
    seq: Seq,
    sources: BTreeMap<String, Entry>,
    /// The last commit ticket handed out.
    submitted: Ticket,
    /// The last commit ticket whose events were broadcast.
    published: Ticket,
}

/// Settings of the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How long one probe may take in total.
    pub probe_timeout: Duration,
}

/// The live state; see the module docs.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    /// Durable state; its payloads are the changes to broadcast once written.
    committer: Committer<Option<Arc<Change>>>,
    upstreams: Upstreams,
    shutdown: Shutdown,
    metrics: Metrics,
    config: HubConfig,
}

fn view_of(source: &Source) -> SourceView {
    SourceView {
        id: source.id.clone(),
        spec: source.spec.clone(),
        current: source.current_view(),
        version_count: source.versions.len(),
        status: source.status.clone(),
    }
}

impl Hub {
    /// Loads the persisted sources and starts a prober for each.
    pub fn start(
        store: Store,
        upstreams: Upstreams,
        shutdown: Shutdown,
        metrics: Metrics,
        config: HubConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let sources = store.load()?;
        let (changes, _) = broadcast::channel(BROADCAST_CAPACITY);
        // The committer publishes into the hub, which owns the committer: it reaches the hub
        // through a weak reference set once the hub exists (nothing is submitted before).
        let slot: Arc<OnceLock<Weak<Hub>>> = Arc::default();
        let publish_to = slot.clone();
        let committer = Committer::start(
            store,
            SEGMENT_LIMIT,
            metrics.commits.clone(),
            move |batch| {
                if let Some(hub) = publish_to.get().and_then(Weak::upgrade) {
                    hub.publish(batch);
                }
            },
        )?;
        let hub = Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            changes,
            committer,
            upstreams,
            shutdown,
            metrics,
            config,
        });
        let _ = slot.set(Arc::downgrade(&hub));
        let mut inner = hub.lock();
        for source in sources {
            inner.seq = inner.seq.max(source.last_seq());
            let id = source.id.clone();
            let control = hub.spawn_prober(&id);
            inner.sources.insert(
                id,
                Entry {
                    source,
                    control,
                    created: 0,
                },
            );
        }
        hub.metrics.sources.set(inner.sources.len() as i64);
        tracing::info!(
            sources = inner.sources.len(),
            seq = inner.seq,
            "Restored sources"
        );
        drop(inner);
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hub state poisoned")
    }

    /// The shutdown signal (streams end when it fires).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Starts watching each of `specs` that is not watched already; returns their ids, in
    /// order, once every one of them is durable. New sources are written as one group (one
    /// fsync for all of them); their probers start at once, and events about them go out only
    /// after this group is durable (commits are published in order).
    pub async fn ensure_all(
        self: &Arc<Self>,
        specs: impl IntoIterator<Item = Spec>,
    ) -> Result<Vec<String>, HubError> {
        let (ids, ticket) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let mut ids = Vec::new();
            let mut added = Vec::new();
            let mut records = Vec::new();
            // A source added by a concurrent call may not be durable yet: wait for it too.
            let mut ticket = 0;
            for spec in specs {
                let id = spec.source_id();
                if let Some(entry) = inner.sources.get(&id) {
                    ticket = ticket.max(entry.created);
                    ids.push(id);
                    continue;
                }
                let source = Source::new(spec);
                records.push((id.clone(), store::encode(&source), None));
                let control = self.spawn_prober(&id);
                tracing::debug!(source_id = %id, "Watching new source");
                inner.sources.insert(
                    id.clone(),
                    Entry {
                        source,
                        control,
                        created: 0,
                    },
                );
                added.push(id.clone());
                ids.push(id);
            }
            if !records.is_empty() {
                let last = self.committer.submit(records);
                inner.submitted = last;
                for id in &added {
                    if let Some(entry) = inner.sources.get_mut(id) {
                        entry.created = last;
                    }
                }
                ticket = last;
                self.metrics.sources.set(inner.sources.len() as i64);
                tracing::info!(
                    added = added.len(),
                    sources = inner.sources.len(),
                    "Watching new sources"
                );
            }
            (ids, ticket)
        };
        self.committer
            .durable(ticket)
            .await
            .map_err(HubError::Persist)?;
        Ok(ids)
    }

    /// Starts watching `spec` unless it is watched already; returns its id once it is durable.
    pub async fn ensure(self: &Arc<Self>, spec: Spec) -> Result<String, HubError> {
        let mut ids = self.ensure_all([spec]).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// The commit counters (group commits, records, fsyncs), for tests and benchmarks.
    pub fn commit_counters(&self) -> &CommitCounters {
        self.committer.counters()
    }

    /// Waits until `ticket` (when any) is durable.
    async fn durable(&self, ticket: Option<Ticket>) -> Result<(), HubError> {
        match ticket {
            Some(ticket) => self
                .committer
                .durable(ticket)
                .await
                .map_err(HubError::Persist),
            None => Ok(()),
        }
    }

    /// Broadcasts a written batch, in order (on the committer's thread).
    fn publish(&self, batch: Batch<Option<Arc<Change>>>) {
        if batch.error.is_some() {
            self.metrics.persist_failures.inc();
        }
        let mut inner = self.lock();
        for change in batch.payloads.into_iter().flatten() {
            let _ = self.changes.send(change);
        }
        inner.published = batch.through;
    }

    fn spawn_prober(self: &Arc<Self>, id: &str) -> Arc<Control> {
        let (completed, _) = watch::channel(None);
        let control = Arc::new(Control {
            requested: AtomicU64::new(0),
            notify: Notify::new(),
            completed,
            awaited_tags: Mutex::new(Vec::new()),
        });
        let span = tracing::info_span!("prober", source_id = %id);
        tokio::spawn(
            prober(
                Arc::downgrade(self),
                id.to_string(),
                control.clone(),
                self.shutdown.clone(),
            )
            .instrument(span),
        );
        control
    }

    fn control(&self, id: &str) -> Result<Arc<Control>, HubError> {
        self.lock()
            .sources
            .get(id)
            .map(|e| e.control.clone())
            .ok_or_else(|| HubError::SourceNotFound(id.to_string()))
    }

    /// Waits (at most `limit`) until the source has been probed at least once.
    pub async fn wait_probed(&self, id: &str, limit: Duration) -> Result<(), HubError> {
        let mut completed = self.control(id)?.completed.subscribe();
        let _ = tokio::time::timeout(limit, completed.wait_for(Option::is_some)).await;
        Ok(())
    }

    /// Asks the source's prober to probe now, without waiting.
    pub fn trigger(&self, id: &str) -> Result<u64, HubError> {
        let control = self.control(id)?;
        let request = control.requested.fetch_add(1, Ordering::SeqCst) + 1;
        control.notify.notify_one();
        Ok(request)
    }

    /// Probes the source now and waits until a probe that started after this call finished.
    pub async fn probe_now(&self, id: &str) -> Result<SourceView, HubError> {
        let control = self.control(id)?;
        let mut completed = control.completed.subscribe();
        let request = self.trigger(id)?;
        let _ = completed
            .wait_for(|done| done.is_some_and(|served| served >= request))
            .await;
        self.view(id)
    }

    /// Triggers every OCI source of `repository` (from a registry notification). `host` narrows
    /// the match to sources of that registry when any source uses it (a registry behind a proxy
    /// may name itself differently than its clients do). Returns the triggered ids.
    pub fn trigger_oci(
        &self,
        host: Option<&str>,
        repository: &str,
        tag: Option<&str>,
    ) -> Vec<String> {
        let inner = self.lock();
        let matching: Vec<(&String, &Entry, bool)> = inner
            .sources
            .iter()
            .filter_map(|(id, entry)| match &entry.source.spec.upstream {
                Upstream::Oci {
                    repository: repo, ..
                } if repo == repository => {
                    let same_host = host
                        .is_some_and(|h| entry.source.spec.upstream.host().as_deref() == Some(h));
                    Some((id, entry, same_host))
                }
                _ => None,
            })
            .collect();
        let any_same_host = matching.iter().any(|(_, _, same)| *same);
        matching
            .into_iter()
            .filter(|(_, _, same)| *same || !any_same_host)
            .map(|(id, entry, _)| {
                if let Some(tag) = tag {
                    let mut awaited = entry
                        .control
                        .awaited_tags
                        .lock()
                        .expect("awaited tags poisoned");
                    if !awaited.iter().any(|t| t == tag) {
                        awaited.push(tag.to_string());
                    }
                }
                entry.control.requested.fetch_add(1, Ordering::SeqCst);
                entry.control.notify.notify_one();
                id.clone()
            })
            .collect()
    }

    /// The state of one source.
    pub fn view(&self, id: &str) -> Result<SourceView, HubError> {
        self.lock()
            .sources
            .get(id)
            .map(|e| view_of(&e.source))
            .ok_or_else(|| HubError::SourceNotFound(id.to_string()))
    }

    /// Up to `limit` sources with ids greater than `after`, sorted by id; plus whether more follow.
    pub fn list(&self, after: &str, limit: usize) -> (Vec<SourceView>, bool) {
        let inner = self.lock();
        let mut iter = inner
            .sources
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map(|(_, e)| view_of(&e.source));
        let page: Vec<_> = iter.by_ref().take(limit).collect();
        let more = iter.next().is_some();
        (page, more)
    }

    /// The known versions of a source, newest first.
    pub fn versions(&self, id: &str) -> Result<Vec<VersionView>, HubError> {
        self.lock()
            .sources
            .get(id)
            .map(|e| e.source.versions_newest_first())
            .ok_or_else(|| HubError::SourceNotFound(id.to_string()))
    }

    /// Quarantines a version; answers once the quarantine is durable.
    pub async fn quarantine(
        &self,
        id: &str,
        version: &str,
        reason: &str,
    ) -> Result<SourceView, HubError> {
        let (view, ticket) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let entry = inner
                .sources
                .get_mut(id)
                .ok_or_else(|| HubError::SourceNotFound(id.to_string()))?;
            let events = entry
                .source
                .quarantine(version, reason, SystemTime::now(), &mut inner.seq)
                .ok_or_else(|| HubError::VersionNotFound {
                    source_id: id.to_string(),
                    version: version.to_string(),
                })?;
            if !events.is_empty() {
                tracing::info!(source_id = %id, version, reason, "Version quarantined");
            }
            self.stage(&mut inner.submitted, entry, events, true)
        };
        self.durable(ticket).await?;
        Ok(view)
    }

    /// Lifts a quarantine; answers once the change is durable.
    pub async fn lift(&self, id: &str, version: &str) -> Result<SourceView, HubError> {
        let (view, ticket) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let entry = inner
                .sources
                .get_mut(id)
                .ok_or_else(|| HubError::SourceNotFound(id.to_string()))?;
            let events = entry.source.lift(version, &mut inner.seq).ok_or_else(|| {
                HubError::NotQuarantined {
                    source_id: id.to_string(),
                    version: version.to_string(),
                }
            })?;
            tracing::info!(source_id = %id, version, "Quarantine lifted");
            self.stage(&mut inner.submitted, entry, events, true)
        };
        self.durable(ticket).await?;
        Ok(view)
    }

    /// Queues a source's change for the group commit (when `dirty` or there are events) with its
    /// events, which the committer broadcasts once the state is durable. Call under the lock, so
    /// that tickets follow the sequence. Returns the view after the change and the ticket to wait
    /// for, if anything was queued. A failed write is logged and counted by the committer and the
    /// events still go out: the watcher keeps serving, and the next batch writes the state again.
    fn stage(
        &self,
        submitted: &mut Ticket,
        entry: &Entry,
        events: Vec<Event>,
        dirty: bool,
    ) -> (SourceView, Option<Ticket>) {
        let view = view_of(&entry.source);
        if !dirty && events.is_empty() {
            return (view, None);
        }
        for event in &events {
            self.metrics.event(event.kind);
        }
        let change = (!events.is_empty()).then(|| {
            Arc::new(Change {
                source_id: entry.source.id.clone(),
                events,
                view: view.clone(),
            })
        });
        let json = store::encode(&entry.source);
        let ticket = self
            .committer
            .submit([(entry.source.id.clone(), json, change)]);
        *submitted = ticket;
        (view, Some(ticket))
    }

    /// Subscribes to changes of `ids` (which must exist), with a snapshot and, given a resume
    /// token, the logged events after it. A source whose log no longer reaches back to the token
    /// contributes its snapshot only (see `state`). The snapshot waits until every queued change
    /// is durable and published, so it (and its resume token) never shows a state a crash could
    /// still take back.
    pub async fn subscribe(
        &self,
        ids: &[String],
        token: Option<Seq>,
    ) -> Result<Subscription, HubError> {
        loop {
            let pending = {
                let inner = self.lock();
                if inner.published >= inner.submitted {
                    return self.snapshot(&inner, ids, token);
                }
                inner.submitted
            };
            // A failed write is published all the same; the loop only needs it published. A
            // stopped committer publishes nothing more.
            if let Err(error) = self.committer.durable(pending).await
                && matches!(*error, StoreError::Stopped)
            {
                return Err(HubError::Persist(error));
            }
        }
    }

    fn snapshot(
        &self,
        inner: &Inner,
        ids: &[String],
        token: Option<Seq>,
    ) -> Result<Subscription, HubError> {
        let receiver = self.changes.subscribe();
        let mut views = Vec::with_capacity(ids.len());
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let entry = inner
                .sources
                .get(id)
                .ok_or_else(|| HubError::SourceNotFound(id.clone()))?;
            views.push(view_of(&entry.source));
            if let Some(token) = token
                && seen.insert(id.clone())
                && token <= inner.seq
            {
                // A token from the future (a wiped state directory) gets the snapshot only.
                if let Ok(after) = entry.source.events_after(token) {
                    events.extend(after.into_iter().map(|event| (id.clone(), event)));
                }
            }
        }
        events.sort_by_key(|(_, event)| event.seq);
        Ok(Subscription {
            views,
            events,
            through: inner.seq,
            receiver,
        })
    }

    fn pick_digests(&self, id: &str, names: &[String]) -> Vec<String> {
        self.lock()
            .sources
            .get(id)
            .map(|e| e.source.digests_to_resolve(names, DIGESTS_PER_PROBE))
            .unwrap_or_default()
    }

    /// Applies a probe's outcome; returns the failures in a row, the upstream's retry hint and
    /// the commit ticket of the change, if there was one.
    fn apply(
        &self,
        id: &str,
        outcome: Result<crate::state::Listing, upstream::ProbeError>,
    ) -> (u32, Option<Duration>, Option<Ticket>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(entry) = inner.sources.get_mut(id) else {
            return (0, None, None);
        };
        let now = SystemTime::now();
        let kind = entry.source.spec.upstream.kind();
        let (events, dirty, retry_after, outcome_label) = match outcome {
            Ok(listing) => {
                let (events, dirty) = entry.source.apply_listing(listing, now, &mut inner.seq);
                (events, dirty, None, "ok")
            }
            Err(error) => {
                if entry.source.status.consecutive_failures == 0 {
                    tracing::warn!(error = %error.message, "Probe failed");
                }
                let events = entry
                    .source
                    .apply_failure(error.message, now, &mut inner.seq);
                (events, false, error.retry_after, "error")
            }
        };
        self.metrics.probe(kind, outcome_label);
        if !events.is_empty() {
            tracing::info!(events = events.len(), current = ?entry.source.current, "Source changed");
        }
        let failures = entry.source.status.consecutive_failures;
        let (_, ticket) = self.stage(&mut inner.submitted, entry, events, dirty);
        (failures, retry_after, ticket)
    }

    /// Drops the awaited tags the source now knows (or will never know: the policy does not
    /// admit them); returns whether any are still missing.
    fn still_awaiting(&self, id: &str, control: &Control) -> bool {
        let inner = self.lock();
        let Some(entry) = inner.sources.get(id) else {
            return false;
        };
        let mut awaited = control.awaited_tags.lock().expect("awaited tags poisoned");
        awaited.retain(|tag| {
            entry.source.policy().admits(tag) && !entry.source.versions.contains_key(tag)
        });
        !awaited.is_empty()
    }

    fn probe_input(&self, id: &str) -> Option<(Spec, Option<String>)> {
        self.lock().sources.get(id).map(|e| {
            let validator = e.source.current_view().map(|v| v.record.digest);
            (e.source.spec.clone(), validator)
        })
    }

    fn set_next_probe(&self, id: &str, at: SystemTime) {
        if let Some(entry) = self.lock().sources.get_mut(id) {
            entry.source.status.next_probe_at = Some(at);
        }
    }
}

/// One source's prober: probes at start, then at the poll interval (with jitter), on request, and
/// with back-off while failing. Holds only a weak reference so that dropping the hub stops it.
async fn prober(hub: std::sync::Weak<Hub>, id: String, control: Arc<Control>, shutdown: Shutdown) {
    let mut next = tokio::time::Instant::now();
    let mut follow_ups = 0u32;
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            () = control.notify.notified() => {}
            () = tokio::time::sleep_until(next) => {}
        }
        let Some(hub) = hub.upgrade() else { return };
        let request = control.requested.load(Ordering::SeqCst);
        let Some((spec, validator)) = hub.probe_input(&id) else {
            return;
        };
        let started = std::time::Instant::now();
        let pick = |names: &[String]| hub.pick_digests(&id, names);
        let outcome = tokio::select! {
            () = shutdown.wait() => return,
            outcome = tokio::time::timeout(
                hub.config.probe_timeout,
                upstream::probe(&hub.upstreams, &spec, pick, validator),
            ) => outcome.unwrap_or_else(|_| {
                Err(upstream::ProbeError::new(format!("probe timed out after {:?}", hub.config.probe_timeout)))
            }),
        };
        hub.metrics
            .probe_seconds
            .observe(started.elapsed().as_secs_f64());
        let (failures, retry_after, ticket) = hub.apply(&id, outcome);
        // The probe is done (for Probe calls and first-probe waits) once its news is durable and
        // published; waiting here also lets the changes of many probers share one fsync.
        tokio::select! {
            () = shutdown.wait() => return,
            _ = hub.durable(ticket) => {}
        }
        let mut delay = schedule::next_delay(
            spec.poll_interval(),
            failures,
            retry_after,
            rand::random::<f64>(),
        );
        if failures == 0 && hub.still_awaiting(&id, &control) {
            if follow_ups < TAG_FOLLOW_UPS {
                delay = delay.min(TAG_FOLLOW_UP_FIRST * 2u32.pow(follow_ups));
                follow_ups += 1;
            } else {
                tracing::debug!("Announced tags did not appear; back to polling");
                control
                    .awaited_tags
                    .lock()
                    .expect("awaited tags poisoned")
                    .clear();
                follow_ups = 0;
            }
        } else {
            follow_ups = 0;
        }
        next = tokio::time::Instant::now() + delay;
        hub.set_next_probe(&id, SystemTime::now() + delay);
        control.completed.send_replace(Some(request));
    }
}
