//! The state behind one `WatchPodHealth` stream, sans-IO: the pods the client has been told about
//! and the diff of a new observation against them. Fed by the process's pod index (`index.rs`,
//! itself fed by one Kubernetes watch) through a subscription (see `grpc.rs`); the stream's
//! [`Scope`] (namespace and label selector) is applied here.
//!
//! Resume tokens are a digest of the state the client holds after a message. A reconnecting client
//! whose token equals the digest of the current state gets an empty change message; any other
//! token gets a fresh snapshot, which the contract allows ("too old to resume from").

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use autocrane_api::watchdog::{PodHealth, format_value};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::{index::PodEvent, pods::pod_health, selector::LabelSelector};

/// What one stream follows: the pods of a namespace that match a label selector.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The namespace.
    pub namespace: String,
    /// The selector (empty: every pod).
    pub selector: LabelSelector,
}

impl Scope {
    /// Whether the stream follows `pod`.
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && self.selector.matches(pod.labels())
    }

    /// The health of the followed pods among `pods`, at `now`.
    pub fn observe(&self, pods: &[Arc<Pod>], now: Timestamp) -> Vec<PodHealth> {
        pods.iter()
            .filter(|pod| self.selects(pod))
            .map(|pod| pod_health(pod, now))
            .collect()
    }
}

/// One message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Whether `pods` is the full state.
    pub snapshot: bool,
    /// New or changed pods.
    pub pods: Vec<PodHealth>,
    /// Names of pods that went away.
    pub removed: Vec<String>,
    /// The resume token after this message.
    pub resume_token: String,
}

/// The pods one stream's client knows, by name (a stream covers one namespace).
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    pods: BTreeMap<String, PodHealth>,
}

impl StreamState {
    /// The resume token of the current state.
    pub fn token(&self) -> String {
        let mut hasher = DefaultHasher::new();
        for pod in self.pods.values() {
            pod.name.hash(&mut hasher);
            pod.health.hash(&mut hasher);
            for watchdog in &pod.watchdogs {
                watchdog.name.hash(&mut hasher);
                format_value(watchdog).hash(&mut hasher);
            }
        }
        format!("s1-{:016x}", hasher.finish())
    }

    /// The first message, given the full observed state and the client's resume token.
    pub fn start(&mut self, observed: Vec<PodHealth>, resume_token: &str) -> Update {
        self.pods = observed.into_iter().map(|p| (p.name.clone(), p)).collect();
        let token = self.token();
        if !resume_token.is_empty() && resume_token == token {
            return Update {
                snapshot: false,
                pods: Vec::new(),
                removed: Vec::new(),
                resume_token: token,
            };
        }
        Update {
            snapshot: true,
            pods: self.pods.values().cloned().collect(),
            removed: Vec::new(),
            resume_token: token,
        }
    }

    /// A pod was added or changed; a message when its watchdogs or health changed.
    pub fn apply(&mut self, pod: PodHealth) -> Option<Update> {
        if self
            .pods
            .get(&pod.name)
            .is_some_and(|old| old.same_health(&pod))
        {
            self.pods.insert(pod.name.clone(), pod);
            return None;
        }
        self.pods.insert(pod.name.clone(), pod.clone());
        Some(self.update(vec![pod], Vec::new()))
    }

    /// A pod was deleted or stopped matching.
    pub fn remove(&mut self, name: &str) -> Option<Update> {
        self.pods.remove(name)?;
        Some(self.update(Vec::new(), vec![name.to_string()]))
    }

    /// The watch re-listed: the differences against what the client has, if any.
    pub fn relist(&mut self, observed: Vec<PodHealth>) -> Option<Update> {
        let observed: BTreeMap<String, PodHealth> =
            observed.into_iter().map(|p| (p.name.clone(), p)).collect();
        let removed: Vec<String> = self
            .pods
            .keys()
            .filter(|name| !observed.contains_key(*name))
            .cloned()
            .collect();
        let changed: Vec<PodHealth> = observed
            .values()
            .filter(|pod| {
                !self
                    .pods
                    .get(&pod.name)
                    .is_some_and(|old| old.same_health(pod))
            })
            .cloned()
            .collect();
        self.pods = observed;
        (!changed.is_empty() || !removed.is_empty()).then(|| self.update(changed, removed))
    }

    /// A change of the pod index: the message to send, if the stream's client must hear of it. A
    /// pod that stops matching the selector counts as removed.
    pub fn on_event(&mut self, scope: &Scope, event: PodEvent, now: Timestamp) -> Option<Update> {
        match event {
            PodEvent::Applied(pod) if scope.selects(&pod) => self.apply(pod_health(&pod, now)),
            PodEvent::Applied(pod) => {
                if pod.metadata.namespace.as_deref() == Some(scope.namespace.as_str()) {
                    self.remove(&pod.name_any())
                } else {
                    None
                }
            }
            PodEvent::Deleted(key) if key.namespace == scope.namespace => self.remove(&key.name),
            PodEvent::Deleted(_) => None,
            PodEvent::Resynced(pods) => self.relist(scope.observe(&pods, now)),
        }
    }

