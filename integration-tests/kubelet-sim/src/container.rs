//! One container of a pod: "pull" (image table or command), environment, start in its own
//! namespaces, supervise with probes, restart with back-off per `restartPolicy`, and stop with
//! SIGTERM → grace period → SIGKILL.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use rustix::process::Signal;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, info};

use crate::env::{self, Runtime};
use crate::pod::{Ctx, Kind, Outcome, Stop, sleep_or_stop, wait_stop};
use crate::probes::{self, Report};
use crate::runtime::{self, Launch, RootFs};
use crate::status::{Exit, RunState};
use crate::volumes;

/// Marks a run's log as complete (`<n>.log` → `<n>.done`): the kubelet API's `follow` ends there.
fn mark_done(log: &std::path::Path) {
    let _ = std::fs::write(log.with_extension("done"), b"");
}

/// Start, supervise and restart one container until it is done for good or the pod stops.
pub(crate) async fn run(ctx: Arc<Ctx>, kind: Kind, idx: usize) -> Outcome {
    let mut attempt: i32 = 0;
    let mut pull_failures = 0u32;
    let mut prev: Option<Exit> = None;
    loop {
        if ctx.stop() != Stop::Run {
            return Outcome::Stopped;
        }
        let pod = ctx.pod();
        let spec = pod.spec.clone().unwrap_or_default();
        let c = if kind == Kind::Init {
            spec.init_containers.clone().unwrap_or_default()[idx].clone()
        } else {
            spec.containers[idx].clone()
        };
        let image = c.image.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        // "Pull" the image: a command, or a program from the image table.
        let command = c.command.clone().unwrap_or_default();
        let (program, mut args) = match command.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => match ctx.shared.images.resolve(&image) {
                Some(p) => (p.display().to_string(), vec![]),
                None => {
                    pull_failures += 1;
                    let msg = format!(
                        "rpc error: code = NotFound desc = failed to pull and unpack image {image:?}: no command and the image is not in the kubelet-sim image map"
                    );
                    ctx.container(kind, idx, |r| {
                        r.state = RunState::Waiting {
                            reason: "ErrImagePull".into(),
                            message: Some(msg),
                        }
                    });
                    if !sleep_or_stop(&ctx, ctx.shared.backoff.base / 2).await {
                        return Outcome::Stopped;
                    }
                    let msg = format!("Back-off pulling image {image:?}");
                    ctx.container(kind, idx, |r| {
                        r.state = RunState::Waiting {
                            reason: "ImagePullBackOff".into(),
                            message: Some(msg),
                        }
                    });
                    if !sleep_or_stop(&ctx, ctx.shared.backoff.pull_delay(pull_failures)).await {
                        return Outcome::Stopped;
                    }
                    continue;
                }
            },
        };
        args.extend(c.args.clone().unwrap_or_default());
        let (ip, host_ip) = ctx.runtime_view();
        let rt = Runtime {
            service_host: &ctx.shared.api_host,
            service_port: ctx.shared.api_port,
            pod_ip: &ip,
            host_ip: &host_ip,
        };
        let resolved = env::resolve(&pod, &c, &rt, &ctx.sources.lock().expect("sources"));
        let env = match resolved {
            Ok(e) => e,
            Err(msg) => {
                ctx.container(kind, idx, |r| {
                    r.state = RunState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(msg),
                    }
                });
                if !sleep_or_stop(&ctx, ctx.shared.backoff.base).await {
                    return Outcome::Stopped;
                }
                ctx.fetch_sources().await;
                continue;
            }
        };
        let program = env::expand(&program, &env);
        let args: Vec<String> = args.iter().map(|a| env::expand(a, &env)).collect();
        let run_dir = ctx.dir.join("containers").join(&c.name);
        let _ = std::fs::remove_dir_all(&run_dir);
        let launch = Launch {
            program,
            args,
            env: env.clone(),
            working_dir: c
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            mounts: volumes::mounts(&pod, &c, &ctx.dir.join("volumes")),
            root: ctx.shared.isolate.then(|| RootFs {
                upper: run_dir.join("upper"),
                work: run_dir.join("work"),
                merged: run_dir.join("merged"),
            }),
            log: ctx
                .dir
                .join("logs")
                .join(&c.name)
                .join(format!("{attempt}.log")),
        };
        let cid = format!("sim://{}-{}-{attempt}", ctx.uid, c.name);
        let started_at = Timestamp::now();
        let spawned = runtime::spawn(&ctx.shared.tools, &ctx.shared.host_mounts, &launch);
        let exit = match spawned {
            Ok(child) => {
                let mut init_pid = child.id().unwrap_or(0);
                if ctx.shared.isolate {
                    init_pid = runtime::wait_rooted(init_pid).await.unwrap_or(init_pid);
                }
                let has_startup = c.startup_probe.is_some();
                let has_readiness = c.readiness_probe.is_some();
                ctx.container(kind, idx, |r| {
                    r.state = RunState::Running { started_at };
                    r.container_id = Some(cid.clone());
                    r.restart_count = attempt;
                    r.last = prev.clone();
                    r.started = !has_startup;
                    r.ready = kind == Kind::App && !has_readiness && !has_startup;
                });
                info!(container = %c.name, restart = attempt, pid = child.id(), "Container started");
                let (code, signal, stopped) = supervise(
                    &ctx,
                    kind,
                    idx,
                    child,
                    init_pid,
                    &c,
                    env,
                    ip.clone(),
                    spec.termination_grace_period_seconds,
                )
                .await;
                mark_done(&launch.log);
                let reason = if code == 0 { "Completed" } else { "Error" };
                let exit = Exit {
                    exit_code: code,
                    signal,
                    reason: reason.into(),
                    message: None,
                    started_at: Some(started_at),
                    finished_at: Timestamp::now(),
                    container_id: Some(cid),
                };
                if stopped {
                    ctx.container(kind, idx, |r| {
                        r.state = RunState::Terminated(exit);
                        r.ready = false;
                        r.started = false;
                    });
                    return Outcome::Stopped;
                }
                exit
            }
            Err(e) => {
                mark_done(&launch.log);
                Exit {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(format!("failed to start container: {e}")),
                    started_at: None,
                    finished_at: Timestamp::now(),
                    container_id: Some(cid),
                }
            }
        };
        info!(container = %c.name, exit_code = exit.exit_code, "Container exited");
        ctx.container(kind, idx, |r| {
            r.state = RunState::Terminated(exit.clone());
            r.ready = false;
            r.started = false;
        });
        let restart = match kind {
            Kind::Init => exit.exit_code != 0 && policy != "Never",
            Kind::App => policy == "Always" || (policy == "OnFailure" && exit.exit_code != 0),
        };
        if !restart {
            return Outcome::Done(exit);
        }
        let ran_for =
            Duration::try_from(exit.finished_at.duration_since(started_at)).unwrap_or_default();
        let delay = ctx
            .shared
            .backoff
            .delay(u32::try_from(attempt).unwrap_or(0), ran_for);
        if !delay.is_zero() {
            let msg = format!(
                "back-off {delay:?} restarting failed container={} pod={}_{}({})",
                c.name, ctx.name, ctx.ns, ctx.uid
            );
            ctx.container(kind, idx, |r| {
                r.state = RunState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(msg),
                };
                r.last = Some(exit.clone());
            });
            if !sleep_or_stop(&ctx, delay).await {
                return Outcome::Stopped;
            }
        }
        prev = Some(exit);
        attempt += 1;
    }
}

