//! Data-transfer benchmark: one data set delivered five ways on this machine, in one run, so the
//! ratios are the figures.
//!
//! 1. DataRepository → DataDeployer (`init`): full fetch into an empty pod root (manifest, Fetch
//!    stream, digest verification, cache, materialised version directory, link swap);
//! 2. nginx (Debian `nginx-light`, own config on 127.0.0.1) + 4 parallel `curl` of the same files;
//! 3. `git clone` of the same content from `git daemon`;
//! 4. a 1% change delivered as a delta by the DataDeployer sidecar path: bytes moved vs changed;
//! 5. `cp -r` of the same tree: the floor of writing these files at all.
//!
//! Run from release builds: `scripts/bench.sh --only data-transfer`, or by hand
//! `cargo build --release -p autocrane && AUTOCRANE_TEST_BIN_DIR=target/release cargo run --release
//! -p autocrane-data-deployer --example data_transfer`. Prints `BENCH-RESULT` lines for
//! `scripts/bench.sh`: throughput beside nginx + curl (goal >= 1.0x) and `cp -r` (>= 0.6x), delta
//! bytes beside changed bytes (<= 1.1x).
//!
//! Size: `BENCH_FILES` (default 1000) files of `BENCH_FILE_BYTES` (default 1 GiB / 1000) random
//! bytes. Every step has a time bound (`BENCH_STEP_TIMEOUT_SECS`, default 600).
//!
//! Recorded 2026-11-26 (2 shared cores, Intel Xeon, 23 GiB, Debian 12, loopback; debug build of
//! `autocrane`; other engineers were compiling on the same cores), 1000 x 1 MiB random files:
//! - DataRepository → DataDeployer full fetch 3.66 s (280 MiB/s; fetch + verify 3.59 s, version
//!   directory 30 ms); nginx + 4 curl 1.48 s (691 MiB/s); `git clone` from `git daemon` 128.7 s;
//!   ratios: DataDeployer / nginx+curl 2.47x, git clone / DataDeployer 35.2x.
//! - 1% change (10 files, 10,737,410 bytes): the delta moved 10,737,410 bytes (1.000x the
//!   change), live in 147 ms.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use autocrane_test_support::{
    GitServer, Running, autocrane_bin, eventually, free_port, strings, system_tool,
};
#[path = "../tests/support/mod.rs"]
mod support;
use support::{Stack, Upstream, dir_spec};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(command: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .expect("sh");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn run_bounded(what: &str, command: &mut Command, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} failed: {status}");
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_annotations(dir: &Path, key: &str, value: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("annotations");
    let tmp = dir.join(".annotations.tmp");
    std::fs::write(&tmp, format!("{key}=\"{value}\"\n")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    file
}

fn mib_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / time.as_secs_f64()
}

fn log_field(log: &str, needle: &str, field: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() {
    let files = env_u64("BENCH_FILES", 1000);
    let file_bytes = env_u64("BENCH_FILE_BYTES", (1u64 << 30) / 1000);
    let limit = Duration::from_secs(env_u64("BENCH_STEP_TIMEOUT_SECS", 600));
    let total = files * file_bytes;
    let work = tempfile::Builder::new()
        .prefix("autocrane-bench-")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
        .unwrap();
    let dir = work.path();
    println!("# AutoCrane data-transfer benchmark");
    println!("machine: {}", sh("uname -srm"));
    println!(
        "cpu: {} x {}",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
    );
    println!("memory: {}", sh("grep MemTotal /proc/meminfo | tr -s ' '"));
    println!(
        "tools: {}; {}; {}",
        sh("nginx -v 2>&1"),
        sh("curl --version | head -1 | cut -d' ' -f1-2"),
        sh("git --version")
    );
    println!(
        "autocrane binary: {} (debug build)",
        autocrane_bin().display()
    );
    println!(
        "data set: {files} files x {file_bytes} bytes = {total} bytes ({:.2} GiB), random content",
        total as f64 / (1u64 << 30) as f64
    );

    // The data set: version v1 of a directory source.
    let source = dir.join("src");
    let v1 = source.join("v1");
    std::fs::create_dir_all(&v1).unwrap();
    let started = Instant::now();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    for n in 0..files {
        let mut out = std::fs::File::create(v1.join(format!("f{n:04}.bin"))).unwrap();
        std::io::copy(&mut std::io::Read::take(&mut urandom, file_bytes), &mut out).unwrap();
    }
    println!("generated in {:.1?}", started.elapsed());

    // 1. DataRepository → DataDeployer.
    let stack = Stack::start(dir, &[]).await;
    let id = stack.track(dir_spec(&source)).await;
    let started = Instant::now();
    eventually(limit, "the repository to sync v1", || {
        stack_synced(&stack, &id, "v1")
    })
    .await;
    let ingest = started.elapsed();
    println!(
        "repository ingest of v1 (read, hash, store, fsync): {ingest:.2?} ({:.0} MiB/s)",
        mib_per_s(total, ingest)
    );

    let root = dir.join("pod-root");
    let desired = write_annotations(&dir.join("podinfo"), "data.autocrane.io/bench", "v1");
    let args = |mode: &str| {
        strings(&[
            "data-deployer",
            mode,
            "--repository",
            &stack.repo_url,
            "--root",
            root.to_str().unwrap(),
            "--desired-file",
            desired.to_str().unwrap(),
            "--source",
            &format!("bench={id}"),
        ])
    };
    let started = Instant::now();
    let mut init = Running::autocrane("bench-init", &args("init"), dir);
    let status = init.wait_exit(limit).expect("init finished in time");
    let deployer_time = started.elapsed();
    assert!(status.success(), "{}", init.log_text());
    let log = init.log_text();
    let moved = log_field(&log, "Version applied", "fetched_bytes").unwrap_or(0);
    println!(
        "  (deployer: fetch + verify into the cache {} ms, version directory {} ms)",
        log_field(&log, "Version applied", "fetch_ms").unwrap_or(0),
        log_field(&log, "Version applied", "materialize_ms").unwrap_or(0)
    );
    println!(
        "DataRepository -> DataDeployer full fetch (init, process start to live link): {deployer_time:.2?} ({:.0} MiB/s), {moved} bytes moved",
        mib_per_s(total, deployer_time)
    );

    // 2. nginx + curl.
    let nginx_port = free_port();
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let conf = nginx_dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\npid {0}/nginx.pid;\nerror_log {0}/error.log;\nworker_processes 2;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {0}/body;\n  proxy_temp_path {0}/proxy;\n  fastcgi_temp_path {0}/fastcgi;\n  server {{\n    listen 127.0.0.1:{1};\n    root {2};\n  }}\n}}\n",
            nginx_dir.display(),
            nginx_port,
            v1.display()
        ),
    )
    .unwrap();
    let mut nginx = Command::new(system_tool("nginx"));
    nginx.args([
        "-c",
        conf.to_str().unwrap(),
        "-e",
        nginx_dir.join("error.log").to_str().unwrap(),
    ]);
    // Its own group: the master's workers go with it.
    let _nginx = Running::builder(nginx)
        .log_to(dir.join("nginx.log"))
        .own_process_group()
        .start();
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", nginx_port)).is_err() {
        assert!(Instant::now() < end, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let curl_out = dir.join("curl-out");
    std::fs::create_dir_all(&curl_out).unwrap();
    let started = Instant::now();
    let mut curls: Vec<_> = (0..4)
        .map(|worker| {
            let urls: Vec<String> = (0..files)
                .filter(|n| n % 4 == worker)
                .map(|n| format!("http://127.0.0.1:{nginx_port}/f{n:04}.bin"))
                .collect();
            Command::new("curl")
                .arg("-sf")
                .arg("--remote-name-all")
                .args(&urls)
                .current_dir(&curl_out)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for curl in &mut curls {
        assert!(curl.wait().unwrap().success(), "curl failed");
    }
    let curl_time = started.elapsed();
    println!(
        "nginx + 4 parallel curl: {curl_time:.2?} ({:.0} MiB/s)",
        mib_per_s(total, curl_time)
    );

    // 3. git daemon + git clone (BENCH_SKIP_GIT=1 skips it).
    let skip_git = std::env::var("BENCH_SKIP_GIT").is_ok_and(|v| v == "1");
    let git_time = if skip_git {
        None
    } else {
        git_clone(dir, &v1, files, total, limit)
    };

    // 4. A 1% change as a delta.
    let changed_files = (files / 100).max(1);
    let v2_tmp = source.join(".v2.tmp");
    std::fs::create_dir_all(&v2_tmp).unwrap();
    for n in 0..files {
        let name = format!("f{n:04}.bin");
        if n % (files / changed_files) == 0 && n / (files / changed_files) < changed_files {
            let mut out = std::fs::File::create(v2_tmp.join(&name)).unwrap();
            std::io::copy(&mut std::io::Read::take(&mut urandom, file_bytes), &mut out).unwrap();
        } else {
            std::fs::hard_link(v1.join(&name), v2_tmp.join(&name)).unwrap();
        }
    }
    std::fs::rename(&v2_tmp, source.join("v2")).unwrap();
    let changed = changed_files * file_bytes;
    let started = Instant::now();
    eventually(limit, "the repository to sync v2", || {
        stack_synced(&stack, &id, "v2")
    })
    .await;
    println!("repository ingest of v2: {:.2?}", started.elapsed());
    write_annotations(&dir.join("podinfo"), "data.autocrane.io/bench", "v2");
    let started = Instant::now();
    let mut init = Running::autocrane("bench-delta", &args("init"), dir);
    let status = init.wait_exit(limit).expect("delta finished in time");
    let delta_time = started.elapsed();
    assert!(status.success(), "{}", init.log_text());
    let log = init.log_text();
    let moved = log_field(&log, "Version applied", "fetched_bytes").unwrap_or(0);
    println!(
        "  (deployer: fetch + verify {} ms, version directory {} ms)",
        log_field(&log, "Version applied", "fetch_ms").unwrap_or(0),
        log_field(&log, "Version applied", "materialize_ms").unwrap_or(0)
    );
    println!(
        "1% change: {changed_files} of {files} files changed = {changed} bytes; delta moved {moved} bytes ({:.3}x the change, {:.2}% of the version) in {delta_time:.2?}",
        moved as f64 / changed as f64,
        100.0 * moved as f64 / total as f64
    );

    // 5. `cp -r` of the same tree on the same disk: the floor of writing these files at all.
    let copy = dir.join("cp-copy");
    let started = Instant::now();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&v1)
        .arg(&copy)
        .status()
        .expect("running cp -r");
    let cp_time = started.elapsed();
    assert!(copied.success(), "cp -r failed");
    println!(
        "cp -r of the same tree: {cp_time:.2?} ({:.0} MiB/s)",
        mib_per_s(total, cp_time)
    );

    println!();
    println!("## Ratios (same run, same machine)");
    // For scripts/bench.sh: throughput ratios, higher is better; the goals are issue 14's.
    let result = |figure: &str, value: f64, unit: &str, baseline: f64, what: &str, goal: f64| {
        let ratio = value / baseline;
        println!(
            "BENCH-RESULT {}",
            serde_json::json!({
                "bench": "data-transfer", "figure": figure, "value": value, "unit": unit,
                "baseline": baseline, "baseline_what": what, "ratio": ratio,
                "goal": format!(">= {goal}x"), "met": ratio >= goal,
            })
        );
    };
    result(
        "DataRepository -> DataDeployer full fetch",
        mib_per_s(total, deployer_time),
        "MiB/s",
        mib_per_s(total, curl_time),
        "nginx + 4 curl",
        1.0,
    );
    result(
        "DataRepository -> DataDeployer full fetch",
        mib_per_s(total, deployer_time),
        "MiB/s",
        mib_per_s(total, cp_time),
        "cp -r",
        0.6,
    );
    println!(
        "BENCH-RESULT {}",
        serde_json::json!({
            "bench": "data-transfer", "figure": "delta fetch of a 1% change", "value": moved as f64,
            "unit": "bytes moved", "baseline": changed as f64, "baseline_what": "bytes changed",
            "ratio": moved as f64 / changed as f64, "goal": "<= 1.1x",
            "met": (moved as f64 / changed as f64) <= 1.1,
        })
    );
    println!(
        "DataDeployer full fetch / nginx+curl time: {:.2}x",
        deployer_time.as_secs_f64() / curl_time.as_secs_f64()
    );
    if let Some(t) = git_time {
        println!(
            "git clone / DataDeployer full fetch time: {:.2}x",
            t.as_secs_f64() / deployer_time.as_secs_f64()
        );
    }
    println!(
        "delta bytes moved / bytes changed: {:.3}",
        moved as f64 / changed as f64
    );
    drop(stack);
}

/// `git clone` from `git daemon` of the data set; `None` if it did not finish in `limit`.
fn git_clone(dir: &Path, v1: &Path, files: u64, total: u64, limit: Duration) -> Option<Duration> {
    let git_base = dir.join("git");
    let repo = git_base.join("data");
    std::fs::create_dir_all(&repo).unwrap();
    let started = Instant::now();
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=b", "-c", "user.email=b@b"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    for n in 0..files {
        std::fs::hard_link(
            v1.join(format!("f{n:04}.bin")),
            repo.join(format!("f{n:04}.bin")),
        )
        .unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "v1"]);
    println!(
        "(git setup: add + commit {:.1?}, not counted)",
        started.elapsed()
    );
    let daemon = GitServer::serve(&git_base);
    let clone_out = dir.join("clone-out");
    let git_time = run_bounded(
        "git clone",
        Command::new("git").args([
            "clone",
            "-q",
            &daemon.url("data"),
            clone_out.to_str().unwrap(),
        ]),
        limit,
    );
    match git_time {
        Some(t) => println!(
            "git daemon + git clone: {t:.2?} ({:.0} MiB/s)",
            mib_per_s(total, t)
        ),
        None => println!("git daemon + git clone: did not finish within {limit:?}"),
    }
    git_time
}

async fn stack_synced(stack: &Stack, id: &str, version: &str) -> Option<()> {
    stack.probe(id).await;
    let mut client = stack.repository().await;
    client
        .get_manifest(autocrane_api::proto::data_v1::GetManifestRequest {
            source_id: id.to_string(),
            version: version.to_string(),
        })
        .await
        .ok()
        .map(|_| ())
}
