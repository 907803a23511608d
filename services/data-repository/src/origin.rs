//! Fetching one version from its origin into the staging area: git (the `git` CLI: a shallow
//! fetch of the commit into a bare cache repository, then `git archive` of the sub-path streamed
//! through the tar extractor), HTTP archives (tar, tar.gz, zip; downloaded to a staging file under
//! a size limit, format sniffed from the first bytes), and local directories.
//!
//! Git and HTTP reach only what the server's egress policy allows: `git` runs in the runtime's
//! [`GitSandbox`] (URL grammar and resolved host checked before the process starts, environment
//! isolated), HTTP through the connector that checks every address it connects to.

use std::{
    io::{Read, Seek},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use autocrane_api::proto::version_v1::{self as vpb, source_spec::Upstream};
use autocrane_runtime::{
    errors::error_chain,
    upstream::{git::GitSandbox, local_dirs::AllowedDirectories},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use tokio::io::AsyncWriteExt;

use crate::{
    stage::{self, StageError, Stager},
    store::{Staged, Store},
};

/// How long one HTTP download may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(600);

type HttpsClient = Client<autocrane_runtime::upstream::http::UpstreamConnector, Empty<Bytes>>;

/// Fetches versions from origins.
#[derive(Clone, Debug)]
pub struct Origins {
    store: Store,
    client: HttpsClient,
    max_version_bytes: u64,
    directories: AllowedDirectories,
    git: GitSandbox,
}

impl Origins {
    /// Origins staging into `store`, rejecting versions over `max_version_bytes`, copying directory
    /// sources only from under `directories`, reaching git and HTTP origins only where `git`'s
    /// egress policy allows.
    pub fn new(
        store: Store,
        max_version_bytes: u64,
        directories: AllowedDirectories,
        git: GitSandbox,
    ) -> Self {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(
            autocrane_runtime::upstream::http::connector(git.policy().clone()),
        );
        Self {
            store,
            client,
            max_version_bytes,
            directories,
            git,
        }
    }

    /// Fetches, stages and verifies `version` of the source `spec`.
    pub async fn stage(
        &self,
        source_id: &str,
        spec: &vpb::SourceSpec,
        version: &vpb::Version,
    ) -> Result<Staged, StageError> {
        let dir = self
            .store
            .staging_dir()
            .map_err(|e| StageError::Io(e.to_string()))?;
        let result = self.stage_into(source_id, spec, version, dir.clone()).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn stage_into(
        &self,
        source_id: &str,
        spec: &vpb::SourceSpec,
        version: &vpb::Version,
        dir: PathBuf,
    ) -> Result<Staged, StageError> {
        let limit = self.max_version_bytes;
        let blobs = self.store.root().join("blobs/sha256");
        match spec.upstream.clone() {
            Some(Upstream::Git(git)) => {
                let mirror = self
                    .store
                    .root()
                    .join("git")
                    .join(format!("{source_id}.git"));
                let commit = if is_hex_sha(&version.digest) {
                    version.digest.clone()
                } else {
                    version.name.clone()
                };
                let tag_ref = git
                    .r#ref
                    .starts_with("refs/tags/")
                    .then(|| format!("refs/tags/{}", version.name));
                let fetch_ref = tag_ref.unwrap_or_else(|| {
                    if git.r#ref.is_empty() {
                        "HEAD".into()
                    } else {
                        git.r#ref.clone()
                    }
                });
                let span = tracing::info_span!("git_archive");
                let sandbox = self.git.clone();
                tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    git_fetch(&sandbox, &mirror, &git.url, &commit, &fetch_ref)?;
                    let mut stager = Stager::new(dir, limit).with_store_blobs(blobs);
                    git_archive(&sandbox, &mirror, &commit, &git.path, &mut stager)?;
                    stager.finish()
                })
                .await
                .map_err(|e| StageError::Io(format!("the git task failed: {e}")))?
            }
            Some(Upstream::Http(http)) => {
                let archive = dir.join(".archive");
                self.download(&http.url, &archive, &version.digest, limit)
                    .await?;
                let span = tracing::info_span!("extract_archive");
                tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    let mut stager = Stager::new(dir, limit).with_store_blobs(blobs);
                    extract_archive(&mut stager, &archive)?;
                    let _ = std::fs::remove_file(&archive);
                    stager.finish()
                })
                .await
                .map_err(|e| StageError::Io(format!("the extraction task failed: {e}")))?
            }
            Some(Upstream::Directory(directory)) => {
                let root = if directory.version_file.is_empty() {
                    Path::new(&directory.path).join(&version.name)
                } else {
                    PathBuf::from(&directory.path)
                };
                // Checked again here, on the very path copied (a version directory can be a
                // symlink), and for sources tracked before the allow-list changed.
                self.directories
                    .check(&root)
                    .map_err(StageError::Rejected)?;
                let span = tracing::info_span!("copy_directory");
                tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    let mut stager = Stager::new(dir, limit).with_store_blobs(blobs);
                    stage::add_directory(&mut stager, &root)?;
                    stager.finish()
                })
                .await
                .map_err(|e| StageError::Io(format!("the directory task failed: {e}")))?
            }
            Some(Upstream::Oci(_)) | None => Err(StageError::Rejected(
                "only git, http and directory sources hold data".into(),
            )),
        }
    }

    /// Downloads `url` to `path`, refusing more than `limit` bytes of archive and, when the
    /// version names an ETag, a response whose ETag differs (the origin changed since the probe).
    async fn download(
        &self,
        url: &str,
        path: &Path,
        etag: &str,
        limit: u64,
    ) -> Result<(), StageError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| StageError::Io(format!("bad URL {url}: {e}")))?;
        let request = http::Request::get(uri)
            .header(http::header::USER_AGENT, "autocrane-data-repository")
            .body(Empty::new())
            .map_err(|e| StageError::Io(format!("building the request to {url}: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| StageError::Io(format!("GET {url}: {}", error_chain(&e))))?;
            if !response.status().is_success() {
                return Err(StageError::Io(format!("GET {url}: {}", response.status())));
            }
            if let Some(got) = response
                .headers()
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                && !etag.is_empty()
                && got != etag
            {
                return Err(StageError::Io(format!(
                    "GET {url}: the ETag is {got}, not {etag}: the origin changed; the new version will follow"
                )));
            }
            let archive_limit = limit.saturating_mul(2).saturating_add(1 << 20);
            let mut file = tokio::fs::File::create(path)
                .await
                .map_err(|e| StageError::Io(format!("creating {}: {e}", path.display())))?;
            let mut body = response.into_body();
            let mut size = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| StageError::Io(format!("GET {url}: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    size += data.len() as u64;
                    if size > archive_limit {
                        return Err(StageError::Rejected(format!(
                            "the archive is larger than {archive_limit} bytes"
                        )));
                    }
                    file.write_all(&data)
                        .await
                        .map_err(|e| StageError::Io(format!("writing {}: {e}", path.display())))?;
                }
            }
            file.flush()
                .await
                .map_err(|e| StageError::Io(format!("writing {}: {e}", path.display())))?;
            Ok(())
        };
        tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| StageError::Io(format!("GET {url}: timed out after {HTTP_TIMEOUT:?}")))?
    }
}

