//! Group commit of source states: callers hand over records and get a [`Ticket`]; one committer
//! thread takes every record waiting, appends them to the journal in one write, fsyncs once,
//! hands the batch's payloads to the publisher (the hub broadcasts the events there) and then
//! acknowledges every ticket of the batch. While one batch is being fsynced the next one gathers,
//! so 1,000 sources added together cost one fsync, not 2,000.
//!
//! A checkpointer thread folds full journal segments into the per-source files (see
//! [`crate::store`]) off the commit path, oldest first.
//!
//! A failed write is retried with the next batch (the latest state of each failed source is
//! kept); the batch is still published, so the watcher keeps serving (as it always did), and its
//! waiters get the error until a later batch succeeds.

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, mpsc},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::store::{Segment, Store, StoreError, encode_record};

/// A position in the commit order; tickets are handed out in submission order from 1.
pub type Ticket = u64;

/// Journal segments are folded into checkpoint files once they pass this size.
pub const SEGMENT_LIMIT: u64 = 8 * 1024 * 1024;

/// How long the checkpointer waits before retrying a segment it could not fold.
const FOLD_RETRY: Duration = Duration::from_secs(5);

/// How far the commits got.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Every ticket up to this one was written (or failed) and published.
    pub through: Ticket,
    /// Since which ticket writes have been failing (none are durable from there on), and why.
    pub failing_since: Option<(Ticket, Arc<StoreError>)>,
}

/// What the committer reports after each batch, on its thread.
#[derive(Debug)]
pub struct Batch<P> {
    /// The last ticket of the batch.
    pub through: Ticket,
    /// The payloads, in ticket order.
    pub payloads: Vec<P>,
    /// The write error, if the batch is not durable.
    pub error: Option<Arc<StoreError>>,
}

/// Counters of the commit path (shared with the metrics).
#[derive(Clone, Debug, Default)]
pub struct CommitCounters {
    /// Batches written.
    pub batches: Counter,
    /// Records written (a record retried after a failure counts again).
    pub records: Counter,
    /// fsync/fdatasync calls on the commit path.
    pub syncs: Counter,
}

#[derive(Debug)]
struct Pending<P> {
    id: String,
    json: Vec<u8>,
    payload: P,
}

#[derive(Debug)]
struct Queue<P> {
    last_ticket: Ticket,
    pending: Vec<Pending<P>>,
    closed: bool,
}

#[derive(Debug)]
struct Shared<P> {
    queue: Mutex<Queue<P>>,
    wake: Condvar,
}

/// The submitting side; dropping it stops the threads once the queue is written.
#[derive(Debug)]
pub struct Committer<P> {
    shared: Arc<Shared<P>>,
    progress: watch::Receiver<Progress>,
    counters: CommitCounters,
}

impl<P: Send + 'static> Committer<P> {
    /// Starts the threads. Segments already on disk (from a previous run, already loaded by the
    /// caller) are folded in the background; new records go to a fresh segment of at most
    /// `segment_limit` bytes.
    pub fn start(
        store: Store,
        segment_limit: u64,
        counters: CommitCounters,
        publish: impl FnMut(Batch<P>) + Send + 'static,
    ) -> Result<Self, StoreError> {
        let existing = store.segments()?;
        let next = existing.last().map_or(1, |last| last + 1);
        let segment = Segment::create(&store, next)?;
        counters.syncs.inc();
        let (fold, folds) = mpsc::channel();
        for number in existing {
            let _ = fold.send(number);
        }
        let checkpoint_store = store.clone();
        std::thread::Builder::new()
            .name("state-checkpoint".into())
            .spawn(move || checkpointer(checkpoint_store, folds))
            .map_err(|source| StoreError::Write {
                path: store.journal_dir().to_path_buf(),
                source,
            })?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                last_ticket: 0,
                pending: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let (progress_tx, progress) = watch::channel(Progress::default());
        let writer = Writer {
            store: store.clone(),
            segment: Some(segment),
            next_segment: next + 1,
            segment_limit,
            fold,
            retry: BTreeMap::new(),
            counters: counters.clone(),
        };
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("state-committer".into())
            .spawn(move || writer.run(&thread_shared, progress_tx, publish))
            .map_err(|source| StoreError::Write {
                path: store.journal_dir().to_path_buf(),
                source,
            })?;
        Ok(Self {
            shared,
            progress,
            counters,
        })
    }

    /// Queues the states `(source_id, json, payload)` as one group; returns the last ticket (the
    /// current last ticket when `records` is empty).
    pub fn submit(&self, records: impl IntoIterator<Item = (String, Vec<u8>, P)>) -> Ticket {
        let mut queue = self.shared.queue.lock().expect("commit queue poisoned");
        for (id, json, payload) in records {
            queue.last_ticket += 1;
            queue.pending.push(Pending { id, json, payload });
        }
        self.shared.wake.notify_one();
        queue.last_ticket
    }

    /// Waits until `ticket` is written and published; the error when its write failed and no
    /// later batch has made it durable since.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), Arc<StoreError>> {
        let mut progress = self.progress.clone();
        let reached = progress
            .wait_for(|p| p.through >= ticket)
            .await
            .map_err(|_| Arc::new(StoreError::Stopped))?;
        match &reached.failing_since {
            Some((since, error)) if *since <= ticket => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// The commit counters.
    pub fn counters(&self) -> &CommitCounters {
        &self.counters
    }
}

