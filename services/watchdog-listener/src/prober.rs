//! The HTTP prober: pods annotated `probe.autocrane.io/<name>: <port>/<path>` are probed at
//! `http://<podIP>:<port>/<path>` and the result is posted as watchdog `<name>` through the same
//! write path as the RPCs (so an unchanged result writes nothing).
//!
//! Targets come from the process's pod index (fed by its one Kubernetes watch), never from listing. Every pod with an
//! IP is probed, Ready or not (the original's deadlock, W9); pods without an IP are skipped (W8); a
//! malformed annotation is a Warning Event on the pod, never an error watchdog (W8). A scan probes
//! all targets concurrently through a bounded pool with a per-probe timeout, so a scan of N
//! targets of which H hang takes about one timeout when the pool is larger than H. Removing a
//! probe annotation deletes the watchdog it produced, at the next scan.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use autocrane_api::{duration, keys::PROBE_ANNOTATION_PREFIX, watchdog::Level};
use autocrane_runtime::shutdown::Shutdown;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};
use tracing::Instrument;

use crate::{
    coalesce::Op,
    index::{PodEvent, PodIndex},
    pods::PodKey,
    validate,
    writer::Writer,
};

/// Flags of the prober (`autocrane watchdog-prober`, or `--prober` on the listener).
#[derive(clap::Args, Clone, Debug)]
pub struct ProberArgs {
    /// Time between the starts of two probe scans (`10s`, `1m`); at least 1s.
    #[arg(
        long,
        env = "AUTOCRANE_PROBE_INTERVAL",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub probe_interval: duration::Duration,

    /// The old spelling of --probe-interval, in seconds (hidden; still accepted).
    #[arg(
        long,
        env = "AUTOCRANE_PROBE_INTERVAL_SECS",
        value_name = "SECS",
        hide = true,
        conflicts_with = "probe_interval"
    )]
    pub probe_interval_secs: Option<u64>,

    /// Timeout of one probe: connect, send, read the status line (`5s`, `500ms`).
    #[arg(
        long,
        env = "AUTOCRANE_PROBE_TIMEOUT",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub probe_timeout: duration::Duration,

    /// The old spelling of --probe-timeout, in milliseconds (hidden; still accepted).
    #[arg(
        long,
        env = "AUTOCRANE_PROBE_TIMEOUT_MS",
        value_name = "MS",
        hide = true,
        conflicts_with = "probe_timeout"
    )]
    pub probe_timeout_ms: Option<u64>,

    /// Most probes in flight at once.
    #[arg(long, env = "AUTOCRANE_PROBE_CONCURRENCY", default_value_t = 256)]
    pub probe_concurrency: usize,
}

impl ProberArgs {
    /// Prober flags with the given interval and timeout.
    pub fn new(interval: Duration, timeout: Duration, concurrency: usize) -> Self {
        Self {
            probe_interval: interval.into(),
            probe_interval_secs: None,
            probe_timeout: timeout.into(),
            probe_timeout_ms: None,
            probe_concurrency: concurrency,
        }
    }

    /// The scan interval, from whichever spelling was given; at least one second.
    pub fn interval(&self) -> Duration {
        self.probe_interval_secs
            .map_or(self.probe_interval.as_std(), Duration::from_secs)
            .max(Duration::from_secs(1))
    }

    /// The probe timeout, from whichever spelling was given.
    pub fn timeout(&self) -> Duration {
        self.probe_timeout_ms
            .map_or(self.probe_timeout.as_std(), Duration::from_millis)
    }
}

/// One thing to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The pod.
    pub pod: PodKey,
    /// The watchdog name.
    pub name: String,
    /// The pod IP.
    pub ip: String,
    /// The port.
    pub port: u16,
    /// The path, without the leading `/`.
    pub path: String,
}

impl Target {
    /// The probed URL.
    pub fn url(&self) -> String {
        let host = if self.ip.contains(':') {
            format!("[{}]", self.ip)
        } else {
            self.ip.clone()
        };
        format!("http://{host}:{}/{}", self.port, self.path)
    }
}

