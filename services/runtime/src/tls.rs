//! TLS settings for servers and clients (rustls through tonic), loaded from PEM files.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{
    RuntimeError,
    args::{ClientTlsArgs, ServerTlsArgs},
};

/// Reads the file `flag` names.
fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|source| RuntimeError::LoadTls {
        path: path.to_path_buf(),
        flag,
        source,
    })
}

/// The server TLS configuration, or `None` for plaintext.
pub fn server_config(args: &ServerTlsArgs) -> Result<Option<ServerTlsConfig>, RuntimeError> {
    let ServerTlsArgs {
        tls_cert,
        tls_key,
        tls_client_ca,
    } = args;
    let (cert, key) = match (tls_cert, tls_key) {
        (None, None) if tls_client_ca.is_some() => {
            return Err(RuntimeError::TlsConfig(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            ));
        }
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(RuntimeError::TlsConfig(
                "--tls-cert and --tls-key must be given together".into(),
            ));
        }
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read(cert, "--tls-cert")?,
        read(key, "--tls-key")?,
    ));
    if let Some(ca) = tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
    }
    Ok(Some(config))
}

/// The client TLS configuration for `https://` endpoints.
pub fn client_config(args: &ClientTlsArgs) -> Result<ClientTlsConfig, RuntimeError> {
    let ClientTlsArgs {
        client_tls_ca,
        client_tls_cert,
        client_tls_key,
        client_tls_server_name,
    } = args;
    let mut config = ClientTlsConfig::new();
    config = match client_tls_ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "--client-tls-ca")?)),
        None => config.with_native_roots(),
    };
    match (client_tls_cert, client_tls_key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read(cert, "--client-tls-cert")?,
                read(key, "--client-tls-key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(RuntimeError::TlsConfig(
                "--client-tls-cert and --client-tls-key must be given together".into(),
            ));
        }
    }
    if let Some(name) = client_tls_server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}