impl<P> Drop for Committer<P> {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.closed = true;
        }
        self.shared.wake.notify_all();
    }
}

struct Writer {
    store: Store,
    segment: Option<Segment>,
    next_segment: u64,
    segment_limit: u64,
    fold: mpsc::Sender<u64>,
    /// The latest state of each source whose write failed, written again with the next batch.
    retry: BTreeMap<String, Vec<u8>>,
    counters: CommitCounters,
}

impl Writer {
    fn run<P>(
        mut self,
        shared: &Shared<P>,
        progress: watch::Sender<Progress>,
        mut publish: impl FnMut(Batch<P>),
    ) {
        let span = tracing::info_span!("state_committer");
        let _entered = span.enter();
        loop {
            let (batch, through) = {
                let mut queue = shared.queue.lock().expect("commit queue poisoned");
                while queue.pending.is_empty() && !queue.closed {
                    queue = shared.wake.wait(queue).expect("commit queue poisoned");
                }
                if queue.pending.is_empty() {
                    return;
                }
                (std::mem::take(&mut queue.pending), queue.last_ticket)
            };
            let first = through + 1 - batch.len() as Ticket;
            let mut payloads = Vec::with_capacity(batch.len());
            let mut records = std::mem::take(&mut self.retry);
            for pending in batch {
                records.insert(pending.id, pending.json);
                payloads.push(pending.payload);
            }
            let error = self.write(&records).err().map(Arc::new);
            if let Some(error) = &error {
                tracing::error!(%error, sources = records.len(), "Writing source states failed; retrying with the next change");
                self.retry = records;
            }
            publish(Batch {
                through,
                payloads,
                error: error.clone(),
            });
            progress.send_modify(|p| {
                p.through = through;
                p.failing_since = match error {
                    None => None,
                    Some(error) => Some(p.failing_since.take().unwrap_or((first, error))),
                };
            });
        }
    }

    /// Appends every record in one write and one fsync; rotates the segment when it is full or
    /// broken (a failed write may have left a torn record, so nothing more is appended to it).
    fn write(&mut self, records: &BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        let mut bytes = Vec::with_capacity(records.values().map(|r| r.len() + 40).sum());
        for (id, json) in records {
            bytes.extend(encode_record(id, json));
        }
        let segment = match &mut self.segment {
            Some(segment) => segment,
            None => {
                let number = self.next_segment;
                self.next_segment += 1;
                let segment = Segment::create(&self.store, number)?;
                self.counters.syncs.inc();
                self.segment.insert(segment)
            }
        };
        let result = segment.append(&self.store, &bytes);
        self.counters.syncs.inc();
        self.counters.batches.inc();
        self.counters.records.inc_by(records.len() as u64);
        if result.is_err() || segment.len >= self.segment_limit {
            let full = segment.number;
            self.segment = None;
            let _ = self.fold.send(full);
        }
        result
    }
}