fn is_hex_sha(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Sniffs the archive format (gzip, zip, else tar) and extracts it.
pub fn extract_archive(stager: &mut Stager, path: &Path) -> Result<(), StageError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| StageError::Io(format!("opening {}: {e}", path.display())))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).unwrap_or(0);
    file.rewind()
        .map_err(|e| StageError::Io(format!("reading {}: {e}", path.display())))?;
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        stage::extract_tar(
            stager,
            flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
        )
    } else if n == 4 && magic == *b"PK\x03\x04" {
        stage::extract_zip(stager, file)
    } else {
        stage::extract_tar(stager, std::io::BufReader::new(file))
    }
}

/// `git -C dir` in the sandbox, for commands on the local mirror.
fn git(sandbox: &GitSandbox, dir: &Path) -> Command {
    let mut command = sandbox.command();
    command.arg("-C").arg(dir);
    command
}

/// `git -C dir` for a command that reaches `url`: refused (before any process starts) when the
/// URL's grammar or its host's addresses are not allowed.
fn git_remote(sandbox: &GitSandbox, dir: &Path, url: &str) -> Result<Command, StageError> {
    let mut command = sandbox
        .remote_blocking(url)
        .map_err(|e| StageError::Rejected(format!("git fetch {url}: {e}")))?;
    command.arg("-C").arg(dir);
    Ok(command)
}

