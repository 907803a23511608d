//! [`Registry`]: a real OCI registry (Debian `docker-registry`) on 127.0.0.1, pushed to over the
//! distribution API (blobs, then a manifest per tag), optionally with basic auth or notifications.
//! The VersionWatcher's tests follow it directly; the controller's scenarios follow it through a
//! VersionWatcher. [`http`] is the plain HTTP client both use.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use crate::{Running, eventually, free_port, system_tool};

/// One HTTP/1.1 request over plain TCP: (status, headers, body). Panics when the request
/// cannot be sent (a test talking to its own loopback server).
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Bytes) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A `docker-registry` process on 127.0.0.1 with its own root directory.
#[derive(Debug)]
pub struct Registry {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Running>,
    /// `Authorization` for pushes when the registry requires basic auth.
    authorization: Option<String>,
}

impl Registry {
    /// Starts a registry; with `notify`, its notifications go to that URL.
    pub async fn start(notify: Option<&str>) -> Registry {
        Self::start_with(notify, None).await
    }

    /// Starts a registry that requires basic auth as `user:password` (an htpasswd file with a
    /// bcrypt hash made by python3's `crypt`).
    pub async fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::start_with(None, Some((user, password))).await
    }

    async fn start_with(notify: Option<&str>, basic: Option<(&str, &str)>) -> Registry {
        system_tool("docker-registry");
        // tmpfs when there is one: this disk is mounted with `discard`, where removing the ~30,000
        // files of a 5,000-tag repository takes tens of seconds.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("vw-registry-")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let port = free_port();
        let (auth, authorization) = match basic {
            None => (String::new(), None),
            Some((user, password)) => {
                let python = system_tool("python3");
                let hash = Command::new(python)
                    .args(["-W", "ignore", "-c", "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1024)))", password])
                    .output()
                    .expect("hashing the password with python3");
                let hash = String::from_utf8(hash.stdout).unwrap().trim().to_string();
                assert!(
                    hash.starts_with("$2"),
                    "python3 crypt made no bcrypt hash: {hash:?}"
                );
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                let token = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{user}:{password}"),
                );
                (
                    format!(
                        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                        htpasswd.display()
                    ),
                    Some(format!("Basic {token}")),
                )
            }
        };
        let notifications = match notify {
            Some(url) => format!(
                "notifications:\n  endpoints:\n    - name: autocrane\n      url: {url}\n      timeout: 2s\n      threshold: 5\n      backoff: 200ms\n      ignoredmediatypes:\n        - application/octet-stream\n"
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n{notifications}{auth}",
            root = dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = Registry {
            port,
            dir,
            process: None,
            authorization,
        };
        registry.spawn().await;
        registry
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(system_tool("docker-registry"));
        command.arg("serve").arg(self.dir.path().join("config.yml"));
        self.process = Some(
            Running::builder(command)
                .log_to(self.dir.path().join("registry.log"))
                .start(),
        );
        let (url, port) = (self.url(), self.port);
        eventually(
            Duration::from_secs(10),
            &format!("docker-registry to serve on port {}", self.port),
            || {
                let url = url.clone();
                async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                        && matches!(
                            http("GET", &format!("{url}/v2/"), &[], vec![]).await.0,
                            200 | 401
                        )
                }
            },
        )
        .await;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the registry (its data stays).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// An HTTP call with the registry's credentials, if it has any.
    async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, http::HeaderMap, Bytes) {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(authorization) = &self.authorization {
            all.push(("authorization", authorization));
        }
        http(method, url, &all, body).await
    }

    async fn upload_blob(&self, repository: &str, blob: &[u8]) -> String {
        let digest = sha256(blob);
        let base = self.url();
        let (status, _, _) = self
            .call(
                "HEAD",
                &format!("{base}/v2/{repository}/blobs/{digest}"),
                &[],
                vec![],
            )
            .await;
        if status == 200 {
            return digest;
        }
        let (status, headers, _) = self
            .call(
                "POST",
                &format!("{base}/v2/{repository}/blobs/uploads/"),
                &[],
                vec![],
            )
            .await;
        assert_eq!(status, 202, "starting a blob upload");
        let location = headers["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let (status, _, body) = self
            .call(
                "PUT",
                &format!("{location}{separator}digest={digest}"),
                &[("content-type", "application/octet-stream")],
                blob.to_vec(),
            )
            .await;
        assert_eq!(status, 201, "finishing a blob upload: {body:?}");
        digest
    }

    /// A manifest for a new image whose config names `label`; returns the manifest bytes.
    async fn manifest(&self, repository: &str, label: &str) -> Vec<u8> {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"v":"{label}"}}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        );
        let layer = b"autocrane test layer".to_vec();
        let config_digest = self.upload_blob(repository, config.as_bytes()).await;
        let layer_digest = self.upload_blob(repository, &layer).await;
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        )
        .into_bytes()
    }

    async fn put_manifest(&self, repository: &str, tag: &str, manifest: Vec<u8>) -> String {
        let (status, headers, body) = self
            .call(
                "PUT",
                &format!("{}/v2/{repository}/manifests/{tag}", self.url()),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                manifest,
            )
            .await;
        assert_eq!(
            status, 201,
            "pushing the manifest of {repository}:{tag}: {body:?}"
        );
        headers["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Pushes a new image as `repository:tag` over the distribution API; returns its digest.
    pub async fn push_tag(&self, repository: &str, tag: &str) -> String {
        self.publish(repository, tag).await.0
    }

    /// Like `push_tag`, also returning when the publishing request (the manifest PUT, after the
    /// blobs are uploaded) started: the moment a version is published.
    pub async fn publish(&self, repository: &str, tag: &str) -> (String, Instant) {
        let manifest = self.manifest(repository, tag).await;
        let started = Instant::now();
        (self.put_manifest(repository, tag, manifest).await, started)
    }

    /// Pushes one image under every tag of `tags` (16 requests in flight).
    pub async fn push_many(&self, repository: &str, tags: &[String]) {
        use futures::StreamExt;
        let manifest = self.manifest(repository, "many").await;
        futures::stream::iter(tags)
            .for_each_concurrent(16, |tag| {
                let manifest = manifest.clone();
                async move {
                    self.put_manifest(repository, tag, manifest).await;
                }
            })
            .await;
    }
}
