//! The watchdog annotation codec (`status.autocrane.io/<name>` values, written by anyone who can
//! edit a pod): whatever parses has a canonical form that parses back to the same watchdog (times
//! truncated to the second), formatting is a fixed point, and the rollup of the annotation never
//! counts an expired watchdog.
//!
//! Input: `<name>\n<value>`, or just `<value>` (watchdog `w`).

use std::collections::BTreeMap;

use autocrane_api::{
    keys::WATCHDOG_ANNOTATION_PREFIX,
    watchdog::{Health, format_value, parse_value, rollup},
};
use jiff::Timestamp;

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    let (name, value) = text.split_once('\n').unwrap_or(("w", text));
    if let Ok(parsed) = parse_value(name, value) {
        assert_eq!(parsed.name, name);
        let canonical = format_value(&parsed);
        assert!(
            canonical.starts_with(&format!("{}/", parsed.level.as_str())),
            "{canonical:?}: the level is not canonical"
        );
        let again = parse_value(name, &canonical)
            .unwrap_or_else(|e| panic!("canonical {canonical:?} of {value:?} does not parse: {e}"));
        assert_eq!(again.level, parsed.level);
        assert_eq!(again.message, parsed.message, "{value:?} -> {canonical:?}");
        assert_eq!(
            again.updated_at.as_second(),
            parsed.updated_at.as_second(),
            "{value:?} -> {canonical:?}"
        );
        assert_eq!(again.updated_at.subsec_nanosecond(), 0);
        assert_eq!(
            again.expires_at.map(Timestamp::as_second),
            parsed.expires_at.map(Timestamp::as_second),
            "{value:?} -> {canonical:?}"
        );
        assert_eq!(
            format_value(&again),
            canonical,
            "formatting is not a fixed point"
        );
    }
    // The rollup of a pod carrying this annotation (and a hand-written foreign one).
    let annotations = BTreeMap::from([
        (
            format!("{WATCHDOG_ANNOTATION_PREFIX}{name}"),
            value.to_string(),
        ),
        ("example.com/other".to_string(), value.to_string()),
    ]);
    let now = Timestamp::from_second(1_795_000_000).expect("in range");
    let rolled = rollup(&annotations, now);
    assert!(rolled.watchdogs.len() + rolled.expired.len() <= 1);
    assert!(rolled.watchdogs.iter().all(|w| !w.is_expired(now)));
    let worst = rolled.watchdogs.iter().map(|w| Health::from(w.level)).max();
    assert_eq!(rolled.health, worst.unwrap_or(Health::Unknown));
    assert_eq!(rolled.since.is_some(), !rolled.watchdogs.is_empty());
    assert!(rolled.next_expiry.is_none_or(|at| at > now));
}
