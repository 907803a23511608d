//! Channels from one AutoCrane component to another: TLS for `https://` URLs, connect and request
//! timeouts, HTTP/2 keep-alive, and trace-context propagation on every call.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::{RuntimeError, args::ClientTlsArgs, tls, trace_context::TracedChannel};

/// A channel that propagates the caller's trace context; generated clients accept it as is
/// (`WatchdogListenerClient::new(channel)`).
pub type AutoCraneChannel = TracedChannel<Channel>;

/// Builds an endpoint for `url` (`http://host:port` or `https://host:port`).
pub fn endpoint(url: &str, tls_args: &ClientTlsArgs) -> Result<Endpoint, RuntimeError> {
    let wrap = |source| RuntimeError::Endpoint {
        endpoint: url.to_string(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(wrap)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls::client_config(tls_args)?)
            .map_err(wrap)?;
    }
    Ok(endpoint)
}

/// A lazily connecting channel to `url`: the first call connects, and a broken connection is
/// re-established on the next call.
pub fn channel(url: &str, tls_args: &ClientTlsArgs) -> Result<AutoCraneChannel, RuntimeError> {
    Ok(TracedChannel::new(endpoint(url, tls_args)?.connect_lazy()))
}

/// A channel to `url`, connected before returning (fails fast when the server is unreachable).
pub async fn connect(
    url: &str,
    tls_args: &ClientTlsArgs,
) -> Result<AutoCraneChannel, RuntimeError> {
    let endpoint = endpoint(url, tls_args)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| RuntimeError::Endpoint {
            endpoint: url.to_string(),
            source,
        })?;
    Ok(TracedChannel::new(channel))
}

/// Sets `authorization: Bearer <token>` on `request` from the token in `path`, read now: projected
/// ServiceAccount tokens rotate, so callers re-read the file before every call.
pub async fn authorize_from_file<T>(
    request: &mut tonic::Request<T>,
    path: &std::path::Path,
) -> Result<(), String> {
    let token = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}
