//! Helpers shared by the kube-sim integration tests: a started simulator with a kubeconfig,
//! running the real `kubectl` against it, and the AutoCraneDeployment CRD.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::CustomResourceExt;
use kube_sim::KubeSim;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A started simulator, a kubeconfig for it and a private kubectl cache directory.
pub(crate) struct Env {
    pub sim: KubeSim,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Env {
    pub(crate) async fn start(auth: bool) -> Env {
        let sim = KubeSim::builder()
            .auth(auth)
            .bookmark_interval(std::time::Duration::from_millis(500))
            .start()
            .await
            .expect("kube-sim starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig)
            .expect("kubeconfig written");
        Env {
            sim,
            dir,
            kubeconfig,
        }
    }

    /// Write a file into the temp dir.
    pub(crate) fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// Run kubectl with this kubeconfig and a fresh discovery cache per call site.
    pub(crate) async fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_at(&self.kubeconfig, self.dir.path(), args, None).await
    }

    /// Run kubectl as a given user token.
    pub(crate) async fn kubectl_as(&self, token: &str, args: &[&str]) -> Output {
        kubectl_at(&self.kubeconfig, self.dir.path(), args, Some(token)).await
    }

    /// Run kubectl and require success; returns stdout.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\nstdout: {so}\nstderr: {se}",
            args.join(" "),
            out.status
        );
        so
    }

    /// Run kubectl and require failure; returns stdout + stderr.
    pub(crate) async fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "kubectl {} unexpectedly succeeded:\n{text}",
            args.join(" ")
        );
        text
    }
}

/// The kubectl binary; panics (never skips) when it is missing.
pub(crate) fn kubectl_bin() -> PathBuf {
    let p = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
    assert!(
        p.exists(),
        "kubectl not found at {} (set KUBECTL): these tests need the real kubectl",
        p.display()
    );
    p
}

pub(crate) async fn kubectl_at(
    kubeconfig: &Path,
    dir: &Path,
    args: &[&str],
    token: Option<&str>,
) -> Output {
    let cache = tempfile::tempdir_in(dir).expect("cache dir");
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache.path());
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    cmd.args(args)
        .env("KUBECACHEDIR", cache.path())
        .env("HOME", dir)
        .env_remove("KUBECONFIG");
    tokio::task::spawn_blocking(move || {
        let o = cmd.output();
        drop(cache);
        o
    })
    .await
    .expect("join")
    .expect("kubectl runs")
}

/// The AutoCraneDeployment CRD as YAML.
pub(crate) fn crd_yaml() -> String {
    serde_saphyr::to_string(&autocrane_api::crd::AutoCraneDeployment::crd()).expect("crd yaml")
}

/// A valid AutoCraneDeployment.
pub(crate) fn acd_yaml(name: &str, ns: &str, replicas: i64) -> String {
    format!(
        r#"apiVersion: autocrane.io/v1alpha1
kind: AutoCraneDeployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  version:
    pinned: "1.0.0"
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
      - name: app
        image: example.invalid/web:1.0.0
"#
    )
}

/// A pod manifest.
pub(crate) fn pod_yaml(name: &str, ns: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  nodeName: node-1
  containers:
  - name: app
    image: example.invalid/web:1.0.0
    env:
    - name: A
      value: "1"
"#
    )
}

/// A ConfigMap `name` with `labels` and one key.
pub(crate) fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    c
}

/// The Status of an API error (panics on any other error).
pub(crate) fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

/// Raw HTTP/1.1 request on the plain listener; returns (status line + headers, body).
pub(crate) async fn raw(sim: &KubeSim, method: &str, path: &str, body: &str) -> (String, String) {
    raw_accept(sim, method, path, body, "application/json").await
}

/// [`raw`] with an `Accept` header.
pub(crate) async fn raw_accept(
    sim: &KubeSim,
    method: &str,
    path: &str,
    body: &str,
    accept: &str,
) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}
