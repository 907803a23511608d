//! # autocrane-testworkload: the test workload, `autocrane testworkload`
//!
//! A small HTTP app for trying AutoCrane by hand and for the end-to-end scenarios (the original
//! C# tool shipped one too, `use_testworkload=1`). Any image mapped to the `autocrane` binary runs
//! it. It
//! - serves HTTP on `--listen` (in a pod: its pod IP): `GET /` one line saying who it is,
//!   `GET /status` the same as JSON (version, PID, start time, health, posts, notifications),
//!   `GET /healthz`, and `POST /notify` for the DataDeployer's `--notify-url`;
//! - learns its version from `AUTOCRANE_APP_VERSION` (the controller sets it from the image tag);
//! - posts watchdog `app` for its own pod through the WatchdogListener every `--interval-secs`,
//!   with its pod-bound token: `error` when its version contains `bad` or when a `status` file in
//!   one of its data directories says `error`, `info` otherwise ([`judge`]).
//!
//! | module | does I/O | job |
//! |---|---|---|
//! | [`judge`] | no | version + data `status` files → the watchdog level and message |
//! | this file | yes | flags, the HTTP server, the posting loop |

pub mod judge;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use autocrane_api::{
    proto::watchdog_v1::{
        Level as ProtoLevel, PodRef, PostWatchdogRequest,
        watchdog_listener_client::WatchdogListenerClient,
    },
    watchdog::Level,
};
use autocrane_runtime::{
    RuntimeError, args::ClientTlsArgs, client::channel, process::Process, shutdown::Shutdown,
};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use judge::{DataStatus, Health, judge};
use tracing::{info, warn};

/// Flags of `autocrane testworkload`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Address the HTTP server listens on (in a pod: `$(POD_IP):8080`).
    #[arg(long, env = "AUTOCRANE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The version this workload runs (the controller sets it from the image tag).
    #[arg(
        long = "app-version",
        env = "AUTOCRANE_APP_VERSION",
        default_value = "unknown"
    )]
    pub app_version: String,

    /// URL of the WatchdogListener; without it the workload only serves HTTP.
    #[arg(long, env = "AUTOCRANE_WATCHDOG_LISTENER")]
    pub watchdog_listener: Option<String>,

    /// File holding the bearer token for the WatchdogListener (a projected ServiceAccount token,
    /// re-read before every post since the kubelet rotates it).
    #[arg(long, env = "AUTOCRANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Name of the watchdog posted.
    #[arg(long, env = "AUTOCRANE_TESTWORKLOAD_WATCHDOG", default_value = "app")]
    pub watchdog_name: String,

    /// Seconds between posts (the watchdog lives three intervals, so a stopped workload's
    /// watchdog expires by itself).
    #[arg(long, env = "AUTOCRANE_TESTWORKLOAD_INTERVAL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_secs: u64,

    /// Data directories whose `status` file (directly inside, or in `<source>/current/`) is read
    /// before every post (repeatable, comma-separated in the environment; the controller sets
    /// `AUTOCRANE_DATA_DIRS` to the live directory of each data source).
    #[arg(long = "data-dir", env = "AUTOCRANE_DATA_DIRS", value_delimiter = ',')]
    pub data_dirs: Vec<PathBuf>,

    /// This pod's namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pub pod_namespace: String,

    /// This pod's name (downward API).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,

    /// TLS towards the WatchdogListener (`https://` URLs).
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
}

/// Errors that stop the workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag is unusable.
    #[error("{0}")]
    Usage(String),
    /// The listener or the channel could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What the HTTP server shows.
#[derive(Debug)]
struct State {
    version: String,
    pod: String,
    started_at: jiff::Timestamp,
    health: Mutex<Health>,
    posts: AtomicU64,
    notifications: AtomicU64,
}

