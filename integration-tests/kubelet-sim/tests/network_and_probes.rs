//! Per-pod IPs and probes: two servers on the same port on their own IPs with HTTP readiness,
//! an exec readiness probe flipping Ready, a liveness probe restarting the container.

mod common;

use std::time::Duration;

use autocrane_test_support::eventually;
use common::{Env, T, condition, phase, sh_pod};
use serde_json::json;

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
    // The probe leaves a line per run in /ctl/probes, so the test can wait for runs.
    p["spec"]["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["sh", "-c", "echo >> /ctl/probes; test -f /ctl/alive"]}, "periodSeconds": 1, "failureThreshold": 1});
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "ctl", "mountPath": "/ctl"}]);
    p["spec"]["volumes"] =
        json!([{"name": "ctl", "hostPath": {"path": ctl.display().to_string()}}]);
    env.create(p).await;
    env.wait("livy", T, "Running", |p| phase(p) == "Running")
        .await;
    eventually(T, "two passing liveness probes", || async {
        std::fs::read_to_string(ctl.join("probes")).is_ok_and(|p| p.lines().count() >= 2)
    })
    .await;
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
