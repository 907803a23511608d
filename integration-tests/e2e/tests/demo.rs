//! The README's main job, `scripts/demo.sh`, runs to the end on this machine and shows what it
//! promises: the CRD installed and nonsense refused, a pod running as a real process (kube-sim
//! with `--kubelet`), the prober's watchdog, the rollup label following posts and a TTL, and the
//! pod's own output through `kubectl logs`.

use std::process::Command;

use autocrane_test_support::{autocrane_bin, run, workspace_root};

#[test]
fn the_playground_demo_shows_the_rollup_following_watchdogs() {
    // The workspace build (which has kube-sim too), not a second build with other features.
    let bin_dir = autocrane_bin().parent().expect("target dir").to_path_buf();
    let (ok, out, err) = run(Command::new("bash")
        .arg(workspace_root().join("scripts/demo.sh"))
        .env("DEMO_BIN_DIR", bin_dir)
        .env("NO_COLOR", "1"));
    assert!(ok, "scripts/demo.sh failed:\n{out}\n{err}");
    for expected in [
        "customresourcedefinition.apiextensions.k8s.io/autocranedeployments.autocrane.io created",
        "autocranedeployment.autocrane.io/web created",
        "spec.replicas",
        "pod/web-0 condition met",
        "autocrane.watchdog.v1.WatchdogListener",
        "GET http://127.",
        "health=error",
        "health=warning",
        "\"health\": \"HEALTH_INFO\"",
        "\"GET / HTTP/1.1\" 200",
    ] {
        assert!(
            out.contains(expected),
            "the demo did not show {expected:?}:\n{out}\n{err}"
        );
    }
    // The label column as kubectl prints it, in the order the demo changes it.
    let labels: Vec<&str> = out
        .lines()
        .filter(|line| line.starts_with("web-0 "))
        .filter_map(|line| line.split_whitespace().last())
        .collect();
    assert!(
        labels
            .windows(4)
            .any(|w| w == ["info", "error", "warning", "info"]),
        "rollup sequence {labels:?}"
    );
}
