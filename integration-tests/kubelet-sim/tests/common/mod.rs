//! Shared fixtures: kube-sim with the kubelet simulator attached, the real `kubectl`, pod
//! builders and waiting helpers (on conditions, through the workspace harness's `eventually`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use autocrane_test_support::eventually;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube_sim::KubeSim;
use kubelet_sim::{Backoff, ImageMap, Kubelet, KubeletHandle};
use serde_json::{Value, json};

/// The host tools the faithful mode needs; a missing one fails the test loudly.
pub(crate) fn require_tools() {
    for t in [
        "kubectl", "unshare", "mount", "chroot", "setpriv", "nsenter", "sh",
    ] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|d| Path::new(d).join(t).is_file());
        assert!(
            found,
            "required tool `{t}` is not installed: these tests need it (see integration-tests/kubelet-sim/README.md)"
        );
    }
    assert!(
        rustix::process::getuid().is_root(),
        "these tests need root: containers get private mount namespaces (see README)"
    );
}

/// The deadline of a wait: generous, since how fast things happen is the bench's business.
pub(crate) const T: Duration = Duration::from_secs(30);

static NEXT_NET: AtomicU8 = AtomicU8::new(180);

/// A kube-sim and a kubelet on node `sim-node`, with fast back-off and volume sync.
pub(crate) struct Env {
    pub sim: KubeSim,
    pub kubelet: Option<KubeletHandle>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub pods: Api<Pod>,
}

impl Env {
    pub(crate) async fn start() -> Env {
        Env::with(false, ImageMap::new()).await
    }

    pub(crate) async fn with(auth: bool, images: ImageMap) -> Env {
        require_tools();
        let sim = KubeSim::builder()
            .auth(auth)
            .kubelet_delay(None)
            .start()
            .await
            .expect("kube-sim starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig)
            .expect("kubeconfig written");
        let kubelet = Kubelet::builder(sim.client())
            .node_name("sim-node")
            .image_map(images)
            .state_dir(dir.path().join("kubelet"))
            .api_server(sim.https_url(), sim.ca_pem())
            .backoff(Backoff {
                base: Duration::from_millis(300),
                max: Duration::from_secs(3),
            })
            .sync_period(Duration::from_secs(1))
            .pod_network(NEXT_NET.fetch_add(1, Ordering::SeqCst))
            .start()
            .await
            .expect("kubelet starts");
        let logs = kubelet.log_reader();
        sim.serve_pod_logs(
            move |ns: &str, pod: &str, container: &str, previous: bool| {
                logs.read(ns, pod, container, previous)
            },
        );
        let pods = Api::namespaced(sim.client(), "default");
        Env {
            sim,
            kubelet: Some(kubelet),
            dir,
            kubeconfig,
            pods,
        }
    }

    pub(crate) fn kubelet(&self) -> &KubeletHandle {
        self.kubelet.as_ref().expect("kubelet running")
    }

    pub(crate) async fn create(&self, pod: Value) -> Pod {
        let p: Pod = serde_json::from_value(pod).expect("pod json");
        self.pods
            .create(&PostParams::default(), &p)
            .await
            .expect("pod created")
    }

    /// Poll the pod until `ok` holds; panics with the last status after `timeout`.
    pub(crate) async fn wait(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let start = Instant::now();
        loop {
            let p = self.pods.get_opt(name).await.expect("get pod");
            if let Some(p) = &p
                && ok(p)
            {
                return p.clone();
            }
            if start.elapsed() > timeout {
                panic!(
                    "pod {name}: not {what} after {timeout:?}; last: {}",
                    serde_json::to_string_pretty(&p.map(|p| p.status)).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn wait_gone(&self, name: &str, timeout: Duration) {
        eventually(timeout, &format!("pod {name} to be gone"), || async {
            self.pods.get_opt(name).await.expect("get pod").is_none()
        })
        .await;
    }

    /// The real kubectl against the emulator, with a private discovery cache.
    pub(crate) async fn kubectl(&self, args: &[&str]) -> Output {
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", self.dir.path().join("kcache"))
            .output()
            .await
            .expect("kubectl runs")
    }

    pub(crate) async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
        self.sim.shutdown().await;
    }
}

/// A pod on `sim-node` with one `sh -c SCRIPT` container named `main`.
pub(crate) fn sh_pod(name: &str, script: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": "sim-node",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}],
        }
    })
}

pub(crate) fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub(crate) fn condition(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

pub(crate) fn waiting_reason(p: &Pod, container: &str) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

/// Whether a process with this pid is alive (zombies count as gone).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// Read a pid a container wrote into a host directory.
pub(crate) async fn read_pid(path: &Path, timeout: Duration) -> u32 {
    eventually(timeout, &format!("a pid in {}", path.display()), || async {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await
}

/// Host pids of live processes whose command line contains `marker` (containers have their own
/// PID namespace, so the tests find their processes from the host side).
pub(crate) fn pids_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
        })
        .collect()
}

/// Wait until at least `n` processes carry `marker`.
pub(crate) async fn wait_pids(marker: &str, n: usize, timeout: Duration) -> Vec<u32> {
    let what = format!("{n} processes with {marker:?}");
    eventually(timeout, &what, || async {
        Some(pids_with(marker)).filter(|p| p.len() >= n)
    })
    .await
}

/// Wait until no process carries `marker`.
pub(crate) async fn wait_no_pids(marker: &str, timeout: Duration) {
    let what = format!("no process with {marker:?}");
    eventually(timeout, &what, || async { pids_with(marker).is_empty() }).await;
}

/// A pod whose `/etc/podinfo` is a downward-API volume of its annotations and labels, with an
/// emptyDir at `/out`.
pub(crate) fn annotated_pod(name: &str, script: &str) -> serde_json::Value {
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
