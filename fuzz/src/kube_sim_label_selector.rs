//! kube-sim's label selectors (the `labelSelector` query parameter of list and watch): whatever
//! parses matches objects without panicking, the empty selector matches everything, and a selector
//! of comma-separated requirements matches exactly when each requirement does.
//!
//! Input: the selector, then optionally `\n` and one `key=value` label per line.

use kube_sim::selectors::LabelSelector;
use serde_json::{Map, Value, json};

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    let (selector, labels_text) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(parsed) = LabelSelector::parse(selector) else {
        return;
    };
    let labels: Map<String, Value> = labels_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let object = json!({"metadata": {"labels": labels}});
    let matched = parsed.matches(&object);
    assert!(parsed.matches(&json!({})) || !parsed.is_empty());
    if parsed.is_empty() {
        assert!(matched);
    }
    // Without set requirements, the commas are the top-level separators.
    if !selector.contains(['(', ')']) {
        let each = selector
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| LabelSelector::parse(part).map(|p| p.matches(&object)))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|_| panic!("{selector:?} parses but one of its parts does not"));
        assert_eq!(
            matched,
            each.iter().all(|m| *m),
            "{selector:?} on {labels_text:?}"
        );
    }
}