    fn update(&self, pods: Vec<PodHealth>, removed: Vec<String>) -> Update {
        Update {
            snapshot: false,
            pods,
            removed,
            resume_token: self.token(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autocrane_api::watchdog::Health;

    fn pod(name: &str, health: Health, rv: &str) -> PodHealth {
        PodHealth {
            namespace: "shop".into(),
            name: name.into(),
            health,
            watchdogs: Vec::new(),
            resource_version: rv.into(),
        }
    }

    #[test]
    fn first_message_is_a_snapshot() {
        let mut state = StreamState::default();
        let update = state.start(vec![pod("a", Health::Info, "1")], "");
        assert!(update.snapshot);
        assert_eq!(update.pods.len(), 1);
    }

    #[test]
    fn changes_are_sent_only_when_health_changes() {
        let mut state = StreamState::default();
        state.start(vec![pod("a", Health::Info, "1")], "");
        assert_eq!(state.apply(pod("a", Health::Info, "2")), None);
        let update = state.apply(pod("a", Health::Error, "3")).unwrap();
        assert!(!update.snapshot);
        assert_eq!(update.pods[0].health, Health::Error);
        assert_eq!(state.remove("a").unwrap().removed, ["a"]);
        assert_eq!(state.remove("a"), None);
    }

    #[test]
    fn resume_with_current_token_sends_no_snapshot() {
        let mut first = StreamState::default();
        let token = first
            .start(vec![pod("a", Health::Info, "1")], "")
            .resume_token;
        let mut again = StreamState::default();
        let update = again.start(vec![pod("a", Health::Info, "9")], &token);
        assert!(!update.snapshot && update.pods.is_empty());
        let mut changed = StreamState::default();
        assert!(
            changed
                .start(vec![pod("a", Health::Error, "9")], &token)
                .snapshot
        );
    }

    fn k8s_pod(name: &str, labels: &[(&str, &str)]) -> Arc<Pod> {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.name = Some(name.into());
        pod.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod.metadata.annotations = Some(
            [(
                "status.autocrane.io/http".to_string(),
                "error/2026-11-18T11:06:40Z//down".to_string(),
            )]
            .into(),
        );
        Arc::new(pod)
    }

    #[test]
    fn index_events_outside_the_scope_are_ignored_and_unmatching_pods_are_removed() {
        let scope = Scope {
            namespace: "shop".into(),
            selector: LabelSelector::parse("app=web").unwrap(),
        };
        let now: Timestamp = "2026-11-18T11:07:00Z".parse().unwrap();
        let mut state = StreamState::default();
        let first = state.start(
            scope.observe(
                &[
                    k8s_pod("web-0", &[("app", "web")]),
                    k8s_pod("db-0", &[("app", "db")]),
                ],
                now,
            ),
            "",
        );
        assert_eq!(first.pods.len(), 1);
        assert_eq!(first.pods[0].health, autocrane_api::watchdog::Health::Error);

        let mut elsewhere = (*k8s_pod("web-0", &[("app", "web")])).clone();
        elsewhere.metadata.namespace = Some("lab".into());
        assert_eq!(
            state.on_event(&scope, PodEvent::Applied(Arc::new(elsewhere)), now),
            None
        );
        assert_eq!(
            state.on_event(
                &scope,
                PodEvent::Applied(k8s_pod("db-0", &[("app", "db")])),
                now
            ),
            None
        );
        let relabelled = state
            .on_event(
                &scope,
                PodEvent::Applied(k8s_pod("web-0", &[("app", "old")])),
                now,
            )
            .unwrap();
        assert_eq!(relabelled.removed, ["web-0"]);
        let back = state
            .on_event(
                &scope,
                PodEvent::Resynced(vec![k8s_pod("web-0", &[("app", "web")])]),
                now,
            )
            .unwrap();
        assert_eq!(back.pods[0].name, "web-0");
        let deleted = state
            .on_event(
                &scope,
                PodEvent::Deleted(crate::pods::PodKey::new("shop", "web-0")),
                now,
            )
            .unwrap();
        assert_eq!(deleted.removed, ["web-0"]);
    }

    #[test]
    fn relist_reports_differences_only() {
        let mut state = StreamState::default();
        state.start(
            vec![pod("a", Health::Info, "1"), pod("b", Health::Info, "1")],
            "",
        );
        assert_eq!(
            state.relist(vec![
                pod("a", Health::Info, "5"),
                pod("b", Health::Info, "5")
            ]),
            None
        );
        let update = state.relist(vec![pod("a", Health::Warning, "6")]).unwrap();
        assert_eq!(update.removed, ["b"]);
        assert_eq!(update.pods[0].name, "a");
    }
}
