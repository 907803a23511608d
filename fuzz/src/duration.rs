//! The duration grammar of the CRD (`90s`, `1h30m`): the parser accepts exactly what the CRD
//! schema's `pattern` lets through the API server, and the canonical form it prints (also its
//! serde form) matches the pattern and parses back to the same duration.

use std::sync::OnceLock;

use autocrane_api::duration::{Duration, PATTERN};
use regex::Regex;

fn pattern() -> &'static Regex {
    static PATTERN_REGEX: OnceLock<Regex> = OnceLock::new();
    PATTERN_REGEX.get_or_init(|| Regex::new(PATTERN).expect("the schema pattern compiles"))
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    let parsed = text.parse::<Duration>();
    assert_eq!(
        parsed.is_ok(),
        pattern().is_match(text),
        "{text:?}: the parser says {parsed:?}, the schema pattern disagrees"
    );
    let Ok(duration) = parsed else {
        return;
    };
    let canonical = duration.to_string();
    assert!(
        pattern().is_match(&canonical),
        "{text:?} prints as {canonical:?}, which the schema pattern refuses"
    );
    assert_eq!(
        canonical.parse::<Duration>(),
        Ok(duration),
        "{text:?} -> {canonical:?}"
    );
    let json = serde_json::to_string(&duration).expect("serialises");
    assert_eq!(
        serde_json::from_str::<Duration>(&json).ok(),
        Some(duration),
        "{json}"
    );
}
