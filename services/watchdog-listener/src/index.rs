//! The pod index: one Kubernetes watch per process feeds it (see [`crate::pods::feed_index`]),
//! and every consumer reads it — the writer (expiry timers, label repair), the prober (targets,
//! malformed annotations) and each `WatchPodHealth` stream — instead of opening a watch of its own.
//! Sans-IO: it takes [`watcher::Event`]s in and hands changes out; it never talks to the API server.
//!
//! Pods are kept trimmed to what the consumers read (name, namespace, uid, resourceVersion,
//! labels, annotations, deletionTimestamp, pod IP, and for the readiness gate `autocrane.io/healthy`
//! the gates and that one condition), so the index costs far less than a reflector of full pods.
//!
//! Re-lists: a watcher that lost its place re-lists (`Init`, `InitApply`…, `InitDone`). The listed
//! pods are buffered and replace the state at `InitDone`, so a pod deleted while the watch was
//! down disappears then; subscribers get one [`PodEvent::Resynced`] with the new state of their
//! namespace and diff it against what they hold (the pattern of kubert's `index.rs`).
//!
//! Consistency: every change carries a sequence number. A subscription's snapshot is taken under
//! the same lock as its place in the change feed, and changes already contained in a snapshot are
//! skipped, so a subscriber never sees an older version of a pod after a newer one. A subscriber
//! that falls behind the bounded change feed is resynced from the current state.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
use kube::runtime::watcher;
use tokio::sync::{broadcast, watch};

use crate::{pods::PodKey, readiness::HEALTHY_CONDITION};

/// How many changes a subscriber may fall behind before it is resynced from the full state.
const FEED_CAPACITY: usize = 4096;

/// One change of the index, as the broadcast carries it.
#[derive(Clone, Debug)]
struct Change {
    seq: u64,
    kind: ChangeKind,
}

#[derive(Clone, Debug)]
enum ChangeKind {
    Applied(Arc<Pod>),
    Deleted(PodKey),
    Resynced,
}

/// What a subscriber is told, restricted to its namespace (or all of them).
#[derive(Clone, Debug)]
pub enum PodEvent {
    /// A pod was added or changed (the trimmed pod).
    Applied(Arc<Pod>),
    /// A pod was deleted.
    Deleted(PodKey),
    /// The index was re-listed (or this subscriber fell behind): the full current state, which
    /// replaces everything the subscriber knew.
    Resynced(Vec<Arc<Pod>>),
}

#[derive(Default)]
struct State {
    pods: BTreeMap<PodKey, Arc<Pod>>,
    /// The listing in progress between `Init` and `InitDone`.
    listing: Option<BTreeMap<PodKey, Arc<Pod>>>,
    /// The sequence number of the last change.
    seq: u64,
    /// Re-lists completed (the first listing included).
    listings: u64,
}

struct Inner {
    namespace: Option<String>,
    state: RwLock<State>,
    feed: broadcast::Sender<Change>,
    ready: watch::Sender<bool>,
}

/// The index of the pods this process follows; cheap to clone.
#[derive(Clone)]
pub struct PodIndex {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.read().expect("index lock");
        f.debug_struct("PodIndex")
            .field("namespace", &self.inner.namespace)
            .field("pods", &state.pods.len())
            .field("seq", &state.seq)
            .finish()
    }
}

/// Keeps what the consumers read: identity, labels, annotations, deletion, pod IP, and the
/// readiness gates with the `autocrane.io/healthy` condition (the writer keeps it in step).
pub fn trim(pod: Pod) -> Pod {
    let mut metadata = pod.metadata;
    metadata.managed_fields = None;
    metadata.owner_references = None;
    metadata.finalizers = None;
    let readiness_gates = pod
        .spec
        .and_then(|spec| spec.readiness_gates)
        .filter(|gates| !gates.is_empty());
    let (pod_ip, conditions) = pod
        .status
        .map(|status| {
            let ours: Vec<PodCondition> = status
                .conditions
                .into_iter()
                .flatten()
                .filter(|c| c.type_ == HEALTHY_CONDITION)
                .collect();
            (status.pod_ip, (!ours.is_empty()).then_some(ours))
        })
        .unwrap_or_default();
    Pod {
        metadata,
        spec: readiness_gates.map(|gates| PodSpec {
            readiness_gates: Some(gates),
            ..PodSpec::default()
        }),
        status: (pod_ip.is_some() || conditions.is_some()).then(|| PodStatus {
            pod_ip,
            conditions,
            ..PodStatus::default()
        }),
    }
}

/// The resourceVersion of `pod` as a number, when it is one (the API server's are, but they are
/// documented as opaque, so nothing relies on it beyond ordering our own writes).
fn numeric_version(pod: &Pod) -> Option<u64> {
    pod.metadata.resource_version.as_deref()?.parse().ok()
}

