//! The label and annotation keys AutoCrane reads and writes on pods.
//!
//! Keys the original AutoCrane used keep their names (`status.autocrane.io/…`,
//! `probe.autocrane.io/…`), so dashboards and habits carry over.

/// The API group of every AutoCrane resource and key.
pub const GROUP: &str = "autocrane.io";

/// Pod label holding the rollup of the pod's watchdogs: `info`, `warning`, `error` or `unknown`.
pub const HEALTH_LABEL: &str = "status.autocrane.io/health";

/// Prefix of the per-watchdog pod annotations: `status.autocrane.io/<watchdog name>`.
pub const WATCHDOG_ANNOTATION_PREFIX: &str = "status.autocrane.io/";

/// Prefix of the HTTP probe annotations: `probe.autocrane.io/<name>: <port>/<path>`.
pub const PROBE_ANNOTATION_PREFIX: &str = "probe.autocrane.io/";

/// Prefix of the desired-data-version annotations the controller sets:
/// `data.autocrane.io/<source name>: <version>`.
pub const DATA_ANNOTATION_PREFIX: &str = "data.autocrane.io/";

/// Pod label naming the AutoCraneDeployment that owns the pod.
pub const DEPLOYMENT_LABEL: &str = "autocrane.io/deployment";

/// Pod label naming the revision (hash of template + app version) the pod was created from.
pub const REVISION_LABEL: &str = "autocrane.io/revision";

/// Pod label naming the pod's slot: the identity a replacement pod inherits, so the failing-limit
/// restart history (`status.restarts[].pod`) survives a delete-and-recreate.
pub const SLOT_LABEL: &str = "autocrane.io/slot";

/// Pod annotation holding the app version the pod runs.
pub const APP_VERSION_ANNOTATION: &str = "autocrane.io/app-version";

/// Name prefix of the watchdogs the DataDeployer posts: `data-<source name>`.
pub const DATA_WATCHDOG_PREFIX: &str = "data-";

/// The resource name RBAC rules use to grant watchdog access (`watchdogs` in group `autocrane.io`).
pub const WATCHDOG_RESOURCE: &str = "watchdogs";

/// The resource name RBAC rules use to grant VersionWatcher access (`versions` in group
/// `autocrane.io`): reads and streams of sources and versions, quarantines.
pub const VERSIONS_RESOURCE: &str = "versions";

/// The resource name RBAC rules use to grant DataRepository access (`datasources` in group
/// `autocrane.io`): tracking, reads and streams, fetches, pins.
pub const DATASOURCES_RESOURCE: &str = "datasources";

/// The pod condition (and readiness gate `conditionType`) the WatchdogListener keeps in step with
/// the rollup on pods the controller creates: `False` while the pod is in `error`, so Services stop
/// routing to it at once, before any rollback or restart.
pub const HEALTHY_CONDITION: &str = "autocrane.io/healthy";

/// The finalizer the controller puts on an AutoCraneDeployment while it holds DataRepository pins,
/// so deleting the deployment releases them first.
pub const PINS_FINALIZER: &str = "autocrane.io/pins";

/// The field manager every AutoCrane writer uses for server-side apply and patches.
pub const FIELD_MANAGER: &str = "autocrane";

/// The annotation key of one watchdog.
pub fn watchdog_annotation(name: &str) -> String {
    format!("{WATCHDOG_ANNOTATION_PREFIX}{name}")
}

/// The annotation key of one data source's desired version.
pub fn data_annotation(source: &str) -> String {
    format!("{DATA_ANNOTATION_PREFIX}{source}")
}

/// The watchdog name the DataDeployer reports a data source under.
pub fn data_watchdog(source: &str) -> String {
    format!("{DATA_WATCHDOG_PREFIX}{source}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compose_from_their_prefixes() {
        assert_eq!(watchdog_annotation("http"), "status.autocrane.io/http");
        assert_eq!(data_annotation("config"), "data.autocrane.io/config");
        assert_eq!(data_watchdog("config"), "data-config");
    }

    #[test]
    fn health_label_is_not_a_watchdog_annotation_clash() {
        // The rollup is a label, the watchdogs annotations: a watchdog named `health` is allowed
        // and lands in a different map.
        assert!(HEALTH_LABEL.starts_with(WATCHDOG_ANNOTATION_PREFIX));
    }
}
