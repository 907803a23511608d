//! The write decision for one pod, sans-IO: given the pod's current annotations and health label
//! and the operations that arrived within one coalescing window, in order, compute the single merge
//! patch (only `status.autocrane.io/*` keys and the health label) and each operation's outcome.
//!
//! The patch is empty when nothing changes: a post repeating the stored level and message without
//! a TTL writes nothing. Expired watchdogs are removed in the same patch, so a TTL expiry changes
//! the label without anyone posting.

use std::{collections::BTreeMap, time::Duration};

use autocrane_api::{
    keys::watchdog_annotation,
    watchdog::{Health, Level, Watchdog, format_value, parse_value, rollup, watchdog_name},
};
use jiff::{SignedDuration, Timestamp};

use crate::validate::{Invalid, MAX_WATCHDOGS_PER_POD, too_many_watchdogs};

/// One requested change to a pod's watchdogs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Post (create or replace) a watchdog.
    Set {
        /// The (validated) name.
        name: String,
        /// The level.
        level: Level,
        /// The message.
        message: String,
        /// How long it counts; `None` for ever.
        ttl: Option<Duration>,
    },
    /// Delete a watchdog (nothing when absent).
    Delete {
        /// The name.
        name: String,
    },
    /// Change nothing but drop expired watchdogs and correct the label (TTL timers, label drift).
    Refresh,
}

/// What to write for one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Annotation changes: `Some(value)` sets, `None` removes. Empty when none change.
    pub annotations: BTreeMap<String, Option<String>>,
    /// The new health label, when it changes.
    pub label: Option<Health>,
    /// One outcome per operation, in order.
    pub outcomes: Vec<Result<(), Invalid>>,
}

impl Plan {
    /// Whether the plan writes anything.
    pub fn is_empty(&self) -> bool {
        self.annotations.is_empty() && self.label.is_none()
    }
}

/// When a watchdog posted at `now` with `ttl` stops counting: rounded up to the whole second the
/// annotation can hold, so a status counts at least its TTL.
pub fn expiry(now: Timestamp, ttl: Duration) -> Timestamp {
    let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
    let exact = now.saturating_add(ttl).unwrap_or(Timestamp::MAX);
    if exact.subsec_nanosecond() == 0 {
        exact
    } else {
        Timestamp::from_second(exact.as_second().saturating_add(1)).unwrap_or(Timestamp::MAX)
    }
}