/// Folds segments into checkpoint files, in order; a segment that fails is retried before any
/// later one (a later one may hold newer states of the same sources).
fn checkpointer(store: Store, segments: mpsc::Receiver<u64>) {
    let span = tracing::info_span!("state_checkpoint");
    let _entered = span.enter();
    while let Ok(segment) = segments.recv() {
        loop {
            let started = std::time::Instant::now();
            match store.fold(segment) {
                Ok(sources) => {
                    tracing::debug!(segment, sources, elapsed = ?started.elapsed(), "Folded journal segment");
                    break;
                }
                Err(error) => {
                    tracing::warn!(segment, %error, "Folding journal segment failed; retrying");
                    std::thread::sleep(FOLD_RETRY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(dir: &std::path::Path, limit: u64) -> (Committer<u32>, mpsc::Receiver<Batch<u32>>) {
        let (tx, rx) = mpsc::channel();
        let store = Store::open(dir).unwrap();
        let committer = Committer::start(store, limit, CommitCounters::default(), move |b| {
            let _ = tx.send(b);
        })
        .unwrap();
        (committer, rx)
    }

    #[tokio::test]
    async fn a_thousand_records_submitted_together_cost_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let (committer, batches) = started(dir.path(), SEGMENT_LIMIT);
        let syncs_at_start = committer.counters().syncs.get();
        let last = committer
            .submit((0..1000u32).map(|i| (format!("directory-{i:04}"), b"{}".to_vec(), i)));
        assert_eq!(last, 1000);
        committer.durable(last).await.unwrap();
        let batch = batches.recv().unwrap();
        assert_eq!(batch.through, 1000);
        assert_eq!(
            batch.payloads,
            (0..1000).collect::<Vec<_>>(),
            "payloads in ticket order"
        );
        assert_eq!(committer.counters().batches.get(), 1);
        assert_eq!(committer.counters().records.get(), 1000);
        assert_eq!(
            committer.counters().syncs.get() - syncs_at_start,
            1,
            "one fdatasync for the whole group"
        );
        let store = Store::open(dir.path()).unwrap();
        let segment = store.segments().unwrap()[0];
        assert_eq!(store.replay(segment).unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn records_submitted_during_a_write_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (committer, _batches) = started(dir.path(), SEGMENT_LIMIT);
        let committer = Arc::new(committer);
        let tickets: Vec<Ticket> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8u32)
                .map(|t| {
                    let committer = committer.clone();
                    scope.spawn(move || {
                        (0..125u32)
                            .map(|i| {
                                committer.submit([(format!("http-{t}-{i}"), b"{}".to_vec(), i)])
                            })
                            .max()
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ticket in tickets {
            committer.durable(ticket).await.unwrap();
        }
        let batches = committer.counters().batches.get();
        assert_eq!(committer.counters().records.get(), 1000);
        assert!(
            batches < 1000,
            "1,000 one-record submissions from 8 threads took {batches} batches"
        );
    }

    #[tokio::test]
    async fn full_segments_are_folded_into_checkpoints_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (committer, _batches) = started(dir.path(), 1);
        let source = crate::state::Source::new(crate::spec::Spec {
            upstream: crate::spec::Upstream::Directory {
                path: "/a".into(),
                version_file: String::new(),
            },
            policy: crate::spec::Policy::Newest,
            poll_interval_ms: 1000,
        });
        let ticket = committer.submit([(source.id.clone(), crate::store::encode(&source), 0)]);
        committer.durable(ticket).await.unwrap();
        let checkpoint = dir.path().join(format!("sources/{}.json", source.id));
        for _ in 0..500 {
            if checkpoint.exists()
                && Store::open(dir.path()).unwrap().segments().unwrap().len() <= 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(checkpoint.exists(), "the full segment was folded");
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, source.id);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_retried_with_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        // A limit of one byte rotates the segment after every batch.
        let (committer, _batches) = started(dir.path(), 1);
        // Something in the way of the segment after the open one makes the write after `a`
        // fail. Looked up now, while the open segment is the only one: once `a` is durable, its
        // full segment is folded and deleted in the background.
        let store = Store::open(dir.path()).unwrap();
        let blocked = store.segment_path(store.segments().unwrap().last().unwrap() + 1);
        std::fs::create_dir(&blocked).unwrap();
        let a = committer.submit([("http-a".to_string(), b"{}".to_vec(), 1)]);
        committer.durable(a).await.unwrap();
        let b = committer.submit([("http-b".to_string(), b"{}".to_vec(), 2)]);
        assert!(
            committer.durable(b).await.is_err(),
            "the waiter learns that its state is not durable"
        );
        let c = committer.submit([("http-c".to_string(), b"{}".to_vec(), 3)]);
        committer.durable(c).await.unwrap();
        assert!(
            committer.durable(b).await.is_ok(),
            "b was written again with c"
        );
        std::fs::remove_dir(&blocked).unwrap();
        // On disk, in the journal or already folded into a checkpoint file (looked up in that
        // order: a fold writes the file before it deletes the segment).
        let on_disk = |id: &str| {
            store
                .segments()
                .unwrap()
                .into_iter()
                .any(|s| store.replay(s).unwrap().contains_key(id))
                || dir.path().join(format!("sources/{id}.json")).exists()
        };
        assert!(on_disk("http-b") && on_disk("http-c"));
    }
}
