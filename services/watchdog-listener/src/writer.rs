//! The one write path for watchdogs (RPCs, the prober, TTL timers, label repair).
//!
//! Per pod, at most one write is in flight and at most one patch is made per coalescing window:
//! the first operation on an idle pod is written at once; operations arriving while that write is
//! in flight or within the window after it are planned together and written as one merge patch.
//! Every caller waits until the patch carrying its operation has landed (or was unnecessary), and
//! gets the pod's state after it. A write plans on the pod as our previous write left it (or on a
//! fresh read) and patches with a resourceVersion precondition; a conflict re-reads and re-plans,
//! so a change by another writer is never planned over.
//!
//! TTLs: after each write, and for every pod the pod index shows, a timer is armed for the
//! pod's earliest expiry; it enqueues a refresh, which removes the expired watchdogs and corrects
//! the label. One timer per pod, no polling. Each landed patch is also handed to the index
//! ([`PodIndex::observe_write`]), so watch streams see it without waiting for the watch.
//!
//! Readiness: on a pod with the readiness gate `autocrane.io/healthy`, each batch ends by bringing
//! that condition in step with the rollup after the batch ([`crate::readiness`]): one `pods/status`
//! patch when it changes, so a burst of posts makes at most one status write per window. Pods that
//! appear gated and out of step (a fresh pod, a listener restart, a kubelet that dropped the
//! condition) are refreshed from the index like a drifted label. A failed status write does not
//! fail the posts (their watchdogs landed); the pod is refreshed again after [`STATUS_RETRY`].

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use autocrane_runtime::admin::SharedRegistry;

use autocrane_api::watchdog::{PodHealth, rollup};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    Error,
    coalesce::{Op, plan},
    index::{PodEvent, PodIndex},
    pods::{PodKey, Pods, health_label, is_status, pod_health},
    readiness,
};

/// How often a write is retried after a resourceVersion conflict.
const CONFLICT_RETRIES: usize = 8;

/// How long after a failed readiness-condition write the pod is refreshed to try again.
pub const STATUS_RETRY: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<PodHealth, Error>>;

#[derive(Default)]
struct Queue {
    pending: Vec<(Op, Option<Reply>)>,
}

/// Counters of the write path, exported on `/metrics` (see [`Writer::register_metrics`]) and
/// read by tests and benchmarks.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Operations submitted (posts, deletes, refreshes).
    pub operations: Counter,
    /// Merge patches sent to the API server (including ones that conflicted).
    pub patches: Counter,
    /// Pod reads.
    pub reads: Counter,
    /// Patches refused with 409 (the pod changed since it was read) and re-planned.
    pub conflicts: Counter,
    /// Batches that failed (reading or patching the pod), each failing all its operations.
    pub failures: Counter,
    /// `pods/status` patches of the readiness condition `autocrane.io/healthy` (including ones
    /// that conflicted).
    pub status_patches: Counter,
    /// Readiness-condition writes that failed (retried after [`STATUS_RETRY`]).
    pub status_failures: Counter,
}

struct Inner {
    pods: Pods,
    index: PodIndex,
    window: Duration,
    queues: Mutex<HashMap<PodKey, Queue>>,
    timers: Mutex<HashMap<PodKey, (Timestamp, tokio::task::AbortHandle)>>,
    /// Each pod as our last write left it (see [`Writer::write`]).
    cache: Mutex<HashMap<PodKey, Pod>>,
    /// Pods with a readiness-condition retry pending (one per pod).
    status_retries: Mutex<HashSet<PodKey>>,
    stats: WriteStats,
}

