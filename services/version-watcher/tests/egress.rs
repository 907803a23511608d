//! The egress policy against real upstreams on 127.0.0.1 (`docker-registry`, `git daemon`, an
//! HTTP origin): refused without `--allow-upstream-host` (at the request when the URL says
//! loopback, at the probe when only the resolved address does), served with it; hostile git URLs
//! refused before any `git` process starts; `git` blind to the server's own git configuration.

mod common;

use std::path::Path;

use autocrane_api::proto::version_v1 as pb;
use autocrane_test_support::{GitServer, HttpOrigin, git, loopback_alias};
use common::*;

fn spec(upstream: pb::source_spec::Upstream) -> pb::SourceSpec {
    pb::SourceSpec {
        upstream: Some(upstream),
        policy: None,
        poll_interval: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    }
}

fn oci(registry: &str) -> pb::SourceSpec {
    spec(pb::source_spec::Upstream::Oci(pb::OciSource {
        registry: registry.into(),
        repository: "team/app".into(),
        resolve_digests: Some(false),
    }))
}

fn http_source(url: &str) -> pb::SourceSpec {
    spec(pb::source_spec::Upstream::Http(pb::HttpSource {
        url: url.into(),
        json_pointer: String::new(),
    }))
}

fn git_source(url: &str) -> pb::SourceSpec {
    spec(pb::source_spec::Upstream::Git(pb::GitSource {
        url: url.into(),
        r#ref: String::new(),
        path: String::new(),
    }))
}

