//! Channels from one AutoCrane component to another: TLS for `https://` URLs, connect and request
//! timeouts, HTTP/2 keep-alive, and trace-context propagation on every call.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

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

/// [`channel`] with a bearer token: every call carries `authorization: Bearer <token>` read from
/// `token_file` at the call (`None`: no token, for servers run with `--insecure-allow-anonymous`).
pub fn channel_with_token(
    url: &str,
    tls_args: &ClientTlsArgs,
    token_file: Option<&Path>,
) -> Result<AutoCraneChannel, RuntimeError> {
    Ok(channel(url, tls_args)?.with_token(token_file.map(TokenFile::new)))
}

/// A file holding a bearer token (a projected ServiceAccount token, which the kubelet rotates):
/// read again for every call, so a rotated token is used at once and no expired one lingers.
#[derive(Clone, Debug)]
pub struct TokenFile(Arc<PathBuf>);

impl TokenFile {
    /// The token in `path`.
    pub fn new(path: &Path) -> Self {
        Self(Arc::new(path.to_path_buf()))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `Bearer <token>` as a header value, read from the file now. The read is synchronous: the
    /// file is a few hundred bytes on a memory-backed volume, cheaper than a blocking-pool hop.
    pub fn header(&self) -> Result<http::HeaderValue, String> {
        let token = std::fs::read_to_string(self.path())
            .map_err(|e| format!("reading the token file {}: {e}", self.path().display()))?;
        bearer_value(&token, self.path())
    }
}

fn bearer_value(token: &str, path: &Path) -> Result<http::HeaderValue, String> {
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        format!(
            "the token in {} is not a valid header value (control characters?)",
            path.display()
        )
    })?;
    // Keeps the token out of HPACK tables and debug output.
    value.set_sensitive(true);
    Ok(value)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_at_each_call_and_kept_out_of_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = TokenFile::new(&path);
        let missing = file.header().unwrap_err();
        assert!(missing.contains(&path.display().to_string()), "{missing}");
        std::fs::write(&path, "first.token\n").unwrap();
        let value = file.header().unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer first.token");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("first.token"));
        // The kubelet rotates the file: the next call sends the new token.
        std::fs::write(&path, "second.token").unwrap();
        assert_eq!(
            file.header().unwrap().to_str().unwrap(),
            "Bearer second.token"
        );
        std::fs::write(&path, " \n").unwrap();
        assert!(file.header().unwrap_err().contains("is empty"));
    }
}