/// Runs the test workload until shutdown.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let data_dirs = args.data_dirs.clone();
    let state = Arc::new(State {
        version: args.app_version.clone(),
        pod: format!("{}/{}", args.pod_namespace, args.pod_name),
        started_at: jiff::Timestamp::now(),
        health: Mutex::new(judge(&args.app_version, &read_statuses(&data_dirs))),
        posts: AtomicU64::new(0),
        notifications: AtomicU64::new(0),
    });
    let poster = match &args.watchdog_listener {
        Some(url) => {
            if args.pod_name.is_empty() || args.pod_namespace.is_empty() {
                return Err(Error::Usage(
                    "--watchdog-listener needs --pod-name and --pod-namespace (POD_NAME, POD_NAMESPACE from the downward API)".into(),
                ));
            }
            let client = WatchdogListenerClient::new(channel(url, &args.client_tls)?);
            Some(tokio::spawn(post_loop(
                client,
                args.clone(),
                state.clone(),
                process.shutdown.clone(),
            )))
        }
        None => {
            info!("No --watchdog-listener: serving HTTP only, posting no watchdog");
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {}: {e}", args.listen)))?;
    info!(
        address = %listener.local_addr().unwrap_or(args.listen),
        version = %state.version,
        pid = std::process::id(),
        "Test workload serving"
    );
    serve(listener, state, process.shutdown.clone()).await;
    if let Some(poster) = poster {
        poster.abort();
    }
    info!("Test workload stopped");
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<State>, shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(&request, &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(request: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    let health = state.health.lock().expect("health").clone();
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            format!(
                "autocrane testworkload {} on {}: {} {}\n",
                state.version,
                state.pod,
                level_name(health.level),
                health.message
            ),
        ),
        (&Method::GET, "/status") => reply(
            StatusCode::OK,
            "application/json",
            serde_json::json!({
                "version": state.version,
                "pod": state.pod,
                "pid": std::process::id(),
                "startedAt": state.started_at.to_string(),
                "level": level_name(health.level),
                "message": health.message,
                "posts": state.posts.load(Ordering::Relaxed),
                "notifications": state.notifications.load(Ordering::Relaxed),
            })
            .to_string(),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::POST, "/notify") => {
            let n = state.notifications.fetch_add(1, Ordering::Relaxed) + 1;
            info!(notifications = n, "Data swap notified");
            reply(StatusCode::NO_CONTENT, "text/plain", String::new())
        }
        (_, "/" | "/status" | "/healthz" | "/notify") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Warning => "warning",
        Level::Error => "error",
    }
}

/// Judges and posts every interval until shutdown; logs a change of health and a change of the
/// posting outcome once, not on every tick.
async fn post_loop(
    client: WatchdogListenerClient<autocrane_runtime::client::AutoCraneChannel>,
    args: Args,
    state: Arc<State>,
    shutdown: Shutdown,
) {
    let interval = Duration::from_secs(args.interval_secs);
    let mut last_health: Option<Health> = None;
    let mut last_failure: Option<String> = None;
    loop {
        let health = judge(&args.app_version, &read_statuses(&args.data_dirs));
        if last_health.as_ref() != Some(&health) {
            info!(level = level_name(health.level), message = %health.message, "Health");
            *state.health.lock().expect("health") = health.clone();
            last_health = Some(health.clone());
        }
        match post(&client, &args, &health, interval * 3).await {
            Ok(()) => {
                state.posts.fetch_add(1, Ordering::Relaxed);
                if last_failure.take().is_some() {
                    info!("Posting the watchdog works again");
                }
            }
            Err(e) => {
                if last_failure.as_deref() != Some(e.as_str()) {
                    warn!(error = %e, "Posting the watchdog failed; retrying every interval");
                    last_failure = Some(e);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.wait() => return,
        }
    }
}

async fn post(
    client: &WatchdogListenerClient<autocrane_runtime::client::AutoCraneChannel>,
    args: &Args,
    health: &Health,
    ttl: Duration,
) -> Result<(), String> {
    let level = match health.level {
        Level::Info => ProtoLevel::Info,
        Level::Warning => ProtoLevel::Warning,
        Level::Error => ProtoLevel::Error,
    };
    let mut request = tonic::Request::new(PostWatchdogRequest {
        pod: Some(PodRef {
            namespace: args.pod_namespace.clone(),
            name: args.pod_name.clone(),
        }),
        name: args.watchdog_name.clone(),
        level: level as i32,
        message: health.message.clone(),
        ttl: Some(prost_types::Duration {
            seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    });
    request.set_timeout(Duration::from_secs(10));
    if let Some(path) = &args.token_file {
        autocrane_runtime::client::authorize_from_file(&mut request, path).await?;
    }
    client
        .clone()
        .post_watchdog(request)
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

/// The `status` files of the data directories: `<dir>/status`, and `<dir>/<source>/current/status`
/// for a directory that holds several sources.
fn read_statuses(dirs: &[PathBuf]) -> Vec<DataStatus> {
    let mut out = Vec::new();
    for dir in dirs {
        out.push(read_status(&dir.join("status")));
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut nested: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path().join("current").join("status"))
                .filter(|p| p.exists())
                .collect();
            nested.sort();
            out.extend(nested.iter().map(|p| read_status(p)));
        }
    }
    out
}

fn read_status(path: &Path) -> DataStatus {
    DataStatus {
        path: path.display().to_string(),
        text: std::fs::read_to_string(path).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_files_are_found_directly_and_per_source() {
        let dir = tempfile::tempdir().unwrap();
        let direct = dir.path().join("direct");
        std::fs::create_dir_all(&direct).unwrap();
        std::fs::write(direct.join("status"), "error broken").unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("config/current")).unwrap();
        std::fs::create_dir_all(shared.join("model/current")).unwrap();
        std::fs::write(shared.join("model/current/status"), "ok").unwrap();
        let statuses = read_statuses(&[direct.clone(), shared.clone()]);
        let found: Vec<(String, Option<String>)> =
            statuses.into_iter().map(|s| (s.path, s.text)).collect();
        assert_eq!(
            found,
            vec![
                (
                    direct.join("status").display().to_string(),
                    Some("error broken".into())
                ),
                (shared.join("status").display().to_string(), None),
                (
                    shared.join("model/current/status").display().to_string(),
                    Some("ok".into())
                ),
            ]
        );
    }
}
