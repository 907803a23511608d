//! A crashing container: restart counts, `lastState`, CrashLoopBackOff, and its logs —
//! current and previous run — through the kubelet handle and `kubectl logs`.

mod common;

use common::{Env, T, phase, sh_pod, waiting_reason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_container_shows_restarts_last_state_and_crash_loop_back_off() {
    let env = Env::start().await;
    env.create(sh_pod("crasher", "echo attempt at $(date +%s%N); exit 3"))
        .await;
    let p = env
        .wait("crasher", T, "in CrashLoopBackOff after 2 restarts", |p| {
            let cs = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|s| s.first().cloned());
            cs.is_some_and(|c| c.restart_count >= 2)
                && waiting_reason(p, "main").as_deref() == Some("CrashLoopBackOff")
        })
        .await;
    let cs = &p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .expect("lastState.terminated");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    assert!(!cs.ready);
    assert_eq!(phase(&p), "Running");
    let msg = cs
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(
        msg.contains("restarting failed container=main pod=crasher_default"),
        "{msg}"
    );
    let table = env
        .kubectl_ok(&["get", "pod", "crasher", "--no-headers"])
        .await;
    assert!(
        table.contains("CrashLoopBackOff") || table.contains("Error"),
        "{table}"
    );
    let prev = env
        .kubelet()
        .logs("default", "crasher", "main", true)
        .expect("previous log");
    assert!(prev.starts_with("attempt at "), "{prev:?}");
    // `kubectl logs` reads the same files through kube-sim's `pods/log`.
    let via_kubectl = env
        .kubectl_ok(&["logs", "crasher", "--previous", "--tail", "1"])
        .await;
    assert!(
        via_kubectl.starts_with("attempt at ") && via_kubectl.lines().count() == 1,
        "{via_kubectl:?}"
    );
    let wrong = env.kubectl(&["logs", "crasher", "-c", "nope"]).await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr)
            .contains("container nope is not valid for pod crasher"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    // Restart counts keep growing.
    let before = cs.restart_count;
    env.wait("crasher", T, "restarted again", |p| {
        p.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .restart_count
            > before
    })
    .await;
    env.stop().await;
}