async fn get_source(
    client: &mut Grpc,
    spec: pb::SourceSpec,
) -> Result<pb::SourceState, tonic::Status> {
    client
        .get_source(pb::GetSourceRequest { source: Some(spec) })
        .await
        .map(|r| r.into_inner().source.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_upstreams_are_refused_until_allowed_by_name() {
    let registry = Registry::start(None).await;
    registry.push_tag("team/app", "1.0.0").await;
    let origin = HttpOrigin::start();
    let etag = origin.put("/release", b"v1".to_vec());
    let server = GitServer::start();
    let (git_url, work) = server.create_repo("app");
    let head = git(&work, &["rev-parse", "HEAD"]);
    let alias = loopback_alias();

    let state = tempfile::tempdir().unwrap();
    let refusing = InProcess::start_with(state.path(), None, &[]).await;
    let mut client = refusing.client().await;
    for (spec, field) in [
        (oci(&registry.url()), "source.oci.registry"),
        (
            oci(&format!("http://localhost:{}", registry.port)),
            "source.oci.registry",
        ),
        (http_source(&origin.url("/release")), "source.http.url"),
        (
            http_source(&format!("http://2130706433:{}/release", origin.port)),
            "source.http.url",
        ),
        (
            http_source(&format!(
                "http://[::ffff:127.0.0.1]:{}/release",
                origin.port
            )),
            "source.http.url",
        ),
        (git_source(&git_url), "source.git.url"),
        (
            git_source(&format!("git://0x7f.1:{}/app.git", server.port)),
            "source.git.url",
        ),
    ] {
        let refused = get_source(&mut client, spec.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{spec:?}");
        assert!(
            refused.message().starts_with(&format!("{field}: "))
                && refused.message().contains("loopback address")
                && refused.message().contains("--allow-upstream-host"),
            "{}",
            refused.message()
        );
    }
    // A name that only resolves to loopback passes the request and fails every probe, at the
    // connection (HTTP, OCI) or before `git` starts, with the same reason.
    for spec in [
        oci(&format!("http://{alias}:{}", registry.port)),
        http_source(&format!("http://{alias}:{}/release", origin.port)),
        git_source(&format!("git://{alias}:{}/app.git", server.port)),
    ] {
        let state = get_source(&mut client, spec.clone()).await.unwrap();
        assert!(state.current.is_none(), "{spec:?}");
        assert_eq!(health(&state), pb::SourceHealth::Failing, "{spec:?}");
        let error = &state.status.as_ref().unwrap().last_error;
        assert!(
            error.contains(&format!("{alias} (127.0.0.1) is a loopback address"))
                && error.contains("--allow-upstream-host"),
            "{spec:?}: {error}"
        );
    }
    refusing.stop().await;

    // Allowed by address: the same sources, spelled any way, are served.
    let state = tempfile::tempdir().unwrap();
    let allowing = InProcess::start_with(state.path(), None, &["127.0.0.1"]).await;
    let mut client = allowing.client().await;
    for (spec, version) in [
        (oci(&registry.url()), "1.0.0".to_string()),
        (
            oci(&format!("http://{alias}:{}", registry.port)),
            "1.0.0".into(),
        ),
        (http_source(&origin.url("/release")), etag.clone()),
        (
            http_source(&format!("http://2130706433:{}/release", origin.port)),
            etag.clone(),
        ),
        (git_source(&git_url), head.clone()),
        (
            git_source(&format!("git://{alias}:{}/app.git", server.port)),
            head.clone(),
        ),
    ] {
        let state = get_source(&mut client, spec.clone())
            .await
            .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        assert_eq!(
            state.current.as_ref().map(|v| v.name.as_str()),
            Some(version.as_str()),
            "{spec:?}: {:?}",
            state.status
        );
    }
    // The allow-list opens loopback, not the metadata endpoint.
    let metadata = get_source(
        &mut client,
        http_source("http://169.254.169.254/latest/meta-data/"),
    )
    .await
    .unwrap_err();
    assert_eq!(metadata.code(), tonic::Code::InvalidArgument);
    assert!(
        metadata.message().contains("cloud metadata"),
        "{}",
        metadata.message()
    );
    allowing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_git_urls_are_refused_before_any_git_process_starts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let payload = format!("touch% {}", marker.display());
    // The control: git itself runs this payload when ext:: is enabled, so the marker's absence
    // below means no git ran it, not that the payload is harmless.
    let control = std::process::Command::new(system_tool("git"))
        .args(["-c", "protocol.ext.allow=always", "ls-remote"])
        .arg(format!("ext::sh -c {payload}"))
        .output()
        .unwrap();
    assert!(marker.exists(), "the payload works: {control:?}");
    std::fs::remove_file(&marker).unwrap();

    let repo = dir.path().join("repo");
    git(
        dir.path(),
        &["init", "-q", "-b", "main", repo.to_str().unwrap()],
    );
    let state = tempfile::tempdir().unwrap();
    let watcher = InProcess::start_with(state.path(), None, &["127.0.0.1"]).await;
    let mut client = watcher.client().await;
    for url in [
        format!("ext::sh -c {payload}"),
        format!("ext::sh -c {payload}% #://x"),
        format!("--upload-pack=touch {}", marker.display()),
        format!("ssh://-oProxyCommand=touch% {}/x", marker.display()),
        "ssh://-oProxyCommand=sh/x".to_string(),
        format!("file://{}", repo.display()),
        repo.display().to_string(),
        "fd::3".to_string(),
        "localhost:repo".to_string(),
    ] {
        let refused = get_source(&mut client, git_source(&url)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}");
        assert!(
            refused.message().starts_with("source.git.url: "),
            "{url}: {}",
            refused.message()
        );
        // The same through WatchVersions names the index of the spec.
        let refused = client
            .watch_versions(pb::WatchVersionsRequest {
                sources: vec![git_source(&url)],
                resume_token: String::new(),
            })
            .await
            .unwrap_err();
        assert!(
            refused.message().starts_with("sources[0].git.url: "),
            "{url}: {}",
            refused.message()
        );
    }
    assert!(!marker.exists(), "no git process ran a payload");
    let sources = client
        .list_sources(pb::ListSourcesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(sources.sources.is_empty(), "nothing was added: {sources:?}");
    watcher.stop().await;
}

/// A global git configuration that turns every fetch from `git_base` into `touch marker`.
fn hostile_gitconfig(path: &Path, git_base: &str, marker: &Path) {
    std::fs::write(
        path,
        format!(
            "[protocol \"ext\"]\n\tallow = always\n[url \"ext::sh -c touch% {}% ;% true% \"]\n\tinsteadOf = {git_base}\n",
            marker.display()
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_ignores_the_servers_own_git_configuration() {
    let server = GitServer::start();
    let (url, work) = server.create_repo("app");
    let head = git(&work, &["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let base = format!("git://127.0.0.1:{}/", server.port);
    hostile_gitconfig(&home.join(".gitconfig"), &base, &marker);
    let global = dir.path().join("global.gitconfig");
    hostile_gitconfig(&global, &base, &marker);

    // The control: a git with this environment runs the payload.
    for env in [("HOME", &home), ("GIT_CONFIG_GLOBAL", &global)] {
        let control = std::process::Command::new(system_tool("git"))
            .args(["ls-remote", &url])
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert!(
            marker.exists(),
            "{} makes git run the payload: {control:?}",
            env.0
        );
        std::fs::remove_file(&marker).unwrap();
    }

    let state = tempfile::tempdir().unwrap();
    let watcher = BinaryWatcher::start_with_env(
        &state.path().join("state"),
        &[("HOME", &home), ("GIT_CONFIG_GLOBAL", &global)],
    )
    .await;
    let mut client = watcher.client().await;
    let source = get_source(&mut client, git_source(&url)).await.unwrap();
    assert_eq!(
        source.current.as_ref().map(|v| v.name.as_str()),
        Some(head.as_str()),
        "{:?}",
        source.status
    );
    assert!(
        !marker.exists(),
        "the server's git configuration was not read"
    );
}