fn run(mut command: Command, what: &str) -> Result<(), StageError> {
    let output = command
        .output()
        .map_err(|e| StageError::Io(format!("running git {what}: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(StageError::Io(format!(
            "git {what}: {}",
            stderr.trim().lines().last().unwrap_or("failed")
        )));
    }
    Ok(())
}

/// Makes `commit` present in the bare cache repository `mirror`.
fn git_fetch(
    sandbox: &GitSandbox,
    mirror: &Path,
    url: &str,
    commit: &str,
    fetch_ref: &str,
) -> Result<(), StageError> {
    let present = |mirror: &Path| {
        git(sandbox, mirror)
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // A commit already cached needs no remote: no DNS lookup, no connection.
    if mirror.join("HEAD").exists() && present(mirror) {
        return Ok(());
    }
    // Checked before the mirror is made, so a refused remote leaves no mirror behind either.
    let by_id_command = git_remote(sandbox, mirror, url)?;
    if !mirror.join("HEAD").exists() {
        let _ = std::fs::remove_dir_all(mirror);
        std::fs::create_dir_all(mirror)
            .map_err(|e| StageError::Io(format!("creating {}: {e}", mirror.display())))?;
        let mut init = git(sandbox, mirror);
        init.args(["init", "--bare", "-q"]);
        run(init, "init")?;
    }
    // By commit id first (protocol v2 serves any reachable commit), else the ref it came from.
    let mut by_id = by_id_command;
    by_id.args([
        "fetch",
        "-q",
        "--depth",
        "1",
        "--no-tags",
        "--",
        url,
        commit,
    ]);
    if run(by_id, "fetch").is_ok() && present(mirror) {
        return Ok(());
    }
    let mut by_ref = git_remote(sandbox, mirror, url)?;
    by_ref.args(["fetch", "-q", "--no-tags", "--", url, fetch_ref]);
    run(by_ref, "fetch")?;
    if present(mirror) {
        Ok(())
    } else {
        Err(StageError::Io(format!(
            "commit {commit} is not on {fetch_ref} of {url}"
        )))
    }
}

/// Streams `git archive` of `commit` (narrowed to `path`) into the stager.
fn git_archive(
    sandbox: &GitSandbox,
    mirror: &Path,
    commit: &str,
    path: &str,
    stager: &mut Stager,
) -> Result<(), StageError> {
    let tree = if path.trim_matches('/').is_empty() {
        commit.to_string()
    } else {
        format!("{commit}:{}", path.trim_matches('/'))
    };
    let mut child = git(sandbox, mirror)
        .args(["archive", "--format=tar", &tree])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StageError::Io(format!("running git archive: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let extracted = stage::extract_tar(stager, std::io::BufReader::new(stdout));
    let output = child
        .wait_with_output()
        .map_err(|e| StageError::Io(format!("waiting for git archive: {e}")))?;
    if !output.status.success() {
        return Err(StageError::Io(format!(
            "git archive {tree}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    extracted
}