/// Parses `<port>/<path>` (the original's `POD_IP:<port>/<path>` is accepted too).
pub fn parse_probe(value: &str) -> Result<(u16, String), String> {
    let value = value.trim();
    let value = value.strip_prefix("POD_IP:").unwrap_or(value);
    let (port, path) = value
        .split_once('/')
        .ok_or_else(|| format!("{value:?} is not <port>/<path>"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?} is not a number in 1..65535"))?;
    if path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "path {path:?} must be printable ASCII without spaces"
        ));
    }
    Ok((port, path.to_string()))
}

/// A probe annotation that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The annotation key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// Why.
    pub reason: String,
}

/// The probe targets of `pod`, and its malformed probe annotations. A pod without an IP (or being
/// deleted) has no targets.
pub fn targets(pod: &Pod) -> (Vec<Target>, Vec<Malformed>) {
    let mut found = Vec::new();
    let mut malformed = Vec::new();
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty());
    let key = PodKey::of(pod);
    for (annotation, value) in pod.annotations() {
        let Some(name) = annotation.strip_prefix(PROBE_ANNOTATION_PREFIX) else {
            continue;
        };
        let parsed = validate::watchdog_name(name)
            .map_err(|err| err.to_string())
            .and_then(|()| parse_probe(value));
        match parsed {
            Ok((port, path)) => {
                if let Some(ip) = &ip
                    && pod.metadata.deletion_timestamp.is_none()
                {
                    found.push(Target {
                        pod: key.clone(),
                        name: name.to_string(),
                        ip: ip.clone(),
                        port,
                        path,
                    });
                }
            }
            Err(reason) => malformed.push(Malformed {
                key: annotation.clone(),
                value: value.clone(),
                reason,
            }),
        }
    }
    (found, malformed)
}

/// The watchdogs this prober posted whose probe annotation was removed (or no longer parses) on a
/// pod that still exists: left alone, their last result would count in the rollup for ever.
/// `posted` loses the retired ones and those of pods that are gone.
pub fn retire(posted: &mut HashSet<(PodKey, String)>, pods: &[Arc<Pod>]) -> Vec<(PodKey, String)> {
    let by_key: std::collections::HashMap<PodKey, &Pod> =
        pods.iter().map(|p| (PodKey::of(p), p.as_ref())).collect();
    let mut retired = Vec::new();
    posted.retain(|(key, name)| {
        let Some(pod) = by_key.get(key) else {
            return false;
        };
        let still_probed = pod
            .annotations()
            .get(&format!("{PROBE_ANNOTATION_PREFIX}{name}"))
            .is_some_and(|value| parse_probe(value).is_ok());
        if !still_probed {
            retired.push((key.clone(), name.clone()));
        }
        still_probed
    });
    retired.sort();
    retired
}

/// Probes one target: any 2xx status is info, anything else (status, refusal, timeout) error.
pub async fn probe(target: &Target, timeout: Duration) -> (Level, String) {
    let url = target.url();
    let attempt = async {
        let mut stream = TcpStream::connect((target.ip.as_str(), target.port)).await?;
        let request = format!(
            "GET /{} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: autocrane-prober\r\nConnection: close\r\n\r\n",
            target.path, target.ip, target.port
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => (
            Level::Error,
            format!("GET {url}: no response within {} ms", timeout.as_millis()),
        ),
        Ok(Err(err)) => (Level::Error, format!("GET {url}: {err}")),
        Ok(Ok(head)) => {
            let line = String::from_utf8_lossy(&head);
            let code = line
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse::<u16>().ok());
            match code {
                Some(code) if (200..300).contains(&code) => {
                    (Level::Info, format!("GET {url}: HTTP {code}"))
                }
                Some(code) => (Level::Error, format!("GET {url}: HTTP {code}")),
                None => (Level::Error, format!("GET {url}: not an HTTP response")),
            }
        }
    }
}

