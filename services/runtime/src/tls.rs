//! TLS for servers and clients (rustls), from PEM files that are **re-read when they change**.
//!
//! A certificate mounted from a Kubernetes Secret rotates in place: the kubelet writes the new
//! files into a fresh directory and swaps the `..data` symlink, cert-manager renews before expiry,
//! and nothing restarts the process. So neither side reads its files once: [`ServerTls::config`]
//! and [`ClientTls::config`] are asked for the configuration at every handshake, look at the
//! files' metadata (device, inode, size, modification and change times, of the file each path
//! resolves to — a few `stat` calls), and rebuild the rustls configuration when any of them
//! changed. Connections already open keep the certificate they were made with; streams on them
//! never drop; the next handshake uses the new files.
//!
//! A reload that fails — a file half written, a certificate whose key has not arrived yet, a
//! missing file — keeps the previous good configuration, logs a warning once for those file
//! versions, and is tried again as soon as the files change again. Only at start are bad files an
//! error, naming the flag (`--tls-cert`, `--client-tls-ca`, …). A (re)load is logged at `info`
//! with the certificate's subject, serial and `notAfter`, never with key material.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SignatureScheme,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    RuntimeError,
    args::{ClientTlsArgs, ServerTlsArgs},
    shutdown::Shutdown,
};

/// The ALPN protocol of gRPC: both sides offer only HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every AutoCrane TLS configuration (ring, as tonic and kube use).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Files that are watched for change.

/// What identifies one version of a file cheaply: the metadata of the file the path resolves to
/// (a swapped `..data` symlink resolves to a new inode; a file rewritten in place changes size or
/// times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[cfg(unix)]
fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

#[cfg(not(unix))]
fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let since = |t: std::io::Result<std::time::SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or((0, 0), |d| {
                (d.as_secs() as i64, i64::from(d.subsec_nanos()))
            })
    };
    Some(Stamp {
        dev: 0,
        ino: 0,
        len: meta.len(),
        mtime: since(meta.modified()),
        ctime: since(meta.created()),
    })
}

/// One PEM file and the flag that named it.
#[derive(Clone, Debug)]
struct File {
    path: PathBuf,
    flag: &'static str,
}

/// Why a set of files could not be loaded: which file (by flag) and what is wrong with it.
#[derive(Debug)]
enum LoadError {
    /// A file could not be read.
    Read(File, std::io::Error),
    /// A file was read but its contents are unusable.
    Invalid(File, String),
}

impl LoadError {
    fn into_runtime(self) -> RuntimeError {
        match self {
            LoadError::Read(file, source) => RuntimeError::LoadTls {
                path: file.path,
                flag: file.flag,
                source,
            },
            LoadError::Invalid(file, why) => {
                RuntimeError::TlsConfig(format!("{} {}: {why}", file.flag, file.path.display()))
            }
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read(file, err) => {
                write!(f, "reading {} ({}): {err}", file.path.display(), file.flag)
            }
            LoadError::Invalid(file, why) => {
                write!(f, "{} ({}): {why}", file.path.display(), file.flag)
            }
        }
    }
}

/// A value parsed from some files, re-parsed when they change.
trait Material: Sized + Send + Sync + 'static {
    /// What it is, for the logs ("server certificate", "client CA bundle", …).
    const WHAT: &'static str;
    /// Parses the files' contents (in the order of the files).
    fn parse(
        files: &[File],
        contents: &[Vec<u8>],
        provider: &CryptoProvider,
    ) -> Result<Self, LoadError>;
    /// Logs that it was loaded (`reload`: replacing a previous one), without key material.
    fn log_loaded(&self, files: &[File], reload: bool);
}

/// The state of a [`Watched`] value.
struct WatchState<T> {
    /// The stamps of the files the current value was read from.
    seen: Vec<Option<Stamp>>,
    /// Stamps of files that failed to load (warned about once; retried when they change).
    rejected: Option<Vec<Option<Stamp>>>,
    current: Arc<T>,
    /// Counts successful loads: configurations built from it are rebuilt when it moves.
    generation: u64,
}

