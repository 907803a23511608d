//! Channels from one AutoCrane component to another: TLS for `https://` URLs (with certificates
//! re-read when their files change, see [`crate::tls`]), connect and request timeouts, HTTP/2
//! keep-alive, and trace-context propagation on every call.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::{RuntimeError, args::ClientTlsArgs, tls::ClientTls, trace_context::TracedChannel};

/// A channel that propagates the caller's trace context; generated clients accept it as is
/// (`WatchdogListenerClient::new(channel)`).
pub type AutoCraneChannel = TracedChannel<Channel>;

/// Where a client connects: the tonic [`Endpoint`] (timeouts, keep-alive, HTTP/2 windows) and,
/// for an `https://` URL, the TLS connector that reads the certificates' current files at every
/// new connection. Build channels with [`ClientEndpoint::connect_lazy`] or
/// [`ClientEndpoint::connect`], never from the inner endpoint alone (it has no TLS).
#[derive(Clone, Debug)]
pub struct ClientEndpoint {
    endpoint: Endpoint,
    tls: Option<TlsConnector>,
}

impl ClientEndpoint {
    /// Adjusts the tonic endpoint (window sizes, timeouts, …).
    pub fn map(self, adjust: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        Self {
            endpoint: adjust(self.endpoint),
            tls: self.tls,
        }
    }

    /// The tonic endpoint (for `https://` URLs its URI is the `http://` one the connector is
    /// handed; the origin the requests carry stays `https://`).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A lazily connecting channel: the first call connects, and a broken connection is
    /// re-established (with the certificates' files as they are then) on the next call.
    pub fn connect_lazy(&self) -> Channel {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector_lazy(tls.clone()),
            None => self.endpoint.connect_lazy(),
        }
    }

    /// A channel connected before returning.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector(tls.clone()).await,
            None => self.endpoint.connect().await,
        }
    }
}

/// Builds the endpoint for `url` (`http://host:port` or `https://host:port`); for `https://` the
/// TLS files of `tls_args` are read now (an unreadable one is an error naming its flag) and again
/// whenever they change.
pub fn endpoint(url: &str, tls_args: &ClientTlsArgs) -> Result<ClientEndpoint, RuntimeError> {
    let wrap = |source| RuntimeError::Endpoint {
        endpoint: url.to_string(),
        source,
    };
    let configure = |endpoint: Endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
    };
    if !url.starts_with("https://") {
        return Ok(ClientEndpoint {
            endpoint: configure(Endpoint::from_shared(url.to_string()).map_err(wrap)?),
            tls: None,
        });
    }
    // tonic refuses an `https://` URI without its own (read-once) TLS: the connector is handed
    // the `http://` form of the URL and makes the TLS connection itself, while the requests keep
    // the `https://` origin.
    let origin: http::Uri = Endpoint::from_shared(url.to_string())
        .map_err(wrap)?
        .uri()
        .clone();
    let authority = origin
        .authority()
        .ok_or_else(|| RuntimeError::TlsConfig(format!("{url}: no host in the URL")))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let path = origin.path_and_query().map_or("", |p| p.as_str());
    let plain = format!("http://{}:{port}{path}", authority.host());
    let tls = ClientTls::load(tls_args)?;
    let server_name = match tls.server_name() {
        Some(name) => name.clone(),
        None => ServerName::try_from(host.to_string()).map_err(|e| {
            RuntimeError::TlsConfig(format!(
                "{url}: the host is not a name TLS can verify ({e}); set --client-tls-server-name"
            ))
        })?,
    };
    let endpoint = configure(Endpoint::from_shared(plain).map_err(wrap)?).origin(origin);
    Ok(ClientEndpoint {
        endpoint,
        tls: Some(TlsConnector { tls, server_name }),
    })
}

/// Connects TCP and then TLS (ALPN `h2`) with the client configuration current at that moment,
/// so a rotated client certificate or CA bundle is used from the next connection on.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    tls: Arc<ClientTls>,
    server_name: ServerName<'static>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("no host in the URL")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls.config())
                .connect(server_name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
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
