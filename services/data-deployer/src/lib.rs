//! # DataDeployer
//!
//! Runs in every pod that has data sources, as an init container (`init`: block until the desired
//! data versions are live) and as a sidecar (`sidecar`: follow changes of the desired versions and
//! swap them in atomically). It reads the desired versions from the pod's downward-API annotations
//! file ([`desired`]; no Kubernetes API access), reacts to changes of that file through file
//! notifications, fetches missing files from the DataRepository into a local content-addressed
//! cache ([`cache`]), puts versions live with an atomic link swap ([`deploy`]), and reports each
//! outcome as the watchdog `data-<name>` ([`report`]). What to do next is decided by the pure
//! [`step::next_step`]; [`run`] only carries the steps out.

pub mod cache;
pub mod deploy;
pub mod desired;
pub mod report;
pub mod step;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use autocrane_api::proto::data_v1::data_repository_client::DataRepositoryClient;
use autocrane_runtime::{
    RuntimeError, args::ClientTlsArgs, client, errors::error_chain, process::Process,
    trace_context::TracedChannel,
};
use notify::Watcher;

use crate::step::Step;

/// Flags of `autocrane data-deployer`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// `init` blocks until every desired version is live, `sidecar` keeps following changes.
    #[arg(value_enum)]
    pub mode: Mode,
    /// URL of the DataRepository.
    #[arg(long, env = "AUTOCRANE_DATA_REPOSITORY")]
    pub repository: String,
    /// Directory under which `<name>/current` points at the live version.
    #[arg(long, env = "AUTOCRANE_DATA_ROOT")]
    pub root: PathBuf,
    /// The downward-API file holding the pod's annotations (`data.autocrane.io/<name>: <version>`).
    #[arg(long, env = "AUTOCRANE_DESIRED_FILE")]
    pub desired_file: PathBuf,
    /// `<name>=<source id>`: the DataRepository source of a data source name (repeatable, or
    /// comma-separated in the environment). A name without one is used as the source id.
    #[arg(long = "source", env = "AUTOCRANE_DATA_SOURCES", value_delimiter = ',', value_parser = parse_source)]
    pub sources: Vec<(String, String)>,
    /// The local content-addressed cache (default `<root>/.cache`).
    #[arg(long, env = "AUTOCRANE_DATA_CACHE")]
    pub cache: Option<PathBuf>,
    /// TLS towards the DataRepository and the WatchdogListener.
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    /// URL of the WatchdogListener; outcomes are posted as watchdog `data-<name>` when set.
    #[arg(long, env = "AUTOCRANE_WATCHDOG_LISTENER")]
    pub watchdog_listener: Option<String>,
    /// File holding the bearer token for the WatchdogListener (a projected ServiceAccount token).
    #[arg(long, env = "AUTOCRANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// File holding the bearer token for the DataRepository (a projected ServiceAccount token of
    /// audience `autocrane-data-repository`; re-read on every call, as the kubelet rotates it);
    /// unset sends none.
    #[arg(long, env = "AUTOCRANE_DATA_REPOSITORY_TOKEN_FILE")]
    pub data_repository_token_file: Option<PathBuf>,
    /// This pod's namespace (downward API), for the watchdog.
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pub pod_namespace: String,
    /// This pod's name (downward API), for the watchdog.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// After a swap, POST `{"source","version","path"}` to this local URL.
    #[arg(long, env = "AUTOCRANE_NOTIFY_URL", conflicts_with = "notify_signal")]
    pub notify_url: Option<String>,
    /// After a swap, send a signal to a process: `PID:SIGNAL` (for example `1:HUP`).
    #[arg(long, env = "AUTOCRANE_NOTIFY_SIGNAL", value_parser = parse_signal)]
    pub notify_signal: Option<(u32, String)>,
    /// Run before each swap with `sh -c`, the new version's directory in `AUTOCRANE_DATA_DIR`;
    /// a non-zero exit aborts the swap and is reported.
    #[arg(long, env = "AUTOCRANE_VALIDATE_COMMAND")]
    pub validate_command: Option<String>,
    /// `init`: give up after this many seconds.
    #[arg(long, env = "AUTOCRANE_INIT_TIMEOUT_SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Version directories kept per source, the live one included (at least 2: the previous
    /// version stays for instant rollback).
    #[arg(long, env = "AUTOCRANE_KEEP_VERSIONS", default_value_t = 2)]
    pub keep_versions: usize,
    /// Give up a fetch after this many seconds without progress.
    #[arg(long, env = "AUTOCRANE_FETCH_PATIENCE_SECS", default_value_t = 120)]
    pub fetch_patience_secs: u64,
}

