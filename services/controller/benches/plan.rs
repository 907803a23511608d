//! Planning time, printed beside a baseline measured in the same run.
//!
//! `cargo bench -p autocrane-controller --bench plan`
//!
//! Two shapes: one deployment of 10,000 pods mid-rollout with a data canary, and 1,000
//! deployments of 10 pods each. The baseline is cloning the input fleet (every pod view, as the
//! I/O layer would hand it over), so the ratio says how much more than touching the input once
//! planning costs. Not a timed test: nothing fails on a slow machine.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use autocrane_api::crd::{
    AppVersion, AutoCraneDeployment, AutoCraneDeploymentSpec, AutoCraneDeploymentStatus,
    DataRollout, DataSource, DataSourceStatus, DataStage, FailingLimit, Rollout, SourceSpec,
};
use autocrane_controller::model::{
    AppVersions, Applied, Health, Input, PodData, PodPhase, PodView, Timestamp,
};
use autocrane_controller::plan::plan;
use autocrane_controller::revision::revision_of;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A deployment of `n` pods rolling v1 → v2 (a quarter done), with source `d` canarying `b`
/// over LKG `a`, and a few pods in error.
fn fleet(name: &str, n: usize) -> (AutoCraneDeployment, Vec<PodView>) {
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
    let old = revision_of(&template, Some("v1")).unwrap();
    let new = revision_of(&template, Some("v2")).unwrap();
    let spec = AutoCraneDeploymentSpec {
        replicas: i32::try_from(n).unwrap(),
        template,
        version: Some(AppVersion {
            pinned: Some("v2".into()),
            ..Default::default()
        }),
        data: vec![DataSource {
            name: "d".into(),
            source: SourceSpec::default(),
            mount_path: "/data".into(),
        }],
        rollout: Rollout::default(),
        data_rollout: DataRollout {
            exclusive_with_app_rollout: false,
            ..DataRollout::default()
        },
        failing_limit: FailingLimit::default(),
    };
    let mut acd = AutoCraneDeployment::new(name, spec);
    acd.metadata = ObjectMeta {
        name: Some(name.into()),
        generation: Some(1),
        ..Default::default()
    };
    acd.status = Some(AutoCraneDeploymentStatus {
        current_revision: Some(old.clone()),
        current_version: Some("v1".into()),
        target_revision: Some(new.clone()),
        target_version: Some("v2".into()),
        rollout_step: Some(0),
        step_started_at: Some(Time(at(0))),
        data: vec![DataSourceStatus {
            name: "d".into(),
            lkg: Some("a".into()),
            target: Some("b".into()),
            stage: Some(DataStage::Canary),
            stage_started_at: Some(Time(at(0))),
            ..Default::default()
        }],
        ..Default::default()
    });
    let pods = (0..n)
        .map(|i| {
            let (revision, version) = if i % 4 == 0 {
                (new.clone(), "v2")
            } else {
                (old.clone(), "v1")
            };
            let slot = format!("{name}-{revision}-{i}");
            let data_version = if i % 8 == 0 { "b" } else { "a" };
            PodView {
                name: slot.clone(),
                slot,
                revision,
                version: Some(version.into()),
                phase: PodPhase::Running,
                created_at: at(0),
                ready_since: Some(at(1)),
                health: if i % 97 == 5 {
                    Health::Error
                } else {
                    Health::Info
                },
                health_since: at(1),
                deleting: false,
                data: BTreeMap::from([(
                    "d".to_string(),
                    PodData {
                        desired: Some(data_version.into()),
                        applied: Some(Applied {
                            version: data_version.into(),
                            ok: true,
                            at: at(2),
                        }),
                    },
                )]),
            }
        })
        .collect();
    (acd, pods)
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn report(label: &str, planning: Duration, baseline: Duration) {
    let ratio = planning.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
    println!(
        "{label:<38} plan {:>10.3} ms   baseline (clone input) {:>8.3} ms   ratio {ratio:>6.1}x",
        planning.as_secs_f64() * 1e3,
        baseline.as_secs_f64() * 1e3
    );
    // For scripts/bench.sh (no goal: a figure to watch, lower is better).
    println!(
        "BENCH-RESULT {}",
        serde_json::json!({
            "bench": "controller-plan", "figure": label.trim(), "value": planning.as_secs_f64() * 1e3,
            "unit": "ms", "baseline": baseline.as_secs_f64() * 1e3,
            "baseline_what": "cloning the input fleet", "ratio": ratio, "goal": null, "met": null,
        })
    );
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs (nproc), {model}")
}

fn main() {
    println!("machine: {}", machine());
    let offered = AppVersions::default();
    let data = BTreeMap::from([("d".to_string(), vec!["b".to_string(), "a".to_string()])]);
    let now = at(30);

    let (acd, pods) = fleet("big", 10_000);
    let planning = median(15, || {
        let out = plan(Input {
            deployment: &acd,
            pods: &pods,
            app_versions: &offered,
            data_versions: &data,
            data_sources: &BTreeMap::new(),
            now,
        })
        .unwrap();
        black_box(out);
    });
    let baseline = median(15, || {
        black_box(pods.clone());
    });
    report("1 deployment x 10,000 pods", planning, baseline);

    let fleets: Vec<(AutoCraneDeployment, Vec<PodView>)> =
        (0..1000).map(|i| fleet(&format!("d{i}"), 10)).collect();
    let planning = median(15, || {
        for (acd, pods) in &fleets {
            let out = plan(Input {
                deployment: acd,
                pods,
                app_versions: &offered,
                data_versions: &data,
                data_sources: &BTreeMap::new(),
                now,
            })
            .unwrap();
            black_box(out);
        }
    });
    let baseline = median(15, || {
        for (_, pods) in &fleets {
            black_box(pods.clone());
        }
    });
    report("1,000 deployments x 10 pods", planning, baseline);
}
