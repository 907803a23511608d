//! `autocrane watchdog post|get|list|delete|watch`: the WatchdogListener's client commands.
//!
//! The token comes from `--token-file`, `--token` (visible in process lists, so discouraged), or
//! the current kubeconfig user's token; output is human-readable or `-o json` (one JSON object per
//! result; `watch` prints one per message).

use std::{io::Write, path::PathBuf, time::Duration};

use autocrane_api::{
    duration::Duration as HumanDuration,
    proto::watchdog_v1::{self as pb, watchdog_listener_client::WatchdogListenerClient},
};
use autocrane_runtime::{args::ClientTlsArgs, client};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Request;

use crate::Error;

/// `autocrane watchdog`: talk to a WatchdogListener.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchdogArgs {
    /// How to reach the listener.
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: WatchdogCommand,
}

/// Connection and output flags of the client commands.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// URL of the WatchdogListener (`http://` or `https://`).
    #[arg(
        long,
        env = "AUTOCRANE_WATCHDOG_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub server: String,

    /// Bearer token. Other users can see it in the process list; prefer --token-file.
    #[arg(
        long,
        env = "AUTOCRANE_WATCHDOG_TOKEN",
        global = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// File holding the bearer token (for example a projected ServiceAccount token).
    #[arg(long, env = "AUTOCRANE_WATCHDOG_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// Send no token, not even the kubeconfig user's (for --insecure-allow-anonymous listeners).
    #[arg(long, env = "AUTOCRANE_WATCHDOG_NO_TOKEN", global = true)]
    pub no_token: bool,

    /// Output format.
    #[arg(short = 'o', long, env = "AUTOCRANE_OUTPUT", value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,

    /// Deadline of each unary call (`10s`, `500ms`, `1m`).
    #[arg(
        long,
        env = "AUTOCRANE_WATCHDOG_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        global = true
    )]
    pub timeout: autocrane_api::duration::Duration,

    /// The old spelling of --timeout, in seconds (hidden; still accepted).
    #[arg(
        long,
        env = "AUTOCRANE_WATCHDOG_TIMEOUT_SECS",
        value_name = "SECS",
        hide = true,
        global = true,
        conflicts_with = "timeout"
    )]
    pub timeout_secs: Option<u64>,

    /// TLS towards https:// servers.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// JSON.
    Json,
}

/// Watchdog levels on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelArg {
    /// All is well.
    Info,
    /// Degraded but serving.
    Warning,
    /// Failing.
    Error,
}

/// The client commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum WatchdogCommand {
    /// Post (create or replace) one watchdog of one pod.
    Post {
        /// The pod, as NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
        /// The watchdog name (a DNS-1123 label).
        #[arg(long)]
        name: String,
        /// The level.
        #[arg(long, value_enum)]
        level: LevelArg,
        /// A message for people (at most 1 KiB).
        #[arg(long, default_value = "")]
        message: String,
        /// How long the status counts (`30s`, `5m`, `1h`); for ever when absent.
        #[arg(long)]
        ttl: Option<HumanDuration>,
    },
    /// Show every watchdog of one pod and its rollup health.
    Get {
        /// The pod, as NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
    },
    /// List the pods of a namespace with their rollup health.
    List {
        /// The namespace.
        #[arg(short = 'n', long)]
        namespace: String,
        /// A label selector (`app=web`).
        #[arg(short = 'l', long, default_value = "")]
        selector: String,
    },
    /// Delete one watchdog of one pod.
    Delete {
        /// The pod, as NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
        /// The watchdog name.
        #[arg(long)]
        name: String,
    },
    /// Stream watchdog changes of a namespace until interrupted.
    Watch {
        /// The namespace.
        #[arg(short = 'n', long)]
        namespace: String,
        /// A label selector (`app=web`).
        #[arg(short = 'l', long, default_value = "")]
        selector: String,
    },
}

