//! Pod status as the kubelet reports it (`generateAPIPodStatus` / `getPhase`), computed from what
//! the simulator's containers are doing. Pure: state in, `PodStatus` out; condition transition
//! times are kept from the previous status when a condition's value did not change.
//!
//! The kubelet owns only some of a pod's conditions ([`KUBELET_CONDITIONS`]); others (readiness
//! gates' conditions such as `autocrane.io/healthy`, `DisruptionTarget`) belong to other writers
//! and are kept as the API server holds them ([`with_foreign_conditions`], the kubelet's
//! `mergePodStatus`). `Ready` also waits for every `spec.readinessGates` condition to be `True`
//! (`GeneratePodReadyCondition`), read from the current status.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The last exit of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// Signal that killed it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `ContainerCannotRun`.
    pub reason: String,
    /// Optional message.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it exited.
    pub finished_at: Timestamp,
    /// `sim://…` id of the run.
    pub container_id: Option<String>,
}

/// What a container is doing now.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Not running: `PodInitializing`, `ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, …
    Waiting {
        /// Reason.
        reason: String,
        /// Message.
        message: Option<String>,
    },
    /// Running since.
    Running {
        /// Start time.
        started_at: Timestamp,
    },
    /// Exited and not (yet) restarted.
    Terminated(Exit),
}

/// One container as the simulator tracks it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRun {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// Current state.
    pub state: RunState,
    /// The previous run's exit (`lastState.terminated`).
    pub last: Option<Exit>,
    /// Readiness (probe result; true without a probe once running).
    pub ready: bool,
    /// Startup probe passed (true without one once running).
    pub started: bool,
    /// Restarts so far.
    pub restart_count: i32,
    /// Id of the current or last run.
    pub container_id: Option<String>,
}

impl ContainerRun {
    /// A container that has not started.
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        ContainerRun {
            name: name.into(),
            image: image.into(),
            state: RunState::Waiting {
                reason: reason.into(),
                message: None,
            },
            last: None,
            ready: false,
            started: false,
            restart_count: 0,
            container_id: None,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, RunState::Terminated(e) if e.exit_code == 0)
    }
}

/// Everything the status is computed from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodRun {
    /// The pod's IP once the "sandbox" (IP, directories, volumes) is set up.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: String,
    /// When the kubelet accepted the pod.
    pub start_time: Option<Timestamp>,
    /// Init containers in order.
    pub init: Vec<ContainerRun>,
    /// App containers.
    pub app: Vec<ContainerRun>,
    /// The pod was deleted and all its containers have been stopped: the phase becomes terminal.
    pub terminated: bool,
    /// Message for a pod that failed before running (e.g. volume setup).
    pub message: Option<String>,
}

/// The condition types the kubelet writes (`kubetypes.PodConditionsByKubelet`); every other
/// condition of a pod belongs to someone else and survives the kubelet's status writes.
pub const KUBELET_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// `new` (the kubelet's own status) with the conditions of `current` (the status as the API
/// server holds it) that the kubelet does not own put first, as the kubelet's `mergePodStatus`
/// does: a status write replaces the kubelet's conditions and keeps everybody else's.
pub fn with_foreign_conditions(mut new: PodStatus, current: Option<&PodStatus>) -> PodStatus {
    let mut conditions: Vec<PodCondition> = current
        .and_then(|c| c.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    conditions.extend(new.conditions.take().unwrap_or_default());
    new.conditions = Some(conditions);
    new
}

/// Why the readiness gates keep the pod from `Ready`, worded as the kubelet's
/// `GeneratePodReadyCondition` does; `None` when every gate's condition is `True`.
fn readiness_gates_message(spec: &PodSpec, current: Option<&PodStatus>) -> Option<String> {
    let conditions = current.and_then(|c| c.conditions.as_deref()).unwrap_or(&[]);
    let unready: Vec<String> = spec
        .readiness_gates
        .iter()
        .flatten()
        .filter_map(|gate| {
            let ty = &gate.condition_type;
            match conditions.iter().find(|c| &c.type_ == ty) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate {ty:?} does not exist."
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate {ty:?} is not \"True\", but {}",
                    c.status
                )),
                Some(_) => None,
            }
        })
        .collect();
    (!unready.is_empty()).then(|| unready.join(", "))
}

