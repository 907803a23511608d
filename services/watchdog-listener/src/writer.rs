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
//! TTLs: after each write, and for every pod the label watcher sees, a timer is armed for the
//! pod's earliest expiry; it enqueues a refresh, which removes the expired watchdogs and corrects
//! the label. One timer per pod, no polling.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use autocrane_api::runtime::admin::SharedRegistry;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    Error,
    coalesce::{Op, plan},
    kube::{PodKey, Pods, health_label, is_status, pod_health},
    rollup::{PodHealth, rollup},
};

/// How often a write is retried after a resourceVersion conflict.
const CONFLICT_RETRIES: usize = 8;

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
}

struct Inner {
    pods: Pods,
    window: Duration,
    queues: Mutex<HashMap<PodKey, Queue>>,
    timers: Mutex<HashMap<PodKey, (DateTime<Utc>, tokio::task::AbortHandle)>>,
    /// Each pod as our last write left it (see [`Writer::write`]).
    cache: Mutex<HashMap<PodKey, Pod>>,
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
    /// A writer patching through `pods`, at most one patch per pod per `window`.
    pub fn new(pods: Pods, window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pods,
                window,
                queues: Mutex::new(HashMap::new()),
                timers: Mutex::new(HashMap::new()),
                cache: Mutex::new(HashMap::new()),
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
            let span = tracing::debug_span!("pod_writer", pod = %key);
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
            let now = Utc::now();
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

    /// Arms (or re-arms, or clears) the pod's expiry timer.
    pub fn arm_timer(&self, key: &PodKey, at: Option<DateTime<Utc>>) {
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
                let delay = (at - Utc::now()).to_std().unwrap_or_default();
                let task = tokio::spawn(async move {
                    // A little slack so that the refresh's clock is past the expiry second.
                    tokio::time::sleep(delay + Duration::from_millis(20)).await;
                    let mut timers = writer.inner.timers.lock().expect("timer lock");
                    if timers.get(&pod).is_some_and(|(armed, _)| *armed == at) {
                        timers.remove(&pod);
                    }
                    drop(timers);
                    tracing::debug!(pod = %pod, "Watchdog expired; refreshing");
                    writer.refresh(pod);
                });
                if let Some((_, old)) = timers.insert(key.clone(), (at, task.abort_handle())) {
                    old.abort();
                }
            }
        }
    }

    /// Follows every pod in `namespace` (or all namespaces) with a Kubernetes watch: arms expiry
    /// timers for watchdogs written before this process started, and repairs a health label that
    /// does not match the annotations (someone edited them by hand). Runs until the watch ends.
    pub async fn follow_pods(self, namespace: Option<String>) {
        let client = self.inner.pods.client().clone();
        let api: Api<Pod> = match &namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    self.observe(&pod);
                }
                Ok(watcher::Event::Delete(pod)) => {
                    let key = PodKey::of(&pod);
                    self.arm_timer(&key, None);
                    self.inner.cache.lock().expect("cache lock").remove(&key);
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(err) => tracing::warn!(error = %err, "Pod watch failed; retrying"),
            }
        }
    }

    fn observe(&self, pod: &Pod) {
        let now = Utc::now();
        let key = PodKey::of(pod);
        let rollup = rollup(pod.annotations(), now);
        let label = health_label(pod);
        let has_watchdogs = !rollup.watchdogs.is_empty() || !rollup.expired.is_empty();
        if (has_watchdogs || label.is_some()) && label != Some(rollup.health.label_value())
            || !rollup.expired.is_empty()
        {
            self.refresh(key.clone());
        }
        self.arm_timer(&key, rollup.next_expiry);
    }
}
