//! The state of one source and how probes, failures and quarantines change it (sans-IO).
//!
//! Every change produces [`Event`]s numbered from one process-wide sequence (see [`Seq`]); a
//! stream's resume token is the sequence number of the last event it delivered. Each source keeps
//! the last [`LOG_CAPACITY`] events in a log that is persisted with it, plus `trimmed_through`, the
//! highest sequence number it has dropped from that log. A client resuming from token `t` gets the
//! logged events with `seq > t`; if `t < trimmed_through` events it never saw were dropped, so it
//! gets the source's fresh snapshot without events instead (the snapshot is the truth; events are
//! the news).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    policy::{Candidate, CompiledPolicy},
    spec::Spec,
};

/// Events kept per source for resuming streams.
pub const LOG_CAPACITY: usize = 512;
/// Versions kept for upstreams that only report their latest version (git branch heads, HTTP,
/// version files): older ones are forgotten silently, current and quarantined ones never.
pub const HISTORY_CAPACITY: usize = 100;

/// The process-wide event sequence; the last number handed out.
pub type Seq = u64;

/// One known version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The name (tag, commit, validator, directory).
    pub name: String,
    /// The immutable identity, empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// When the upstream published it, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<SystemTime>,
    /// When this watcher first saw it.
    pub discovered_at: SystemTime,
    /// Discovery order within the source.
    pub order: u64,
}

/// A quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Why, for people.
    pub reason: String,
    /// When.
    pub quarantined_at: SystemTime,
}

/// A version as reported in events and responses: the record plus its quarantine, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// The version.
    pub record: VersionRecord,
    /// Its quarantine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A version appeared (or a tag moved to a new digest).
    Discovered,
    /// The current version changed.
    CurrentChanged,
    /// A version was quarantined.
    Quarantined,
    /// A quarantine was lifted.
    Released,
    /// A version disappeared upstream.
    Removed,
    /// The source started failing.
    Failing,
    /// The source recovered.
    Recovered,
}

/// One event of a source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the process-wide sequence.
    pub seq: Seq,
    /// What happened.
    pub kind: EventKind,
    /// The version concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionView>,
    /// The previous current version (CURRENT_CHANGED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<VersionView>,
    /// The error (FAILING).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The prober's health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet (since start).
    #[default]
    Pending,
    /// The last probe succeeded.
    Ok,
    /// The last probe failed.
    Failing,
}

/// The prober's status; not persisted (a restarted watcher starts Pending and probes at once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Health.
    pub health: Health,
    /// The last error when failing.
    pub last_error: String,
    /// When the last probe finished.
    pub last_probe_at: Option<SystemTime>,
    /// When the next probe is due.
    pub next_probe_at: Option<SystemTime>,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
}

/// One version as an upstream reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The name.
    pub name: String,
    /// The digest, empty when not resolved.
    pub digest: String,
    /// Publication time, if the upstream says.
    pub published_at: Option<SystemTime>,
}

/// A successful probe's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// What the upstream has.
    pub items: Vec<Observed>,
    /// True when `items` is everything the upstream has (a tag list), so missing names were
    /// removed; false when it reports only its latest version(s) (a branch head).
    pub complete: bool,
}

/// Everything known about one source; the persisted part is serialisable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Source {
    /// The id.
    pub id: String,
    /// The canonical spec.
    pub spec: Spec,
    /// Known versions by name.
    pub versions: HashMap<String, VersionRecord>,
    /// Quarantines by version name; kept when the version disappears upstream.
    pub quarantines: BTreeMap<String, Quarantine>,
    /// The current version's name.
    pub current: Option<String>,
    /// Recent events, oldest first.
    pub log: VecDeque<Event>,
    /// The highest sequence number dropped from `log` (0: none).
    pub trimmed_through: Seq,
    /// The next discovery order number.
    pub next_order: u64,
    /// The prober's status.
    #[serde(skip)]
    pub status: Status,
    /// The compiled policy.
    #[serde(skip, default = "placeholder_policy")]
    policy: Option<CompiledPolicy>,
}

fn placeholder_policy() -> Option<CompiledPolicy> {
    None
}

