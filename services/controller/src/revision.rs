//! Which app version and revision the deployment should run.
//!
//! A revision is a stable hash of the pod template and the app version, so a template edit and a
//! new version both make a new revision (and `kubectl edit` back to an old template finds the old
//! revision again). Bad versions (rolled back here or quarantined by the VersionWatcher) and bad
//! revisions (a template-only change that was rolled back) are never chosen again: when the wanted
//! version is unusable the deployment stays on what it runs.

use std::collections::BTreeSet;

use autocrane_api::crd::{AppVersion, AutoCraneDeploymentStatus};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::model::{AppVersions, PlanError};

/// `status.badVersions[].version` prefix marking a bad *revision* (a rolled-back template change
/// with an unchanged version). A stop-gap until the CRD has `status.badRevisions`.
pub const BAD_REVISION_PREFIX: &str = "revision:";

/// The revision of `template` at `version`: 10 hex digits of FNV-1a 64 over the template's JSON
/// (k8s-openapi serialises maps in key order, so equal templates hash equally) and the version.
pub fn revision_of(template: &PodTemplateSpec, version: Option<&str>) -> Result<String, PlanError> {
    let mut bytes = serde_json::to_vec(template).map_err(PlanError::HashTemplate)?;
    bytes.push(0xff);
    bytes.extend_from_slice(version.unwrap_or("").as_bytes());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{:010x}", hash & 0xff_ffff_ffff))
}

/// Bad app versions and revisions recorded in the status.
#[derive(Clone, Debug, Default)]
pub struct BadSet {
    /// Rolled-back or quarantined versions.
    pub versions: BTreeSet<String>,
    /// Rolled-back revisions (template changes).
    pub revisions: BTreeSet<String>,
}

impl BadSet {
    /// From the status plus the VersionWatcher's quarantine.
    pub fn new(status: &AutoCraneDeploymentStatus, offered: &AppVersions) -> Self {
        let mut bad = Self {
            versions: offered.quarantined.clone(),
            ..Self::default()
        };
        for entry in &status.bad_versions {
            match entry.version.strip_prefix(BAD_REVISION_PREFIX) {
                Some(revision) => bad.revisions.insert(revision.to_string()),
                None => bad.versions.insert(entry.version.clone()),
            };
        }
        bad
    }

    /// Whether a pod of this revision/version must not run.
    pub fn contains(&self, revision: &str, version: Option<&str>) -> bool {
        self.revisions.contains(revision) || version.is_some_and(|v| self.versions.contains(v))
    }
}

/// What the deployment should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The revision.
    pub revision: String,
    /// The app version (`None` when the deployment has no versions).
    pub version: Option<String>,
    /// The version or revision that was wanted but is bad, when the target falls back.
    pub refused: Option<String>,
}

/// The target, or `None` when no usable version exists at all (nothing to run yet).
pub fn choose(
    template: &PodTemplateSpec,
    spec_version: Option<&AppVersion>,
    offered: &AppVersions,
    bad: &BadSet,
    status: &AutoCraneDeploymentStatus,
) -> Result<Option<Target>, PlanError> {
    let usable = |v: &String| !bad.versions.contains(v);
    let (wanted, refused) = match spec_version {
        None => (None, None),
        Some(AppVersion {
            pinned: Some(pinned),
            ..
        }) if usable(pinned) => (Some(pinned.clone()), None),
        Some(AppVersion {
            pinned: Some(pinned),
            ..
        }) => (None, Some(pinned.clone())),
        Some(_) => match offered.candidates.iter().find(|v| usable(v)) {
            Some(v) => (Some(v.clone()), None),
            // Nothing heard from the source (a restarted controller before the VersionWatcher's
            // first message): nothing new, so the rollout in progress goes on as the status
            // records it. Falling back to the current version here would undo it (its new pods
            // deleted as replaced) and start it over once the versions arrive.
            None if offered.candidates.is_empty() => {
                (status.target_version.clone().filter(usable), None)
            }
            None => (None, offered.candidates.first().cloned()),
        },
    };
    let has_versions = spec_version.is_some();
    // Fall back to the running version when the wanted one is unusable.
    let version = match (has_versions, wanted) {
        (false, _) => None,
        (true, Some(v)) => Some(v),
        (true, None) => match status.current_version.clone() {
            Some(current) => Some(current),
            None => return Ok(None),
        },
    };
    let revision = revision_of(template, version.as_deref())?;
    if bad.revisions.contains(&revision) {
        // A rolled-back template: stay on the stable revision as it is.
        return Ok(status.current_revision.clone().map(|current| Target {
            revision: current,
            version: status.current_version.clone(),
            refused: Some(format!("{BAD_REVISION_PREFIX}{revision}")),
        }));
    }
    Ok(Some(Target {
        revision,
        version,
        refused,
    }))
}