/// Files whose parsed contents are re-read when any of them changes.
struct Watched<T> {
    files: Vec<File>,
    provider: Arc<CryptoProvider>,
    state: Mutex<WatchState<T>>,
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn stamps(files: &[File]) -> Vec<Option<Stamp>> {
    files.iter().map(|f| stamp(&f.path)).collect()
}

fn read_all(files: &[File]) -> Result<Vec<Vec<u8>>, LoadError> {
    files
        .iter()
        .map(|file| std::fs::read(&file.path).map_err(|e| LoadError::Read(file.clone(), e)))
        .collect()
}

impl<T: Material> Watched<T> {
    /// Loads the files now; failing is a start-up error naming the flag.
    fn load(files: Vec<File>, provider: Arc<CryptoProvider>) -> Result<Self, RuntimeError> {
        let seen = stamps(&files);
        let contents = read_all(&files).map_err(LoadError::into_runtime)?;
        let value = T::parse(&files, &contents, &provider).map_err(LoadError::into_runtime)?;
        value.log_loaded(&files, false);
        Ok(Self {
            files,
            provider,
            state: Mutex::new(WatchState {
                seen,
                rejected: None,
                current: Arc::new(value),
                generation: 0,
            }),
        })
    }

    /// The current value and its generation, after re-reading the files if they changed.
    fn current(&self) -> (Arc<T>, u64) {
        let before = stamps(&self.files);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if before == state.seen || state.rejected.as_ref() == Some(&before) {
            return (state.current.clone(), state.generation);
        }
        let loaded = read_all(&self.files)
            .and_then(|contents| T::parse(&self.files, &contents, &self.provider));
        // Files that changed while being read are read again at the next handshake; only a
        // consistent read is recorded, as loaded or as rejected.
        let settled = stamps(&self.files) == before;
        match loaded {
            Ok(value) if settled => {
                value.log_loaded(&self.files, true);
                state.current = Arc::new(value);
                state.seen = before;
                state.rejected = None;
                state.generation += 1;
            }
            Ok(_) => {}
            Err(err) => {
                if settled {
                    state.rejected = Some(before);
                }
                tracing::warn!(
                    what = T::WHAT,
                    error = %err,
                    "TLS files changed but cannot be loaded; keeping the previous {}",
                    T::WHAT
                );
            }
        }
        (state.current.clone(), state.generation)
    }
}

// ---------------------------------------------------------------------------------------------
// What the files hold.

fn certificates(file: &File, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Invalid(file.clone(), format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(LoadError::Invalid(
            file.clone(),
            "no PEM certificate in the file".into(),
        ));
    }
    Ok(certs)
}

fn private_key(file: &File, pem: &[u8]) -> Result<PrivateKeyDer<'static>, LoadError> {
    // Not the parser's message: it could quote the file.
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        LoadError::Invalid(
            file.clone(),
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
        )
    })
}

/// Subject, serial and `notAfter` of a DER certificate, for the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject's distinguished name (RFC 4514).
    pub subject: String,
    /// The serial number, hex bytes separated by colons.
    pub serial: String,
    /// The end of the validity period.
    pub not_after: String,
}

impl CertSummary {
    /// The summary of `der`, or `None` when it does not parse as X.509.
    pub fn of(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Self {
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string(),
            not_after: jiff::Timestamp::from_second(cert.validity().not_after.timestamp())
                .map_or_else(|_| cert.validity().not_after.to_string(), |t| t.to_string()),
        })
    }
}

/// A certificate chain and its private key (`--tls-cert`/`--tls-key`, or the client's pair).
#[derive(Debug)]
struct Identity(Arc<CertifiedKey>);

impl Material for Identity {
    const WHAT: &'static str = "certificate";

    fn parse(
        files: &[File],
        contents: &[Vec<u8>],
        provider: &CryptoProvider,
    ) -> Result<Self, LoadError> {
        let chain = certificates(&files[0], &contents[0])?;
        let key = private_key(&files[1], &contents[1])?;
        let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            LoadError::Invalid(
                files[1].clone(),
                format!(
                    "the key does not fit the certificate in {}: {e}",
                    files[0].path.display()
                ),
            )
        })?;
        Ok(Self(Arc::new(key)))
    }

    fn log_loaded(&self, files: &[File], reload: bool) {
        let summary = self.0.cert.first().and_then(|c| CertSummary::of(c));
        let (subject, serial, not_after) = summary
            .map(|s| (s.subject, s.serial, s.not_after))
            .unwrap_or_default();
        let message = if reload {
            "TLS certificate reloaded"
        } else {
            "TLS certificate loaded"
        };
        tracing::info!(
            file = %files[0].path.display(),
            flag = %files[0].flag,
            %subject,
            %serial,
            %not_after,
            "{message}"
        );
    }
}