fn pod_ref(text: &str) -> Result<pb::PodRef, Error> {
    let (namespace, name) = text.split_once('/').ok_or_else(|| Error::Usage {
        flag: "--pod",
        reason: format!("{text:?} is not NAMESPACE/NAME"),
    })?;
    Ok(pb::PodRef {
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// The token to send: `--token-file`, `--token`, else the kubeconfig user's token.
fn token(connect: &ConnectArgs) -> Result<Option<String>, Error> {
    if connect.no_token {
        return Ok(None);
    }
    if let Some(path) = &connect.token_file {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadToken {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(text.trim().to_string()));
    }
    if let Some(token) = &connect.token {
        if std::env::var("AUTOCRANE_WATCHDOG_TOKEN").ok().as_ref() != Some(token) {
            eprintln!(
                "warning: --token is visible to other users in the process list; prefer --token-file"
            );
        }
        return Ok(Some(token.clone()));
    }
    Ok(kubeconfig_token())
}

fn kubeconfig_token() -> Option<String> {
    use secrecy::ExposeSecret;
    let config = ::kube::config::Kubeconfig::read().ok()?;
    let context_name = config.current_context.clone()?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)?
        .context
        .clone()?;
    let user_name = context.user?;
    let user = config
        .auth_infos
        .iter()
        .find(|a| a.name == user_name)?
        .auth_info
        .clone()?;
    if let Some(token) = user.token {
        return Some(token.expose_secret().to_string());
    }
    let file = user.token_file?;
    Some(std::fs::read_to_string(file).ok()?.trim().to_string())
}

fn call_error(rpc: &'static str) -> impl Fn(tonic::Status) -> Error {
    move |status| Error::Call {
        rpc,
        code: status.code(),
        message: status.message().to_string(),
    }
}

fn time_text(time: Option<&prost_types::Timestamp>) -> String {
    time.and_then(|t| jiff::Timestamp::from_second(t.seconds).ok())
        .map(autocrane_api::watchdog::format_time)
        .unwrap_or_default()
}

fn level_name(value: i32) -> &'static str {
    match pb::Level::try_from(value) {
        Ok(pb::Level::Info) => "info",
        Ok(pb::Level::Warning) => "warning",
        Ok(pb::Level::Error) => "error",
        _ => "unspecified",
    }
}

fn health_name(value: i32) -> &'static str {
    match pb::Health::try_from(value) {
        Ok(pb::Health::Unknown) => "unknown",
        Ok(pb::Health::Info) => "info",
        Ok(pb::Health::Warning) => "warning",
        Ok(pb::Health::Error) => "error",
        _ => "unspecified",
    }
}

