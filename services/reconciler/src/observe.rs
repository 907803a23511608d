//! Observation (sans-IO): a `Pod` as the API server stores it → the decision core's `PodView`.
//!
//! - phase from `status.phase` (absent: `Pending`);
//! - `ready_since` from the `Ready` condition's `lastTransitionTime` when it is `True`: the API
//!   server keeps that time to the second (truncated), so the moment taken is the next whole
//!   second, the latest the pod can have turned Ready — a bake timed from the truncated second
//!   would end up to a second early;
//! - health from the rollup label `status.autocrane.io/health` (the WatchdogListener's value);
//! - `health_since` from the watchdog annotations' rollup (`autocrane_api::watchdog::rollup`),
//!   which gives the *latest* moment the pod can have entered its level (an annotation records
//!   when its watchdog was last written, truncated to the second, so the moment taken is the next
//!   whole second). [`HealthMemory`] keeps, per pod, the first moment this
//!   controller saw the current health, and the earlier of the two wins while the controller runs.
//!   After a controller restart the memory is empty and the annotations' moment is used, which can
//!   only make a failing-limit restart or a rollback later than due, never earlier;
//! - per data source, the desired version (`data.autocrane.io/<source>`) and the DataDeployer's
//!   report (watchdog `data-<source>`, parsed with `autocrane_api::data_report`);
//! - deletion, slot and revision labels, the app-version annotation.

use std::collections::{BTreeMap, HashMap};

use autocrane_api::{
    crd::AutoCraneDeployment,
    data_report::DataReport,
    health::Health,
    keys::{
        APP_VERSION_ANNOTATION, HEALTH_LABEL, REVISION_LABEL, SLOT_LABEL, data_annotation,
        data_watchdog, watchdog_annotation,
    },
    watchdog::{parse_value, rollup},
};
use autocrane_controller::model::{Applied, PodData, PodPhase, PodView, Timestamp};
use k8s_openapi::api::core::v1::Pod;

/// Per pod (by uid): the health last observed and since when this controller has seen it.
#[derive(Clone, Debug, Default)]
pub struct HealthMemory {
    seen: HashMap<String, (Health, Timestamp)>,
}

impl HealthMemory {
    /// The moment `health` started for pod `uid`: the earlier of the reported moment and the first
    /// moment it was observed here (`now` when neither is known). Remembers it.
    pub fn since(
        &mut self,
        uid: &str,
        health: Health,
        reported: Option<Timestamp>,
        now: Timestamp,
    ) -> Timestamp {
        let first_seen = match self.seen.get(uid) {
            Some((seen, at)) if *seen == health => *at,
            _ => now,
        };
        let since = reported.map_or(first_seen, |r| r.min(first_seen));
        self.seen.insert(uid.to_string(), (health, since));
        since
    }

    /// Forgets pods not in `alive` (their uids), so the memory does not grow with pod churn.
    pub fn retain(&mut self, mut alive: impl FnMut(&str) -> bool) {
        self.seen.retain(|uid, _| alive(uid));
    }

