//! Shared fixtures: kube-sim with the kubelet simulator attached, the real `kubectl`, pod
//! builders and waiting helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube_sim::KubeSim;
use kubelet_sim::{Backoff, ImageMap, Kubelet, KubeletHandle};
use serde_json::{Value, json};

/// The host tools the faithful mode needs; a missing one fails the test loudly.
pub fn require_tools() {
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

static NEXT_NET: AtomicU8 = AtomicU8::new(180);

/// A kube-sim and a kubelet on node `sim-node`, with fast back-off and volume sync.
pub struct Env {
    pub sim: KubeSim,
    pub kubelet: Option<KubeletHandle>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub pods: Api<Pod>,
}

impl Env {
    pub async fn start() -> Env {
        Env::with(false, ImageMap::new()).await
    }

    pub async fn with(auth: bool, images: ImageMap) -> Env {
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
        sim.serve_pod_logs(kubelet.log_reader());
        let pods = Api::namespaced(sim.client(), "default");
        Env {
            sim,
            kubelet: Some(kubelet),
            dir,
            kubeconfig,
            pods,
        }
    }

    pub fn kubelet(&self) -> &KubeletHandle {
        self.kubelet.as_ref().expect("kubelet running")
    }

    pub async fn create(&self, pod: Value) -> Pod {
        let p: Pod = serde_json::from_value(pod).expect("pod json");
        self.pods
            .create(&PostParams::default(), &p)
            .await
            .expect("pod created")
    }

    /// Poll the pod until `ok` holds; panics with the last status after `timeout`.
    pub async fn wait(
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

    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let start = Instant::now();
        while self.pods.get_opt(name).await.expect("get pod").is_some() {
            assert!(
                start.elapsed() < timeout,
                "pod {name} still exists after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The real kubectl against the emulator, with a private discovery cache.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", self.dir.path().join("kcache"))
            .output()
            .await
            .expect("kubectl runs")
    }

    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
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

    pub async fn stop(mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
        self.sim.shutdown().await;
    }
}

/// A pod on `sim-node` with one `sh -c SCRIPT` container named `main`.
pub fn sh_pod(name: &str, script: &str) -> Value {
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

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn condition(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

pub fn waiting_reason(p: &Pod, container: &str) -> Option<String> {
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
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// Read a pid a container wrote into a host directory.
pub async fn read_pid(path: &Path, timeout: Duration) -> u32 {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(p) = s.trim().parse()
        {
            return p;
        }
        assert!(
            start.elapsed() < timeout,
            "{} not written after {timeout:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Host pids of live processes whose command line contains `marker` (containers have their own
/// PID namespace, so the tests find their processes from the host side).
pub fn pids_with(marker: &str) -> Vec<u32> {
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
pub async fn wait_pids(marker: &str, n: usize, timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let p = pids_with(marker);
        if p.len() >= n {
            return p;
        }
        assert!(
            start.elapsed() < timeout,
            "only {} processes with {marker:?} after {timeout:?}",
            p.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until no process carries `marker`.
pub async fn wait_no_pids(marker: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let p = pids_with(marker);
        if p.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "processes {p:?} with {marker:?} still alive after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