/// The JSON form of a pod's health (field names as in the proto's JSON mapping).
pub fn pod_health_json(pod: &pb::PodHealth) -> Value {
    let pod_ref = pod.pod.clone().unwrap_or_default();
    json!({
        "pod": {"namespace": pod_ref.namespace, "name": pod_ref.name},
        "health": health_name(pod.health),
        "resourceVersion": pod.resource_version,
        "watchdogs": pod.watchdogs.iter().map(|w| {
            let mut v = json!({
                "name": w.name,
                "level": level_name(w.level),
                "message": w.message,
                "updatedAt": time_text(w.updated_at.as_ref()),
            });
            if w.expires_at.is_some() {
                v["expiresAt"] = json!(time_text(w.expires_at.as_ref()));
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// The text form of a pod's health.
pub fn pod_health_text(pod: &pb::PodHealth) -> String {
    let pod_ref = pod.pod.clone().unwrap_or_default();
    let mut out = format!(
        "{}/{}  health={}\n",
        pod_ref.namespace,
        pod_ref.name,
        health_name(pod.health)
    );
    for w in &pod.watchdogs {
        let expires = match &w.expires_at {
            Some(_) => format!("  expires {}", time_text(w.expires_at.as_ref())),
            None => String::new(),
        };
        out.push_str(&format!(
            "  {:<20} {:<8} {}{}  {}\n",
            w.name,
            level_name(w.level),
            time_text(w.updated_at.as_ref()),
            expires,
            w.message
        ));
    }
    out
}

fn print(output: Output, json: Value, text: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = match output {
        Output::Json => writeln!(stdout, "{json}"),
        Output::Text => write!(stdout, "{text}"),
    };
    let _ = stdout.flush();
}

/// A request carrying the bearer token and a deadline.
fn authorized<T>(message: T, token: Option<&str>, timeout: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Runs one client command, printing its result to stdout.
pub async fn run(args: WatchdogArgs) -> Result<(), Error> {
    let WatchdogArgs { connect, command } = args;
    let ConnectArgs {
        server,
        token: _,
        token_file: _,
        no_token: _,
        output,
        timeout,
        timeout_secs,
        tls,
    } = connect.clone();
    let token = token(&connect)?;
    let channel = client::channel(&server, &tls).map_err(|source| Error::ConnectServer {
        server: server.clone(),
        source,
    })?;
    let mut grpc = WatchdogListenerClient::new(channel);
    let timeout = timeout_secs.map_or(timeout.as_std(), Duration::from_secs);
    let token = token.as_deref();
    match command {
        WatchdogCommand::Post {
            pod,
            name,
            level,
            message,
            ttl,
        } => {
            let level = match level {
                LevelArg::Info => pb::Level::Info,
                LevelArg::Warning => pb::Level::Warning,
                LevelArg::Error => pb::Level::Error,
            };
            let ttl = ttl.map(|ttl| {
                let ttl = ttl.as_std();
                prost_types::Duration {
                    seconds: ttl.as_secs() as i64,
                    nanos: ttl.subsec_nanos() as i32,
                }
            });
            let response = grpc
                .post_watchdog(authorized(
                    pb::PostWatchdogRequest {
                        pod: Some(pod_ref(&pod)?),
                        name,
                        level: level as i32,
                        message,
                        ttl,
                    },
                    token,
                    Some(timeout),
                ))
                .await
                .map_err(call_error("PostWatchdog"))?
                .into_inner();
            let health = response.pod_health.unwrap_or_default();
            print(output, pod_health_json(&health), pod_health_text(&health));
        }
        WatchdogCommand::Get { pod } => {
            let response = grpc
                .get_pod_health(authorized(
                    pb::GetPodHealthRequest {
                        pod: Some(pod_ref(&pod)?),
                    },
                    token,
                    Some(timeout),
                ))
                .await
                .map_err(call_error("GetPodHealth"))?
                .into_inner();
            let health = response.pod_health.unwrap_or_default();
            print(output, pod_health_json(&health), pod_health_text(&health));
        }
        WatchdogCommand::Delete { pod, name } => {
            let response = grpc
                .delete_watchdog(authorized(
                    pb::DeleteWatchdogRequest {
                        pod: Some(pod_ref(&pod)?),
                        name,
                    },
                    token,
                    Some(timeout),
                ))
                .await
                .map_err(call_error("DeleteWatchdog"))?
                .into_inner();
            let health = response.pod_health.unwrap_or_default();
            print(output, pod_health_json(&health), pod_health_text(&health));
        }
        WatchdogCommand::List {
            namespace,
            selector,
        } => {
            let mut pods = Vec::new();
            let mut page_token = String::new();
            loop {
                let response = grpc
                    .list_pod_health(authorized(
                        pb::ListPodHealthRequest {
                            namespace: namespace.clone(),
                            label_selector: selector.clone(),
                            page_size: 0,
                            page_token: page_token.clone(),
                        },
                        token,
                        Some(timeout),
                    ))
                    .await
                    .map_err(call_error("ListPodHealth"))?
                    .into_inner();
                pods.extend(response.pods);
                if response.next_page_token.is_empty() {
                    break;
                }
                page_token = response.next_page_token;
            }
            let json = json!({"pods": pods.iter().map(pod_health_json).collect::<Vec<_>>()});
            let mut text = format!("{:<40} HEALTH    WATCHDOGS\n", "POD");
            for pod in &pods {
                let name = pod.pod.clone().unwrap_or_default().name;
                text.push_str(&format!(
                    "{:<40} {:<9} {}\n",
                    name,
                    health_name(pod.health),
                    pod.watchdogs.len()
                ));
            }
            print(output, json, text);
        }
        WatchdogCommand::Watch {
            namespace,
            selector,
        } => {
            let watch_request = authorized(
                pb::WatchPodHealthRequest {
                    namespace,
                    label_selector: selector,
                    resume_token: String::new(),
                },
                token,
                None,
            );
            let mut stream = grpc
                .watch_pod_health(watch_request)
                .await
                .map_err(call_error("WatchPodHealth"))?
                .into_inner();
            while let Some(message) = stream.next().await {
                let message = message.map_err(call_error("WatchPodHealth"))?;
                let json = json!({
                    "snapshot": message.snapshot,
                    "pods": message.pods.iter().map(pod_health_json).collect::<Vec<_>>(),
                    "removed": message.removed.iter().map(|r| json!({"namespace": r.namespace, "name": r.name})).collect::<Vec<_>>(),
                    "resumeToken": message.resume_token,
                });
                let mut text = String::from(if message.snapshot {
                    "--- snapshot\n"
                } else {
                    "--- change\n"
                });
                for pod in &message.pods {
                    text.push_str(&pod_health_text(pod));
                }
                for removed in &message.removed {
                    text.push_str(&format!(
                        "{}/{}  removed\n",
                        removed.namespace, removed.name
                    ));
                }
                print(output, json, text);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Probe {
        #[command(flatten)]
        args: WatchdogArgs,
    }

    #[test]
    fn flags_are_consistent() {
        Probe::command().debug_assert();
    }

    #[test]
    fn the_call_timeout_takes_a_duration_or_the_old_seconds() {
        let timeout = |args: &[&str]| {
            Probe::try_parse_from(["x", "get", "--pod", "shop/web-0"].iter().chain(args)).map(|p| {
                let ConnectArgs {
                    timeout,
                    timeout_secs,
                    ..
                } = p.args.connect;
                timeout_secs.map_or(timeout.as_std(), Duration::from_secs)
            })
        };
        assert_eq!(timeout(&[]).unwrap(), Duration::from_secs(10));
        assert_eq!(
            timeout(&["--timeout", "1500ms"]).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            timeout(&["--timeout-secs", "3"]).unwrap(),
            Duration::from_secs(3)
        );
        assert!(timeout(&["--timeout", "3"]).is_err(), "a unit is required");
        let help = Probe::command().render_long_help().to_string();
        assert!(help.contains("--timeout <DURATION>"), "{help}");
        assert!(
            !help.contains("--timeout-secs"),
            "the old spelling is hidden"
        );
    }

    #[test]
    fn post_parses_every_flag() {
        let probe = Probe::try_parse_from([
            "x",
            "post",
            "--pod",
            "shop/web-0",
            "--name",
            "http",
            "--level",
            "error",
            "--message",
            "down",
            "--ttl",
            "5m",
            "-o",
            "json",
            "--server",
            "http://h:1",
        ])
        .unwrap();
        assert_eq!(probe.args.connect.output, Output::Json);
        assert_eq!(probe.args.connect.server, "http://h:1");
        let WatchdogCommand::Post { pod, ttl, .. } = probe.args.command else {
            panic!("not post");
        };
        assert_eq!(pod_ref(&pod).unwrap().name, "web-0");
        assert_eq!(ttl.unwrap().as_std(), Duration::from_secs(300));
        assert!(pod_ref("web-0").is_err());
    }
}
