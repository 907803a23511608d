//! Steps 3 and 6: data rollouts move and start, pods get their data versions; new pods are named
//! and versions pinned.

use std::collections::{BTreeMap, BTreeSet};

use autocrane_api::crd::{DataSourceStatus, RestartRecord};

use super::Pass;
use crate::data_oracle;
use crate::model::{Action, PodView, Reaction, ReactionKind};
use crate::rollout::Wanted;

impl Pass<'_> {
    /// Step 3: data rollouts in progress move (fail, promote, become LKG), from the status as
    /// last written; a source new to the spec starts with an empty status.
    pub(super) fn data(&mut self) {
        self.sources = self
            .spec
            .data
            .iter()
            .map(|source| {
                let previous = self.old.data.iter().find(|d| d.name == source.name);
                let previous = previous.cloned().unwrap_or_else(|| DataSourceStatus {
                    name: source.name.clone(),
                    ..Default::default()
                });
                data_oracle::advance(
                    &self.spec.data_rollout,
                    &previous,
                    &self.live,
                    self.now,
                    &mut self.wake,
                )
            })
            .collect();
    }

    /// Step 6: data rollouts start (held while an app rollout runs, when they exclude each
    /// other) and the pods that stay get their data versions; annotations of sources that left
    /// the spec are cleared.
    pub(super) fn data_start(&mut self) {
        let hold = self.app_busy() && self.spec.data_rollout.exclusive_with_app_rollout;
        let empty = Vec::new();
        for d in std::mem::take(&mut self.sources) {
            let versions = self.data_versions.get(&d.status.name).unwrap_or(&empty);
            let mut d = data_oracle::start_and_assign(
                &self.spec.data_rollout,
                d,
                versions,
                &self.live,
                hold,
                self.now,
            );
            if let Some((version, why)) = d.quarantine.take() {
                self.actions.push(Action::QuarantineDataVersion {
                    source: d.status.name.clone(),
                    version,
                    reason: why,
                });
            }
            for (pod, version) in d.set.drain(..) {
                self.actions.push(Action::SetPodData {
                    pod,
                    source: d.status.name.clone(),
                    version,
                });
            }
            for pod in d.clear.drain(..) {
                self.actions.push(Action::ClearPodData {
                    pod,
                    source: d.status.name.clone(),
                });
            }
            self.events.append(&mut d.events);
            self.sources.push(d);
        }
        let sources: BTreeSet<&str> = self.spec.data.iter().map(|d| d.name.as_str()).collect();
        for pod in &self.live {
            for (source, data) in &pod.data {
                if !sources.contains(source.as_str()) && data.desired.is_some() {
                    self.actions.push(Action::ClearPodData {
                        pod: pod.name.clone(),
                        source: source.clone(),
                    });
                }
            }
        }
    }

    /// New pods, named into their slots, starting with every source's initial version.
    pub(super) fn create_pods(&mut self) {
        let initial: BTreeMap<String, String> = self
            .sources
            .iter()
            .filter_map(|d| {
                Some((
                    d.status.name.clone(),
                    data_oracle::initial_version(&d.status)?,
                ))
            })
            .collect();
        let creates = std::mem::take(&mut self.creates);
        let new = name_pods(
            self.name,
            self.pods,
            &self.restarts.restart,
            &self.status.restarts,
            creates,
            &initial,
        );
        self.first_pods(&new);
        self.actions.extend(new);
    }

    /// The version → first-pod reaction: a pod of a version no pod ran yet, in a deployment that
    /// already ran another version (its first bring-up is not a reaction to a new version), when
    /// the VersionWatcher said when it first saw the version.
    fn first_pods(&mut self, creates: &[Action]) {
        let Some(current) = &self.old.current_version else {
            return;
        };
        let mut seen: BTreeSet<&str> = self
            .pods
            .iter()
            .filter_map(|p| p.version.as_deref())
            .collect();
        seen.insert(current);
        for action in creates {
            if let Action::CreatePod {
                version: Some(version),
                ..
            } = action
                && let Some(since) = self.app_versions.published.get(version)
                && seen.insert(version)
            {
                self.reactions.push(Reaction {
                    kind: ReactionKind::VersionToFirstPod,
                    since: *since,
                    at: self.now,
                });
            }
        }
    }

    /// Versions that became LKG or a target are pinned in the DataRepository; versions that
    /// stopped being either are unpinned. The sources' statuses become the status.
    /// The sources' ids (when known) are filled in.
    pub(super) fn pin_data(&mut self) {
        let new: Vec<DataSourceStatus> = std::mem::take(&mut self.sources)
            .into_iter()
            .map(|mut d| {
                if let Some(id) = self
                    .data_sources
                    .get(&d.status.name)
                    .and_then(|info| info.source_id.clone())
                {
                    d.status.source_id = Some(id);
                }
                d.status
            })
            .collect();
        self.actions.extend(pins(&self.old.data, &new));
        self.applied(&new);
        self.status.data = new;
    }

    /// The synced → applied reaction: a source's `current` (the version every pod has applied)
    /// became a new version rolled out over a last-known-good one, whose sync time is known. It
    /// completed with the last pod's report.
    fn applied(&mut self, new: &[DataSourceStatus]) {
        for source in new {
            let old = self.old.data.iter().find(|d| d.name == source.name);
            let (Some(old), Some(version)) = (old, source.current.as_ref()) else {
                continue;
            };
            let rollout = old.lkg.is_some()
                && old.lkg.as_ref() != Some(version)
                && old.current.as_ref() != Some(version)
                && !source.bad.iter().any(|b| &b.version == version);
            let Some(since) = self
                .data_sources
                .get(&source.name)
                .and_then(|info| info.synced_at.get(version))
                .filter(|_| rollout)
            else {
                continue;
            };
            let at = self
                .live
                .iter()
                .filter_map(|p| p.data.get(&source.name)?.applied.as_ref())
                .filter(|a| &a.version == version)
                .map(|a| a.at)
                .max()
                .unwrap_or(self.now);
            self.reactions.push(Reaction {
                kind: ReactionKind::DataSyncedToApplied,
                since: *since,
                at,
            });
        }
    }
}

