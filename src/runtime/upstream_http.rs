//! The HTTPS connector for upstream origins (OCI registries, HTTP sources and archives): rustls with
//! the ring provider and the system's root certificates, plain HTTP allowed for `http://` URLs.
//! One definition, so every component that reaches outside the cluster trusts the same roots.

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// A connector for `hyper_util`'s legacy client: `Client::builder(TokioExecutor::new())
/// .build(upstream_http::connector())`.
pub fn connector() -> HttpsConnector<HttpConnector> {
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
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build()
}
