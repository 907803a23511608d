//! Builders that make tests read like the scenario: `pod("a").revision(r).health(Error, t(5))`,
//! `deployment().replicas(4).pinned("v1")`, and a tiny simulated cluster ([`World`]) whose kubelet
//! starts created pods and whose DataDeployer applies desired data versions.

use std::collections::{BTreeMap, BTreeSet};

use autocrane_api::crd::{
    AppVersion, AutoCraneDeployment, AutoCraneDeploymentSpec, AutoCraneDeploymentStatus,
    DataRollout, DataSource, FailingLimit, Rollout, RolloutStep, SourceSpec,
};
use autocrane_api::duration::Duration;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub(super) use crate::model::Health::{self, Error, Info, Unknown, Warning};
use crate::model::{
    Action, AppVersions, Applied, DataSourceInfo, Event, Input, Plan, PodData, PodPhase, PodView,
    Reaction, Timestamp,
};
use crate::plan::plan;
use crate::revision::revision_of;

/// `secs` seconds after a fixed instant.
pub(super) fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A pod builder.
#[derive(Clone, Debug)]
pub(super) struct PodB(pub PodView);

/// A Running, Ready, `info` pod created at `t(0)`, slot = name, of the revision of
/// [`deployment()`]'s template with no version.
pub(super) fn pod(name: &str) -> PodB {
    PodB(PodView {
        name: name.into(),
        slot: name.into(),
        revision: deployment().rev(None),
        version: None,
        phase: PodPhase::Running,
        created_at: t(0),
        ready_since: Some(t(0)),
        health: Info,
        health_since: t(0),
        deleting: false,
        data: BTreeMap::new(),
    })
}

impl PodB {
    pub(super) fn revision(mut self, r: &str) -> Self {
        self.0.revision = r.into();
        self
    }
    pub(super) fn version(mut self, v: &str) -> Self {
        self.0.version = Some(v.into());
        self
    }
    pub(super) fn ready_since(mut self, at: Timestamp) -> Self {
        self.0.ready_since = Some(at);
        self
    }
    pub(super) fn not_ready(mut self) -> Self {
        self.0.ready_since = None;
        self
    }
    pub(super) fn health(mut self, h: Health, since: Timestamp) -> Self {
        self.0.health = h;
        self.0.health_since = since;
        self
    }
    pub(super) fn phase(mut self, p: PodPhase) -> Self {
        self.0.phase = p;
        self
    }
    pub(super) fn deleting(mut self) -> Self {
        self.0.deleting = true;
        self
    }
    pub(super) fn created(mut self, at: Timestamp) -> Self {
        self.0.created_at = at;
        self
    }
    pub(super) fn slot(mut self, s: &str) -> Self {
        self.0.slot = s.into();
        self
    }
    /// `data.autocrane.io/<source>: <version>`.
    pub(super) fn wants(mut self, source: &str, version: &str) -> Self {
        self.0.data.entry(source.into()).or_default().desired = Some(version.into());
        self
    }
    /// The `data-<source>` watchdog reports `version` applied (ok) or failed at `at`.
    pub(super) fn applied(mut self, source: &str, version: &str, ok: bool, at: Timestamp) -> Self {
        let entry = self.0.data.entry(source.into()).or_default();
        entry.applied = Some(Applied {
            version: version.into(),
            ok,
            at,
        });
        self
    }
    /// Wants and has applied `version` since `at`.
    pub(super) fn on(self, source: &str, version: &str, at: Timestamp) -> Self {
        self.wants(source, version)
            .applied(source, version, true, at)
    }
    pub(super) fn build(self) -> PodView {
        self.0
    }
}

/// A deployment builder.
#[derive(Clone, Debug)]
pub(super) struct AcdB(pub AutoCraneDeployment);

