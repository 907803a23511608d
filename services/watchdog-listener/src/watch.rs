//! The state behind one `WatchPodHealth` stream, sans-IO: the pods the client has been told about
//! and the diff of a new observation against them. Fed by a Kubernetes watch (see `grpc.rs`).
//!
//! Resume tokens are a digest of the state the client holds after a message. A reconnecting client
//! whose token equals the digest of the current state gets an empty change message; any other
//! token gets a fresh snapshot, which the contract allows ("too old to resume from").

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use crate::{annotation::format_value, rollup::PodHealth};

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
    use crate::rollup::Health;

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
