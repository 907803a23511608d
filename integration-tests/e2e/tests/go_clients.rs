//! Clients generated in Go from `proto/` (protoc-gen-go and protoc-gen-go-grpc from the Go module
//! proxy, driven by `buf generate`; module `integration-tests/goclient`) call the three services as
//! real `autocrane` processes: a post to a WatchdogListener (against the cluster of
//! `AUTOCRANE_TEST_CLUSTER`, holding the pod), a stream from a VersionWatcher (the first message
//! of WatchVersions on a directory source) and a fetch from a DataRepository following that
//! VersionWatcher. The Go test reads the addresses from the environment and fails when one is
//! missing; this test asserts it passed.

mod common;

use std::{path::Path, process::Command, time::Duration};

use autocrane_test_support::{
    DataStack, Running, autocrane_bin, noise, run, system_tool, workspace_root,
};

/// Writes `content` at `path`, creating its parent directories.
fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_clients_generated_from_proto_call_the_three_services() {
    let root = workspace_root();
    let module = root.join("integration-tests/goclient");
    assert!(
        root.join(".cache/goclient/gen/go.mod").exists(),
        "the Go code generated from proto/ is missing at .cache/goclient/gen: run scripts/install-test-tools.sh"
    );
    let go = system_tool("go");
    // Built before anything starts, so the servers' start-up is not raced by cargo.
    autocrane_bin();

    // WatchdogListener, against a cluster holding the pod the Go client posts to.
    let cluster = common::cluster_with_pod("web-0").await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(autocrane_bin());
    command
        .args([
            "watchdog-listener",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--insecure-allow-anonymous",
        ])
        .env("KUBECONFIG", cluster.kubeconfig());
    let (listener, listener_address) = tokio::task::spawn_blocking(move || {
        let listener = Running::spawn(command);
        let address = listener.grpc_address();
        (listener, address)
    })
    .await
    .unwrap();

    // A directory source with two versions, and a VersionWatcher and a DataRepository.
    let source = dir.path().join("source");
    write(&source.join("v1/config.json"), b"{\"version\": 1}\n");
    write(&source.join("v2/config.json"), b"{\"version\": 2}\n");
    write(&source.join("v2/data/table.bin"), &noise(7, 200_000));
    let stack = DataStack::start(dir.path(), &[]).await;
    let host_port = |url: &str| url.trim_start_matches("http://").to_string();

    let mut go_test = Command::new(go);
    go_test
        .args([
            "test",
            "-trimpath",
            "-count=1",
            "-timeout=180s",
            "-v",
            "./...",
        ])
        .current_dir(&module)
        // As scripts/install-test-tools.sh builds Go: the build cache is keyed on these flags.
        .env("CGO_ENABLED", "0")
        .env(
            "AUTOCRANE_GO_WATCHDOG_LISTENER",
            listener_address.to_string(),
        )
        .env("AUTOCRANE_GO_POD", "default/web-0")
        .env("AUTOCRANE_GO_VERSION_WATCHER", host_port(&stack.vw_url))
        .env("AUTOCRANE_GO_DATA_REPOSITORY", host_port(&stack.repo_url))
        .env("AUTOCRANE_GO_DIRECTORY_SOURCE", &source);
    let (ok, out, err) = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::task::spawn_blocking(move || run(&mut go_test)),
    )
    .await
    .expect("go test within 300 s")
    .unwrap();
    assert!(
        ok,
        "go test failed:\n{out}\n{err}\n--- version-watcher log ---\n{}\n--- data-repository log ---\n{}",
        stack.vw.log_text(),
        stack.repo.log_text()
    );
    for name in [
        "TestWatchdogListenerPost",
        "TestVersionWatcherWatchVersions",
        "TestDataRepositoryFetch",
    ] {
        assert!(
            out.contains(&format!("--- PASS: {name}")),
            "{name} did not pass:\n{out}\n{err}"
        );
    }
    drop(listener);
    cluster.stop().await;
}
