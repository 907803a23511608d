//! Pods in kube-sim become real local processes: phases and conditions, per-pod IPs, volumes and
//! downward-API updates, restarts and back-off, in-cluster identity, graceful deletion.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    Env, alive, condition, phase, pids_with, sh_pod, wait_no_pids, wait_pids, waiting_reason,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kubelet_sim::ImageMap;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

// ---- lifecycle: phases, conditions, init order ----

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
    let app_at = {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(work.join("app"))
                && !s.trim().is_empty()
            {
                break s.trim().parse::<u128>().unwrap();
            }
            assert!(start.elapsed() < T, "app timestamp missing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
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

// ---- restarts ----

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

// ---- images and environment ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_map_to_programs_and_unknown_ones_fail_to_pull() {
    let env = Env::with(false, ImageMap::new().with("tool:*", "/bin/sh")).await;
    let mut mapped = sh_pod("mapped", "");
    mapped["spec"]["containers"][0] = json!({"name": "main", "image": "tool:1.2", "args": ["-c", "echo from-image-map; sleep 3600"]});
    env.create(mapped).await;
    let mut unknown = sh_pod("unknown", "");
    unknown["spec"]["containers"][0] = json!({"name": "main", "image": "registry.invalid/nope:1"});
    env.create(unknown).await;
    env.wait("mapped", T, "Running", |p| phase(p) == "Running")
        .await;
    let p = env
        .wait("unknown", T, "failing to pull", |p| {
            matches!(
                waiting_reason(p, "main").as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })
        .await;
    assert_eq!(phase(&p), "Pending");
    env.wait("unknown", T, "in ImagePullBackOff", |p| {
        waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
    })
    .await;
    let start = Instant::now();
    while env
        .kubelet()
        .logs("default", "mapped", "main", false)
        .unwrap_or_default()
        != "from-image-map\n"
    {
        assert!(start.elapsed() < T, "mapped program's output missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_volumes_come_from_the_downward_api_config_maps_and_secrets() {
    let env = Env::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.sim.client(), "default");
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "file.txt": "from-configmap"}})).unwrap()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.sim.client(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "data": {"password": "aHVudGVyMg=="}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let mut pod = sh_pod(
        "envy",
        "echo \"$NAME|$NS|$APP|$GREETING|$PASSWORD|$NODE|$SA|$COMBINED\"; cat /etc/cfg/file.txt; echo; cat /etc/creds/password; echo; sleep 3600",
    );
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "COMBINED", "value": "$(GREETING)-$(NAME)"},
    ]);
    pod["spec"]["automountServiceAccountToken"] = json!(false);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "creds", "mountPath": "/etc/creds", "readOnly": true}]);
    pod["spec"]["volumes"] = json!([{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "creds", "secret": {"secretName": "creds"}}]);
    env.create(pod).await;
    env.wait("envy", T, "Running", |p| phase(p) == "Running")
        .await;
    let start = Instant::now();
    let log = loop {
        let l = env
            .kubelet()
            .logs("default", "envy", "main", false)
            .unwrap_or_default();
        if l.matches('\n').count() >= 3 || start.elapsed() > T {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        log,
        "envy|default|envy|hello|hunter2|sim-node|default|hello-envy\nfrom-configmap\nhunter2\n"
    );
    // The host has none of the container's mount points.
    assert!(
        !std::path::Path::new("/etc/cfg").exists() && !std::path::Path::new("/etc/creds").exists()
    );
    env.stop().await;
}

// ---- network ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_listen_on_port_8080_each_on_its_own_ip_and_readiness_follows_the_server() {
    let env = Env::start().await;
    let serve = "mkdir -p /srv && echo \"$HOSTNAME\" > /srv/who && cd /srv && exec python3 -m http.server 8080 --bind \"$POD_IP\"";
    for name in ["web-a", "web-b"] {
        let mut p = sh_pod(name, serve);
        p["spec"]["containers"][0]["readinessProbe"] =
            json!({"httpGet": {"path": "/who", "port": 8080}, "periodSeconds": 1});
        env.create(p).await;
    }
    let mut ips = Vec::new();
    for name in ["web-a", "web-b"] {
        let p = env
            .wait(name, Duration::from_secs(40), "Ready", |p| {
                condition(p, "Ready").as_deref() == Some("True")
            })
            .await;
        ips.push((name, p.status.unwrap().pod_ip.unwrap()));
    }
    assert_ne!(ips[0].1, ips[1].1);
    for (name, ip) in &ips {
        let body = http_get(ip, 8080, "/who").await;
        assert_eq!(body.trim(), *name, "{ip}:8080 answers as its own pod");
    }
    // Each container wrote /srv/who into its own root overlay, not the host's.
    assert!(!std::path::Path::new("/srv/who").exists());
    env.stop().await;
}

