//! The HTTPS connector for upstream origins (OCI registries, HTTP sources and archives): rustls with
//! the ring provider and the system's root certificates, plain HTTP allowed for `http://` URLs.
//! One definition, so every component that reaches outside the cluster trusts the same roots.
//!
//! Upstream URLs come from API callers, so the connector refuses the cloud instance-metadata
//! addresses (link-local `169.254.0.0/16` and `fe80::/10`, AWS's `fd00:ec2::254`, Alibaba's
//! `100.100.100.200`): a source spec must not be a way to read the node's credentials. Both IP
//! literals in URLs and names that resolve there are refused.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
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

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The connector [`connector`] returns.
pub type UpstreamConnector = HttpsConnector<NoMetadata<HttpConnector<NoMetadataResolver>>>;

/// A connector for `hyper_util`'s legacy client: `Client::builder(TokioExecutor::new())
/// .build(upstream_http::connector())`.
pub fn connector() -> UpstreamConnector {
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
    let mut http = HttpConnector::new_with_resolver(NoMetadataResolver::default());
    // The TLS layer above decides between http and https.
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(NoMetadata(http))
}

/// Whether `ip` is a cloud instance-metadata address (or in the link-local range they live in).
pub fn is_metadata_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_metadata_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            (first & 0xffc0) == 0xfe80 || v6.segments() == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254]
        }
    }
}

fn refused(what: &str) -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{what} is a cloud metadata (link-local) address; upstream sources may not reach it"
        ),
    ))
}

/// Refuses URLs whose host is a metadata IP literal, then connects with the inner connector.
#[derive(Clone, Debug)]
pub struct NoMetadata<C>(C);

impl<C> Service<Uri> for NoMetadata<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = BoxFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let literal = uri
            .host()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<IpAddr>().ok());
        if let Some(ip) = literal.filter(|ip| is_metadata_address(*ip)) {
            return Box::pin(async move { Err(refused(&ip.to_string())) });
        }
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The system resolver, minus metadata addresses; a name that resolves only to them is refused.
#[derive(Clone, Debug)]
pub struct NoMetadataResolver(GaiResolver);

impl Default for NoMetadataResolver {
    fn default() -> Self {
        Self(GaiResolver::new())
    }
}

impl Service<Name> for NoMetadataResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        let resolving = self.0.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving
                .await?
                .filter(|addr| !is_metadata_address(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(refused(&host));
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_addresses_are_recognised_and_ordinary_ones_are_not() {
        for blocked in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_metadata_address(blocked.parse().unwrap()), "{blocked}");
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.1",
            "8.8.8.8",
            "::1",
            "2001:db8::1",
            "100.100.100.201",
        ] {
            assert!(!is_metadata_address(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[tokio::test]
    async fn a_metadata_url_is_refused_before_any_connection() {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Empty<bytes::Bytes>>(connector());
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/",
        ] {
            let err = client.get(url.parse().unwrap()).await.unwrap_err();
            let mut text = err.to_string();
            let mut source = err.source();
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            assert!(text.contains("cloud metadata"), "{url}: {text}");
        }
    }
}