/// `web`, 4 replicas, no version, default rollout (25%/2m, 50%/2m, 100%), maxUnavailable 0.
pub(super) fn deployment() -> AcdB {
    let template = PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("web".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    let spec = AutoCraneDeploymentSpec {
        replicas: 4,
        template,
        version: None,
        data: vec![],
        rollout: Rollout::default(),
        data_rollout: DataRollout::default(),
        failing_limit: FailingLimit::default(),
    };
    let mut acd = AutoCraneDeployment::new("web", spec);
    acd.metadata = ObjectMeta {
        name: Some("web".into()),
        namespace: Some("default".into()),
        generation: Some(1),
        ..Default::default()
    };
    AcdB(acd)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl AcdB {
    pub(super) fn replicas(mut self, n: i32) -> Self {
        self.0.spec.replicas = n;
        self
    }
    pub(super) fn pinned(mut self, v: &str) -> Self {
        self.0.spec.version = Some(AppVersion {
            pinned: Some(v.into()),
            ..Default::default()
        });
        self
    }
    /// Follows a source; the offered versions come from the [`World`].
    pub(super) fn followed(mut self) -> Self {
        self.0.spec.version = Some(AppVersion {
            source: Some(SourceSpec::default()),
            ..Default::default()
        });
        self
    }
    /// Steps of (percent, bake seconds).
    pub(super) fn steps(mut self, steps: &[(i32, u64)]) -> Self {
        self.0.spec.rollout.steps = steps
            .iter()
            .map(|(p, b)| RolloutStep {
                percent: *p,
                bake: secs(*b),
            })
            .collect();
        self
    }
    pub(super) fn surge(mut self, v: IntOrString) -> Self {
        self.0.spec.rollout.max_surge = v;
        self
    }
    pub(super) fn max_unavailable(mut self, v: IntOrString) -> Self {
        self.0.spec.rollout.max_unavailable = v;
        self
    }
    pub(super) fn deadline(mut self, s: u64) -> Self {
        self.0.spec.rollout.progress_deadline = secs(s);
        self
    }
    pub(super) fn data_source(mut self, name: &str) -> Self {
        self.0.spec.data.push(DataSource {
            name: name.into(),
            source: SourceSpec::default(),
            mount_path: "/data".into(),
        });
        self
    }
    pub(super) fn canary(mut self, percent: i32, bake: u64) -> Self {
        self.0.spec.data_rollout.canary_percent = percent;
        self.0.spec.data_rollout.bake = secs(bake);
        self
    }
    pub(super) fn data_deadline(mut self, secs_: u64) -> Self {
        self.0.spec.data_rollout.progress_deadline = secs(secs_);
        self
    }
    pub(super) fn exclusive(mut self, on: bool) -> Self {
        self.0.spec.data_rollout.exclusive_with_app_rollout = on;
        self
    }
    /// Failing limit: threshold seconds, concurrent restarts, restarts per pod, window seconds.
    pub(super) fn failing(
        mut self,
        threshold: u64,
        concurrent: i32,
        per_pod: i32,
        window: u64,
    ) -> Self {
        self.0.spec.failing_limit = FailingLimit {
            error_threshold: secs(threshold),
            max_concurrent_restarts: concurrent,
            max_restarts_per_pod: per_pod,
            window: secs(window),
        };
        self
    }
    pub(super) fn template_image(mut self, image: &str) -> Self {
        self.0.spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        self
    }
    /// `metadata.deletionTimestamp` set (at `t(0)`).
    pub(super) fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(0)));
        self
    }
    pub(super) fn status(mut self, f: impl FnOnce(&mut AutoCraneDeploymentStatus)) -> Self {
        f(self.0.status.get_or_insert_with(Default::default));
        self
    }
    /// The revision this deployment's template makes at `version`.
    pub(super) fn rev(&self, version: Option<&str>) -> String {
        revision_of(&self.0.spec.template, version).unwrap()
    }
    pub(super) fn build(self) -> AutoCraneDeployment {
        self.0
    }
}