/// Whether `a` is a later version of the same pod (same uid) than `b`.
fn is_newer(a: &Pod, b: &Pod) -> bool {
    a.metadata.uid == b.metadata.uid
        && matches!(
            (numeric_version(a), numeric_version(b)),
            (Some(a), Some(b)) if a > b
        )
}

impl PodIndex {
    /// An empty index of the pods of `namespace` (all namespaces when `None`); not ready until
    /// its first listing is done.
    pub fn new(namespace: Option<String>) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (ready, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                namespace,
                state: RwLock::new(State::default()),
                feed,
                ready,
            }),
        }
    }

    /// The namespace this index follows (`None`: all).
    pub fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    /// Whether the index holds the pods of `namespace`.
    pub fn covers(&self, namespace: &str) -> bool {
        self.inner
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == namespace)
    }

    /// Waits until the first listing is complete.
    pub async fn ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        // The sender lives in `self`, so this cannot fail while we hold `self`.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Whether the first listing is complete.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Listings completed so far (1 after the first; each re-list adds one).
    pub fn listings(&self) -> u64 {
        self.inner.state.read().expect("index lock").listings
    }

    /// Takes one watcher event in.
    pub fn apply(&self, event: watcher::Event<Pod>) {
        let mut state = self.inner.state.write().expect("index lock");
        match event {
            watcher::Event::Init => state.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(pod) => {
                let pod = trim(pod);
                state
                    .listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(PodKey::of(&pod), Arc::new(pod));
            }
            watcher::Event::InitDone => {
                state.pods = state.listing.take().unwrap_or_default();
                state.listings += 1;
                self.send(&mut state, ChangeKind::Resynced);
                drop(state);
                self.inner.ready.send_replace(true);
            }
            watcher::Event::Apply(pod) => {
                let key = PodKey::of(&pod);
                // The watch catching up on a version older than one of our own writes already
                // applied: skip it rather than show the pod going back.
                if state
                    .pods
                    .get(&key)
                    .is_some_and(|held| is_newer(held, &pod))
                {
                    return;
                }
                let pod = Arc::new(trim(pod));
                state.pods.insert(key, pod.clone());
                self.send(&mut state, ChangeKind::Applied(pod));
            }
            watcher::Event::Delete(pod) => {
                let key = PodKey::of(&pod);
                if state.pods.remove(&key).is_some() {
                    self.send(&mut state, ChangeKind::Deleted(key));
                }
            }
        }
    }

    /// Takes in a pod as one of our own patches returned it, so that readers see our write without
    /// waiting for the watch to deliver it. Applied only over an older version of the same pod
    /// (same uid, a smaller numeric resourceVersion): a pod the index does not hold (not listed
    /// yet, or deleted meanwhile) is left to the watch, which never lets a deleted pod come back.
    pub fn observe_write(&self, pod: &Pod) {
        let key = PodKey::of(pod);
        let mut state = self.inner.state.write().expect("index lock");
        let Some(held) = state.pods.get(&key) else {
            return;
        };
        if !is_newer(pod, held) {
            return;
        }
        let pod = Arc::new(trim(pod.clone()));
        state.pods.insert(key, pod.clone());
        self.send(&mut state, ChangeKind::Applied(pod));
    }

    fn send(&self, state: &mut State, kind: ChangeKind) {
        state.seq += 1;
        // No receiver is fine: nobody is subscribed yet.
        let _ = self.inner.feed.send(Change {
            seq: state.seq,
            kind,
        });
    }

    /// The pods of `namespace` (all when `None`), sorted by namespace and name.
    pub fn pods(&self, namespace: Option<&str>) -> Vec<Arc<Pod>> {
        Self::select(&self.inner.state.read().expect("index lock"), namespace)
    }

    /// One pod, if the index holds it.
    pub fn get(&self, key: &PodKey) -> Option<Arc<Pod>> {
        self.inner
            .state
            .read()
            .expect("index lock")
            .pods
            .get(key)
            .cloned()
    }

    fn select(state: &State, namespace: Option<&str>) -> Vec<Arc<Pod>> {
        match namespace {
            None => state.pods.values().cloned().collect(),
            Some(ns) => state
                .pods
                .range(PodKey::new(ns, "")..)
                .take_while(|(key, _)| key.namespace == ns)
                .map(|(_, pod)| pod.clone())
                .collect(),
        }
    }

    /// The current pods of `namespace` (all when `None`) and the changes after them.
    pub fn subscribe(&self, namespace: Option<&str>) -> (Vec<Arc<Pod>>, Subscription) {
        let state = self.inner.state.read().expect("index lock");
        let pods = Self::select(&state, namespace);
        let subscription = Subscription {
            index: self.clone(),
            namespace: namespace.map(str::to_string),
            feed: self.inner.feed.subscribe(),
            seen: state.seq,
        };
        (pods, subscription)
    }
}