/// The coalescing writer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("window", &self.inner.window)
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer patching through `pods`, at most one patch per pod per `window`, telling `index`
    /// about each landed patch.
    pub fn new(pods: Pods, index: PodIndex, window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pods,
                index,
                window,
                queues: Mutex::new(HashMap::new()),
                timers: Mutex::new(HashMap::new()),
                cache: Mutex::new(HashMap::new()),
                status_retries: Mutex::new(HashSet::new()),
                stats: WriteStats::default(),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &WriteStats {
        &self.inner.stats
    }

    /// Exports the write path's counters as `watchdog_listener_writes_*` in `registry`.
    pub fn register_metrics(&self, registry: &SharedRegistry) {
        let stats = &self.inner.stats;
        let mut registry = registry.lock().expect("metrics registry poisoned");
        for (name, help, counter) in [
            (
                "watchdog_listener_writes_operations",
                "Watchdog operations submitted to the write path (posts, deletes, refreshes)",
                &stats.operations,
            ),
            (
                "watchdog_listener_writes_patches",
                "Pod patches sent to the API server (several operations coalesce into one)",
                &stats.patches,
            ),
            (
                "watchdog_listener_writes_pod_reads",
                "Pod reads by the write path",
                &stats.reads,
            ),
            (
                "watchdog_listener_writes_conflicts",
                "Patches refused with 409 Conflict and re-planned",
                &stats.conflicts,
            ),
            (
                "watchdog_listener_writes_failures",
                "Write batches that failed reading or patching the pod",
                &stats.failures,
            ),
            (
                "watchdog_listener_writes_status_patches",
                "pods/status patches of the readiness condition autocrane.io/healthy (at most one per pod per window)",
                &stats.status_patches,
            ),
            (
                "watchdog_listener_writes_status_failures",
                "Readiness-condition writes that failed (retried later)",
                &stats.status_failures,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }

    /// Applies `op` to the pod and returns the pod's health once the write has landed.
    pub async fn submit(&self, key: PodKey, op: Op) -> Result<PodHealth, Error> {
        let (reply, result) = oneshot::channel();
        self.enqueue(key, op, Some(reply));
        result.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Enqueues a refresh of the pod (expired watchdogs, label drift) without waiting.
    pub fn refresh(&self, key: PodKey) {
        self.enqueue(key, Op::Refresh, None);
    }

    fn enqueue(&self, key: PodKey, op: Op, reply: Option<Reply>) {
        self.inner.stats.operations.inc();
        let mut queues = self.inner.queues.lock().expect("queue lock");
        let start = !queues.contains_key(&key);
        queues
            .entry(key.clone())
            .or_default()
            .pending
            .push((op, reply));
        drop(queues);
        if start {
            let writer = self.clone();
            let span = tracing::info_span!("pod_writer", pod = %key);
            tokio::spawn(writer.drain(key).instrument(span));
        }
    }

    /// Writes the pod's queued operations, one batch per window, until none are left.
    async fn drain(self, key: PodKey) {
        loop {
            let batch = {
                let mut queues = self.inner.queues.lock().expect("queue lock");
                let Some(queue) = queues.get_mut(&key) else {
                    return;
                };
                if queue.pending.is_empty() {
                    queues.remove(&key);
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            let (ops, replies): (Vec<Op>, Vec<Option<Reply>>) = batch.into_iter().unzip();
            let (results, patched) = self.write(&key, &ops).await;
            for (reply, result) in replies.into_iter().zip(results) {
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            // The window starts after a patch; a batch that wrote nothing does not delay the next.
            if patched {
                tokio::time::sleep(self.inner.window).await;
            }
        }
    }

    /// Plans and patches one batch: one result per operation, and whether a patch was sent.
    async fn write(&self, key: &PodKey, ops: &[Op]) -> (Vec<Result<PodHealth, Error>>, bool) {
        let mut patched = false;
        let all = |make: &dyn Fn() -> Error| ops.iter().map(|_| Err(make())).collect();
        let mut attempt = 0;
        // The pod as our last patch left it: planning on it saves a read. It is only a guess; the
        // patch's resourceVersion precondition catches a stale copy (409 → read and re-plan), and
        // an empty plan is confirmed on a fresh read before answering "nothing to write".
        let mut cached = self.inner.cache.lock().expect("cache lock").remove(key);
        loop {
            attempt += 1;
            let (pod, fresh) = if let Some(pod) = cached.take() {
                (pod, false)
            } else {
                self.inner.stats.reads.inc();
                match self.inner.pods.get(key).await {
                    Ok(Some(pod)) => (pod, true),
                    Ok(None) => {
                        self.arm_timer(key, None);
                        let results = all(&|| Error::PodNotFound {
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                        });
                        return (results, patched);
                    }
                    Err(err) => {
                        self.inner.stats.failures.inc();
                        let err = Arc::new(err);
                        let results = all(&|| Error::ReadPod {
                            pod: key.to_string(),
                            source: err.clone(),
                        });
                        return (results, patched);
                    }
                }
            };
            let now = Timestamp::now();
            let plan = plan(pod.annotations(), health_label(&pod), ops, now);
            let written = if plan.is_empty() {
                if !fresh {
                    continue;
                }
                pod
            } else {
                self.inner.stats.patches.inc();
                patched = true;
                let rv = pod.resource_version();
                match self.inner.pods.patch(key, &plan, rv.as_deref()).await {
                    Ok(pod) => {
                        tracing::debug!(changes = plan.annotations.len(), label = ?plan.label, "Pod patched");
                        pod
                    }
                    Err(err) if is_status(&err, 409) && attempt < CONFLICT_RETRIES => {
                        self.inner.stats.conflicts.inc();
                        tracing::debug!(attempt, "Pod changed under us; re-planning");
                        continue;
                    }
                    Err(err) if is_status(&err, 404) => {
                        let results = all(&|| Error::PodNotFound {
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                        });
                        return (results, patched);
                    }
                    Err(err) => {
                        self.inner.stats.failures.inc();
                        tracing::warn!(error = %err, "Writing watchdogs failed");
                        let err = Arc::new(err);
                        let results = all(&|| Error::WritePod {
                            pod: key.to_string(),
                            source: err.clone(),
                        });
                        return (results, patched);
                    }
                }
            };
            let (written, status_sent) = self.sync_readiness(key, written, now).await;
            // The index learns the last version we wrote (annotations and condition at once).
            if patched || status_sent {
                self.inner.index.observe_write(&written);
            }
            patched |= status_sent;
            self.arm_timer(key, rollup(written.annotations(), now).next_expiry);
            self.inner
                .cache
                .lock()
                .expect("cache lock")
                .insert(key.clone(), written.clone());
            let health = pod_health(&written, now);
            let results = plan
                .outcomes
                .into_iter()
                .map(|outcome| outcome.map(|()| health.clone()).map_err(Error::Invalid))
                .collect();
            return (results, patched);
        }
    }

    /// Brings the pod's readiness condition in step with the rollup of `pod` (a fresh read or our
    /// own patch's answer): at most one landed `pods/status` patch, re-read and re-planned on a
    /// conflict. Returns the latest version of the pod and whether a status patch was sent.
    async fn sync_readiness(&self, key: &PodKey, mut pod: Pod, now: Timestamp) -> (Pod, bool) {
        let mut sent = false;
        for attempt in 1..=CONFLICT_RETRIES {
            let Some(condition) = readiness::plan(&pod, now) else {
                return (pod, sent);
            };
            let rv = pod.resource_version().unwrap_or_default();
            self.inner.stats.status_patches.inc();
            sent = true;
            let err = match self.inner.pods.patch_condition(key, &condition, &rv).await {
                Ok(written) => {
                    tracing::debug!(status = %condition.status, reason = ?condition.reason, "Readiness condition written");
                    return (written, sent);
                }
                Err(err) if is_status(&err, 404) => return (pod, sent),
                Err(err) if is_status(&err, 409) && attempt < CONFLICT_RETRIES => {
                    self.inner.stats.conflicts.inc();
                    tracing::debug!(attempt, "Pod changed under the readiness write; re-reading");
                    self.inner.stats.reads.inc();
                    match self.inner.pods.get(key).await {
                        Ok(Some(fresh)) => {
                            pod = fresh;
                            continue;
                        }
                        Ok(None) => return (pod, sent),
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            self.inner.stats.status_failures.inc();
            tracing::warn!(error = %err, retry_in = ?STATUS_RETRY, "Writing the readiness condition failed");
            self.retry_later(key);
            return (pod, sent);
        }
        (pod, sent)
    }

    /// Refreshes the pod after [`STATUS_RETRY`], once per pod however often its writes fail.
    fn retry_later(&self, key: &PodKey) {
        if !self
            .inner
            .status_retries
            .lock()
            .expect("retry lock")
            .insert(key.clone())
        {
            return;
        }
        let writer = self.clone();
        let pod = key.clone();
        let span = tracing::info_span!("readiness_retry", pod = %pod);
        tokio::spawn(
            async move {
                tokio::time::sleep(STATUS_RETRY).await;
                writer
                    .inner
                    .status_retries
                    .lock()
                    .expect("retry lock")
                    .remove(&pod);
                writer.refresh(pod);
            }
            .instrument(span),
        );
    }

    /// Arms (or re-arms, or clears) the pod's expiry timer.
    pub fn arm_timer(&self, key: &PodKey, at: Option<Timestamp>) {
        let mut timers = self.inner.timers.lock().expect("timer lock");
        match at {
            None => {
                if let Some((_, handle)) = timers.remove(key) {
                    handle.abort();
                }
            }
            Some(at) => {
                if timers.get(key).is_some_and(|(armed, _)| *armed == at) {
                    return;
                }
                let writer = self.clone();
                let pod = key.clone();
                let delay =
                    Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
                let span = tracing::info_span!("expiry_timer", pod = %pod, %at);
                let task = tokio::spawn(
                    async move {
                        // A little slack so that the refresh's clock is past the expiry second.
                        tokio::time::sleep(delay + Duration::from_millis(20)).await;
                        let mut timers = writer.inner.timers.lock().expect("timer lock");
                        if timers.get(&pod).is_some_and(|(armed, _)| *armed == at) {
                            timers.remove(&pod);
                        }
                        drop(timers);
                        tracing::debug!("Watchdog expired; refreshing");
                        writer.refresh(pod);
                    }
                    .instrument(span),
                );
                if let Some((_, old)) = timers.insert(key.clone(), (at, task.abort_handle())) {
                    old.abort();
                }
            }
        }
    }

    /// Follows the pods of the index: arms expiry timers for watchdogs written before this
    /// process started, repairs a health label that does not match the annotations (someone
    /// edited them by hand), and sets the readiness condition of gated pods that are out of step
    /// (new pods, pods written before this process started). Runs until the index goes away.
    pub async fn follow(self, index: PodIndex) {
        index.ready().await;
        let (pods, mut changes) = index.subscribe(None);
        self.resync(&pods);
        while let Some(event) = changes.next().await {
            match event {
                PodEvent::Applied(pod) => self.observe(&pod),
                PodEvent::Deleted(key) => self.forget(&key),
                PodEvent::Resynced(pods) => self.resync(&pods),
            }
        }
    }

    /// The index was (re-)listed: observe every pod, and forget those that are gone (deleted
    /// while the watch was down, so no delete event came).
    fn resync(&self, pods: &[Arc<Pod>]) {
        let present: std::collections::HashSet<PodKey> =
            pods.iter().map(|p| PodKey::of(p)).collect();
        let gone: Vec<PodKey> = {
            let timers = self.inner.timers.lock().expect("timer lock");
            let cache = self.inner.cache.lock().expect("cache lock");
            timers
                .keys()
                .chain(cache.keys())
                .filter(|key| !present.contains(*key))
                .cloned()
                .collect()
        };
        for key in gone {
            self.forget(&key);
        }
        for pod in pods {
            self.observe(pod);
        }
    }

    fn forget(&self, key: &PodKey) {
        self.arm_timer(key, None);
        self.inner.cache.lock().expect("cache lock").remove(key);
    }

    fn observe(&self, pod: &Pod) {
        let now = Timestamp::now();
        let key = PodKey::of(pod);
        let rollup = rollup(pod.annotations(), now);
        let label = health_label(pod);
        let has_watchdogs = !rollup.watchdogs.is_empty() || !rollup.expired.is_empty();
        if (has_watchdogs || label.is_some()) && label != Some(rollup.health.label_value())
            || !rollup.expired.is_empty()
            || readiness::plan(pod, now).is_some()
        {
            self.refresh(key.clone());
        }
        self.arm_timer(&key, rollup.next_expiry);
    }
}
