//! Pod conditions the kubelet does not own, as a real kubelet treats them: a condition another
//! writer set through `pods/status` (the WatchdogListener's `autocrane.io/healthy`) survives every
//! status write of the simulator, and `spec.readinessGates` keep `Ready` False (reason
//! `ReadinessGatesNotReady`) until every gate's condition is `True`, following it both ways.

mod common;

use common::{Env, T, condition, phase, sh_pod};
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// Sets condition `ty` through `pods/status` the way the WatchdogListener does: a strategic-merge
/// patch of one `conditions` element (merged by `type`).
async fn set_condition(env: &Env, pod: &str, ty: &str, status: &str, reason: &str) -> Pod {
    let patch = json!({"status": {"conditions": [{
        "type": ty, "status": status, "reason": reason,
        "message": format!("set by the test: {status}"),
        "lastTransitionTime": "2026-01-02T03:04:05Z",
    }]}});
    env.pods
        .patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Strategic::<serde_json::Value>(patch),
        )
        .await
        .expect("pods/status patched")
}

fn find(p: &Pod, ty: &str) -> Option<PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .cloned()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_of_another_writer_survives_start_readiness_changes_and_restarts() {
    let env = Env::start().await;
    let ctl = env.dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    // The init container waits for `go`, so the foreign condition is in place before the kubelet
    // reports the start; the app exits once when `exit` appears; readiness follows `ready`.
    let mut p = sh_pod(
        "shared",
        "until [ -f /ctl/exit ]; do sleep 0.1; done; rm /ctl/exit; exit 3",
    );
    p["spec"]["initContainers"] = json!([{"name": "gate", "image": "busybox",
        "command": ["sh", "-c", "until [ -f /ctl/go ]; do sleep 0.1; done"],
        "volumeMounts": [{"name": "ctl", "mountPath": "/ctl"}]}]);
    p["spec"]["containers"][0]["readinessProbe"] = json!({"exec": {"command": ["test", "-f", "/ctl/ready"]}, "periodSeconds": 1, "failureThreshold": 1});
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "ctl", "mountPath": "/ctl"}]);
    p["spec"]["volumes"] =
        json!([{"name": "ctl", "hostPath": {"path": ctl.display().to_string()}}]);
    env.create(p).await;
    env.wait("shared", T, "initializing", |p| {
        condition(p, "Initialized").as_deref() == Some("False")
            && condition(p, "PodReadyToStartContainers").as_deref() == Some("True")
    })
    .await;

    let set = set_condition(&env, "shared", "autocrane.io/healthy", "True", "Elsewhere").await;
    let foreign = find(&set, "autocrane.io/healthy").expect("the condition was set");
    let kept = |p: &Pod| find(p, "autocrane.io/healthy").as_ref() == Some(&foreign);

    // Pod start: init done, the app running (not yet ready).
    std::fs::write(ctl.join("go"), "").unwrap();
    let p = env
        .wait("shared", T, "Running", |p| {
            phase(p) == "Running" && condition(p, "Initialized").as_deref() == Some("True")
        })
        .await;
    assert!(kept(&p), "lost at the start: {:?}", p.status);
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));

    // Readiness changes both ways.
    std::fs::write(ctl.join("ready"), "").unwrap();
    let p = env
        .wait("shared", T, "Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert!(kept(&p), "lost when Ready: {:?}", p.status);
    std::fs::remove_file(ctl.join("ready")).unwrap();
    let p = env
        .wait("shared", T, "not Ready", |p| {
            condition(p, "Ready").as_deref() == Some("False")
        })
        .await;
    assert!(kept(&p), "lost when not Ready: {:?}", p.status);

    // A restart: the exit, the back-off, the new run.
    std::fs::write(ctl.join("ready"), "").unwrap();
    std::fs::write(ctl.join("exit"), "").unwrap();
    let p = env
        .wait("shared", T, "restarted and Ready", |p| {
            restarts(p) == 1 && condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert!(kept(&p), "lost across the restart: {:?}", p.status);
    // The kubelet's own conditions are there once each, beside the foreign one.
    let types: Vec<String> = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    for ty in [
        "autocrane.io/healthy",
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ] {
        assert_eq!(
            types.iter().filter(|t| *t == ty).count(),
            1,
            "{ty} in {types:?}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_hold_ready_until_their_condition_is_true_and_follow_it() {
    let env = Env::start().await;
    let mut p = sh_pod("gated", "sleep 3600");
    p["spec"]["readinessGates"] = json!([{"conditionType": "example.com/gate"}]);
    env.create(p).await;

    // Containers ready, the gate's condition absent: not Ready, in the kubelet's words.
    let p = env
        .wait("gated", T, "ContainersReady", |p| {
            condition(p, "ContainersReady").as_deref() == Some("True")
        })
        .await;
    assert_eq!(phase(&p), "Running");
    let ready = find(&p, "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("corresponding condition of pod readiness gate \"example.com/gate\" does not exist.")
    );

    // Another writer sets the gate's condition True: Ready.
    set_condition(&env, "gated", "example.com/gate", "True", "Passed").await;
    let p = env
        .wait("gated", T, "Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert_eq!(find(&p, "Ready").unwrap().reason, None);
    assert_eq!(
        find(&p, "example.com/gate").unwrap().reason.as_deref(),
        Some("Passed")
    );

    // Flipped False: not Ready again, the containers still ready.
    set_condition(&env, "gated", "example.com/gate", "False", "Failed").await;
    let p = env
        .wait("gated", T, "not Ready", |p| {
            condition(p, "Ready").as_deref() == Some("False")
        })
        .await;
    let ready = find(&p, "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("the status of pod readiness gate \"example.com/gate\" is not \"True\", but False")
    );
    assert_eq!(condition(&p, "ContainersReady").as_deref(), Some("True"));
    assert_eq!(
        find(&p, "example.com/gate").unwrap().reason.as_deref(),
        Some("Failed")
    );

    // And back.
    set_condition(&env, "gated", "example.com/gate", "True", "Passed").await;
    env.wait("gated", T, "Ready again", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    env.stop().await;
}
