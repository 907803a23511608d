//! Scale, a measurement rather than a timed test (ignored by default): 200 pods running real
//! processes, with the time to Ready and the memory they take.

mod common;

use std::time::{Duration, Instant};

use common::{Env, annotated_pod, condition, pids_with};
use serde_json::json;

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