async fn http_get(ip: &str, port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_exec_readiness_probe_flips_ready_and_kubectl_shows_it() {
    let env = Env::start().await;
    let ctl = env.dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    std::fs::write(ctl.join("ready"), "").unwrap();
    let mut p = sh_pod("flappy", "sleep 3600");
    p["spec"]["containers"][0]["readinessProbe"] = json!({"exec": {"command": ["test", "-f", "/ctl/ready"]}, "periodSeconds": 1, "failureThreshold": 1});
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "ctl", "mountPath": "/ctl"}]);
    p["spec"]["volumes"] =
        json!([{"name": "ctl", "hostPath": {"path": ctl.display().to_string()}}]);
    env.create(p).await;
    env.wait("flappy", T, "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert!(
        env.kubectl_ok(&["get", "pod", "flappy", "--no-headers"])
            .await
            .contains("1/1")
    );
    std::fs::remove_file(ctl.join("ready")).unwrap();
    let p = env
        .wait("flappy", T, "not Ready", |p| {
            condition(p, "Ready").as_deref() == Some("False")
        })
        .await;
    assert_eq!(phase(&p), "Running");
    assert_eq!(condition(&p, "ContainersReady").as_deref(), Some("False"));
    assert!(
        env.kubectl_ok(&["get", "pod", "flappy", "--no-headers"])
            .await
            .contains("0/1")
    );
    std::fs::write(ctl.join("ready"), "").unwrap();
    env.wait("flappy", T, "Ready again", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let env = Env::start().await;
    let ctl = env.dir.path().join("live");
    std::fs::create_dir_all(&ctl).unwrap();
    std::fs::write(ctl.join("alive"), "").unwrap();
    let mut p = sh_pod("livy", "sleep 3600");
    p["spec"]["terminationGracePeriodSeconds"] = json!(1);
    p["spec"]["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["test", "-f", "/ctl/alive"]}, "periodSeconds": 1, "failureThreshold": 1});
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "ctl", "mountPath": "/ctl"}]);
    p["spec"]["volumes"] =
        json!([{"name": "ctl", "hostPath": {"path": ctl.display().to_string()}}]);
    env.create(p).await;
    env.wait("livy", T, "Running", |p| phase(p) == "Running")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = env.pods.get("livy").await.unwrap();
    assert_eq!(
        p.status.unwrap().container_statuses.unwrap()[0].restart_count,
        0,
        "a passing liveness probe must not restart"
    );
    std::fs::remove_file(ctl.join("alive")).unwrap();
    let p = env
        .wait("livy", T, "restarted by its liveness probe", |p| {
            p.status
                .as_ref()
                .unwrap()
                .container_statuses
                .as_ref()
                .unwrap()[0]
                .restart_count
                >= 1
        })
        .await;
    let last = p.status.unwrap().container_statuses.unwrap()[0]
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert!(
        last.exit_code == 143 || last.exit_code == 137,
        "killed by a signal: {last:?}"
    );
    env.stop().await;
}

// ---- downward API ----