/// A simulated cluster around one deployment.
#[derive(Clone, Debug)]
pub(super) struct World {
    pub acd: AutoCraneDeployment,
    pub pods: Vec<PodView>,
    pub offered: AppVersions,
    pub data: BTreeMap<String, Vec<String>>,
    /// Per data source: its id and sync times (empty: unknown).
    pub sources: BTreeMap<String, DataSourceInfo>,
    pub now: Timestamp,
    /// App versions whose pods go `error` once started.
    pub broken_versions: BTreeSet<String>,
    /// Data versions the DataDeployer fails to apply.
    pub broken_data: BTreeSet<String>,
    /// Data versions the DataDeployer never reports on (stuck fetching, sidecar gone).
    pub silent_data: BTreeSet<String>,
    /// Every Event emitted so far.
    pub events: Vec<Event>,
    /// Every action taken so far.
    pub actions: Vec<Action>,
    /// Every reaction time reported so far.
    pub reactions: Vec<Reaction>,
}

impl World {
    pub(super) fn new(acd: AcdB) -> Self {
        Self {
            acd: acd.build(),
            pods: vec![],
            offered: AppVersions::default(),
            data: BTreeMap::new(),
            sources: BTreeMap::new(),
            now: t(0),
            broken_versions: BTreeSet::new(),
            broken_data: BTreeSet::new(),
            silent_data: BTreeSet::new(),
            events: vec![],
            actions: vec![],
            reactions: vec![],
        }
    }

    /// A deployment that already runs: planned and started until nothing changes.
    pub(super) fn running(acd: AcdB) -> Self {
        let mut world = Self::new(acd);
        world.settle(20);
        world
    }

    pub(super) fn status(&self) -> AutoCraneDeploymentStatus {
        self.acd.status.clone().unwrap_or_default()
    }