/// Names and slots for new pods. A pod restarted in this pass is replaced in its own slot, so the
/// slot's restart history carries over; any other new pod takes a fresh slot (one no pod and no
/// restart record uses), so refilling a slot later is never mistaken for a restart in flight.
pub(super) fn name_pods(
    deployment: &str,
    all: &[PodView],
    restarted: &[String],
    records: &[RestartRecord],
    creates: Vec<Wanted>,
    data: &BTreeMap<String, String>,
) -> Vec<Action> {
    let mut used: BTreeSet<String> = all
        .iter()
        .map(|p| p.slot.clone())
        .chain(records.iter().map(|r| r.pod.clone()))
        .collect();
    let mut names: BTreeSet<String> = all.iter().map(|p| p.name.clone()).collect();
    let mut out = Vec::new();
    for (revision, version, count) in creates {
        let mut reuse: Vec<String> = all
            .iter()
            .filter(|p| p.revision == revision && restarted.contains(&p.name))
            .map(|p| p.slot.clone())
            .collect();
        reuse.sort();
        reuse.dedup();
        let mut reuse = reuse.into_iter();
        let mut fresh = (0usize..).map(|index| format!("{deployment}-{revision}-{index}"));
        for _ in 0..count {
            let slot = reuse
                .next()
                .unwrap_or_else(|| first_free(fresh.by_ref(), &used));
            used.insert(slot.clone());
            let name = first_free(
                std::iter::once(slot.clone()).chain((1usize..).map(|k| format!("{slot}-{k}"))),
                &names,
            );
            names.insert(name.clone());
            out.push(Action::CreatePod {
                name,
                slot,
                revision: revision.clone(),
                version: version.clone(),
                data: data.clone(),
            });
        }
    }
    out
}

/// The first of `candidates` (an endless supply of distinct names) that `taken` does not hold:
/// one among the first `taken.len() + 1`, so the search is bounded.
fn first_free(candidates: impl Iterator<Item = String>, taken: &BTreeSet<String>) -> String {
    candidates
        .take(taken.len() + 1)
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or_default()
}

fn pins(old: &[DataSourceStatus], new: &[DataSourceStatus]) -> Vec<Action> {
    let held = |list: &[DataSourceStatus]| -> BTreeSet<(String, String)> {
        list.iter()
            .flat_map(|d| {
                [d.lkg.clone(), d.target.clone()]
                    .into_iter()
                    .flatten()
                    .map(|v| (d.name.clone(), v))
            })
            .collect()
    };
    let (before, after) = (held(old), held(new));
    let pin = after
        .difference(&before)
        .map(|(source, version)| Action::PinData {
            source: source.clone(),
            version: version.clone(),
        });
    let unpin = before
        .difference(&after)
        .map(|(source, version)| Action::UnpinData {
            source: source.clone(),
            version: version.clone(),
        });
    pin.chain(unpin).collect()
}