/// A CA bundle (`--tls-client-ca`, `--client-tls-ca`).
#[derive(Debug)]
struct CaBundle {
    roots: Arc<RootCertStore>,
    summaries: Vec<CertSummary>,
}

impl Material for CaBundle {
    const WHAT: &'static str = "CA bundle";

    fn parse(
        files: &[File],
        contents: &[Vec<u8>],
        _provider: &CryptoProvider,
    ) -> Result<Self, LoadError> {
        let certs = certificates(&files[0], &contents[0])?;
        let summaries = certs.iter().filter_map(|c| CertSummary::of(c)).collect();
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| {
                LoadError::Invalid(
                    files[0].clone(),
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            summaries,
        })
    }

    fn log_loaded(&self, files: &[File], reload: bool) {
        let subjects: Vec<&str> = self.summaries.iter().map(|s| s.subject.as_str()).collect();
        let serials: Vec<&str> = self.summaries.iter().map(|s| s.serial.as_str()).collect();
        let message = if reload {
            "TLS CA bundle reloaded"
        } else {
            "TLS CA bundle loaded"
        };
        tracing::info!(
            file = %files[0].path.display(),
            flag = %files[0].flag,
            certificates = subjects.len(),
            subjects = ?subjects,
            serials = ?serials,
            "{message}"
        );
    }
}

fn file(path: &Path, flag: &'static str) -> File {
    File {
        path: path.to_path_buf(),
        flag,
    }
}

/// A configuration rebuilt when the generations of its parts move.
#[derive(Debug)]
struct Cached<C> {
    key: Vec<u64>,
    config: Arc<C>,
}

