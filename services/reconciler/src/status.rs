//! Status writes (sans-IO): the JSON merge patch from the status last written to the planned one.
//! (The status itself — including that of a failure a person must fix — is the core's:
//! `autocrane_controller::plan::{plan, failed}`.)
//!
//! A merge patch leaves out what serde skips, so a field that became empty (`targetVersion` after a
//! rollback, `stepStartedAt` after a rollout) would survive; [`status_patch`] sends `null` for each
//! top-level field the new status no longer has. Lists and nested objects are replaced whole by a
//! merge patch, so the top level is the only place this is needed.

use autocrane_api::crd::AutoCraneDeploymentStatus;
use serde_json::{Map, Value, json};

/// The merge patch `{"status": …}` turning `old` into `new`; `None` when they are equal.
pub fn status_patch(
    old: Option<&AutoCraneDeploymentStatus>,
    new: &AutoCraneDeploymentStatus,
) -> Option<Value> {
    if old == Some(new) {
        return None;
    }
    let mut fields = match serde_json::to_value(new) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    if let Some(Value::Object(previous)) = old.and_then(|o| serde_json::to_value(o).ok()) {
        for key in previous.keys() {
            fields.entry(key.clone()).or_insert(Value::Null);
        }
    }
    Some(json!({ "status": fields }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_status_is_not_written() {
        let s = AutoCraneDeploymentStatus {
            replicas: 3,
            ..Default::default()
        };
        assert_eq!(status_patch(Some(&s), &s), None);
    }

    #[test]
    fn fields_that_became_empty_are_removed() {
        let old = AutoCraneDeploymentStatus {
            target_version: Some("2".into()),
            current_version: Some("1".into()),
            ..Default::default()
        };
        let new = AutoCraneDeploymentStatus {
            current_version: Some("1".into()),
            ready_replicas: 3,
            ..Default::default()
        };
        let patch = status_patch(Some(&old), &new).unwrap();
        assert_eq!(patch["status"]["targetVersion"], Value::Null);
        assert!(
            patch["status"]
                .as_object()
                .unwrap()
                .contains_key("targetVersion")
        );
        assert_eq!(patch["status"]["currentVersion"], "1");
        assert_eq!(patch["status"]["readyReplicas"], 3);
        let first = status_patch(None, &new).unwrap();
        assert!(
            !first["status"]
                .as_object()
                .unwrap()
                .contains_key("targetVersion")
        );
    }
}
