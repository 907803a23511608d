//! A minimal kubelet API: what the API server proxies `pods/log` (`kubectl logs`) to.
//!
//! Served over HTTPS on `127.0.0.1:PORT` (the port reported in the Node's
//! `status.daemonEndpoints.kubeletEndpoint.Port`) with the kubelet serving certificate, and only to
//! clients presenting a certificate signed by the cluster CA (the API server's
//! `--kubelet-client-certificate`); any other client fails the TLS handshake. Routes:
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with the kubelet's query parameters
//!   `follow`, `previous`, `tailLines`, `limitBytes`, `timestamps` (`sinceSeconds`/`sinceTime`
//!   are accepted and ignored: container output goes straight to a file, without line times);
//!   errors as the kubelet words them (404 `pod "x" does not exist`, 400 `previous terminated
//!   container "c" in pod "p" not found`, …), as plain text, which the API server passes on.
//! - `GET /healthz` → `ok`.
//!
//! Not done: authorization of the authenticated caller (a real kubelet asks the API server with a
//! SubjectAccessReview for `nodes/proxy`), exec/attach/port-forward, stats, metrics.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::Shared;

/// How the kubelet API is served: the serving certificate chain and key (PEM), the CA whose
/// client certificates are accepted (PEM), and the port on 127.0.0.1 (0: any free one).
#[derive(Clone)]
pub struct KubeletApi {
    /// Serving certificate (chain), PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: String,
    /// CA bundle for client certificates, PEM.
    pub client_ca_pem: String,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

impl std::fmt::Debug for KubeletApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletApi")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl KubeletApi {
    /// Reads the three PEM files (as a kubelet's `--tls-cert-file`, `--tls-private-key-file`,
    /// `--client-ca-file`).
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: &Path,
        port: u16,
    ) -> std::io::Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
        };
        Ok(KubeletApi {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: read(client_ca)?,
            port,
        })
    }
}

/// The TLS configuration: the serving certificate, client certificates required and verified
/// against the CA.
fn tls_config(api: &KubeletApi) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(api.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("serving certificate: {e}"))?;
    if certs.is_empty() {
        return Err("serving certificate: no certificate in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(api.key_pem.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(api.client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| format!("client CA: {e}"))?;
        roots.add(ca).map_err(|e| format!("client CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("client CA: no certificate in the PEM".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("serving certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A bound, not yet serving kubelet API (so the port is known before the Node is registered).
pub(crate) struct Bound {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    pub addr: SocketAddr,
}

pub(crate) async fn bind(api: &KubeletApi) -> Result<Bound, String> {
    let tls = tls_config(api)?;
    let listener = TcpListener::bind(("127.0.0.1", api.port))
        .await
        .map_err(|e| format!("binding 127.0.0.1:{}: {e}", api.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok(Bound {
        listener,
        tls,
        addr,
    })
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(bound: Bound, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Bound {
        listener,
        tls,
        addr,
    } = bound;
    info!(%addr, "Kubelet API serving (HTTPS, client certificates of the cluster CA)");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!(error = %e, "Kubelet API accept failed"); continue; }
            },
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    // Among others: a client without a certificate of the cluster CA.
                    warn!(%peer, error = %e, "Kubelet API: TLS handshake refused");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "Kubelet API connection ended");
            }
        });
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut body = msg.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    debug!(method = %req.method(), %path, "Kubelet API request");
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["containerLogs", ns, pod, container]
            if !ns.is_empty() && !pod.is_empty() && !container.is_empty() =>
        {
            container_logs(shared, ns, pod, container, &query).await
        }
        ["containerLogs", ..] => text(
            StatusCode::BAD_REQUEST,
            format!("bad path {path:?}: expected /containerLogs/NAMESPACE/POD/CONTAINER"),
        ),
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// The query of a log request, parsed as the kubelet does (`PodLogOptions` from the URL).
#[derive(Debug, Default)]
struct Options {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

fn parse_options(q: &HashMap<String, String>) -> Result<Options, String> {
    let flag = |k: &str| -> Result<bool, String> {
        match q.get(k).map(String::as_str) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(format!("{k}: invalid boolean value {v:?}")),
        }
    };
    let number = |k: &str| -> Result<Option<i64>, String> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("{k}: invalid integer value {v:?}"))
            })
            .transpose()
    };
    let tail = number("tailLines")?;
    let limit = number("limitBytes")?;
    if tail.is_some_and(|t| t < 0) {
        return Err("tailLines: Invalid value: must be greater than or equal to 0".into());
    }
    if limit.is_some_and(|l| l < 1) {
        return Err("limitBytes: Invalid value: must be greater than 0".into());
    }
    if let Some(s) = number("sinceSeconds")?
        && s < 1
    {
        return Err("sinceSeconds: Invalid value: must be greater than 0".into());
    }
    Ok(Options {
        follow: flag("follow")?,
        previous: flag("previous")?,
        timestamps: flag("timestamps")?,
        tail_lines: tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX)),
        limit_bytes: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
    })
}