    pub(super) fn condition(&self, type_: &str) -> Condition {
        self.status()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    pub(super) fn plan(&self) -> Plan {
        plan(Input {
            deployment: &self.acd,
            pods: &self.pods,
            app_versions: &self.offered,
            data_versions: &self.data,
            data_sources: &self.sources,
            now: self.now,
        })
        .expect("plan")
    }

    /// Carries out a plan: status written, pods created (Pending), deleted (terminating), annotated.
    pub(super) fn apply(&mut self, plan: &Plan) {
        self.acd.status = Some(plan.status.clone());
        self.events.extend(plan.events.iter().cloned());
        self.actions.extend(plan.actions.iter().cloned());
        self.reactions.extend(plan.reactions.iter().cloned());
        for action in &plan.actions {
            match action {
                Action::CreatePod {
                    name,
                    slot,
                    revision,
                    version,
                    data,
                } => self.pods.push(PodView {
                    name: name.clone(),
                    slot: slot.clone(),
                    revision: revision.clone(),
                    version: version.clone(),
                    phase: PodPhase::Pending,
                    created_at: self.now,
                    ready_since: None,
                    health: Unknown,
                    health_since: self.now,
                    deleting: false,
                    data: data
                        .iter()
                        .map(|(s, v)| {
                            (
                                s.clone(),
                                PodData {
                                    desired: Some(v.clone()),
                                    applied: None,
                                },
                            )
                        })
                        .collect(),
                }),
                Action::DeletePod { name, .. } => self.pod_mut(name).deleting = true,
                Action::SetPodData {
                    pod,
                    source,
                    version,
                } => {
                    self.pod_mut(pod)
                        .data
                        .entry(source.clone())
                        .or_default()
                        .desired = Some(version.clone())
                }
                Action::ClearPodData { pod, source } => {
                    self.pod_mut(pod)
                        .data
                        .entry(source.clone())
                        .or_default()
                        .desired = None
                }
                _ => {}
            }
        }
    }

    /// Plans and applies once.
    pub(super) fn step(&mut self) -> Plan {
        let plan = self.plan();
        self.apply(&plan);
        plan
    }

    /// The kubelet and the DataDeployers: terminating pods vanish, pending pods start Ready
    /// (going `error` when their version is broken), desired data versions get applied.
    pub(super) fn kubelet(&mut self) {
        self.pods.retain(|p| !p.deleting);
        let now = self.now;
        for pod in &mut self.pods {
            if pod.phase == PodPhase::Pending {
                pod.phase = PodPhase::Running;
                pod.ready_since = Some(now);
                let broken = pod
                    .version
                    .as_ref()
                    .is_some_and(|v| self.broken_versions.contains(v));
                pod.health = if broken { Error } else { Info };
                pod.health_since = now;
            }
            let mut switched = false;
            for data in pod.data.values_mut() {
                if let Some(want) = &data.desired
                    && data.applied.as_ref().is_none_or(|a| &a.version != want)
                    && !self.silent_data.contains(want)
                {
                    let ok = !self.broken_data.contains(want);
                    data.applied = Some(Applied {
                        version: want.clone(),
                        ok,
                        at: now,
                    });
                    switched = true;
                }
            }
            // The `data-<source>` watchdogs feed the rollup: any failed apply is an error; after
            // a switch that left every source applied, the pod is as healthy as its version.
            if switched {
                let failed = pod
                    .data
                    .values()
                    .any(|d| d.applied.as_ref().is_some_and(|a| !a.ok));
                let broken = pod
                    .version
                    .as_ref()
                    .is_some_and(|v| self.broken_versions.contains(v));
                let health = if failed || broken { Error } else { Info };
                if health != pod.health {
                    pod.health = health;
                    pod.health_since = now;
                }
            }
        }
    }

    pub(super) fn tick(&mut self, secs: i64) {
        self.now = self
            .now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
            .unwrap();
    }

    /// Plan, apply, kubelet, tick — `rounds` times, or until a round changes nothing.
    pub(super) fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let plan = self.step();
            let before = self.pods.clone();
            self.kubelet();
            if plan.actions.is_empty() && before == self.pods && plan.requeue_after.is_none() {
                return;
            }
            let wait = plan
                .requeue_after
                .map_or(1, |d| i64::try_from(d.as_secs()).unwrap_or(1).clamp(1, 60));
            self.tick(wait);
        }
    }

    pub(super) fn pod_mut(&mut self, name: &str) -> &mut PodView {
        self.pods
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Live pods (not terminating) running `version`.
    pub(super) fn on_version(&self, version: &str) -> usize {
        self.pods
            .iter()
            .filter(|p| !p.deleting && p.version.as_deref() == Some(version))
            .count()
    }

    pub(super) fn desiring(&self, source: &str, version: &str) -> usize {
        self.pods
            .iter()
            .filter(|p| {
                !p.deleting
                    && p.data.get(source).and_then(|d| d.desired.as_deref()) == Some(version)
            })
            .count()
    }

    pub(super) fn event_reasons(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.reason).collect()
    }
}

/// Plans once over loose parts.
pub(super) fn plan_for(
    acd: &AutoCraneDeployment,
    pods: &[PodView],
    data: &[(&str, &[&str])],
    now: Timestamp,
) -> Plan {
    let data: BTreeMap<String, Vec<String>> = data
        .iter()
        .map(|(s, vs)| (s.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect();
    plan(Input {
        deployment: acd,
        pods,
        app_versions: &AppVersions::default(),
        data_versions: &data,
        data_sources: &BTreeMap::new(),
        now,
    })
    .expect("plan")
}

/// The data annotations a plan sets, as `(pod, source, version)`.
pub(super) fn data_sets(plan: &Plan) -> Vec<(String, String, String)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::SetPodData {
                pod,
                source,
                version,
            } => Some((pod.clone(), source.clone(), version.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn deletes(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .filter_map(|a| {
            if let Action::DeletePod { name, .. } = a {
                Some(name.clone())
            } else {
                None
            }
        })
        .collect()
}

pub(super) fn creates(plan: &Plan) -> Vec<(String, Option<String>)> {
    plan.actions
        .iter()
        .filter_map(|a| {
            if let Action::CreatePod {
                revision, version, ..
            } = a
            {
                Some((revision.clone(), version.clone()))
            } else {
                None
            }
        })
        .collect()
}