/// Why resuming a source's events from a token is not possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap;

impl Source {
    /// A new source with nothing known.
    pub fn new(spec: Spec) -> Self {
        let mut source = Self {
            id: spec.source_id(),
            spec,
            versions: HashMap::new(),
            quarantines: BTreeMap::new(),
            current: None,
            log: VecDeque::new(),
            trimmed_through: 0,
            next_order: 0,
            status: Status::default(),
            policy: None,
        };
        source.compile();
        source
    }

    /// Compiles the policy; call after deserialising.
    pub fn compile(&mut self) {
        self.policy = Some(CompiledPolicy::new(&self.spec.policy));
    }

    /// The compiled policy.
    pub fn policy(&self) -> &CompiledPolicy {
        self.policy
            .as_ref()
            .expect("Source::compile runs on creation and load")
    }

    /// The highest sequence number this source used.
    pub fn last_seq(&self) -> Seq {
        self.log.back().map_or(self.trimmed_through, |e| e.seq)
    }

    fn candidate(record: &VersionRecord) -> Candidate<'_> {
        Candidate {
            name: &record.name,
            published_at: record.published_at,
            discovered_at: record.discovered_at,
            order: record.order,
        }
    }

    /// The view of a known version.
    pub fn view(&self, name: &str) -> Option<VersionView> {
        self.versions.get(name).map(|record| VersionView {
            record: record.clone(),
            quarantine: self.quarantines.get(name).cloned(),
        })
    }

    /// The current version's view.
    pub fn current_view(&self) -> Option<VersionView> {
        self.current.as_deref().and_then(|name| self.view(name))
    }

    /// Known versions, newest first by the policy.
    pub fn versions_newest_first(&self) -> Vec<VersionView> {
        let mut candidates: Vec<_> = self.versions.values().map(Self::candidate).collect();
        self.policy().sort_newest_first(&mut candidates);
        candidates
            .iter()
            .filter_map(|candidate| self.view(candidate.name))
            .collect()
    }

    /// Names worth resolving to digests this probe: those among `names` the policy admits that
    /// have no digest yet, newest first, at most `limit`, plus the current version (to notice a
    /// moved tag).
    pub fn digests_to_resolve(&self, names: &[String], limit: usize) -> Vec<String> {
        let policy = self.policy();
        let now = SystemTime::now();
        let mut wanted: Vec<Candidate<'_>> = names
            .iter()
            .filter(|name| policy.admits(name))
            .filter(|name| self.versions.get(*name).is_none_or(|r| r.digest.is_empty()))
            .map(|name| match self.versions.get(name) {
                Some(record) => Self::candidate(record),
                None => Candidate {
                    name,
                    published_at: None,
                    discovered_at: now,
                    order: u64::MAX,
                },
            })
            .collect();
        policy.sort_newest_first(&mut wanted);
        let mut out: Vec<String> = wanted
            .iter()
            .take(limit)
            .map(|c| c.name.to_string())
            .collect();
        if let Some(current) = &self.current
            && !out.contains(current)
            && names.contains(current)
        {
            out.push(current.clone());
        }
        out
    }

    fn push(&mut self, seq: &mut Seq, mut event: Event, out: &mut Vec<Event>) {
        *seq += 1;
        event.seq = *seq;
        self.log.push_back(event.clone());
        while self.log.len() > LOG_CAPACITY {
            if let Some(dropped) = self.log.pop_front() {
                self.trimmed_through = dropped.seq;
            }
        }
        out.push(event);
    }

    fn event(kind: EventKind, version: Option<VersionView>) -> Event {
        Event {
            seq: 0,
            kind,
            version,
            previous: None,
            error: String::new(),
        }
    }

    /// Re-chooses the current version; emits CURRENT_CHANGED when its name or digest changed.
    fn recompute_current(
        &mut self,
        previous: Option<VersionView>,
        seq: &mut Seq,
        out: &mut Vec<Event>,
    ) {
        let chosen = self
            .policy()
            .choose(self.versions.values().map(Self::candidate), |name| {
                self.quarantines.contains_key(name)
            })
            .map(str::to_string);
        self.current = chosen;
        let now = self.current_view();
        let same = match (&previous, &now) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.record.name == b.record.name && a.record.digest == b.record.digest
            }
            _ => false,
        };
        if !same {
            let mut event = Self::event(EventKind::CurrentChanged, now);
            event.previous = previous;
            self.push(seq, event, out);
        }
    }

    /// Applies a successful probe. Returns the events, in order, and whether anything persistent
    /// changed (a digest filled in changes state without being news).
    pub fn apply_listing(
        &mut self,
        listing: Listing,
        now: SystemTime,
        seq: &mut Seq,
    ) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        let mut dirty = false;
        let previous = self.current_view();
        if self.status.health == Health::Failing {
            self.push(seq, Self::event(EventKind::Recovered, None), &mut out);
        }
        self.status.health = Health::Ok;
        self.status.last_error.clear();
        self.status.consecutive_failures = 0;
        self.status.last_probe_at = Some(now);

        let mut seen = std::collections::HashSet::new();
        for item in listing.items {
            if !self.policy().admits(&item.name) || !seen.insert(item.name.clone()) {
                continue;
            }
            match self.versions.get_mut(&item.name) {
                None => {
                    let record = VersionRecord {
                        name: item.name.clone(),
                        digest: item.digest,
                        published_at: item.published_at,
                        discovered_at: now,
                        order: self.next_order,
                    };
                    self.next_order += 1;
                    self.versions.insert(item.name.clone(), record);
                    let view = self.view(&item.name);
                    self.push(seq, Self::event(EventKind::Discovered, view), &mut out);
                }
                Some(record) => {
                    if item.digest.is_empty() || item.digest == record.digest {
                        continue;
                    }
                    let moved = !record.digest.is_empty();
                    record.digest = item.digest;
                    if item.published_at.is_some() {
                        record.published_at = item.published_at;
                    }
                    dirty = true;
                    if moved {
                        // A tag re-pushed to new content is a new version under an old name.
                        record.discovered_at = now;
                        let view = self.view(&item.name);
                        self.push(seq, Self::event(EventKind::Discovered, view), &mut out);
                    }
                }
            }
        }
        if listing.complete {
            let gone: Vec<String> = self
                .versions
                .keys()
                .filter(|name| !seen.contains(*name))
                .cloned()
                .collect();
            for name in gone {
                let view = self.view(&name);
                self.versions.remove(&name);
                self.push(seq, Self::event(EventKind::Removed, view), &mut out);
            }
        } else if self.versions.len() > HISTORY_CAPACITY {
            let mut evictable: Vec<(u64, String)> = self
                .versions
                .values()
                .filter(|r| !self.quarantines.contains_key(&r.name) && !seen.contains(&r.name))
                .filter(|r| previous.as_ref().is_none_or(|p| p.record.name != r.name))
                .map(|r| (r.order, r.name.clone()))
                .collect();
            evictable.sort();
            let excess = self.versions.len() - HISTORY_CAPACITY;
            for (_, name) in evictable.into_iter().take(excess) {
                self.versions.remove(&name);
                dirty = true;
            }
        }
        self.recompute_current(previous, seq, &mut out);
        (out.clone(), dirty || !out.is_empty())
    }

    /// Records a failed probe; emits FAILING when the source was not failing already.
    pub fn apply_failure(&mut self, error: String, now: SystemTime, seq: &mut Seq) -> Vec<Event> {
        let mut out = Vec::new();
        let was = self.status.health;
        self.status.health = Health::Failing;
        self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
        self.status.last_probe_at = Some(now);
        self.status.last_error = error.clone();
        if was != Health::Failing {
            let mut event = Self::event(EventKind::Failing, None);
            event.error = error;
            self.push(seq, event, &mut out);
        }
        out
    }

    /// Quarantines `name`. Unknown versions are `None`; a second quarantine keeps the first reason
    /// and emits nothing.
    pub fn quarantine(
        &mut self,
        name: &str,
        reason: &str,
        now: SystemTime,
        seq: &mut Seq,
    ) -> Option<Vec<Event>> {
        if self.quarantines.contains_key(name) {
            return Some(Vec::new());
        }
        if !self.versions.contains_key(name) {
            return None;
        }
        let previous = self.current_view();
        self.quarantines.insert(
            name.to_string(),
            Quarantine {
                reason: reason.to_string(),
                quarantined_at: now,
            },
        );
        let mut out = Vec::new();
        let view = self.view(name);
        self.push(seq, Self::event(EventKind::Quarantined, view), &mut out);
        self.recompute_current(previous, seq, &mut out);
        Some(out)
    }

    /// Lifts the quarantine of `name`; `None` when it was not quarantined.
    pub fn lift(&mut self, name: &str, seq: &mut Seq) -> Option<Vec<Event>> {
        let quarantine = self.quarantines.remove(name)?;
        let previous = self.current_view();
        let mut out = Vec::new();
        let view = self.view(name).unwrap_or_else(|| VersionView {
            record: VersionRecord {
                name: name.to_string(),
                digest: String::new(),
                published_at: None,
                discovered_at: quarantine.quarantined_at,
                order: 0,
            },
            quarantine: None,
        });
        self.push(seq, Self::event(EventKind::Released, Some(view)), &mut out);
        self.recompute_current(previous, seq, &mut out);
        Some(out)
    }

    /// The logged events after `token`, or [`Gap`] when some were already dropped.
    pub fn events_after(&self, token: Seq) -> Result<Vec<Event>, Gap> {
        if token < self.trimmed_through {
            return Err(Gap);
        }
        Ok(self.log.iter().filter(|e| e.seq > token).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Policy, Upstream};
    use std::time::Duration;

    fn source(policy: Policy) -> Source {
        Source::new(Spec {
            upstream: Upstream::Directory {
                path: "/x".into(),
                version_file: String::new(),
            },
            policy,
            poll_interval_ms: 1000,
        })
    }

    fn semver() -> Source {
        source(Policy::Semver {
            range: String::new(),
            include_prereleases: false,
            allow_v_prefix: false,
        })
    }

    fn tags(names: &[&str]) -> Listing {
        Listing {
            items: names
                .iter()
                .map(|n| Observed {
                    name: n.to_string(),
                    digest: format!("sha256:{n}"),
                    published_at: None,
                })
                .collect(),
            complete: true,
        }
    }

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_new_tag_is_discovered_and_becomes_current() {
        let mut s = semver();
        let mut seq = 0;
        let (events, _) = s.apply_listing(tags(&["1.0.0", "latest"]), t(1), &mut seq);
        assert_eq!(
            kinds(&events),
            [EventKind::Discovered, EventKind::CurrentChanged]
        );
        let (events, _) = s.apply_listing(tags(&["1.0.0", "1.1.0"]), t(2), &mut seq);
        assert_eq!(
            kinds(&events),
            [EventKind::Discovered, EventKind::CurrentChanged]
        );
        assert_eq!(events[1].previous.as_ref().unwrap().record.name, "1.0.0");
        assert_eq!(s.current.as_deref(), Some("1.1.0"));
        assert_eq!(seq, 4);
        let (events, dirty) = s.apply_listing(tags(&["1.0.0", "1.1.0"]), t(3), &mut seq);
        assert!(
            events.is_empty() && !dirty,
            "a probe with no news is silent"
        );
    }

    #[test]
    fn quarantine_keeps_the_previous_version_current() {
        let mut s = semver();
        let mut seq = 0;
        s.apply_listing(tags(&["1.0.0"]), t(1), &mut seq);
        assert!(
            s.quarantine("1.1.0", "bad", t(1), &mut seq).is_none(),
            "not known yet"
        );
        s.apply_listing(tags(&["1.0.0", "1.1.0"]), t(2), &mut seq);
        let events = s.quarantine("1.1.0", "crashes", t(3), &mut seq).unwrap();
        assert_eq!(
            kinds(&events),
            [EventKind::Quarantined, EventKind::CurrentChanged]
        );
        assert_eq!(s.current.as_deref(), Some("1.0.0"));
        assert_eq!(
            s.quarantine("1.1.0", "again", t(4), &mut seq).unwrap(),
            vec![]
        );
        assert_eq!(s.quarantines["1.1.0"].reason, "crashes");
        let events = s.lift("1.1.0", &mut seq).unwrap();
        assert_eq!(
            kinds(&events),
            [EventKind::Released, EventKind::CurrentChanged]
        );
        assert_eq!(s.current.as_deref(), Some("1.1.0"));
        assert!(s.quarantine("9.9.9", "x", t(5), &mut seq).is_none());
    }

    #[test]
    fn a_quarantined_version_pushed_later_is_never_current() {
        let mut s = semver();
        let mut seq = 0;
        s.apply_listing(tags(&["1.0.0", "1.1.0"]), t(1), &mut seq);
        s.quarantine("1.1.0", "bad", t(1), &mut seq).unwrap();
        let (events, _) = s.apply_listing(tags(&["1.0.0"]), t(2), &mut seq);
        assert_eq!(kinds(&events), [EventKind::Removed]);
        assert!(
            s.quarantines.contains_key("1.1.0"),
            "quarantine outlives the tag"
        );
    }

    #[test]
    fn failing_and_recovering_are_edges() {
        let mut s = semver();
        let mut seq = 0;
        assert_eq!(
            kinds(&s.apply_failure("down".into(), t(1), &mut seq)),
            [EventKind::Failing]
        );
        assert!(s.apply_failure("down".into(), t(2), &mut seq).is_empty());
        assert_eq!(s.status.consecutive_failures, 2);
        let (events, _) = s.apply_listing(tags(&["1.0.0"]), t(3), &mut seq);
        assert_eq!(kinds(&events)[0], EventKind::Recovered);
        assert_eq!(s.status.health, Health::Ok);
    }

    #[test]
    fn a_moved_tag_is_a_new_current_version() {
        let mut s = source(Policy::Pin {
            version: "latest".into(),
        });
        let mut seq = 0;
        s.apply_listing(tags(&["latest"]), t(1), &mut seq);
        let mut moved = tags(&["latest"]);
        moved.items[0].digest = "sha256:new".into();
        let (events, _) = s.apply_listing(moved, t(2), &mut seq);
        assert_eq!(
            kinds(&events),
            [EventKind::Discovered, EventKind::CurrentChanged]
        );
        assert_eq!(
            events[1].previous.as_ref().unwrap().record.digest,
            "sha256:latest"
        );
    }

    #[test]
    fn resume_replays_only_newer_events_or_reports_a_gap() {
        let mut s = semver();
        let mut seq = 0;
        s.apply_listing(tags(&["1.0.0"]), t(1), &mut seq);
        let token = seq;
        s.apply_listing(tags(&["1.0.0", "1.1.0"]), t(2), &mut seq);
        let replay = s.events_after(token).unwrap();
        assert_eq!(
            kinds(&replay),
            [EventKind::Discovered, EventKind::CurrentChanged]
        );
        assert!(s.events_after(seq).unwrap().is_empty());
        let names: Vec<String> = (0..LOG_CAPACITY + 10).map(|i| format!("2.0.{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        s.apply_listing(tags(&refs), t(3), &mut seq);
        assert_eq!(s.log.len(), LOG_CAPACITY);
        assert_eq!(s.events_after(token), Err(Gap));
    }

    #[test]
    fn branch_history_is_bounded() {
        let mut s = source(Policy::Newest);
        let mut seq = 0;
        for i in 0..(HISTORY_CAPACITY + 20) {
            let mut listing = tags(&[&format!("c{i}")]);
            listing.complete = false;
            s.apply_listing(listing, t(i as u64), &mut seq);
        }
        assert_eq!(s.versions.len(), HISTORY_CAPACITY);
        assert_eq!(
            s.current.as_deref(),
            Some(format!("c{}", HISTORY_CAPACITY + 19).as_str())
        );
    }

    #[test]
    fn digests_are_resolved_newest_first_and_bounded() {
        let s = semver();
        let names: Vec<String> = ["1.0.0", "3.0.0", "2.0.0", "latest"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(s.digests_to_resolve(&names, 2), ["3.0.0", "2.0.0"]);
    }
}
