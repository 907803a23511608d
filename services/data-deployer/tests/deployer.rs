//! The DataDeployer end to end: the real `autocrane` binary as VersionWatcher, DataRepository,
//! DataDeployer and WatchdogListener processes, real origins (git through `git daemon`, HTTP
//! archives, directories), and the pod's annotations file written the way the kubelet writes it
//! (a `..data` link swap).

use std::{path::Path, time::Duration};

use autocrane_data_deployer::desired::version_dir;

use autocrane_test_support::{
    GitRepo, GitServer, HttpOrigin, Running, assert_no_secrets, assert_traced, autocrane_bin,
    command_line, eventually, file, free_port, gzip, noise, post_sink, raw_tar,
};
mod support;
use support::{
    PodInfo, Stack, Upstream, applied_line, assert_tree, deployer, dir_spec, git_spec, http_spec,
    log_field, wait_current,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_commit_reaches_the_sidecar_current_link_as_a_delta() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("git/app"));
    let big_a = noise(11, 1_000_000);
    let big_b = noise(12, 1_000_000);
    let v1 = repo.commit(
        &[
            ("data/a.bin", &big_a),
            ("data/b.bin", &big_b),
            ("data/app.conf", b"level = 1\n"),
        ],
        &[],
    );
    let daemon = GitServer::serve(&dir.path().join("git"));
    let stack = Stack::start(dir.path(), &[]).await;
    let id = stack.track(git_spec(&daemon.url("app"), "data")).await;
    stack.synced(&id, &v1).await;

    let root = dir.path().join("data");
    let mut pod = PodInfo::new(&dir.path().join("podinfo"));
    pod.want("config", &v1);
    let sidecar = deployer(
        "sidecar",
        &stack,
        &root,
        &pod,
        ("config", &id),
        &[],
        "sidecar",
    );
    wait_current(&root, "config", &v1, Duration::from_secs(30)).await;
    assert_tree(
        &root.join("config/current"),
        &[
            ("a.bin", &big_a),
            ("b.bin", &big_b),
            ("app.conf", b"level = 1\n"),
        ],
    );

    // A new commit: one small file changes.
    let v2 = repo.commit(&[("data/app.conf", b"level = 2\n")], &[]);
    stack.synced(&id, &v2).await;
    pod.want("config", &v2);
    wait_current(&root, "config", &v2, Duration::from_secs(30)).await;
    assert_tree(
        &root.join("config/current"),
        &[
            ("a.bin", &big_a),
            ("b.bin", &big_b),
            ("app.conf", b"level = 2\n"),
        ],
    );
    let log = applied_line(&sidecar, &v2, &[]).await;
    let moved = log_field(&log, "Version applied", "fetched_bytes").unwrap();
    let total = log_field(&log, "Version applied", "version_bytes").unwrap();
    println!(
        "delta {v1} -> {v2}: {moved} bytes moved for 10 bytes changed, of a {total}-byte version"
    );
    assert_eq!(moved, 10, "only the changed file's bytes move");

    // Rollback to the previous version is instant: its directory is still there.
    assert!(root.join("config").join(version_dir(&v1)).is_dir());
    pod.want("config", &v1);
    wait_current(&root, "config", &v1, Duration::from_secs(10)).await;
    applied_line(&sidecar, &v1, &["reused=true", "fetched_bytes=0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exits_once_live_and_fails_clearly_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start();
    let version = origin.put(
        "/data.tar.gz",
        gzip(&raw_tar(&[
            file("model/weights.bin", &noise(5, 200_000)),
            file("VERSION", b"7\n"),
        ])),
    );
    let stack = Stack::start(dir.path(), &[]).await;
    let id = stack.track(http_spec(&origin.url("/data.tar.gz"))).await;
    stack.synced(&id, &version).await;

    let root = dir.path().join("data");
    let mut pod = PodInfo::new(&dir.path().join("podinfo"));
    pod.want("model", &version);
    let mut init = deployer(
        "init",
        &stack,
        &root,
        &pod,
        ("model", &id),
        &["--timeout", "30"],
        "init",
    );
    let status = init.wait_exit(Duration::from_secs(40)).expect("init exits");
    assert!(status.success(), "{}", init.log_text());
    assert_tree(
        &root.join("model/current"),
        &[
            ("model/weights.bin", &noise(5, 200_000)),
            ("VERSION", b"7\n"),
        ],
    );

    pod.want("model", "no-such-version");
    let mut init = deployer(
        "init",
        &stack,
        &root,
        &pod,
        ("model", &id),
        &["--timeout", "2"],
        "init-timeout",
    );
    let status = init
        .wait_exit(Duration::from_secs(20))
        .expect("init exits after its timeout");
    assert!(!status.success());
    let log = init.log_text();
    assert!(
        log.contains("timed out after 2 s") && log.contains("no-such-version"),
        "{log}"
    );
    assert!(
        root.join("model/current").exists(),
        "the live version stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_validation_keeps_the_live_version_and_swaps_notify_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    std::fs::create_dir_all(source.join("v1")).unwrap();
    std::fs::write(source.join("v1/settings.yaml"), b"valid: true\n").unwrap();
    let stack = Stack::start(dir.path(), &[]).await;
    let id = stack.track(dir_spec(&source)).await;
    stack.synced(&id, "v1").await;
    std::fs::create_dir_all(source.join(".v2.tmp")).unwrap();
    std::fs::write(source.join(".v2.tmp/settings.yaml"), b"valid: false\n").unwrap();
    std::fs::rename(source.join(".v2.tmp"), source.join("v2")).unwrap();
    stack.synced(&id, "v2").await;

    let (port, notifications) = post_sink();
    let root = dir.path().join("data");
    let mut pod = PodInfo::new(&dir.path().join("podinfo"));
    pod.want("settings", "v1");
    let validate = "grep -q 'valid: true' \"$AUTOCRANE_DATA_DIR/settings.yaml\" || { echo \"$AUTOCRANE_DATA_VERSION is not valid\" >&2; exit 3; }";
    let notify = format!("http://127.0.0.1:{port}/reload");
    let sidecar = deployer(
        "sidecar",
        &stack,
        &root,
        &pod,
        ("settings", &id),
        &["--validate-command", validate, "--notify-url", &notify],
        "sidecar",
    );
    wait_current(&root, "settings", "v1", Duration::from_secs(30)).await;
    let first = eventually(Duration::from_secs(10), "the app to be notified", || {
        let got = notifications.lock().unwrap().first().cloned();
        async move { got }
    })
    .await;
    let body: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (body["source"].as_str(), body["version"].as_str()),
        (Some("settings"), Some("v1"))
    );

    pod.want("settings", "v2");
    let reason = eventually(Duration::from_secs(30), "the validation failure", || {
        let line = sidecar
            .log_text()
            .lines()
            .find(|l| l.contains("Applying a version failed"))
            .map(str::to_string);
        async move { line }
    })
    .await;
    assert!(
        reason.contains("validation failed") && reason.contains("v2 is not valid"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_link(root.join("settings/current")).unwrap(),
        Path::new("v1"),
        "the swap was aborted"
    );
    assert_eq!(
        std::fs::read(root.join("settings/current/settings.yaml")).unwrap(),
        b"valid: true\n"
    );
    assert_eq!(
        notifications.lock().unwrap().len(),
        1,
        "no notification without a swap"
    );
}

/// `curl` against the API server with the admin token; returns the JSON body.
fn kube(
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut command = std::process::Command::new("curl");
    command
        .args([
            "-sS",
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
        ])
        .arg(format!("{url}{path}"));
    if let Some(body) = body {
        command.args(["-d", &body.to_string()]);
    }
    let output = command.output().expect("curl");
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_reported_as_the_data_watchdog_through_the_watchdog_listener() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    std::fs::create_dir_all(source.join("v1")).unwrap();
    std::fs::write(source.join("v1/rules.txt"), b"allow all\n").unwrap();
    let stack = Stack::start(dir.path(), &[]).await;
    let id = stack.track(dir_spec(&source)).await;
    stack.synced(&id, "v1").await;

    // A Kubernetes API (kube-sim, with authentication), a pod, and the real WatchdogListener.
    let sim = kube_sim::KubeSim::builder()
        .auth(true)
        .start()
        .await
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let token = sim.admin_token().to_string();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-0", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    let created = kube(
        &sim.url(),
        &token,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod),
    );
    assert_eq!(created["metadata"]["name"], "app-0", "{created}");
    let listener_port = free_port();
    let mut listener_cmd = std::process::Command::new(autocrane_bin());
    listener_cmd
        .args([
            "watchdog-listener",
            "--listen",
            &format!("127.0.0.1:{listener_port}"),
            "--admin-listen",
            "off",
            "--log",
            "trace",
        ])
        .env("KUBECONFIG", &kubeconfig);
    let listener = Running::logged("watchdog-listener", listener_cmd, dir.path());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();

    let root = dir.path().join("data");
    let mut podinfo = PodInfo::new(&dir.path().join("podinfo"));
    podinfo.want("rules", "v1");
    let watchdog_url = format!("http://127.0.0.1:{listener_port}");
    let sidecar = deployer(
        "sidecar",
        &stack,
        &root,
        &podinfo,
        ("rules", &id),
        &[
            "--watchdog-listener",
            &watchdog_url,
            "--token-file",
            token_file.to_str().unwrap(),
            "--pod-namespace",
            "default",
            "--pod-name",
            "app-0",
            "--log",
            "trace",
        ],
        "sidecar",
    );
    let annotation = |wanted: &'static str| {
        let (url, token) = (sim.url(), token.clone());
        async move {
            eventually(
                Duration::from_secs(30),
                &format!("the data-rules watchdog to say {wanted}"),
                || {
                    let pod = kube(
                        &url,
                        &token,
                        "GET",
                        "/api/v1/namespaces/default/pods/app-0",
                        None,
                    );
                    let value = pod["metadata"]["annotations"]["status.autocrane.io/data-rules"]
                        .as_str()
                        .map(str::to_string);
                    async move { value.filter(|v| v.contains(wanted)) }
                },
            )
            .await
        }
    };
    let applied = annotation("applied v1").await;
    assert!(applied.starts_with("info/"), "{applied}");
    podinfo.want("rules", "v9");
    let failed = annotation("v9").await;
    assert!(
        failed.starts_with("error/") && failed.contains("NotFound"),
        "{failed}"
    );
    println!("status.autocrane.io/data-rules: {applied} -> {failed}");

    // Both logged at trace, and neither shows the token it sent or reviewed.
    for (name, process) in [("DataDeployer", &sidecar), ("WatchdogListener", &listener)] {
        let log = process.log_text();
        assert_traced(name, &log, 50);
        assert_no_secrets(&format!("the {name}'s log"), &log, &[&token]);
        assert_no_secrets(
            &format!("the {name}'s command line"),
            &command_line(process.pid()),
            &[&token],
        );
    }
}
