//! The registry notification envelope (`POST /notifications` on the VersionWatcher's webhook
//! listener, from any HTTP client): the pushes picked from a body are sorted and distinct, each a
//! `push` event of the body with a repository, its host lower-cased.

use autocrane_version_watcher::webhook::pushed_repositories;
use serde_json::Value;

/// Checks one input.
pub fn check(data: &[u8]) {
    let Ok(pushes) = pushed_repositories(data) else {
        return;
    };
    assert!(
        pushes.windows(2).all(|pair| pair[0] < pair[1]),
        "not sorted and distinct: {pushes:?}"
    );
    // Fields the envelope ignores are skipped without checking their escapes or UTF-8, so the
    // body may not read as a JSON value; then there is nothing to compare with.
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // serde also reads a struct from an array of its fields (`[[["push", …]]]`): lenient and
    // harmless, but then the body has no field names to compare with.
    let object_or_absent = |v: &Value| v.is_object() || v.is_null();
    let Some(events) = body.get("events").and_then(Value::as_array) else {
        return;
    };
    if !events
        .iter()
        .all(|e| e.is_object() && object_or_absent(&e["target"]) && object_or_absent(&e["request"]))
    {
        return;
    }
    for (host, repository, tag) in &pushes {
        assert!(!repository.is_empty());
        assert_eq!(host, &host.to_ascii_lowercase());
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        assert!(
            events.iter().any(|e| text(&e["action"]) == "push"
                && text(&e["target"]["repository"]) == *repository
                && text(&e["target"]["tag"]) == *tag
                && text(&e["request"]["host"]).to_ascii_lowercase() == *host),
            "{host:?} {repository:?} {tag:?} is not a push event of the body"
        );
    }
}