fn parse_source(text: &str) -> Result<(String, String), String> {
    let (name, id) = text
        .split_once('=')
        .ok_or_else(|| "expected <name>=<source id>".to_string())?;
    if !desired::is_label(name) || id.is_empty() {
        return Err("expected <name>=<source id> with a DNS-1123 label name".into());
    }
    Ok((name.to_string(), id.to_string()))
}

fn parse_signal(text: &str) -> Result<(u32, String), String> {
    let (pid, signal) = text
        .split_once(':')
        .ok_or_else(|| "expected PID:SIGNAL".to_string())?;
    let pid = pid
        .parse()
        .map_err(|_| "the PID is not a number".to_string())?;
    if signal.is_empty() || !signal.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("the signal must be a name (HUP) or a number".into());
    }
    Ok((pid, signal.to_string()))
}

/// How the deployer runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Init container: exit 0 once every desired version is live.
    Init,
    /// Sidecar: keep the live versions equal to the desired ones.
    Sidecar,
}

/// Errors of the DataDeployer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client could not be configured.
    #[error("configuring the client of {0}")]
    Client(&'static str, #[source] RuntimeError),
    /// The cache could not be opened.
    #[error("opening the cache")]
    OpenCache(#[source] cache::FetchError),
    /// The annotations file cannot be watched.
    #[error("watching {path}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: notify::Error,
    },
    /// The watchdog flags are incomplete.
    #[error("--watchdog-listener needs --pod-namespace and --pod-name (POD_NAMESPACE, POD_NAME)")]
    PodUnknown,
    /// `init` gave up.
    #[error("timed out after {secs} s waiting for the desired data versions; not live: {pending}")]
    Timeout {
        /// The timeout.
        secs: u64,
        /// What is missing, with the last error of each.
        pending: String,
    },
}