/// Probes every target concurrently, at most `concurrency` at once; results in target order.
pub async fn scan(
    targets: Vec<Target>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<(Target, Level, String)> {
    let pool = Arc::new(Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|target| {
            let pool = pool.clone();
            let span = tracing::info_span!("probe", pod = %target.pod, watchdog = %target.name);
            tokio::spawn(
                async move {
                    let _permit = pool.acquire_owned().await.expect("pool never closes");
                    let (level, message) = probe(&target, timeout).await;
                    (target, level, message)
                }
                .instrument(span),
            )
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(result) = task.await {
            results.push(result);
        }
    }
    results
}

/// Reports each malformed probe annotation of `pod` once (per pod uid, key and value) as a
/// Warning Event.
async fn report_malformed(
    recorder: &Recorder,
    reported: &mut HashSet<(String, String, String)>,
    pod: &Pod,
) {
    for bad in targets(pod).1 {
        let uid = pod.uid().unwrap_or_default();
        if !reported.insert((uid, bad.key.clone(), bad.value.clone())) {
            continue;
        }
        tracing::warn!(pod = %PodKey::of(pod), key = %bad.key, reason = %bad.reason, "Malformed probe annotation");
        let event = Event {
            type_: EventType::Warning,
            reason: "MalformedProbeAnnotation".into(),
            note: Some(format!(
                "{}: {:?} is not <port>/<path>: {}",
                bad.key, bad.value, bad.reason
            )),
            action: "Probe".into(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, &pod.object_ref(&())).await {
            tracing::warn!(error = %err, "Publishing an event failed");
        }
    }
}

/// Runs the prober until shutdown: follows the pods of `index`, scans every interval, posts
/// results through `writer`, reports malformed annotations as Warning Events (through `client`).
pub async fn run(
    client: Client,
    index: PodIndex,
    writer: Writer,
    args: ProberArgs,
    shutdown: Shutdown,
) {
    let timeout = args.timeout();
    let interval = args.interval();
    let ProberArgs {
        probe_interval: _,
        probe_interval_secs: _,
        probe_timeout: _,
        probe_timeout_ms: _,
        probe_concurrency,
    } = args;
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "autocrane-watchdog-prober".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let follower = index.clone();
    let feed = async move {
        follower.ready().await;
        let mut reported: HashSet<(String, String, String)> = HashSet::new();
        let (pods, mut changes) = follower.subscribe(None);
        for pod in &pods {
            report_malformed(&recorder, &mut reported, pod).await;
        }
        while let Some(event) = changes.next().await {
            match event {
                PodEvent::Applied(pod) => report_malformed(&recorder, &mut reported, &pod).await,
                PodEvent::Resynced(pods) => {
                    for pod in &pods {
                        report_malformed(&recorder, &mut reported, pod).await;
                    }
                }
                PodEvent::Deleted(_) => {}
            }
        }
    };
    let scans = async move {
        index.ready().await;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What this process posted (a restart forgets it: a probe annotation removed while the
        // prober was down leaves its last result until someone deletes the watchdog).
        let mut posted: HashSet<(PodKey, String)> = HashSet::new();
        loop {
            ticker.tick().await;
            let pods = index.pods(None);
            for (pod, name) in retire(&mut posted, &pods) {
                tracing::info!(%pod, watchdog = %name, "Probe annotation removed; deleting its watchdog");
                let op = Op::Delete { name: name.clone() };
                if let Err(err) = writer.submit(pod.clone(), op).await {
                    tracing::warn!(%pod, error = %err, "Deleting a retired probe watchdog failed; retrying next scan");
                    posted.insert((pod, name));
                }
            }
            let all: Vec<Target> = pods.iter().flat_map(|pod| targets(pod).0).collect();
            posted.extend(all.iter().map(|t| (t.pod.clone(), t.name.clone())));
            let started = Instant::now();
            let count = all.len();
            let results = scan(all, timeout, probe_concurrency).await;
            for (target, level, message) in results {
                let writer = writer.clone();
                let span = tracing::info_span!("post_probe_result", pod = %target.pod, watchdog = %target.name);
                tokio::spawn(
                    async move {
                        let op = Op::Set {
                            name: target.name.clone(),
                            level,
                            message,
                            ttl: None,
                        };
                        if let Err(err) = writer.submit(target.pod.clone(), op).await {
                            tracing::debug!(error = %err, "Posting a probe result failed");
                        }
                    }
                    .instrument(span),
                );
            }
            tracing::debug!(targets = count, elapsed = ?started.elapsed(), "Probe scan done");
        }
    };
    tokio::select! {
        () = feed => {}
        () = scans => {}
        () = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_from_either_spelling() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Flags {
            #[command(flatten)]
            probe: ProberArgs,
        }
        let parse = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("prober").chain(args.iter().copied()))
                .map(|f| (f.probe.interval(), f.probe.timeout()))
        };
        assert_eq!(
            parse(&[]).unwrap(),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        assert_eq!(
            parse(&["--probe-interval", "2s", "--probe-timeout", "500ms"]).unwrap(),
            (Duration::from_secs(2), Duration::from_millis(500))
        );
        assert_eq!(
            parse(&["--probe-interval-secs", "2", "--probe-timeout-ms", "500"]).unwrap(),
            (Duration::from_secs(2), Duration::from_millis(500))
        );
        assert!(
            parse(&["--probe-timeout", "500"]).is_err(),
            "a unit is required"
        );
        assert!(parse(&["--probe-timeout", "1s", "--probe-timeout-ms", "9"]).is_err());
    }

    #[test]
    fn probe_annotations_parse() {
        assert_eq!(parse_probe("8080/healthz"), Ok((8080, "healthz".into())));
        assert_eq!(
            parse_probe("8080/ready/deep?x=1"),
            Ok((8080, "ready/deep?x=1".into()))
        );
        assert_eq!(
            parse_probe("POD_IP:81/watchdog"),
            Ok((81, "watchdog".into()))
        );
        assert_eq!(parse_probe("80/"), Ok((80, String::new())));
        for bad in ["healthz", "http/healthz", "0/x", "70000/x", "80/a b"] {
            assert!(parse_probe(bad).is_err(), "{bad}");
        }
    }

    fn pod(ip: Option<&str>, annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: ip.map(str::to_string),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn watchdogs_of_removed_or_broken_probe_annotations_are_retired() {
        let key = |n: &str| PodKey::new("default", n);
        let mut posted: HashSet<(PodKey, String)> = [
            (key("kept"), "http".to_string()),
            (key("removed"), "http".to_string()),
            (key("broken"), "http".to_string()),
            (key("gone"), "http".to_string()),
            (key("no-ip"), "http".to_string()),
        ]
        .into_iter()
        .collect();
        let named = |name: &str, ip: Option<&str>, annotations: &[(&str, &str)]| {
            let mut p = pod(ip, annotations);
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some("default".into());
            Arc::new(p)
        };
        let pods = [
            named(
                "kept",
                Some("10.0.0.1"),
                &[("probe.autocrane.io/http", "80/")],
            ),
            named("removed", Some("10.0.0.2"), &[("other", "x")]),
            named(
                "broken",
                Some("10.0.0.3"),
                &[("probe.autocrane.io/http", "eighty/")],
            ),
            // No IP (e.g. terminated): the annotation is still there, so the watchdog stays.
            named("no-ip", None, &[("probe.autocrane.io/http", "80/")]),
        ];
        assert_eq!(
            retire(&mut posted, &pods),
            [
                (key("broken"), "http".into()),
                (key("removed"), "http".into())
            ]
        );
        let mut left: Vec<_> = posted.into_iter().collect();
        left.sort();
        assert_eq!(
            left,
            [(key("kept"), "http".into()), (key("no-ip"), "http".into())],
            "retired and vanished pods are forgotten"
        );
    }

    #[test]
    fn pods_without_ip_have_no_targets_but_malformed_annotations_are_reported() {
        let annotations = [
            ("probe.autocrane.io/http", "8080/healthz"),
            ("probe.autocrane.io/bad", "eighty/x"),
            ("other", "1/x"),
        ];
        let (found, malformed) = targets(&pod(Some("10.0.0.7"), &annotations));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].url(), "http://10.0.0.7:8080/healthz");
        assert_eq!(malformed.len(), 1);
        assert_eq!(malformed[0].key, "probe.autocrane.io/bad");
        let (found, malformed) = targets(&pod(None, &annotations));
        assert!(found.is_empty());
        assert_eq!(malformed.len(), 1);
    }

    #[tokio::test]
    async fn closed_port_is_an_error_with_a_message() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = Target {
            pod: PodKey::new("shop", "web-0"),
            name: "http".into(),
            ip: "127.0.0.1".into(),
            port,
            path: "healthz".into(),
        };
        let (level, message) = probe(&target, Duration::from_secs(1)).await;
        assert_eq!(level, Level::Error);
        assert!(message.starts_with("GET http://127.0.0.1:"), "{message}");
    }
}