/// Wait for the container to exit, feeding probe results into its status; stop it when the pod
/// stops or liveness fails. Returns (exit code, signal, stopped-by-the-pod).
#[allow(clippy::too_many_arguments)]
async fn supervise(
    ctx: &Arc<Ctx>,
    kind: Kind,
    idx: usize,
    mut child: Child,
    init_pid: u32,
    c: &Container,
    env: Vec<(String, String)>,
    ip: String,
    grace: Option<i64>,
) -> (i32, Option<i32>, bool) {
    let pid = child.id().unwrap_or(0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let probing = (kind == Kind::App).then(|| {
        let target = probes::Target {
            ip,
            pid: init_pid,
            env,
            nsenter: ctx.shared.isolate.then(|| ctx.shared.tools.nsenter.clone()),
            container: c.clone(),
        };
        tokio::spawn(probes::run(target, tx).in_current_span())
    });
    let mut stop_rx = ctx.stop_rx.clone();
    let pod_grace = Duration::from_secs(u64::try_from(grace.unwrap_or(30)).unwrap_or(0));
    let ((status, killed), stopped) = loop {
        tokio::select! {
            s = child.wait() => break ((s.ok(), false), false),
            s = wait_stop(&mut stop_rx) => {
                let deadline = match s { Stop::Graceful(d) => d, _ => Instant::now() };
                break (terminate(&mut child, init_pid, &mut stop_rx, deadline).await, true);
            }
            Some(r) = rx.recv() => match r {
                Report::Started => ctx.container(kind, idx, |r| r.started = true),
                Report::Ready(b) => ctx.container(kind, idx, |r| r.ready = b),
                Report::Unhealthy => {
                    info!(container = %c.name, "Liveness probe failed; restarting container");
                    let deadline = Instant::now() + pod_grace;
                    break (terminate(&mut child, init_pid, &mut stop_rx, deadline).await, false);
                }
            },
        }
    };
    if let Some(p) = probing {
        p.abort();
    }
    // With a PID namespace nothing outlives PID 1. Without one, whatever the main process left
    // behind in its group goes now (the group id stays reserved while members remain).
    if !ctx.shared.isolate {
        runtime::signal_group(pid, Signal::KILL);
    }
    use std::os::unix::process::ExitStatusExt;
    match status {
        // unshare (util-linux 2.38) exits 1 when its child was SIGKILLed; we sent that SIGKILL.
        Some(s) if killed && s.signal().is_none() => (137, Some(9), stopped),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, None, stopped),
            (None, Some(sig)) => (128 + sig, Some(sig), stopped),
            _ => (1, None, stopped),
        },
        None => (1, None, stopped),
    }
}

/// Stop a container as a runtime does: SIGTERM to its PID 1, SIGKILL at `deadline` (or at once on
/// `Stop::Kill`). Killing PID 1 of the container's PID namespace kills everything in it; `unshare`
/// then exits with PID 1's status. The process group is SIGKILLed as a last resort.
async fn terminate(
    child: &mut Child,
    init_pid: u32,
    stop_rx: &mut watch::Receiver<Stop>,
    deadline: Instant,
) -> (Option<std::process::ExitStatus>, bool) {
    if deadline > Instant::now() {
        runtime::signal_pid(init_pid, Signal::TERM);
        let killed = stop_rx.wait_for(|s| *s == Stop::Kill);
        tokio::select! {
            s = child.wait() => return (s.ok(), false),
            _ = tokio::time::sleep_until(deadline) => {}
            _ = killed => {}
        }
    }
    runtime::signal_pid(init_pid, Signal::KILL);
    if let Ok(s) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        return (s.ok(), true);
    }
    runtime::signal_group(child.id().unwrap_or(0), Signal::KILL);
    (child.wait().await.ok(), true)
}