/// The pod phase (`getPhase`).
pub fn phase(spec: &PodSpec, run: &PodRun) -> &'static str {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let init_failed = run
        .init
        .iter()
        .any(|c| matches!(&c.state, RunState::Terminated(e) if e.exit_code != 0));
    if init_failed && policy == "Never" {
        return "Failed";
    }
    let init_done = run.init.iter().all(ContainerRun::succeeded);
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &run.app {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated(e) => {
                stopped += 1;
                if e.exit_code == 0 {
                    succeeded += 1;
                }
            }
            RunState::Waiting { .. } if c.last.is_some() => stopped += 1,
            RunState::Waiting { .. } => waiting += 1,
        }
    }
    let p = if !init_done || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    };
    if run.terminated && (p == "Running" || p == "Pending") {
        // A deleted pod whose containers are all stopped ends in a terminal phase.
        let all_ok = !run.app.is_empty() && run.app.iter().all(ContainerRun::succeeded);
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    p
}

/// The kubelet's part of the pod status (its own conditions only: see
/// [`with_foreign_conditions`]). `old` is the current status: it provides transition times and
/// the conditions of the readiness gates; a terminal phase in `old` is kept.
pub fn compute(spec: &PodSpec, run: &PodRun, old: Option<&PodStatus>, now: Timestamp) -> PodStatus {
    let old_phase = old.and_then(|o| o.phase.as_deref());
    let phase = match old_phase {
        Some(p @ ("Succeeded" | "Failed")) => p,
        _ => phase(spec, run),
    };
    let terminal = phase == "Succeeded" || phase == "Failed";
    let cond = |ty: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let prev = old
            .and_then(|o| o.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == ty));
        let since = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(time(now)),
        };
        PodCondition {
            type_: ty.into(),
            status: status.into(),
            last_transition_time: since,
            last_probe_time: None,
            reason,
            message,
            observed_generation: None,
        }
    };
    let init_pending: Vec<&str> = run
        .init
        .iter()
        .filter(|c| !c.succeeded())
        .map(|c| c.name.as_str())
        .collect();
    let initialized = init_pending.is_empty();
    let unready: Vec<&str> = run
        .app
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && !terminal;
    let gates = if containers_ready {
        readiness_gates_message(spec, old)
    } else {
        None
    };
    let (not_ready_reason, not_ready_msg) = if terminal {
        (Some("PodCompleted".to_string()), None)
    } else {
        (
            Some("ContainersNotReady".to_string()),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let conditions = vec![
        cond(
            "PodReadyToStartContainers",
            run.pod_ip.is_some() && !terminal,
            None,
            None,
        ),
        if initialized {
            cond("Initialized", true, None, None)
        } else {
            cond(
                "Initialized",
                false,
                Some("ContainersNotInitialized".into()),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    init_pending.join(" ")
                )),
            )
        },
        match (containers_ready, gates) {
            (true, None) => cond("Ready", true, None, None),
            (true, Some(message)) => cond(
                "Ready",
                false,
                Some("ReadinessGatesNotReady".into()),
                Some(message),
            ),
            (false, _) => cond(
                "Ready",
                false,
                not_ready_reason.clone(),
                not_ready_msg.clone(),
            ),
        },
        if containers_ready {
            cond("ContainersReady", true, None, None)
        } else {
            cond("ContainersReady", false, not_ready_reason, not_ready_msg)
        },
        cond("PodScheduled", true, None, None),
    ];
    let ips = run.pod_ip.clone();
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(run.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: run.host_ip.clone(),
        }]),
        pod_ip: ips.clone(),
        pod_ips: ips.map(|ip| vec![PodIP { ip }]),
        start_time: run.start_time.map(time),
        message: run.message.clone(),
        init_container_statuses: (!run.init.is_empty())
            .then(|| run.init.iter().map(|c| container_status(c, true)).collect()),
        container_statuses: Some(run.app.iter().map(|c| container_status(c, false)).collect()),
        qos_class: old
            .and_then(|o| o.qos_class.clone())
            .or_else(|| Some("BestEffort".into())),
        ..PodStatus::default()
    }
}

fn container_status(c: &ContainerRun, init: bool) -> ContainerStatus {
    let state = match &c.state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated(e) => ContainerState {
            terminated: Some(terminated(e)),
            ..Default::default()
        },
    };
    let last_state = ContainerState {
        terminated: c.last.as_ref().map(terminated),
        ..Default::default()
    };
    let running = matches!(c.state, RunState::Running { .. });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("sim://{}", c.image),
        container_id: c.container_id.clone(),
        ready: if init {
            c.succeeded()
        } else {
            c.ready && running
        },
        restart_count: c.restart_count,
        started: Some(running && c.started),
        state: Some(state),
        last_state: Some(last_state),
        ..ContainerStatus::default()
    }
}

