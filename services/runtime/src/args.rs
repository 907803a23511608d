//! The flags every AutoCrane server and client shares, as clap argument groups that each
//! component flattens into its own `Args`. Every flag has an environment-variable fallback.

use std::{net::SocketAddr, path::PathBuf};

/// How a gRPC server listens.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "AUTOCRANE_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP listener serving /metrics and /healthz; `off` disables it.
    #[arg(long, env = "AUTOCRANE_ADMIN_LISTEN", default_value = "127.0.0.1:9090", value_parser = parse_optional_addr)]
    pub admin_listen: OptionalAddr,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "AUTOCRANE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Deadline applied to unary calls whose client sets none, in seconds (streams are exempt).
    #[arg(long, env = "AUTOCRANE_DEFAULT_DEADLINE_SECS", default_value_t = 30)]
    pub default_deadline_secs: u64,

    /// Maximum concurrent calls per connection; further calls are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AUTOCRANE_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,

    /// Maximum concurrent calls over all connections together; further calls are refused with
    /// RESOURCE_EXHAUSTED. (A stream counts until its response starts, not while it streams.)
    #[arg(
        long,
        env = "AUTOCRANE_MAX_CONCURRENT_REQUESTS_TOTAL",
        default_value_t = 4096
    )]
    pub max_concurrent_requests_total: usize,

    /// TLS for the gRPC listener.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// Server TLS (rustls). Without a certificate the server speaks plaintext HTTP/2.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerTlsArgs {
    /// PEM certificate chain of the server; enables TLS (needs --tls-key).
    #[arg(long, env = "AUTOCRANE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the server.
    #[arg(long, env = "AUTOCRANE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle; when set, clients must present a certificate signed by it.
    #[arg(long, env = "AUTOCRANE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Client TLS towards AutoCrane servers. Used for `https://` URLs.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientTlsArgs {
    /// PEM CA bundle that signs the servers' certificates (default: the system roots).
    #[arg(long, env = "AUTOCRANE_CLIENT_TLS_CA")]
    pub client_tls_ca: Option<PathBuf>,

    /// PEM client certificate, for servers that verify clients (needs --client-tls-key).
    #[arg(long, env = "AUTOCRANE_CLIENT_TLS_CERT", requires = "client_tls_key")]
    pub client_tls_cert: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long, env = "AUTOCRANE_CLIENT_TLS_KEY", requires = "client_tls_cert")]
    pub client_tls_key: Option<PathBuf>,

    /// Server name to verify instead of the URL's host.
    #[arg(long, env = "AUTOCRANE_CLIENT_TLS_SERVER_NAME")]
    pub client_tls_server_name: Option<String>,
}

/// Logging. Traces go to OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
#[derive(clap::Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log filter, in `tracing` EnvFilter syntax (for example `info,autocrane=debug`).
    #[arg(long, env = "AUTOCRANE_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "AUTOCRANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// An address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

/// Parses `HOST:PORT` or `off` (case-insensitive): the clap value parser of every optional
/// listener flag (`--admin-listen`, the VersionWatcher's `--webhook-listen`, …).
pub fn parse_optional_addr(text: &str) -> Result<OptionalAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    text.parse::<SocketAddr>()
        .map(|addr| OptionalAddr(Some(addr)))
        .map_err(|err| format!("expected HOST:PORT or `off`: {err}"))
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log: "info".into(),
            log_format: LogFormat::Plain,
        }
    }
}

impl ServerArgs {
    /// Settings for a server on `listen` with defaults for the rest (tests, embedding).
    pub fn local(listen: SocketAddr) -> Self {
        Self {
            listen,
            admin_listen: OptionalAddr(None),
            max_message_bytes: 4 * 1024 * 1024,
            default_deadline_secs: 30,
            max_concurrent_requests: 256,
            max_concurrent_requests_total: 4096,
            tls: ServerTlsArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Probe {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        client: ClientTlsArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    #[test]
    fn flags_are_consistent() {
        Probe::command().debug_assert();
    }

    #[test]
    fn admin_listener_can_be_turned_off() {
        let probe = Probe::try_parse_from(["x", "--admin-listen", "off"]).unwrap();
        assert_eq!(probe.server.admin_listen, OptionalAddr(None));
        let err = Probe::try_parse_from(["x", "--admin-listen", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("HOST:PORT or `off`"), "{err}");
    }

    #[test]
    fn tls_key_without_cert_is_a_usage_error() {
        let err = Probe::try_parse_from(["x", "--tls-key", "k.pem"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
