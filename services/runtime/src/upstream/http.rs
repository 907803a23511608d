//! The HTTPS connector for upstream origins (OCI registries, HTTP sources and archives): rustls with
//! the ring provider and the system's root certificates, plain HTTP allowed for `http://` URLs.
//! One definition, so every component that reaches outside the cluster trusts the same roots.
//!
//! Upstream URLs come from API callers, so every connection passes the [`EgressPolicy`]: an IP
//! literal host is judged before anything is dialled, a name on every address it resolves to
//! (refused addresses are dropped; a name left with none fails with the policy's reason). The
//! check runs where the socket is opened, so a name that rebinds between a request-time check and
//! the connection is still caught, and so is every hop of a redirect a caller chooses to follow.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{
    HttpConnector,
    dns::{GaiResolver, Name},
};
use tower::Service;

use super::egress::{EgressPolicy, EgressRefused, host_literal};

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The connector [`connector`] returns.
pub type UpstreamConnector = HttpsConnector<EgressGuard<HttpConnector<EgressResolver>>>;

/// A connector for `hyper_util`'s legacy client that connects only where `policy` allows:
/// `Client::builder(TokioExecutor::new()).build(upstream_http::connector(policy))`.
pub fn connector(policy: EgressPolicy) -> UpstreamConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A certificate the platform ships but rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(EgressResolver {
        inner: GaiResolver::new(),
        policy: policy.clone(),
    });
    // The TLS layer above decides between http and https.
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(EgressGuard {
            inner: http,
            policy,
        })
}

fn refused(refusal: EgressRefused) -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::PermissionDenied,
        refusal.to_string(),
    ))
}

/// Judges IP-literal hosts (which `HttpConnector` connects to without asking the resolver), in
/// every notation a resolver would accept, then connects with the inner connector.
#[derive(Clone, Debug)]
pub struct EgressGuard<C> {
    inner: C,
    policy: EgressPolicy,
}

impl<C> Service<Uri> for EgressGuard<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = BoxFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default();
        if let Some(ip) = host_literal(host)
            && let Err(refusal) = self.policy.check(host, ip)
        {
            return Box::pin(async move { Err(refused(refusal)) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The system resolver, keeping only the addresses the policy allows for the name; a name left
/// with none is refused with the reason for its first address.
#[derive(Clone, Debug)]
pub struct EgressResolver {
    inner: GaiResolver,
    policy: EgressPolicy,
}

impl Service<Name> for EgressResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        let policy = self.policy.clone();
        let resolving = self.inner.call(name);
        Box::pin(async move {
            let mut first_refusal = None;
            let addrs: Vec<SocketAddr> = resolving
                .await?
                .filter(|addr| match policy.check(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        first_refusal.get_or_insert(refusal);
                        false
                    }
                })
                .collect();
            match first_refusal {
                Some(refusal) if addrs.is_empty() => Err(refused(refusal)),
                _ => Ok(addrs.into_iter()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::upstream::egress::HostPattern;

    type TestClient =
        hyper_util::client::legacy::Client<UpstreamConnector, http_body_util::Empty<bytes::Bytes>>;

    fn client(allowed: &[&str]) -> TestClient {
        let policy = EgressPolicy::new(allowed.iter().map(|p| p.parse::<HostPattern>().unwrap()));
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector(policy))
    }

    fn chain(err: &dyn StdError) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    /// An HTTP server on 127.0.0.1 that answers `200 ok` and counts the connections it accepted.
    async fn counting_server() -> (u16, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        (port, accepted)
    }

    /// A name other than `localhost` that `/etc/hosts` maps to a loopback address: resolving it
    /// needs no DNS server, and nothing about the name says "loopback".
    fn loopback_alias() -> String {
        let hosts = std::fs::read_to_string("/etc/hosts").expect("reading /etc/hosts");
        hosts
            .lines()
            .filter_map(|line| {
                let mut words = line.split('#').next()?.split_whitespace();
                let address: std::net::IpAddr = words.next()?.parse().ok()?;
                address.is_loopback().then_some(words)
            })
            .flatten()
            .find(|name| !name.contains("localhost"))
            .expect("/etc/hosts names no loopback alias besides localhost (add `127.0.0.1 vm`)")
            .to_string()
    }

    #[tokio::test]
    async fn a_metadata_url_is_refused_even_when_everything_is_allowed() {
        let client = client(&["0.0.0.0/0", "::/0"]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/",
            "http://[::ffff:a9fe:a9fe]/",
        ] {
            let err = client.get(url.parse().unwrap()).await.unwrap_err();
            let text = chain(&err);
            assert!(text.contains("cloud metadata"), "{url}: {text}");
        }
    }

    #[tokio::test]
    async fn loopback_urls_are_refused_before_any_connection_unless_allowed() {
        let (port, accepted) = counting_server().await;
        let alias = loopback_alias();
        let refused = client(&[]);
        for host in [
            "127.0.0.1".to_string(),
            "2130706433".into(),
            "0x7f.1".into(),
            "017700000001".into(),
            "[::ffff:127.0.0.1]".into(),
            "localhost".into(),
            alias.clone(),
        ] {
            let url = format!("http://{host}:{port}/");
            let err = refused.get(url.parse().unwrap()).await.unwrap_err();
            let text = chain(&err);
            assert!(
                text.contains("loopback address") && text.contains("--allow-upstream-host"),
                "{url}: {text}"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "nothing reached the server"
        );

        for (allowed, host) in [
            ("127.0.0.1", "127.0.0.1".to_string()),
            ("127.0.0.1", "2130706433".into()),
            (alias.as_str(), alias.clone()),
            ("127.0.0.0/8", "localhost".into()),
        ] {
            let url = format!("http://{host}:{port}/");
            let response = client(&[allowed])
                .get(url.parse().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{url} with {allowed} allowed: {}", chain(&e)));
            assert_eq!(response.status(), 200, "{url}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }
}