    /// How many pods are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

fn phase(text: Option<&str>) -> PodPhase {
    match text {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        _ => PodPhase::Pending,
    }
}

/// The view of `pod` for `deployment`'s data sources at `now`.
pub fn pod_view(
    pod: &Pod,
    deployment: &AutoCraneDeployment,
    memory: &mut HealthMemory,
    now: Timestamp,
) -> PodView {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let name = meta.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();

    let ready_since = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(now, |t| t.0 + std::time::Duration::from_secs(1))
        });

    let health = Health::from_label(labels.get(HEALTH_LABEL).map(String::as_str));
    let rolled = rollup(annotations, now);
    // The rollup's moment only counts when it agrees with the label (a label the listener has not
    // rewritten yet, or a hand-edited annotation, would otherwise date the wrong level).
    // Annotations store whole seconds (the write time truncated), so the write happened before
    // the next whole second: that is the latest moment the level can have started. Dating it at
    // the truncated second would make a restart or rollback up to a second early.
    let reported = rolled
        .since
        .filter(|_| rolled.health == health)
        .map(|t| t + std::time::Duration::from_secs(1));
    let uid = meta.uid.as_deref().unwrap_or(&name);
    let health_since = memory.since(uid, health, reported, now);

    let data = deployment
        .spec
        .data
        .iter()
        .map(|source| {
            let desired = annotations.get(&data_annotation(&source.name)).cloned();
            let applied = annotations
                .get(&watchdog_annotation(&data_watchdog(&source.name)))
                .and_then(|value| parse_value(&data_watchdog(&source.name), value).ok())
                .and_then(|w| {
                    let report = DataReport::parse(w.level, &w.message).ok()?;
                    Some(Applied {
                        version: report.version().to_string(),
                        ok: report.is_applied(),
                        // As for the health above: the report was written before the next whole
                        // second, and a bake counted from the truncated second would be up to a
                        // second short (seen end to end: a 3 s bake promoted after 2.7 s).
                        at: w.updated_at + std::time::Duration::from_secs(1),
                    })
                });
            (source.name.clone(), PodData { desired, applied })
        })
        .collect();

    PodView {
        slot: labels
            .get(SLOT_LABEL)
            .cloned()
            .unwrap_or_else(|| name.clone()),
        revision: labels.get(REVISION_LABEL).cloned().unwrap_or_default(),
        version: annotations.get(APP_VERSION_ANNOTATION).cloned(),
        phase: phase(status.and_then(|s| s.phase.as_deref())),
        created_at: meta.creation_timestamp.as_ref().map_or(now, |t| t.0),
        ready_since,
        health,
        health_since,
        deleting: meta.deletion_timestamp.is_some(),
        data,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn deployment() -> AutoCraneDeployment {
        serde_json::from_value(json!({
            "apiVersion": "autocrane.io/v1alpha1", "kind": "AutoCraneDeployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 1, "template": {}, "data": [
                {"name": "config", "source": {"directory": {"path": "/c"}}, "mountPath": "/etc/c"},
                {"name": "rules", "source": {"directory": {"path": "/r"}}, "mountPath": "/etc/r"}
            ]}
        }))
        .unwrap()
    }

    /// A running, Ready pod with `extra` merged into its metadata.
    fn pod(meta: Value) -> Pod {
        let mut metadata = json!({
            "name": "web-1", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"autocrane.io/slot": "web-0", "autocrane.io/revision": "r1"},
            "annotations": {"autocrane.io/app-version": "1.0"}
        });
        for (key, value) in meta.as_object().unwrap() {
            match (metadata.get_mut(key), value) {
                (Some(Value::Object(m)), Value::Object(v)) => m.extend(v.clone()),
                _ => {
                    metadata[key] = value.clone();
                }
            }
        }
        serde_json::from_value(json!({
            "metadata": metadata,
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn a_ready_pod_is_seen_with_its_identity() {
        let now = at("2026-01-01T00:01:00Z");
        let view = pod_view(
            &pod(json!({})),
            &deployment(),
            &mut HealthMemory::default(),
            now,
        );
        assert_eq!(view.name, "web-1");
        assert_eq!(view.slot, "web-0");
        assert_eq!(view.revision, "r1");
        assert_eq!(view.version.as_deref(), Some("1.0"));
        assert_eq!(view.phase, PodPhase::Running);
        assert_eq!(view.created_at, at("2026-01-01T00:00:00Z"));
        // Ready at 00:00:05 to the second: at the latest just before 00:00:06.
        assert_eq!(view.ready_since, Some(at("2026-01-01T00:00:06Z")));
        assert_eq!(view.health, Health::Unknown);
        assert_eq!(view.health_since, now);
        assert!(!view.deleting);
        assert_eq!(view.data["config"], PodData::default());
    }

    #[test]
    fn a_pod_not_ready_or_being_deleted_says_so() {
        let mut p = pod(json!({"deletionTimestamp": "2026-01-01T00:00:30Z"}));
        let status = p.status.as_mut().unwrap();
        status.phase = None;
        status.conditions.as_mut().unwrap()[0].status = "False".into();
        let view = pod_view(
            &p,
            &deployment(),
            &mut HealthMemory::default(),
            at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(view.phase, PodPhase::Pending);
        assert_eq!(view.ready_since, None);
        assert!(view.deleting);
    }

    #[test]
    fn health_comes_from_the_label_and_its_moment_from_the_watchdogs() {
        let p = pod(json!({
            "labels": {"status.autocrane.io/health": "error"},
            "annotations": {"status.autocrane.io/app": "error/2026-01-01T00:00:40Z//down"}
        }));
        let view = pod_view(
            &p,
            &deployment(),
            &mut HealthMemory::default(),
            at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(view.health, Health::Error);
        // Written during second :40 (stored truncated): in error since :41 at the latest.
        assert_eq!(view.health_since, at("2026-01-01T00:00:41Z"));
    }

    #[test]
    fn a_running_controller_keeps_the_earlier_moment_it_saw_the_health() {
        let mut memory = HealthMemory::default();
        let d = deployment();
        let error = |written: &str| {
            pod(json!({
                "labels": {"status.autocrane.io/health": "error"},
                "annotations": {"status.autocrane.io/app": format!("error/{written}//down")}
            }))
        };
        let first = pod_view(
            &error("2026-01-01T00:00:40Z"),
            &d,
            &mut memory,
            at("2026-01-01T00:00:42Z"),
        );
        assert_eq!(first.health_since, at("2026-01-01T00:00:41Z"));
        // The app re-posts its error: the annotation's moment moves, the pod's does not.
        let again = pod_view(
            &error("2026-01-01T00:00:50Z"),
            &d,
            &mut memory,
            at("2026-01-01T00:00:51Z"),
        );
        assert_eq!(again.health_since, at("2026-01-01T00:00:41Z"));
        // A change of level starts again.
        let ok = pod(json!({
            "labels": {"status.autocrane.io/health": "info"},
            "annotations": {"status.autocrane.io/app": "info/2026-01-01T00:01:00Z//ok"}
        }));
        let healed = pod_view(&ok, &d, &mut memory, at("2026-01-01T00:01:02Z"));
        assert_eq!(healed.health_since, at("2026-01-01T00:01:01Z"));
        memory.retain(|uid| uid != "u-1");
        assert!(memory.is_empty());
    }

    #[test]
    fn a_label_the_watchdogs_disagree_with_is_dated_when_first_seen() {
        let p = pod(json!({
            "labels": {"status.autocrane.io/health": "error"},
            "annotations": {"status.autocrane.io/app": "info/2026-01-01T00:00:10Z//ok"}
        }));
        let now = at("2026-01-01T00:01:00Z");
        let view = pod_view(&p, &deployment(), &mut HealthMemory::default(), now);
        assert_eq!(view.health_since, now);
    }

    #[test]
    fn data_reports_become_pod_data() {
        let p = pod(json!({"annotations": {
            "data.autocrane.io/config": "c2",
            "status.autocrane.io/data-config": "info/2026-01-01T00:00:20Z//applied c2",
            "data.autocrane.io/rules": "r9",
            "status.autocrane.io/data-rules": "error/2026-01-01T00:00:30Z//version r9: validation failed"
        }}));
        let view = pod_view(
            &p,
            &deployment(),
            &mut HealthMemory::default(),
            at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(
            view.data["config"],
            PodData {
                desired: Some("c2".into()),
                applied: Some(Applied {
                    version: "c2".into(),
                    ok: true,
                    at: at("2026-01-01T00:00:21Z")
                }),
            },
            "reported during second :20 (stored truncated): applied by :21 at the latest"
        );
        let rules = &view.data["rules"];
        assert_eq!(rules.desired.as_deref(), Some("r9"));
        let applied = rules.applied.as_ref().unwrap();
        assert_eq!((applied.version.as_str(), applied.ok), ("r9", false));
    }

    #[test]
    fn a_malformed_data_report_is_no_report() {
        let p = pod(json!({"annotations": {
            "status.autocrane.io/data-config": "info/2026-01-01T00:00:20Z//all good"
        }}));
        let view = pod_view(
            &p,
            &deployment(),
            &mut HealthMemory::default(),
            at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(view.data["config"].applied, None);
    }
}