fn terminated(e: &Exit) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: e.exit_code,
        signal: e.signal,
        reason: Some(e.reason.clone()),
        message: e.message.clone(),
        started_at: e.started_at.map(time),
        finished_at: Some(time(e.finished_at)),
        container_id: e.container_id.clone(),
    }
}

/// A `metav1.Time` (second precision, as the API serializes it).
pub fn time(t: Timestamp) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(t.as_second())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: &str) -> PodSpec {
        PodSpec {
            restart_policy: Some(policy.into()),
            ..PodSpec::default()
        }
    }

    fn exit(code: i32) -> Exit {
        Exit {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: None,
        }
    }

    fn running(name: &str) -> ContainerRun {
        ContainerRun {
            state: RunState::Running {
                started_at: Timestamp::now(),
            },
            ready: true,
            started: true,
            ..ContainerRun::waiting(name, "img", "")
        }
    }

    fn done(name: &str, code: i32) -> ContainerRun {
        ContainerRun {
            state: RunState::Terminated(exit(code)),
            ..ContainerRun::waiting(name, "img", "")
        }
    }

    fn run(init: Vec<ContainerRun>, app: Vec<ContainerRun>) -> PodRun {
        PodRun {
            pod_ip: Some("127.1.0.2".into()),
            host_ip: "127.0.0.1".into(),
            start_time: Some(Timestamp::now()),
            init,
            app,
            ..PodRun::default()
        }
    }

    fn cond<'a>(s: &'a PodStatus, ty: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == ty)
            .unwrap()
    }

    #[test]
    fn phases_follow_get_phase() {
        let w = || ContainerRun::waiting("a", "img", "PodInitializing");
        assert_eq!(
            phase(&spec("Always"), &run(vec![w()], vec![w()])),
            "Pending"
        );
        assert_eq!(
            phase(
                &spec("Always"),
                &run(vec![done("i", 0)], vec![running("a")])
            ),
            "Running"
        );
        assert_eq!(
            phase(&spec("Never"), &run(vec![done("i", 1)], vec![w()])),
            "Failed"
        );
        assert_eq!(
            phase(&spec("Always"), &run(vec![done("i", 1)], vec![w()])),
            "Pending"
        );
        assert_eq!(
            phase(
                &spec("Never"),
                &run(vec![], vec![done("a", 0), done("b", 0)])
            ),
            "Succeeded"
        );
        assert_eq!(
            phase(
                &spec("Never"),
                &run(vec![], vec![done("a", 0), done("b", 2)])
            ),
            "Failed"
        );
        assert_eq!(
            phase(
                &spec("OnFailure"),
                &run(vec![], vec![done("a", 0), done("b", 2)])
            ),
            "Running"
        );
        assert_eq!(
            phase(&spec("Always"), &run(vec![], vec![done("a", 0)])),
            "Running"
        );
        let crashloop = ContainerRun {
            last: Some(exit(1)),
            ..ContainerRun::waiting("a", "img", "CrashLoopBackOff")
        };
        assert_eq!(
            phase(&spec("Always"), &run(vec![], vec![crashloop])),
            "Running"
        );
        let deleted = PodRun {
            terminated: true,
            ..run(vec![], vec![done("a", 143)])
        };
        assert_eq!(phase(&spec("Always"), &deleted), "Failed");
    }

    #[test]
    fn conditions_name_the_unready_containers_and_keep_transition_times() {
        let t0 = Timestamp::now() - jiff::SignedDuration::from_secs(60);
        let init = run(
            vec![ContainerRun::waiting("setup", "img", "PodInitializing")],
            vec![ContainerRun::waiting("app", "img", "PodInitializing")],
        );
        let s0 = compute(&spec("Always"), &init, None, t0);
        assert_eq!(cond(&s0, "Initialized").status, "False");
        assert_eq!(
            cond(&s0, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        assert_eq!(
            cond(&s0, "Ready").message.as_deref(),
            Some("containers with unready status: [app]")
        );
        assert_eq!(cond(&s0, "PodScheduled").status, "True");
        let up = run(vec![done("setup", 0)], vec![running("app")]);
        let s1 = compute(&spec("Always"), &up, Some(&s0), Timestamp::now());
        assert_eq!(s1.phase.as_deref(), Some("Running"));
        for ty in ["Initialized", "Ready", "ContainersReady"] {
            assert_eq!(cond(&s1, ty).status, "True", "{ty}");
            assert_ne!(
                cond(&s1, ty).last_transition_time,
                cond(&s0, ty).last_transition_time,
                "{ty}"
            );
        }
        assert_eq!(
            cond(&s1, "PodScheduled").last_transition_time,
            cond(&s0, "PodScheduled").last_transition_time
        );
        let init_status = &s1.init_container_statuses.as_ref().unwrap()[0];
        assert!(init_status.ready);
        assert_eq!(
            init_status
                .state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("Completed")
        );
    }

    #[test]
    fn a_terminal_phase_is_never_left_and_completed_pods_are_not_ready() {
        let s0 = compute(
            &spec("Never"),
            &run(vec![], vec![done("a", 0)]),
            None,
            Timestamp::now(),
        );
        assert_eq!(s0.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s0, "Ready").reason.as_deref(), Some("PodCompleted"));
        let s1 = compute(
            &spec("Never"),
            &run(vec![], vec![running("a")]),
            Some(&s0),
            Timestamp::now(),
        );
        assert_eq!(s1.phase.as_deref(), Some("Succeeded"));
    }

    fn gated(gates: &[&str]) -> PodSpec {
        PodSpec {
            readiness_gates: Some(
                gates
                    .iter()
                    .map(|g| k8s_openapi::api::core::v1::PodReadinessGate {
                        condition_type: (*g).into(),
                    })
                    .collect(),
            ),
            ..spec("Always")
        }
    }

    fn with_condition(mut s: PodStatus, ty: &str, status: &str) -> PodStatus {
        let mut conditions = s.conditions.take().unwrap_or_default();
        conditions.retain(|c| c.type_ != ty);
        conditions.push(PodCondition {
            type_: ty.into(),
            status: status.into(),
            ..PodCondition::default()
        });
        s.conditions = Some(conditions);
        s
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_conditions_are_true() {
        let spec = gated(&["example.com/a", "example.com/b"]);
        let up = run(vec![], vec![running("app")]);
        let s0 = compute(&spec, &up, None, Timestamp::now());
        assert_eq!(cond(&s0, "ContainersReady").status, "True");
        let ready = cond(&s0, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/a\" does not exist., \
                 corresponding condition of pod readiness gate \"example.com/b\" does not exist."
            )
        );
        let current = with_foreign_conditions(s0.clone(), None);
        let current = with_condition(current, "example.com/a", "True");
        let current = with_condition(current, "example.com/b", "False");
        let s1 = compute(&spec, &up, Some(&current), Timestamp::now());
        assert_eq!(
            cond(&s1, "Ready").message.as_deref(),
            Some("the status of pod readiness gate \"example.com/b\" is not \"True\", but False")
        );
        let current = with_condition(current, "example.com/b", "True");
        let s2 = compute(&spec, &up, Some(&current), Timestamp::now());
        assert_eq!(cond(&s2, "Ready").status, "True");
        assert_eq!(cond(&s2, "Ready").reason, None);
        // Unready containers take precedence over the gates, as in the kubelet.
        let down = run(
            vec![],
            vec![ContainerRun {
                ready: false,
                ..running("app")
            }],
        );
        let s3 = compute(&spec, &down, Some(&current), Timestamp::now());
        assert_eq!(
            cond(&s3, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(cond(&s3, "ContainersReady").status, "False");
    }

    #[test]
    fn foreign_conditions_are_kept_and_the_kubelets_own_replaced() {
        let up = run(vec![], vec![running("app")]);
        let own = compute(&spec("Always"), &up, None, Timestamp::now());
        let current = with_condition(own.clone(), "autocrane.io/healthy", "True");
        let current = with_condition(current, "Ready", "Unknown");
        let merged = with_foreign_conditions(own.clone(), Some(&current));
        let types: Vec<&str> = merged
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "autocrane.io/healthy",
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        assert_eq!(cond(&merged, "Ready").status, "True");
        assert_eq!(cond(&merged, "autocrane.io/healthy").status, "True");
    }

    #[test]
    fn restarts_show_in_last_state() {
        let c = ContainerRun {
            last: Some(exit(3)),
            restart_count: 2,
            ..ContainerRun::waiting("a", "img", "CrashLoopBackOff")
        };
        let s = compute(
            &spec("Always"),
            &run(vec![], vec![c]),
            None,
            Timestamp::now(),
        );
        let cs = &s.container_statuses.unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        assert_eq!(
            cs.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            3
        );
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert!(!cs.ready);
    }
}