fn cached<C>(
    slot: &Mutex<Option<Cached<C>>>,
    key: Vec<u64>,
    build: impl FnOnce() -> Result<C, String>,
    what: &str,
) -> Option<Arc<C>> {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cached) = slot.as_ref()
        && cached.key == key
    {
        return Some(cached.config.clone());
    }
    match build() {
        Ok(config) => {
            let config = Arc::new(config);
            *slot = Some(Cached {
                key,
                config: config.clone(),
            });
            Some(config)
        }
        Err(err) => {
            tracing::warn!(error = %err, "Building the {what} TLS configuration failed; keeping the previous one");
            slot.as_ref().map(|c| c.config.clone())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers.

/// The TLS side of a gRPC server: its certificate and, with `--tls-client-ca`, the CAs whose
/// client certificates it accepts (then required), re-read when their files change.
#[derive(Debug)]
pub struct ServerTls {
    identity: Watched<Identity>,
    client_ca: Option<Watched<CaBundle>>,
    provider: Arc<CryptoProvider>,
    cache: Mutex<Option<Cached<ServerConfig>>>,
}

impl ServerTls {
    /// The server's TLS from its flags, or `None` for plaintext; bad flags or files are an error
    /// naming the flag.
    pub fn load(args: &ServerTlsArgs) -> Result<Option<Arc<Self>>, RuntimeError> {
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
        let provider = provider();
        let identity = Watched::load(
            vec![file(cert, "--tls-cert"), file(key, "--tls-key")],
            provider.clone(),
        )?;
        let client_ca = tls_client_ca
            .as_deref()
            .map(|ca| Watched::load(vec![file(ca, "--tls-client-ca")], provider.clone()))
            .transpose()?;
        let tls = Self {
            identity,
            client_ca,
            provider,
            cache: Mutex::new(None),
        };
        // The first configuration is built now, so that an unusable one fails the start.
        let (identity, _) = tls.identity.current();
        let ca = tls.client_ca.as_ref().map(|w| w.current().0);
        let config = build_server(&tls.provider, &identity, ca.as_deref())
            .map_err(RuntimeError::TlsConfig)?;
        *tls.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            key: vec![0, 0],
            config: Arc::new(config),
        });
        Ok(Some(Arc::new(tls)))
    }

    /// Whether clients must present a certificate.
    pub fn verifies_clients(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The configuration for the next handshake: the files' current contents (re-read if they
    /// changed since the last handshake; the previous good ones if they cannot be loaded).
    pub fn config(&self) -> Arc<ServerConfig> {
        let (identity, identity_generation) = self.identity.current();
        let (ca, ca_generation) = match &self.client_ca {
            Some(watched) => {
                let (ca, generation) = watched.current();
                (Some(ca), generation)
            }
            None => (None, 0),
        };
        cached(
            &self.cache,
            vec![identity_generation, ca_generation],
            || build_server(&self.provider, &identity, ca.as_deref()),
            "server",
        )
        .expect("a server configuration is built at load")
    }
}

/// Always the one certificate (rustls's own single-certificate resolver is built from a key).
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for OneCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn build_server(
    provider: &Arc<CryptoProvider>,
    identity: &Identity,
    client_ca: Option<&CaBundle>,
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(ca.roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("the client CA bundle: {e}"))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(OneCert(identity.0.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// How long a client may take to complete the TLS handshake before its connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS connections of `listener`, for `Server::serve_with_incoming_shutdown`: every accepted
/// socket gets `TCP_NODELAY` and its handshake in its own task (a slow client holds up no one),
/// with the configuration current at that moment ([`ServerTls::config`]). A failed handshake (no
/// client certificate, an unknown CA, plaintext) closes that connection only, logged at `debug`.
/// Accepting stops when `shutdown` fires or the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: Shutdown,
) -> ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.wait() => break,
                () = sender.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: keep serving the open connections.
                    tracing::warn!(error = %err, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        if tracing::enabled!(tracing::Level::DEBUG) {
                            let client = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| CertSummary::of(cert));
                            let (subject, serial) =
                                client.map(|c| (c.subject, c.serial)).unwrap_or_default();
                            tracing::debug!(
                                %peer,
                                client_subject = %subject,
                                client_serial = %serial,
                                "TLS connection accepted"
                            );
                        }
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// Where a client's trusted roots come from.
#[derive(Debug)]
enum Roots {
    /// `--client-tls-ca`, re-read when it changes.
    File(Watched<CaBundle>),
    /// The system's roots, read once.
    Native(Arc<RootCertStore>),
}

/// The TLS side of a client: the CAs it trusts (`--client-tls-ca`, else the system's roots) and,
/// for servers that verify clients, its certificate; files re-read when they change.
#[derive(Debug)]
pub struct ClientTls {
    roots: Roots,
    identity: Option<Watched<Identity>>,
    server_name: Option<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
    cache: Mutex<Option<Cached<ClientConfig>>>,
}

impl ClientTls {
    /// The client's TLS from its flags; bad flags or files are an error naming the flag.
    pub fn load(args: &ClientTlsArgs) -> Result<Arc<Self>, RuntimeError> {
        let ClientTlsArgs {
            client_tls_ca,
            client_tls_cert,
            client_tls_key,
            client_tls_server_name,
        } = args;
        let provider = provider();
        let roots = match client_tls_ca {
            Some(ca) => Roots::File(Watched::load(
                vec![file(ca, "--client-tls-ca")],
                provider.clone(),
            )?),
            None => Roots::Native(Arc::new(native_roots())),
        };
        let identity = match (client_tls_cert, client_tls_key) {
            (Some(cert), Some(key)) => Some(Watched::load(
                vec![
                    file(cert, "--client-tls-cert"),
                    file(key, "--client-tls-key"),
                ],
                provider.clone(),
            )?),
            (None, None) => None,
            _ => {
                return Err(RuntimeError::TlsConfig(
                    "--client-tls-cert and --client-tls-key must be given together".into(),
                ));
            }
        };
        let server_name = client_tls_server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|e| {
                    RuntimeError::TlsConfig(format!("--client-tls-server-name {name:?}: {e}"))
                })
            })
            .transpose()?;
        let tls = Self {
            roots,
            identity,
            server_name,
            provider,
            cache: Mutex::new(None),
        };
        let (roots, _) = tls.roots();
        let identity = tls.identity.as_ref().map(|w| w.current().0);
        let config = build_client(&tls.provider, roots, identity.as_deref())
            .map_err(RuntimeError::TlsConfig)?;
        *tls.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            key: vec![0, 0],
            config: Arc::new(config),
        });
        Ok(Arc::new(tls))
    }

    /// `--client-tls-server-name`: the name to verify instead of the URL's host.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    fn roots(&self) -> (Arc<RootCertStore>, u64) {
        match &self.roots {
            Roots::File(watched) => {
                let (bundle, generation) = watched.current();
                (bundle.roots.clone(), generation)
            }
            Roots::Native(roots) => (roots.clone(), 0),
        }
    }

    /// The configuration for the next handshake: the files' current contents (re-read if they
    /// changed; the previous good ones if they cannot be loaded).
    pub fn config(&self) -> Arc<ClientConfig> {
        let (roots, roots_generation) = self.roots();
        let (identity, identity_generation) = match &self.identity {
            Some(watched) => {
                let (identity, generation) = watched.current();
                (Some(identity), generation)
            }
            None => (None, 0),
        };
        cached(
            &self.cache,
            vec![roots_generation, identity_generation],
            || build_client(&self.provider, roots, identity.as_deref()),
            "client",
        )
        .expect("a client configuration is built at load")
    }
}

