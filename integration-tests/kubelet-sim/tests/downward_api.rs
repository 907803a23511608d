//! Downward-API volumes: the kubelet's AtomicWriter layout, updates after `kubectl annotate`,
//! and readers never seeing a partial file while the annotations change.

mod common;

use std::collections::BTreeMap;

use autocrane_test_support::eventually;
use common::{Env, T, annotated_pod, phase};
use kube::api::{Patch, PatchParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_downward_api_file_updates_after_kubectl_annotate() {
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
    // How fast is the bench's business (benches/kubelet_sim_bench.rs): here, that it arrives.
    eventually(T, "the container to see the new annotation", || async {
        std::fs::read_to_string(out.join("seen"))
            .is_ok_and(|seen| seen.contains("example.com/version=\"v2\""))
    })
    .await;
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
        // Every 50 changes, let the file catch up, so the reader sees several versions.
        if i % 50 == 0 || i == 199 {
            let want = format!("counter=\"{i}\"");
            eventually(T, &format!("annotation {want} in the file"), || async {
                std::fs::read_to_string(&file).is_ok_and(|t| t.contains(&want))
            })
            .await;
        }
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
