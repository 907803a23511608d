//! kubelet-sim benchmark (not a timed test): how long the simulator takes for what the tests
//! only wait for — a pod from create to Running, a `kubectl annotate` until the container sees
//! it in its downward-API file, a graceful deletion (SIGTERM handled) until the pod is gone.
//! Each is sampled several times; min / median / max are printed. Needs root and the tools the
//! tests need.
//!
//! Run: `cargo bench -p kubelet-sim --bench kubelet_sim_bench`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use autocrane_test_support::eventually;
use common::{Env, T, annotated_pod, phase, sh_pod};

const SAMPLES: usize = 8;

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<48} min {:>8.1?}  median {:>8.1?}  max {:>8.1?}  ({} samples)",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        samples.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = Env::start().await;

    let mut running = Vec::new();
    for i in 0..SAMPLES {
        let name = format!("start-{i}");
        let start = Instant::now();
        env.create(sh_pod(&name, "sleep 3600")).await;
        env.wait(&name, T, "Running", |p| phase(p) == "Running")
            .await;
        running.push(start.elapsed());
    }
    report("create → Running", running);

    // The container copies its annotations file into an emptyDir every 10 ms.
    let script = "while :; do cat /etc/podinfo/annotations > /out/seen.tmp && mv /out/seen.tmp /out/seen; sleep 0.01; done";
    env.create(annotated_pod("annotated", script)).await;
    env.wait("annotated", T, "Running", |p| phase(p) == "Running")
        .await;
    let out = env
        .kubelet()
        .volume_path("default", "annotated", "out")
        .expect("out volume");
    let mut annotate = Vec::new();
    for i in 0..SAMPLES {
        let value = format!("example.com/version=v{i}");
        let start = Instant::now();
        env.kubectl_ok(&["annotate", "--overwrite", "pod", "annotated", &value])
            .await;
        let want = format!("example.com/version=\"v{i}\"");
        eventually(T, "the container to see the annotation", || async {
            std::fs::read_to_string(out.join("seen")).is_ok_and(|s| s.contains(&want))
        })
        .await;
        annotate.push(start.elapsed());
    }
    report("kubectl annotate → visible in the container", annotate);

    let mut deletion = Vec::new();
    for i in 0..SAMPLES {
        let name = format!("term-{i}");
        env.create(sh_pod(
            &name,
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
        ))
        .await;
        env.wait(&name, T, "Running", |p| phase(p) == "Running")
            .await;
        let start = Instant::now();
        env.kubectl_ok(&["delete", "pod", &name, "--wait=false"])
            .await;
        env.wait_gone(&name, T).await;
        deletion.push(start.elapsed());
    }
    report("delete (SIGTERM handled) → pod gone", deletion);
    env.stop().await;
}
