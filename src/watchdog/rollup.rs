//! The rollup: a pod's annotations → its unexpired watchdogs and one health value, the worst
//! unexpired level or `unknown` when there is none. Sans-IO and clock-free (`now` is an input).
//!
//! Only `status.autocrane.io/<name>` annotations whose value parses count, so the label always has
//! one of the four fixed values whatever someone wrote by hand (fixes W11).

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::annotation::{Level, Watchdog, parse_value};
use crate::keys::WATCHDOG_ANNOTATION_PREFIX;

pub use crate::health::Health;

impl From<Level> for Health {
    fn from(level: Level) -> Self {
        match level {
            Level::Info => Health::Info,
            Level::Warning => Health::Warning,
            Level::Error => Health::Error,
        }
    }
}

/// The watchdog name of an annotation key, if it is a watchdog key.
pub fn watchdog_name(key: &str) -> Option<&str> {
    key.strip_prefix(WATCHDOG_ANNOTATION_PREFIX)
        .filter(|name| !name.is_empty())
}

/// Every watchdog stored in `annotations` that parses, expired or not, sorted by name.
pub fn stored_watchdogs(annotations: &BTreeMap<String, String>) -> Vec<Watchdog> {
    annotations
        .iter()
        .filter_map(|(key, value)| parse_value(watchdog_name(key)?, value).ok())
        .collect()
}

/// The state of one pod's watchdogs at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollup {
    /// The unexpired watchdogs, sorted by name.
    pub watchdogs: Vec<Watchdog>,
    /// The worst unexpired level.
    pub health: Health,
    /// The earliest `updated_at` among the unexpired watchdogs at the worst level; `None` when
    /// there is none. The controller derives a pod's `health_since` from it.
    ///
    /// An annotation records when its watchdog was last *written* (truncated to the second), not
    /// when the pod entered that level, so the pod entered it before the end of this second: the
    /// true start is at or before `since` + 1 s. A running controller keeps the earlier moment it
    /// first observed the level; after a controller restart it starts again from `since` + 1 s,
    /// which can only make a failing-limit restart later than due, never earlier.
    pub since: Option<Timestamp>,
    /// The earliest future expiry, when the rollup may change by itself.
    pub next_expiry: Option<Timestamp>,
    /// Names of stored watchdogs that have expired (to be removed on the next write).
    pub expired: Vec<String>,
}

/// One pod's unexpired watchdogs and rollup, as served to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The rollup of the unexpired watchdogs.
    pub health: Health,
    /// The unexpired watchdogs, sorted by name.
    pub watchdogs: Vec<Watchdog>,
    /// The resourceVersion the state was read from (informational; not compared).
    pub resource_version: String,
}

impl PodHealth {
    /// Whether two states differ in anything but the resourceVersion.
    pub fn same_health(&self, other: &PodHealth) -> bool {
        self.namespace == other.namespace
            && self.name == other.name
            && self.health == other.health
            && self.watchdogs == other.watchdogs
    }
}

/// Rolls up the watchdogs stored in `annotations` at `now`.
pub fn rollup(annotations: &BTreeMap<String, String>, now: Timestamp) -> Rollup {
    let (expired, watchdogs): (Vec<Watchdog>, Vec<Watchdog>) = stored_watchdogs(annotations)
        .into_iter()
        .partition(|w| w.is_expired(now));
    let health = watchdogs
        .iter()
        .map(|w| Health::from(w.level))
        .max()
        .unwrap_or(Health::Unknown);
    let next_expiry = watchdogs.iter().filter_map(|w| w.expires_at).min();
    let since = watchdogs
        .iter()
        .filter(|w| Health::from(w.level) == health)
        .map(|w| w.updated_at)
        .min();
    Rollup {
        watchdogs,
        health,
        since,
        next_expiry,
        expired: expired.into_iter().map(|w| w.name).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_795_000_000 + secs).unwrap()
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_watchdogs_is_unknown() {
        let r = rollup(&annotations(&[("data.autocrane.io/config", "v1")]), at(0));
        assert_eq!(r.health, Health::Unknown);
        assert_eq!(r.since, None);
        assert!(r.watchdogs.is_empty());
        assert_eq!(r.health.label_value(), "unknown");
    }

    #[test]
    fn worst_level_wins_and_foreign_or_malformed_keys_do_not_count() {
        // The original's test vector, with the canonical format; the unparseable `Unknown` level
        // and the key without the prefix are ignored.
        let r = rollup(
            &annotations(&[
                ("a", "Error/2026-11-18T11:06:40Z//x"),
                ("status.autocrane.io/a", "Info/2026-11-18T11:06:40Z//x"),
                ("status.autocrane.io/b", "Warning/2026-11-18T11:06:40Z//x"),
                ("status.autocrane.io/c", "Unknown/2026-11-18T11:06:40Z//x"),
            ]),
            at(0),
        );
        assert_eq!(r.health, Health::Warning);
        let names: Vec<_> = r.watchdogs.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn expired_watchdogs_do_not_count() {
        let anns = annotations(&[
            (
                "status.autocrane.io/boot",
                "error/2026-11-18T11:06:40Z/2026-11-18T11:06:50Z/starting",
            ),
            (
                "status.autocrane.io/http",
                "info/2026-11-18T11:06:40Z/2026-11-18T11:07:40Z/ok",
            ),
        ]);
        let before = rollup(&anns, at(5));
        assert_eq!(before.health, Health::Error);
        assert_eq!(before.since, Some(at(0)));
        assert_eq!(before.next_expiry, Some(at(10)));
        let after = rollup(&anns, at(10));
        assert_eq!(after.health, Health::Info);
        assert_eq!(after.expired, ["boot"]);
        assert_eq!(after.next_expiry, Some(at(60)));
        assert_eq!(rollup(&anns, at(60)).health, Health::Unknown);
    }
}

#[cfg(test)]
mod since_tests {
    use super::*;

    #[test]
    fn since_is_the_earliest_update_among_the_worst_level_only() {
        let anns: BTreeMap<String, String> = [
            ("status.autocrane.io/a", "error/2026-11-18T11:06:50Z//late"),
            ("status.autocrane.io/b", "error/2026-11-18T11:06:45Z//early"),
            (
                "status.autocrane.io/c",
                "info/2026-11-18T11:00:00Z//older but better",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let now = Timestamp::from_second(1_795_000_100).unwrap();
        let r = rollup(&anns, now);
        assert_eq!(r.health, Health::Error);
        assert_eq!(
            r.since,
            Some("2026-11-18T11:06:45Z".parse::<Timestamp>().unwrap())
        );
    }
}
