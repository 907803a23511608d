//! Startup, readiness and liveness probes (`exec`, `httpGet`, `tcpSocket`) run against the pod IP
//! with the kubelet's semantics: `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//! `successThreshold`, `failureThreshold`; readiness and liveness start once the startup probe
//! has succeeded. `grpc` probes and `httpGet` with scheme HTTPS are not simulated and fail.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Where and how to probe one container run.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod IP.
    pub ip: String,
    /// The container's PID 1 as the host sees it (exec probes enter its namespaces and root).
    pub pid: u32,
    /// The container's environment (exec probes).
    pub env: Vec<(String, String)>,
    /// `nsenter` when containers have their own mount namespace.
    pub nsenter: Option<PathBuf>,
    /// The container spec (named ports).
    pub container: Container,
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
}

fn port(t: &Target, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => t
            .container
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// Run one probe once. True on success.
pub async fn check(p: &Probe, t: &Target) -> bool {
    let timeout = secs(p.timeout_seconds, 1).max(Duration::from_millis(100));
    let attempt = async {
        if let Some(e) = &p.exec {
            let cmd = e.command.clone().unwrap_or_default();
            let Some((prog, args)) = cmd.split_first() else {
                return false;
            };
            let mut c = match &t.nsenter {
                Some(ns) => {
                    let mut c = tokio::process::Command::new(ns);
                    c.arg("--target")
                        .arg(t.pid.to_string())
                        .args(["--mount", "--pid", "--root", "--wd", "--"])
                        .arg(prog)
                        .args(args);
                    c
                }
                None => {
                    let mut c = tokio::process::Command::new(prog);
                    c.args(args);
                    c
                }
            };
            c.env_clear()
                .envs(t.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            return c.status().await.is_ok_and(|s| s.success());
        }
        if let Some(h) = &p.http_get {
            if h.scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"))
            {
                return false;
            }
            let Some(port) = port(t, &h.port) else {
                return false;
            };
            let host = h.host.clone().unwrap_or_else(|| t.ip.clone());
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            return http_get(
                &host,
                port,
                &path,
                h.http_headers
                    .iter()
                    .flatten()
                    .map(|x| (x.name.as_str(), x.value.as_str())),
            )
            .await
            .is_some_and(|code| (200..400).contains(&code));
        }
        if let Some(s) = &p.tcp_socket {
            let Some(port) = port(t, &s.port) else {
                return false;
            };
            let host = s.host.clone().unwrap_or_else(|| t.ip.clone());
            return TcpStream::connect((host.as_str(), port)).await.is_ok();
        }
        false
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn http_get<'a>(
    host: &str,
    port: u16,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<u16> {
    let mut s = TcpStream::connect((host, port)).await.ok()?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.ok()?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the probes report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The startup probe succeeded (or there is none).
    Started,
    /// Readiness changed.
    Ready(bool),
    /// Liveness (or startup) failed `failureThreshold` times: restart the container.
    Unhealthy,
}

/// Run the container's probes until the receiver is dropped. Without a readiness probe the
/// container is reported ready as soon as it has started.
pub async fn run(t: Target, tx: mpsc::UnboundedSender<Report>) {
    let c = t.container.clone();
    if let Some(p) = &c.startup_probe
        && !until(p, &t, true).await
    {
        let _ = tx.send(Report::Unhealthy);
        return;
    }
    if tx.send(Report::Started).is_err() {
        return;
    }
    let readiness = async {
        let Some(p) = &c.readiness_probe else {
            let _ = tx.send(Report::Ready(true));
            return;
        };
        tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
        let (mut ok, mut bad, mut ready) = (0, 0, None);
        loop {
            if check(p, &t).await {
                ok += 1;
                bad = 0;
            } else {
                bad += 1;
                ok = 0;
            }
            let now = if ok >= p.success_threshold.unwrap_or(1) {
                Some(true)
            } else if bad >= p.failure_threshold.unwrap_or(3) || ready.is_none() {
                Some(false)
            } else {
                ready
            };
            if now != ready {
                ready = now;
                if tx.send(Report::Ready(now == Some(true))).is_err() {
                    return;
                }
            }
            tokio::time::sleep(secs(p.period_seconds, 10)).await;
        }
    };
    let liveness = async {
        let Some(p) = &c.liveness_probe else { return };
        tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
        if !until(p, &t, false).await {
            let _ = tx.send(Report::Unhealthy);
        }
    };
    tokio::join!(readiness, liveness);
}

/// Probe every period. With `stop_on_success`: return true at `successThreshold` successes; in
/// any case return false at `failureThreshold` consecutive failures.
async fn until(p: &Probe, t: &Target, stop_on_success: bool) -> bool {
    if stop_on_success {
        tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
    }
    let (mut ok, mut bad) = (0, 0);
    loop {
        if check(p, t).await {
            ok += 1;
            bad = 0;
            if stop_on_success && ok >= p.success_threshold.unwrap_or(1) {
                return true;
            }
        } else {
            bad += 1;
            ok = 0;
            if bad >= p.failure_threshold.unwrap_or(3) {
                return false;
            }
        }
        tokio::time::sleep(secs(p.period_seconds, 10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(ip: &str) -> Target {
        Target {
            ip: ip.into(),
            pid: 0,
            env: vec![],
            nsenter: None,
            container: serde_json::from_value(
                json!({"name": "c", "ports": [{"name": "web", "containerPort": 1}]}),
            )
            .unwrap(),
        }
    }

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn tcp_and_http_probes_see_a_listener_on_the_pod_ip() {
        let l = tokio::net::TcpListener::bind("127.77.0.9:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&b[..n]).into_owned();
                let code = if req.starts_with("GET /ok ") {
                    200
                } else {
                    503
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let t = target("127.77.0.9");
        assert!(check(&probe(json!({"tcpSocket": {"port": port}})), &t).await);
        assert!(
            check(
                &probe(json!({"httpGet": {"path": "/ok", "port": port}})),
                &t
            )
            .await
        );
        assert!(
            !check(
                &probe(json!({"httpGet": {"path": "/bad", "port": port}})),
                &t
            )
            .await
        );
        assert!(
            !check(
                &probe(json!({"tcpSocket": {"port": port}})),
                &target("127.77.0.10")
            )
            .await
        );
        assert!(
            check(
                &probe(json!({"exec": {"command": ["true"]}})),
                &Target {
                    env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                    ..t.clone()
                }
            )
            .await
        );
        assert!(!check(&probe(json!({"grpc": {"port": port}})), &t).await);
    }
}