/// Plans the patch applying `ops` in order to a pod with `annotations` and `label` at `now`.
pub fn plan(
    annotations: &BTreeMap<String, String>,
    label: Option<&str>,
    ops: &[Op],
    now: Timestamp,
) -> Plan {
    // The watchdog annotations after the window, by key; unparseable ones are left alone.
    let before: BTreeMap<&str, &str> = annotations
        .iter()
        .filter(|(key, _)| watchdog_name(key).is_some())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut after: BTreeMap<String, String> = annotations
        .iter()
        .filter(|(key, value)| {
            watchdog_name(key)
                .and_then(|name| parse_value(name, value).ok())
                .is_none_or(|w| !w.is_expired(now))
        })
        .filter(|(key, _)| watchdog_name(key).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let parsed = |after: &BTreeMap<String, String>, key: &str| {
        after
            .get(key)
            .and_then(|value| parse_value(watchdog_name(key)?, value).ok())
    };

    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = match op {
            Op::Set {
                name,
                level,
                message,
                ttl,
            } => {
                let key = watchdog_annotation(name);
                match parsed(&after, &key) {
                    Some(old)
                        if ttl.is_none()
                            && old.expires_at.is_none()
                            && old.level == *level
                            && old.message == *message =>
                    {
                        Ok(())
                    }
                    existing => {
                        let count = after.keys().filter(|k| parsed(&after, k).is_some()).count();
                        if existing.is_none() && count >= MAX_WATCHDOGS_PER_POD {
                            Err(too_many_watchdogs())
                        } else {
                            let watchdog = Watchdog {
                                name: name.clone(),
                                level: *level,
                                message: message.clone(),
                                updated_at: Timestamp::from_second(now.as_second()).unwrap_or(now),
                                expires_at: ttl.map(|ttl| expiry(now, ttl)),
                            };
                            after.insert(key, format_value(&watchdog));
                            Ok(())
                        }
                    }
                }
            }
            Op::Delete { name } => {
                after.remove(&watchdog_annotation(name));
                Ok(())
            }
            Op::Refresh => Ok(()),
        };
        outcomes.push(outcome);
    }

    let mut changes = BTreeMap::new();
    for (key, value) in &before {
        match after.get(*key) {
            Some(new) if new == value => {}
            Some(new) => {
                changes.insert(key.to_string(), Some(new.clone()));
            }
            None => {
                changes.insert(key.to_string(), None);
            }
        }
    }
    for (key, value) in &after {
        if !before.contains_key(key.as_str()) {
            changes.insert(key.clone(), Some(value.clone()));
        }
    }

    let health = rollup(&after, now).health;
    // A pod that never had watchdogs keeps having no label; once labelled, the label follows.
    let wants_label = label.is_some() || !after.is_empty();
    let label = (wants_label && label != Some(health.label_value())).then_some(health);
    Plan {
        annotations: changes,
        label,
        outcomes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_795_000_000 + secs).unwrap()
    }

    fn set(name: &str, level: Level, message: &str) -> Op {
        Op::Set {
            name: name.into(),
            level,
            message: message.into(),
            ttl: None,
        }
    }

    fn pod(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const HTTP_ERROR: (&str, &str) = (
        "status.autocrane.io/http",
        "error/2026-11-18T11:06:40Z//down",
    );

    #[test]
    fn first_post_writes_the_annotation_and_the_label() {
        let plan = plan(&pod(&[]), None, &[set("http", Level::Error, "down")], at(0));
        assert_eq!(
            plan.annotations,
            BTreeMap::from([(
                "status.autocrane.io/http".to_string(),
                Some("error/2026-11-18T11:06:40Z//down".to_string())
            )])
        );
        assert_eq!(plan.label, Some(Health::Error));
        assert_eq!(plan.outcomes, [Ok(())]);
    }

    #[test]
    fn repeating_the_stored_status_writes_nothing() {
        let plan = plan(
            &pod(&[HTTP_ERROR]),
            Some("error"),
            &[set("http", Level::Error, "down")],
            at(60),
        );
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_burst_collapses_to_the_last_post_per_name() {
        let ops = [
            set("http", Level::Error, "down"),
            set("disk", Level::Warning, "80%"),
            set("http", Level::Info, "up"),
        ];
        let plan = plan(&pod(&[HTTP_ERROR]), Some("error"), &ops, at(5));
        assert_eq!(plan.annotations.len(), 2);
        assert_eq!(
            plan.annotations["status.autocrane.io/http"].as_deref(),
            Some("info/2026-11-18T11:06:45Z//up")
        );
        assert_eq!(plan.label, Some(Health::Warning));
    }

    #[test]
    fn foreign_annotations_are_never_touched() {
        let current = pod(&[
            ("data.autocrane.io/config", "v7"),
            ("note", "hand-written"),
            HTTP_ERROR,
        ]);
        let plan = plan(
            &current,
            Some("error"),
            &[Op::Delete {
                name: "http".into(),
            }],
            at(0),
        );
        assert_eq!(
            plan.annotations,
            BTreeMap::from([("status.autocrane.io/http".to_string(), None)])
        );
        assert_eq!(plan.label, Some(Health::Unknown));
    }

    #[test]
    fn deleting_a_missing_watchdog_writes_nothing() {
        let plan = plan(&pod(&[]), None, &[Op::Delete { name: "x".into() }], at(0));
        assert!(plan.is_empty());
        assert_eq!(plan.outcomes, [Ok(())]);
    }

    #[test]
    fn expiry_removes_the_watchdog_and_relabels() {
        let current = pod(&[
            (
                "status.autocrane.io/boot",
                "error/2026-11-18T11:06:40Z/2026-11-18T11:06:50Z/starting",
            ),
            ("status.autocrane.io/http", "info/2026-11-18T11:06:40Z//ok"),
        ]);
        assert!(plan(&current, Some("error"), &[Op::Refresh], at(9)).is_empty());
        let plan = plan(&current, Some("error"), &[Op::Refresh], at(10));
        assert_eq!(
            plan.annotations,
            BTreeMap::from([("status.autocrane.io/boot".to_string(), None)])
        );
        assert_eq!(plan.label, Some(Health::Info));
    }

    #[test]
    fn a_post_with_ttl_always_writes() {
        let op = Op::Set {
            name: "http".into(),
            level: Level::Error,
            message: "down".into(),
            ttl: Some(Duration::from_secs(30)),
        };
        let plan = plan(&pod(&[HTTP_ERROR]), Some("error"), &[op], at(0));
        assert_eq!(
            plan.annotations["status.autocrane.io/http"].as_deref(),
            Some("error/2026-11-18T11:06:40Z/2026-11-18T11:07:10Z/down")
        );
        assert_eq!(plan.label, None);
    }

    #[test]
    fn expiry_rounds_up_to_the_second_and_updated_at_down() {
        let now = at(0) + SignedDuration::from_millis(900);
        assert_eq!(expiry(now, Duration::from_secs(1)), at(2));
        assert_eq!(expiry(at(0), Duration::from_secs(1)), at(1));
        let op = Op::Set {
            name: "http".into(),
            level: Level::Info,
            message: "ok".into(),
            ttl: Some(Duration::from_secs(1)),
        };
        let plan = plan(&pod(&[]), None, &[op], now);
        assert_eq!(
            plan.annotations["status.autocrane.io/http"].as_deref(),
            Some("info/2026-11-18T11:06:40Z/2026-11-18T11:06:42Z/ok")
        );
    }

    #[test]
    fn the_33rd_watchdog_is_refused_but_replacing_one_is_not() {
        let full: BTreeMap<String, String> = (0..32)
            .map(|i| {
                (
                    format!("status.autocrane.io/w{i}"),
                    "info/2026-11-18T11:06:40Z//ok".to_string(),
                )
            })
            .collect();
        let ops = [
            set("w33", Level::Info, "ok"),
            set("w3", Level::Error, "bad"),
        ];
        let plan = plan(&full, Some("info"), &ops, at(0));
        assert_eq!(plan.outcomes[0].as_ref().unwrap_err().field, "name");
        assert_eq!(plan.outcomes[1], Ok(()));
        assert_eq!(plan.annotations.len(), 1);
        assert_eq!(plan.label, Some(Health::Error));
    }

    #[test]
    fn a_drifted_label_is_corrected_by_a_refresh() {
        let plan = plan(&pod(&[HTTP_ERROR]), Some("Error"), &[Op::Refresh], at(0));
        assert!(plan.annotations.is_empty());
        assert_eq!(plan.label, Some(Health::Error));
        assert!(super::plan(&pod(&[]), None, &[Op::Refresh], at(0)).is_empty());
    }
}