/// The changes of the index after a snapshot, for one namespace (or all).
#[derive(Debug)]
pub struct Subscription {
    index: PodIndex,
    namespace: Option<String>,
    feed: broadcast::Receiver<Change>,
    /// The last change reflected in what this subscriber was given.
    seen: u64,
}

impl Subscription {
    fn resync(&mut self) -> PodEvent {
        let state = self.index.inner.state.read().expect("index lock");
        self.seen = state.seq;
        // Changes are sent under the write lock, so a receiver made now starts right after the
        // state read here; the backlog of the old one (all in this state) is dropped with it.
        self.feed = self.feed.resubscribe();
        PodEvent::Resynced(PodIndex::select(&state, self.namespace.as_deref()))
    }

    fn mine(&self, key: &PodKey) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == key.namespace)
    }

    /// The next change of this subscriber's namespace; `None` once the index is gone.
    pub async fn next(&mut self) -> Option<PodEvent> {
        loop {
            let change = match self.feed.recv().await {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "Pod index subscriber fell behind; resyncing");
                    return Some(self.resync());
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if change.seq <= self.seen {
                continue;
            }
            self.seen = change.seq;
            match change.kind {
                ChangeKind::Applied(pod) if self.mine(&PodKey::of(&pod)) => {
                    return Some(PodEvent::Applied(pod));
                }
                ChangeKind::Deleted(key) if self.mine(&key) => {
                    return Some(PodEvent::Deleted(key));
                }
                ChangeKind::Resynced => return Some(self.resync()),
                ChangeKind::Applied(_) | ChangeKind::Deleted(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodReadinessGate;
    use kube::ResourceExt;

    fn pod(namespace: &str, name: &str, rv: u64) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(format!("uid-{name}"));
        pod.metadata.resource_version = Some(rv.to_string());
        pod
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter().map(|p| PodKey::of(p).to_string()).collect()
    }

    fn listed(index: &PodIndex, pods: Vec<Pod>) {
        index.apply(watcher::Event::Init);
        for pod in pods {
            index.apply(watcher::Event::InitApply(pod));
        }
        index.apply(watcher::Event::InitDone);
    }

    async fn next(subscription: &mut Subscription) -> PodEvent {
        tokio::time::timeout(std::time::Duration::from_secs(1), subscription.next())
            .await
            .expect("a change is waiting")
            .expect("the index lives")
    }

    #[tokio::test]
    async fn becomes_ready_after_the_first_listing() {
        let index = PodIndex::new(None);
        assert!(!index.is_ready());
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(pod("shop", "web-0", 1)));
        assert!(!index.is_ready());
        assert!(
            index.pods(None).is_empty(),
            "a listing counts once complete"
        );
        index.apply(watcher::Event::InitDone);
        index.ready().await;
        assert_eq!(names(&index.pods(None)), ["shop/web-0"]);
        assert_eq!(index.listings(), 1);
    }

    #[tokio::test]
    async fn a_relist_drops_pods_deleted_while_the_watch_was_down() {
        let index = PodIndex::new(None);
        listed(
            &index,
            vec![pod("shop", "web-0", 1), pod("shop", "web-1", 2)],
        );
        let (snapshot, mut changes) = index.subscribe(Some("shop"));
        assert_eq!(names(&snapshot), ["shop/web-0", "shop/web-1"]);

        // The watch lost its place; web-1 was deleted meanwhile and web-2 created.
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(pod("shop", "web-0", 1)));
        index.apply(watcher::Event::InitApply(pod("shop", "web-2", 5)));
        assert_eq!(
            names(&index.pods(None)),
            ["shop/web-0", "shop/web-1"],
            "the old state serves readers until the listing is complete"
        );
        index.apply(watcher::Event::InitDone);

        assert_eq!(names(&index.pods(None)), ["shop/web-0", "shop/web-2"]);
        match next(&mut changes).await {
            PodEvent::Resynced(pods) => assert_eq!(names(&pods), ["shop/web-0", "shop/web-2"]),
            other => panic!("expected a resync, got {other:?}"),
        }
        assert_eq!(index.listings(), 2);
    }

    #[tokio::test]
    async fn subscribers_see_only_their_namespace_and_changes_after_their_snapshot() {
        let index = PodIndex::new(None);
        listed(&index, vec![pod("shop", "web-0", 1), pod("lab", "x-0", 1)]);
        let (snapshot, mut shop) = index.subscribe(Some("shop"));
        let (everything, mut all) = index.subscribe(None);
        assert_eq!(names(&snapshot), ["shop/web-0"]);
        assert_eq!(everything.len(), 2);

        index.apply(watcher::Event::Apply(pod("lab", "x-0", 7)));
        index.apply(watcher::Event::Apply(pod("shop", "web-0", 8)));
        index.apply(watcher::Event::Delete(pod("shop", "web-0", 9)));
        match next(&mut shop).await {
            PodEvent::Applied(pod) => assert_eq!(pod.resource_version().as_deref(), Some("8")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut shop).await, PodEvent::Deleted(key) if key.name == "web-0"));
        assert!(matches!(next(&mut all).await, PodEvent::Applied(pod) if pod.name_any() == "x-0"));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_resynced_with_the_current_state() {
        let index = PodIndex::new(None);
        listed(&index, vec![]);
        let (_, mut slow) = index.subscribe(None);
        for rv in 0..(FEED_CAPACITY as u64 + 10) {
            index.apply(watcher::Event::Apply(pod(
                "shop",
                &format!("p-{}", rv % 3),
                rv,
            )));
        }
        match next(&mut slow).await {
            PodEvent::Resynced(pods) => assert_eq!(pods.len(), 3),
            other => panic!("expected a resync, got {other:?}"),
        }
        index.apply(watcher::Event::Delete(pod("shop", "p-0", 99_999)));
        let after = next(&mut slow).await;
        assert!(
            matches!(&after, PodEvent::Deleted(key) if key.name == "p-0"),
            "after the resync, changes flow again and none is replayed: {after:?}"
        );
    }

    #[tokio::test]
    async fn our_own_writes_are_applied_only_over_an_older_version_of_the_same_pod() {
        let index = PodIndex::new(None);
        listed(&index, vec![pod("shop", "web-0", 5)]);
        let (_, mut changes) = index.subscribe(None);

        let mut written = pod("shop", "web-0", 6);
        written
            .annotations_mut()
            .insert("status.autocrane.io/http".into(), "x".into());
        index.observe_write(&written);
        assert!(
            matches!(next(&mut changes).await, PodEvent::Applied(pod) if pod.annotations().contains_key("status.autocrane.io/http"))
        );

        // An older copy, the watch catching up on the version before our write, a re-created pod
        // and a pod the watch never showed: none of them replaces our write.
        index.observe_write(&pod("shop", "web-0", 4));
        index.apply(watcher::Event::Apply(pod("shop", "web-0", 5)));
        let mut recreated = pod("shop", "web-0", 9);
        recreated.metadata.uid = Some("another".into());
        index.observe_write(&recreated);
        index.observe_write(&pod("shop", "unknown", 9));
        assert_eq!(
            index
                .get(&PodKey::new("shop", "web-0"))
                .unwrap()
                .resource_version()
                .as_deref(),
            Some("6")
        );
        assert_eq!(
            index.pods(None).len(),
            1,
            "a pod the watch has not shown stays out"
        );
        index.apply(watcher::Event::Delete(pod("shop", "web-0", 10)));
        index.observe_write(&pod("shop", "web-0", 11));
        assert!(
            index.pods(None).is_empty(),
            "a deleted pod never comes back"
        );
    }

    #[test]
    fn pods_are_trimmed_to_what_consumers_read() {
        let mut full = pod("shop", "web-0", 1);
        full.spec = Some(PodSpec::default());
        full.status = Some(PodStatus {
            pod_ip: Some("10.0.0.7".into()),
            phase: Some("Running".into()),
            ..PodStatus::default()
        });
        full.labels_mut().insert("app".into(), "web".into());
        let trimmed = trim(full);
        assert!(trimmed.spec.is_none());
        let status = trimmed.status.unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(status.phase, None);
        assert_eq!(trimmed.metadata.labels.unwrap()["app"], "web");
    }

    #[test]
    fn a_gated_pod_keeps_its_gates_and_only_the_healthy_condition() {
        let condition = |type_: &str| PodCondition {
            type_: type_.into(),
            status: "True".into(),
            ..PodCondition::default()
        };
        let mut full = pod("shop", "web-0", 1);
        full.spec = Some(PodSpec {
            readiness_gates: Some(vec![PodReadinessGate {
                condition_type: HEALTHY_CONDITION.into(),
            }]),
            ..PodSpec::default()
        });
        full.status = Some(PodStatus {
            conditions: Some(vec![condition("Ready"), condition(HEALTHY_CONDITION)]),
            ..PodStatus::default()
        });
        let trimmed = trim(full);
        assert!(crate::readiness::has_gate(&trimmed));
        let conditions = trimmed.status.unwrap().conditions.unwrap();
        assert_eq!(conditions, [condition(HEALTHY_CONDITION)]);
    }

    #[test]
    fn a_namespaced_index_covers_only_its_namespace() {
        assert!(PodIndex::new(None).covers("any"));
        let shop = PodIndex::new(Some("shop".into()));
        assert!(shop.covers("shop") && !shop.covers("lab"));
    }
}