/// The log file of the run asked for.
fn run_file(
    shared: &Shared,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<PathBuf, (StatusCode, String)> {
    let pod_dir = shared
        .pods
        .lock()
        .expect("pods")
        .get(&(ns.to_string(), pod.to_string()))
        .cloned()
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("pod {pod:?} does not exist")))?;
    let dir = pod_dir.join("logs").join(container);
    let mut runs: Vec<u32> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    runs.sort_unstable();
    let run = if previous {
        runs.iter().rev().nth(1).ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {container:?} in pod {pod:?} not found"),
            )
        })?
    } else {
        runs.last().ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!(
                    "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
                ),
            )
        })?
    };
    Ok(dir.join(format!("{run}.log")))
}

/// The last `n` lines of `data`.
fn tail(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    // A final newline ends the last line; it does not start a new one.
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

/// Prefixes every complete line with `stamp ` (the kubelet's `timestamps=true` format:
/// RFC 3339 with nanoseconds, then a space). `at_line_start` carries state between chunks.
fn stamp_lines(data: &[u8], stamp: &str, at_line_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    for &b in data {
        if *at_line_start {
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
        }
        out.push(b);
        *at_line_start = b == b'\n';
    }
    out
}

fn rfc3339_nanos(t: jiff::Timestamp) -> String {
    format!("{t:.9}")
}

async fn container_logs(
    shared: &Arc<Shared>,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let opts = match parse_options(q) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let file = match run_file(shared, ns, pod, container, opts.previous) {
        Ok(f) => f,
        Err((code, msg)) => return text(code, msg),
    };
    // One handle for the whole answer: when the pod stops, its directory is removed right after
    // the container's last write, and a follower that reopened the file by name would lose the
    // final lines (an open file stays readable after it is unlinked).
    let mut handle = match std::fs::File::open(&file) {
        Ok(h) => h,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log of {container:?}: {e}"),
            );
        }
    };
    let mut data = Vec::new();
    match handle.read_to_end(&mut data) {
        Ok(_) => {}
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log of {container:?}: {e}"),
            );
        }
    };
    let initial = match opts.tail_lines {
        Some(n) => tail(&data, n),
        None => &data[..],
    };
    // Lines already written carry the file's modification time (no per-line times are kept);
    // lines that arrive while following carry the time they were read (≤ 100 ms late).
    let mtime = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .unwrap_or_else(jiff::Timestamp::now);
    let mut at_line_start = true;
    let mut first = if opts.timestamps {
        stamp_lines(initial, &rfc3339_nanos(mtime), &mut at_line_start)
    } else {
        initial.to_vec()
    };
    let mut budget = opts.limit_bytes.unwrap_or(usize::MAX);
    first.truncate(budget);
    budget -= first.len();
    let done = file.with_extension("done");
    if !opts.follow || opts.previous || budget == 0 {
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(
                Full::new(Bytes::from(first))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("response");
    }
    // follow: what is there, then what the container writes until its run ends (or the pod
    // leaves this node, or the client goes away, or limitBytes is reached).
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let shared = shared.clone();
    let key = (ns.to_string(), pod.to_string());
    tokio::spawn(async move {
        let mut tx = tx;
        use futures::SinkExt;
        if !first.is_empty() && tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
            return;
        }
        loop {
            let finished = done.exists()
                || shared.shutting_down()
                || !shared.pods.lock().expect("pods").contains_key(&key);
            let chunk = read_more(&mut handle);
            if !chunk.is_empty() {
                let mut out = if opts.timestamps {
                    stamp_lines(
                        &chunk,
                        &rfc3339_nanos(jiff::Timestamp::now()),
                        &mut at_line_start,
                    )
                } else {
                    chunk
                };
                out.truncate(budget);
                budget -= out.len();
                if tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() || budget == 0 {
                    return;
                }
            } else if finished {
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(StreamBody::new(rx)))
        .expect("response")
}

/// What was appended to the open log since the last read (empty on any error).
fn read_more(handle: &mut std::fs::File) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = handle.read_to_end(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_like_the_kubelet() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }

    #[test]
    fn timestamps_prefix_every_line() {
        let mut start = true;
        assert_eq!(stamp_lines(b"a\nb", "T", &mut start), b"T a\nT b".to_vec());
        assert!(!start);
        assert_eq!(stamp_lines(b"c\n", "U", &mut start), b"c\n".to_vec());
        assert!(start);
    }

    #[test]
    fn options_are_validated() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let o = parse_options(&q(&[
            ("follow", "true"),
            ("tailLines", "3"),
            ("limitBytes", "10"),
        ]))
        .unwrap();
        assert!(o.follow && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(3), Some(10)));
        assert!(parse_options(&q(&[("tailLines", "-1")])).is_err());
        assert!(parse_options(&q(&[("limitBytes", "0")])).is_err());
        assert!(parse_options(&q(&[("follow", "maybe")])).is_err());
    }
}