fn annotated_pod(name: &str, script: &str) -> serde_json::Value {
    let mut p = sh_pod(name, script);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "podinfo", "mountPath": "/etc/podinfo"}, {"name": "out", "mountPath": "/out"}]);
    p["spec"]["volumes"] = json!([
        {"name": "podinfo", "downwardAPI": {"items": [
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        {"name": "out", "emptyDir": {}},
    ]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_downward_api_file_updates_within_a_second_of_kubectl_annotate() {
    let env = Env::start().await;
    // The container copies what it sees at /etc/podinfo into an emptyDir every 50 ms.
    let script = "while :; do cat /etc/podinfo/annotations > /out/seen.tmp && mv /out/seen.tmp /out/seen; sleep 0.05; done";
    env.create(annotated_pod("annotated", script)).await;
    env.wait("annotated", T, "Running", |p| phase(p) == "Running")
        .await;
    let out = env
        .kubelet()
        .volume_path("default", "annotated", "out")
        .unwrap();
    let podinfo = env
        .kubelet()
        .volume_path("default", "annotated", "podinfo")
        .unwrap();
    // The kubelet's AtomicWriter layout.
    assert_eq!(
        std::fs::read_link(podinfo.join("annotations")).unwrap(),
        std::path::Path::new("..data/annotations")
    );
    let data = std::fs::read_link(podinfo.join("..data")).unwrap();
    assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
    assert_eq!(
        std::fs::read_to_string(podinfo.join("labels")).unwrap(),
        "app=\"annotated\""
    );

    env.kubectl_ok(&["annotate", "pod", "annotated", "example.com/version=v2"])
        .await;
    let start = Instant::now();
    loop {
        let seen = std::fs::read_to_string(out.join("seen")).unwrap_or_default();
        if seen.contains("example.com/version=\"v2\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "container still sees {seen:?} after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "annotation visible inside the container {:?} after kubectl annotate returned",
        start.elapsed()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_a_partial_downward_api_file_during_200_changes() {
    let env = Env::start().await;
    env.create(annotated_pod("swapped", "sleep 3600")).await;
    env.wait("swapped", T, "Running", |p| phase(p) == "Running")
        .await;
    let file = env
        .kubelet()
        .volume_path("default", "swapped", "podinfo")
        .unwrap()
        .join("annotations");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let padding = "x".repeat(256 * 1024);
    let reader = {
        let (stop, file, padding) = (stop.clone(), file.clone(), padding.clone());
        std::thread::spawn(move || {
            let (mut reads, mut versions) = (0u64, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let text =
                    std::fs::read_to_string(&file).expect("annotations readable at every instant");
                reads += 1;
                if text.is_empty() {
                    continue;
                }
                // A complete file: `counter="N"` then the whole padding line, nothing cut.
                let lines: BTreeMap<&str, &str> =
                    text.lines().filter_map(|l| l.split_once('=')).collect();
                assert_eq!(
                    lines.get("padding").copied(),
                    Some(format!("\"{padding}\"").as_str()),
                    "partial file after {reads} reads"
                );
                versions.insert(
                    lines["counter"]
                        .trim_matches('"')
                        .parse::<u32>()
                        .expect("counter"),
                );
            }
            (reads, versions)
        })
    };
    for i in 0..200u32 {
        let patch =
            json!({"metadata": {"annotations": {"counter": i.to_string(), "padding": padding}}});
        env.pods
            .patch("swapped", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let start = Instant::now();
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("counter=\"199\"")
    {
        assert!(start.elapsed() < T, "last annotation never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, versions) = reader.join().expect("reader saw only complete files");
    eprintln!("{reads} reads saw {} distinct versions", versions.len());
    assert!(
        versions.len() > 1 && reads > 200,
        "reads {reads}, versions {versions:?}"
    );
    env.stop().await;
}

// ---- identity ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_inside_a_pod_lists_pods_with_its_bound_service_account_token() {
    let env = Env::with(true, ImageMap::new()).await;
    let admin = env.sim.client();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lister"}})).unwrap(),
    )
    .await
    .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), "default");
    let rb = json!({"metadata": {"name": "lister-view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": "default"}]});
    rbs.create(&PostParams::default(), &serde_json::from_value(rb).unwrap())
        .await
        .unwrap();
    // No kubeconfig: kubectl falls back to the in-cluster config (env + mounted token and CA).
    let mut p = sh_pod(
        "lister",
        "ls /var/run/secrets/kubernetes.io/serviceaccount; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; kubectl get pods -o name",
    );
    p["spec"]["serviceAccountName"] = json!("lister");
    p["spec"]["restartPolicy"] = json!("Never");
    p["spec"]["containers"][0]["env"] = json!([{"name": "KUBECACHEDIR", "value": "/cache"}]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cache", "mountPath": "/cache"}]);
    p["spec"]["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
    env.create(p).await;
    let start = Instant::now();
    let log = loop {
        let done = env
            .pods
            .get("lister")
            .await
            .map(|p| phase(&p) == "Succeeded" || phase(&p) == "Failed")
            .unwrap_or(false);
        if done {
            break env
                .kubelet()
                .logs("default", "lister", "main", false)
                .unwrap_or_default();
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "kubectl in the pod did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = env.pods.get("lister").await.unwrap();
    assert_eq!(phase(&p), "Succeeded", "in-pod kubectl output:\n{log}");
    assert_eq!(log, "ca.crt\nnamespace\ntoken\ndefault\npod/lister\n");

    // The mounted token is bound to this pod: TokenReview names it.
    let token = std::fs::read_to_string(
        env.kubelet()
            .volume_path("default", "lister", kubelet_sim::volumes::SA_VOLUME)
            .unwrap()
            .join("token"),
    )
    .unwrap();
    let reviews: Api<k8s_openapi::api::authentication::v1::TokenReview> = Api::all(admin);
    let review = serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})).unwrap();
    let r = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(r.authenticated, Some(true));
    let user = r.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:lister")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
        vec!["lister".to_string()]
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_kube_client_in_a_pod_lists_pods_over_https() {
    // The workload is a Rust program using kube::Client::try_default(), started from the image map.
    let images = ImageMap::new().with("lister:*", env!("CARGO_BIN_EXE_in-cluster-list-pods"));
    let env = Env::with(true, images).await;
    let admin = env.sim.client();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
    )
    .await
    .ok();
    let rbs: Api<RoleBinding> = Api::namespaced(admin, "default");
    let rb = json!({"metadata": {"name": "default-view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]});
    rbs.create(&PostParams::default(), &serde_json::from_value(rb).unwrap())
        .await
        .unwrap();
    let mut p = sh_pod("rusty", "");
    p["spec"]["restartPolicy"] = json!("Never");
    p["spec"]["containers"][0] = json!({"name": "main", "image": "lister:1"});
    env.create(p).await;
    let p = env
        .wait("rusty", Duration::from_secs(40), "finished", |p| {
            phase(p) == "Succeeded" || phase(p) == "Failed"
        })
        .await;
    let log = env
        .kubelet()
        .logs("default", "rusty", "main", false)
        .unwrap_or_default();
    assert_eq!(phase(&p), "Succeeded", "in-pod kube client output:\n{log}");
    assert_eq!(log, "rusty\n");
    env.stop().await;
}

// ---- termination ----
// Containers have their own PID namespace, so the tests find their processes from the host by a
// marker in the command line.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_sends_sigterm_waits_for_exit_then_removes_it() {
    let env = Env::start().await;
    let host = env.dir.path().join("term");
    std::fs::create_dir_all(&host).unwrap();
    let script = ": marker-graceful; trap 'echo got-TERM > /data/term; exit 0' TERM; sleep 7301 & while :; do sleep 0.1; done";
    let mut p = sh_pod("graceful", script);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    p["spec"]["volumes"] =
        json!([{"name": "data", "hostPath": {"path": host.display().to_string()}}]);
    env.create(p).await;
    env.wait("graceful", T, "Running", |p| phase(p) == "Running")
        .await;
    let pids = wait_pids("marker-graceful", 2, T).await;
    wait_pids("sleep 7301", 1, T).await;
    let start = Instant::now();
    env.kubectl_ok(&["delete", "pod", "graceful", "--wait=false"])
        .await;
    env.wait_gone("graceful", T).await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "removed only after {:?}",
        start.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(host.join("term")).unwrap().trim(),
        "got-TERM"
    );
    for p in pids {
        assert!(!alive(p), "process {p} outlived its pod");
    }
    // Even the background child the script left behind is gone with the pod's PID namespace.
    assert!(pids_with("sleep 7301").is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_when_the_grace_period_ends() {
    let env = Env::start().await;
    let mut p = sh_pod(
        "stubborn",
        ": marker-stubborn; trap '' TERM; while :; do sleep 0.1; done",
    );
    p["spec"]["terminationGracePeriodSeconds"] = json!(2);
    env.create(p).await;
    env.wait("stubborn", T, "Running", |p| phase(p) == "Running")
        .await;
    wait_pids("marker-stubborn", 2, T).await;
    let start = Instant::now();
    env.pods
        .delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    // Terminating but still running during the grace period.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !pids_with("marker-stubborn").is_empty(),
        "killed before the grace period ended"
    );
    assert!(
        env.pods
            .get_opt("stubborn")
            .await
            .unwrap()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    );
    env.wait_gone("stubborn", T).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "removed after {took:?}"
    );
    assert!(pids_with("marker-stubborn").is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_kubelet_down_leaves_no_process_and_no_mount() {
    let mut env = Env::start().await;
    for i in 0..3 {
        env.create(sh_pod(
            &format!("p{i}"),
            ": marker-shutdown; sleep 7302 & wait",
        ))
        .await;
    }
    wait_pids("marker-shutdown", 6, T).await;
    wait_pids("sleep 7302", 3, T).await;
    let state = env.kubelet().state_dir().to_path_buf();
    env.kubelet.take().unwrap().shutdown().await;
    assert!(
        pids_with("marker-shutdown").is_empty() && pids_with("sleep 7302").is_empty(),
        "processes outlived the kubelet"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&state.display().to_string()),
        "a container mount leaked into the host namespace"
    );
    env.stop().await;
}

/// Set by the parent test in the child process it kills.
const CHILD_MARKER: &str = "KUBELET_SIM_TEST_MARKER";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_simulator_leaves_no_container_process() {
    common::require_tools();
    let marker = format!("73{:05}", std::process::id() % 100_000);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "simulator_process_for_the_kill_test",
            "--nocapture",
        ])
        .env(CHILD_MARKER, &marker)
        .kill_on_drop(true)
        .spawn()
        .expect("test binary re-runs itself");
    // Per pod: unshare, the container's shell, its background sleep.
    wait_pids(&marker, 6, Duration::from_secs(40)).await;
    child.kill().await.unwrap();
    wait_no_pids(&marker, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: the process a_killed_simulator_leaves_no_container_process starts and SIGKILLs"]
async fn simulator_process_for_the_kill_test() {
    let Ok(marker) = std::env::var(CHILD_MARKER) else {
        return;
    };
    let env = Env::start().await;
    for i in 0..2 {
        env.create(sh_pod(&format!("k{i}"), &format!("sleep {marker} & wait")))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    env.stop().await;
}

// ---- scale (a measurement, not a timed test) ----

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test -p kubelet-sim --test pods -- --ignored --nocapture two_hundred"]
async fn two_hundred_pods_running_real_processes() {
    let env = Env::start().await;
    let host = env.dir.path().join("pids");
    std::fs::create_dir_all(&host).unwrap();
    let n = 200;
    let start = Instant::now();
    for i in 0..n {
        let mut p = annotated_pod(
            &format!("scale-{i}"),
            &format!("touch /pids/{i}; exec sleep 7303"),
        );
        p["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "pids", "mountPath": "/pids"}));
        p["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "pids", "hostPath": {"path": host.display().to_string()}}));
        p["spec"]["containers"][0]["readinessProbe"] =
            json!({"exec": {"command": ["test", "-f", format!("/pids/{i}")]}, "periodSeconds": 1});
        env.create(p).await;
    }
    let created = start.elapsed();
    for i in 0..n {
        env.wait(
            &format!("scale-{i}"),
            Duration::from_secs(300),
            "Ready",
            |p| condition(p, "Ready").as_deref() == Some("True"),
        )
        .await;
    }
    let ready = start.elapsed();
    let comm = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let ours = pids_with("sleep 7303");
    let programs: u64 = ours
        .iter()
        .filter(|p| comm(p) == "sleep")
        .map(|p| rss_kib(&p.to_string()))
        .sum();
    let wrappers: u64 = ours
        .iter()
        .filter(|p| comm(p) == "unshare")
        .map(|p| rss_kib(&p.to_string()))
        .sum();
    let me = rss_kib("self");
    eprintln!(
        "{n} pods: created in {created:?}, all Ready after {ready:?}; RSS: kube-sim + kubelet-sim process {} MiB, \
         container programs {} MiB, per-container unshare wrappers {} MiB",
        me / 1024,
        programs / 1024,
        wrappers / 1024
    );
    env.stop().await;
}
