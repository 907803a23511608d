//! kube-sim's field selectors (the `fieldSelector` query parameter): whatever parses matches any
//! JSON object without panicking, a selector matches exactly when each of its terms does, and
//! `k!=v` matches exactly when `k=v` does not.
//!
//! Input: a kind byte (Pod, Event, Secret, ConfigMap), the selector, then optionally `\n` and the
//! object as JSON.

use kube_sim::selectors::FieldSelector;
use serde_json::{Value, json};

const KINDS: [&str; 4] = ["Pod", "Event", "Secret", "ConfigMap"];

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(kind) % KINDS.len()];
    let Some(text) = crate::text(rest) else {
        return;
    };
    let (selector, object_text) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(parsed) = FieldSelector::parse(selector, kind) else {
        return;
    };
    let object: Value = serde_json::from_str(object_text).unwrap_or_else(|_| {
        json!({"metadata": {"name": "a", "namespace": "n"}, "status": {"phase": "Running"}, "spec": {"nodeName": "n1"}})
    });
    let matched = parsed.matches(&object);
    let terms: Vec<&str> = selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let each: Vec<bool> = terms
        .iter()
        .map(|term| {
            FieldSelector::parse(term, kind)
                .unwrap_or_else(|e| panic!("{selector:?} parses but {term:?} does not: {e:?}"))
                .matches(&object)
        })
        .collect();
    assert_eq!(matched, each.iter().all(|m| *m), "{selector:?}");
    // The negation of a single equality term.
    if let [term] = terms[..]
        && !term.contains("!=")
    {
        // The parser's precedence: `==` anywhere before a lone `=`.
        let (field, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .expect("a parsed term has an operator");
        let negated = format!("{field}!={value}");
        let negated_matches = FieldSelector::parse(&negated, kind)
            .unwrap_or_else(|e| panic!("{negated:?} does not parse: {e:?}"))
            .matches(&object);
        assert_eq!(negated_matches, !matched, "{term:?} and {negated:?}");
    }
}