/// Runs the deployer until shutdown (sidecar) or until every desired version is live (init).
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let Args {
        mode,
        repository,
        root,
        desired_file,
        sources,
        cache,
        client_tls,
        watchdog_listener,
        token_file,
        data_repository_token_file,
        pod_namespace,
        pod_name,
        notify_url,
        notify_signal,
        validate_command,
        timeout,
        keep_versions,
        fetch_patience_secs,
    } = args;
    let sources: BTreeMap<String, String> = sources.into_iter().collect();
    // Large HTTP/2 windows and frames: with the 64 KiB windows and 16 KiB frames of the
    // defaults, every 1 MiB chunk waits for window updates and is cut into 64 frames.
    let endpoint = client::endpoint(&repository, &client_tls)
        .map_err(|e| Error::Client("the DataRepository", e))?
        .map(|endpoint| {
            endpoint
                .initial_stream_window_size(Some(16 << 20))
                .initial_connection_window_size(Some(32 << 20))
                .max_frame_size(Some(4 << 20))
        });
    let channel = TracedChannel::new(endpoint.connect_lazy()).with_token(
        data_repository_token_file
            .as_deref()
            .map(client::TokenFile::new),
    );
    let cache = cache::Cache::open(&cache.unwrap_or_else(|| root.join(".cache")))
        .map_err(Error::OpenCache)?;
    let notify = match (notify_url, notify_signal) {
        (Some(url), _) => Some(deploy::Notify::Url(url)),
        (None, Some((pid, signal))) => Some(deploy::Notify::Signal(pid, signal)),
        (None, None) => None,
    };
    let mut deployer = deploy::Deployer::new(
        root.clone(),
        cache,
        DataRepositoryClient::new(channel).max_decoding_message_size(8 << 20),
        keep_versions,
        Duration::from_secs(fetch_patience_secs.max(1)),
        validate_command,
        notify,
    );
    if let Err(e) = deployer.clean_leftovers() {
        tracing::warn!(error = %e, "Cleaning leftovers failed");
    }
    let reporter = match watchdog_listener {
        Some(url) => {
            if pod_namespace.is_empty() || pod_name.is_empty() {
                return Err(Error::PodUnknown);
            }
            let channel = client::channel(&url, &client_tls)
                .map_err(|e| Error::Client("the WatchdogListener", e))?;
            Some(report::Reporter::new(
                channel,
                token_file,
                pod_namespace,
                pod_name,
            ))
        }
        None => None,
    };

    let (events, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let watch_dir = desired_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = events.send(());
    })
    .map_err(|source| Error::Watch {
        path: watch_dir.clone(),
        source,
    })?;
    watcher
        .watch(&watch_dir, notify::RecursiveMode::NonRecursive)
        .map_err(|source| Error::Watch {
            path: watch_dir.clone(),
            source,
        })?;

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(timeout);
    let mut state = step::State::new(mode, deadline, reporter.is_some());
    tracing::info!(?mode, root = %root.display(), desired_file = %desired_file.display(), "Data deployer started");
    loop {
        let desired = read_desired(&desired_file, &sources);
        if let Err(e) = &desired {
            tracing::warn!(error = %e, "Cannot read the desired versions yet");
        }
        state.begin_pass(desired, |desired| deployer.is_live(desired));
        loop {
            match step::next_step(&state, tokio::time::Instant::now()) {
                Step::Apply(desired) => {
                    let span = tracing::info_span!("apply", source = %desired.name, version = %desired.version);
                    let apply = tracing::Instrument::instrument(deployer.apply(&desired), span);
                    let result = match mode {
                        Mode::Init => tokio::time::timeout_at(deadline, apply)
                            .await
                            .unwrap_or(Err(deploy::DeployError::TimedOut)),
                        Mode::Sidecar => tokio::select! {
                            result = apply => result,
                            () = process.shutdown.wait() => return Ok(()),
                        },
                    };
                    match result {
                        Ok(applied) => {
                            log_applied(&desired, &applied);
                            state.record_apply(&desired, Ok(()));
                        }
                        Err(e) => {
                            let report = state.record_apply(&desired, Err(error_chain(&e)));
                            tracing::warn!(source = %desired.name, error = %report, "Applying a version failed");
                        }
                    }
                }
                Step::Report { name, report } => {
                    // The state asks for reports only when there is a reporter.
                    let result = match &reporter {
                        Some(reporter) => reporter.report(&name, &report).await,
                        None => Ok(()),
                    };
                    if let Err(e) = &result {
                        tracing::warn!(source = %name, error = %e, "Posting the watchdog failed; will retry");
                    }
                    state.record_report(&name, &report, result);
                }
                Step::Exit => {
                    tracing::info!(elapsed = ?started.elapsed(), "Every desired data version is live");
                    return Ok(());
                }
                Step::GiveUp { pending } => {
                    return Err(Error::Timeout {
                        secs: timeout,
                        pending,
                    });
                }
                Step::Wait { until, retry } => {
                    let elapsed = tokio::select! {
                        event = changes.recv() => {
                            if event.is_none() {
                                return Ok(());
                            }
                            // The kubelet swaps several links at once: take the whole burst.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            while changes.try_recv().is_ok() {}
                            false
                        }
                        () = tokio::time::sleep_until(until) => true,
                        () = process.shutdown.wait() => return Ok(()),
                    };
                    state.waited(retry, elapsed);
                    break;
                }
            }
        }
    }
}

/// Logs what an apply did.
fn log_applied(desired: &desired::Desired, applied: &deploy::Applied) {
    tracing::info!(
        source = %desired.name,
        version = %desired.version,
        reused = applied.reused,
        fetched_blobs = applied.fetch.blobs,
        fetched_bytes = applied.fetch.bytes,
        version_bytes = applied.version_bytes,
        corrupt_refetched = applied.fetch.corrupt,
        fetch_calls = applied.fetch.calls,
        fetch_ms = applied.fetch_time.as_millis() as u64,
        materialize_ms = applied.materialize_time.as_millis() as u64,
        "Version applied"
    );
}

fn read_desired(
    path: &Path,
    sources: &BTreeMap<String, String>,
) -> Result<Vec<desired::Desired>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let annotations =
        desired::parse_annotations(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(desired::desired(&annotations, sources))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sources_and_signals_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "sidecar",
            "--repository",
            "http://r",
            "--root",
            "/d",
            "--desired-file",
            "/a",
            "--source",
            "config=git-0123",
            "--notify-signal",
            "1:HUP",
        ])
        .unwrap();
        assert_eq!(
            cli.args.sources,
            vec![("config".to_string(), "git-0123".to_string())]
        );
        assert_eq!(cli.args.notify_signal, Some((1, "HUP".to_string())));
        assert!(
            Cli::try_parse_from([
                "x",
                "init",
                "--repository",
                "r",
                "--root",
                "/d",
                "--desired-file",
                "/a",
                "--source",
                "Bad"
            ])
            .is_err()
        );
    }
}