fn native_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "Reading a system CA certificate failed");
    }
    let mut roots = RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "System CA certificates rustls cannot use were skipped"
        );
    }
    roots
}

fn build_client(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(OneCert(identity.0.clone()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf for localhost: (cert PEM, key PEM, serial as logged).
    fn leaf(ca: &Ca, serial: u64) -> (String, String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.serial_number = Some(serial.into());
        params
            .distinguished_name
            .push(DnType::CommonName, format!("leaf {serial}"));
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let summary = CertSummary::of(cert.der()).unwrap();
        (cert.pem(), key.serialize_pem(), summary.serial)
    }

    fn identity_serial(tls: &ServerTls) -> String {
        let (identity, _) = tls.identity.current();
        CertSummary::of(&identity.0.cert[0]).unwrap().serial
    }

    fn server_args(dir: &Path, ca: bool) -> ServerTlsArgs {
        ServerTlsArgs {
            tls_cert: Some(dir.join("tls.crt")),
            tls_key: Some(dir.join("tls.key")),
            tls_client_ca: ca.then(|| dir.join("ca.crt")),
        }
    }

    #[test]
    fn a_rewritten_certificate_is_used_from_the_next_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let authority = ca("test CA");
        let (cert, key, first) = leaf(&authority, 1);
        std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &key).unwrap();
        let tls = ServerTls::load(&server_args(dir.path(), false))
            .unwrap()
            .unwrap();
        let before = tls.config();
        assert_eq!(identity_serial(&tls), first);
        // Unchanged files: the very same configuration, nothing re-read.
        assert!(Arc::ptr_eq(&before, &tls.config()));

        let (cert, key, second) = leaf(&authority, 2);
        std::fs::write(dir.path().join("tls.key"), &key).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
        let after = tls.config();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(identity_serial(&tls), second);
        assert_ne!(first, second);
    }

    #[test]
    fn a_half_written_or_mismatched_pair_keeps_the_previous_certificate_until_it_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let authority = ca("test CA");
        let (cert, key, first) = leaf(&authority, 10);
        std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &key).unwrap();
        let tls = ServerTls::load(&server_args(dir.path(), false))
            .unwrap()
            .unwrap();
        let good = tls.config();

        // Half a certificate.
        std::fs::write(dir.path().join("tls.crt"), &cert[..cert.len() / 2]).unwrap();
        assert!(Arc::ptr_eq(&good, &tls.config()));
        assert_eq!(identity_serial(&tls), first);

        // The new certificate before its key: the old key does not fit it.
        let (cert2, key2, second) = leaf(&authority, 11);
        std::fs::write(dir.path().join("tls.crt"), &cert2).unwrap();
        assert!(Arc::ptr_eq(&good, &tls.config()));
        assert_eq!(identity_serial(&tls), first);
        // Asked again with the same files: still the old one (and no second warning).
        assert!(Arc::ptr_eq(&good, &tls.config()));

        // The key arrives: the pair is whole and is used.
        std::fs::write(dir.path().join("tls.key"), &key2).unwrap();
        assert!(!Arc::ptr_eq(&good, &tls.config()));
        assert_eq!(identity_serial(&tls), second);

        // A file that disappears keeps the last good one too.
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        assert_eq!(identity_serial(&tls), second);
    }

    /// The kubelet's atomic writer: files live in a timestamped directory, `..data` points to
    /// it, and the visible names are links through `..data`; an update swaps `..data`.
    #[cfg(unix)]
    #[test]
    fn a_kubelet_style_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let authority = ca("test CA");
        let write_version = |name: &str, cert: &str, key: &str, ca_pem: &str| {
            let version = root.join(name);
            std::fs::create_dir(&version).unwrap();
            std::fs::write(version.join("tls.crt"), cert).unwrap();
            std::fs::write(version.join("tls.key"), key).unwrap();
            std::fs::write(version.join("ca.crt"), ca_pem).unwrap();
            let tmp = root.join("..data_tmp");
            symlink(name, &tmp).unwrap();
            std::fs::rename(&tmp, root.join("..data")).unwrap();
        };
        let (cert, key, first) = leaf(&authority, 20);
        write_version("..2024_01_01", &cert, &key, &authority.pem);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        let tls = ServerTls::load(&server_args(root, true)).unwrap().unwrap();
        assert!(tls.verifies_clients());
        assert_eq!(identity_serial(&tls), first);
        let (_, ca_generation) = tls.client_ca.as_ref().unwrap().current();

        // Same sizes and, on a coarse clock, maybe the same times: the inode tells them apart.
        let other = ca("second CA");
        let bundle = format!("{}{}", authority.pem, other.pem);
        let (cert, key, second) = leaf(&authority, 21);
        write_version("..2024_01_02", &cert, &key, &bundle);
        tls.config();
        assert_eq!(identity_serial(&tls), second);
        let (bundle, generation) = tls.client_ca.as_ref().unwrap().current();
        assert_eq!(generation, ca_generation + 1);
        assert_eq!(bundle.roots.len(), 2);
    }

    #[test]
    fn bad_files_at_start_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServerTls::load(&server_args(dir.path(), false)).unwrap_err();
        assert!(
            matches!(
                &err,
                RuntimeError::LoadTls {
                    flag: "--tls-cert",
                    ..
                }
            ),
            "{err:?}"
        );
        std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        let err = ServerTls::load(&server_args(dir.path(), false)).unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");

        let authority = ca("test CA");
        let (cert, _, _) = leaf(&authority, 1);
        let (_, other_key, _) = leaf(&authority, 2);
        std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &other_key).unwrap();
        let err = ServerTls::load(&server_args(dir.path(), false)).unwrap_err();
        assert!(
            err.to_string().contains("--tls-key") && err.to_string().contains("does not fit"),
            "{err}"
        );
        let secret = other_key.lines().nth(1).unwrap();
        assert!(!err.to_string().contains(secret), "no key material: {err}");

        let err = ClientTls::load(&ClientTlsArgs {
            client_tls_ca: Some(dir.path().join("absent-ca.crt")),
            ..ClientTlsArgs::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                &err,
                RuntimeError::LoadTls {
                    flag: "--client-tls-ca",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_client_rereads_its_certificate_and_roots() {
        let dir = tempfile::tempdir().unwrap();
        let authority = ca("test CA");
        let (cert, key, first) = leaf(&authority, 30);
        std::fs::write(dir.path().join("ca.crt"), &authority.pem).unwrap();
        std::fs::write(dir.path().join("client.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("client.key"), &key).unwrap();
        let tls = ClientTls::load(&ClientTlsArgs {
            client_tls_ca: Some(dir.path().join("ca.crt")),
            client_tls_cert: Some(dir.path().join("client.crt")),
            client_tls_key: Some(dir.path().join("client.key")),
            client_tls_server_name: Some("localhost".into()),
        })
        .unwrap();
        let client_serial = |tls: &ClientTls| {
            let (identity, _) = tls.identity.as_ref().unwrap().current();
            CertSummary::of(&identity.0.cert[0]).unwrap().serial
        };
        let before = tls.config();
        assert_eq!(before.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(client_serial(&tls), first);
        assert!(Arc::ptr_eq(&before, &tls.config()));

        let (cert, key, second) = leaf(&authority, 31);
        std::fs::write(dir.path().join("client.key"), &key).unwrap();
        std::fs::write(dir.path().join("client.crt"), &cert).unwrap();
        let other = ca("second CA");
        std::fs::write(
            dir.path().join("ca.crt"),
            format!("{}{}", authority.pem, other.pem),
        )
        .unwrap();
        let after = tls.config();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(client_serial(&tls), second);
        assert_eq!(tls.roots().0.len(), 2);
    }
}
