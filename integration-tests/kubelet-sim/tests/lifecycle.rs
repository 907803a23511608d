//! A pod's life as the kubelet reports it: init containers in order and their back-off,
//! phases and conditions, `restartPolicy: Never` ending in Succeeded/Failed, and binding a pod
//! without a node through `pods/binding`.

mod common;

use autocrane_test_support::eventually;
use common::{Env, T, condition, phase, sh_pod, waiting_reason};
use kube::api::PostParams;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_container_runs_to_completion_before_the_app_and_conditions_follow() {
    let env = Env::start().await;
    let mut pod = sh_pod("ordered", "date +%s%N > /work/app; sleep 3600");
    pod["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox", "command": ["sh", "-c", "sleep 1; date +%s%N > /work/init"],
                                            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    pod["spec"]["volumes"] = json!([{"name": "work", "emptyDir": {}}]);
    env.create(pod).await;

    let pending = env
        .wait("ordered", T, "initializing", |p| {
            waiting_reason(p, "main").as_deref() == Some("PodInitializing")
        })
        .await;
    assert_eq!(phase(&pending), "Pending");
    assert_eq!(condition(&pending, "Initialized").as_deref(), Some("False"));
    assert_eq!(condition(&pending, "Ready").as_deref(), Some("False"));
    assert_eq!(condition(&pending, "PodScheduled").as_deref(), Some("True"));
    let init_msg = pending
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Initialized")
        .unwrap()
        .message
        .clone();
    assert_eq!(
        init_msg.as_deref(),
        Some("containers with incomplete status: [setup]")
    );

    let running = env
        .wait("ordered", T, "Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let st = running.status.clone().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    for ty in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        let c = st
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == ty)
            .unwrap_or_else(|| panic!("condition {ty}"));
        assert_eq!(c.status, "True", "{ty}");
        assert!(
            c.last_transition_time.is_some(),
            "{ty} has lastTransitionTime"
        );
    }
    let init = &st.init_container_statuses.as_ref().unwrap()[0];
    let done = init
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .expect("init terminated");
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );
    let app = &st.container_statuses.as_ref().unwrap()[0];
    assert!(app.ready && app.state.as_ref().unwrap().running.is_some());
    assert!(
        st.pod_ip.as_deref().unwrap().starts_with("127."),
        "{:?}",
        st.pod_ip
    );
    assert!(st.start_time.is_some());

    // The processes' own timestamps: the app started after the init container finished.
    let work = env
        .kubelet()
        .volume_path("default", "ordered", "work")
        .unwrap();
    let read = |f: &str| {
        std::fs::read_to_string(work.join(f))
            .unwrap()
            .trim()
            .parse::<u128>()
            .unwrap()
    };
    let app_at = eventually(T, "the app's timestamp", || async {
        std::fs::read_to_string(work.join("app"))
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<u128>().unwrap())
    })
    .await;
    assert!(
        read("init") < app_at,
        "init {} must finish before app {}",
        read("init"),
        app_at
    );
    let table = env
        .kubectl_ok(&["get", "pod", "ordered", "--no-headers"])
        .await;
    assert!(
        table.contains("1/1") && table.contains("Running"),
        "{table}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_init_container_is_retried_with_back_off_and_blocks_the_app() {
    let env = Env::start().await;
    let mut pod = sh_pod("init-fails", "sleep 3600");
    pod["spec"]["initContainers"] =
        json!([{"name": "setup", "image": "busybox", "command": ["sh", "-c", "exit 7"]}]);
    env.create(pod).await;
    let p = env
        .wait("init-fails", T, "in Init:CrashLoopBackOff", |p| {
            let init = p
                .status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .and_then(|s| s.first().cloned());
            init.is_some_and(|i| {
                i.restart_count >= 1
                    && i.state
                        .and_then(|s| s.waiting)
                        .and_then(|w| w.reason)
                        .as_deref()
                        == Some("CrashLoopBackOff")
            })
        })
        .await;
    assert_eq!(phase(&p), "Pending");
    let init = &p
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    let last = init
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (7, Some("Error")));
    assert_eq!(
        waiting_reason(&p, "main").as_deref(),
        Some("PodInitializing")
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_never_ends_in_succeeded_or_failed() {
    let env = Env::start().await;
    let mut ok = sh_pod("ok", "exit 0");
    ok["spec"]["restartPolicy"] = json!("Never");
    let mut bad = sh_pod("bad", "exit 4");
    bad["spec"]["restartPolicy"] = json!("Never");
    env.create(ok).await;
    env.create(bad).await;
    let ok = env
        .wait("ok", T, "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    assert_eq!(condition(&ok, "Ready").as_deref(), Some("False"));
    let bad = env.wait("bad", T, "Failed", |p| phase(p) == "Failed").await;
    let t = bad.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.exit_code, 4);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_a_node_is_bound_through_pods_binding_and_runs() {
    let env = Env::start().await;
    let mut unscheduled = sh_pod("floating", "sleep 3600");
    unscheduled["spec"]
        .as_object_mut()
        .unwrap()
        .remove("nodeName");
    env.create(unscheduled).await;
    let p = env
        .wait("floating", T, "bound and Running", |p| {
            phase(p) == "Running"
        })
        .await;
    assert_eq!(
        p.spec.as_ref().unwrap().node_name.as_deref(),
        Some("sim-node")
    );
    assert_eq!(condition(&p, "PodScheduled").as_deref(), Some("True"));
    // A second binding is refused as the API server refuses it.
    let again = env
        .pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "floating",
            &PostParams::default(),
            &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "floating"},
                    "target": {"kind": "Node", "name": "other-node"}}),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = again else {
        panic!("{again:?}")
    };
    assert_eq!(status.code, 409);
    assert!(
        status
            .message
            .contains("pod floating is already assigned to node \"sim-node\""),
        "{}",
        status.message
    );
    env.stop().await;
}
