//! The DataDeployer under failure, end to end with the real `autocrane` binary: a corrupted
//! chunk, the repository killed mid-stream, and the sidecar killed with SIGKILL while a reader
//! walks the live tree.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use autocrane_api::proto::data_v1::{self as pb, data_repository_client::DataRepositoryClient};
use autocrane_data_deployer::{
    cache::{Cache, FetchStream},
    desired::version_dir,
};
use tokio_stream::StreamExt;

use autocrane_test_support::{eventually, noise};
mod support;
use support::{
    PodInfo, Stack, Upstream, applied_line, deployer, dir_spec, log_field, wait_current,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_detected_and_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    std::fs::create_dir_all(source.join("v1")).unwrap();
    let content = noise(21, 3_000_000);
    std::fs::write(source.join("v1/blob.bin"), &content).unwrap();
    std::fs::write(source.join("v1/small.txt"), b"small").unwrap();
    let stack = Stack::start(dir.path(), &[]).await;
    let id = stack.track(dir_spec(&source)).await;
    let manifest = stack.synced(&id, "v1").await;

    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let client: DataRepositoryClient<_> = stack.repository().await;
    let mut calls = 0;
    let mut open = move |request: pb::FetchRequest| {
        let mut client = client.clone();
        calls += 1;
        let corrupt = calls == 1;
        Box::pin(async move {
            let stream = client.fetch(request).await?.into_inner();
            let mut flipped = false;
            let stream = stream.map(move |message| {
                let mut message = message?;
                if let Some(pb::fetch_response::Payload::Chunk(chunk)) = &mut message.payload
                    && corrupt
                    && !flipped
                    && chunk.offset > 0
                {
                    // One bit flipped in transit, in the middle of the big blob.
                    chunk.data[10] ^= 0x01;
                    flipped = true;
                }
                Ok(message)
            });
            Ok(Box::pin(stream) as FetchStream)
        })
            as std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<FetchStream, tonic::Status>> + Send>,
            >
    };
    let stats = cache
        .fetch_missing(&manifest, &mut open, Duration::from_secs(30))
        .await
        .unwrap();
    println!("{stats:?}");
    assert_eq!(stats.corrupt, 1, "the corrupted blob failed verification");
    assert_eq!(stats.calls, 2, "and was fetched again");
    assert_eq!(
        stats.bytes,
        3_000_000 + 5 + 3_000_000,
        "only the corrupt blob moved twice"
    );
    for file in &manifest.files {
        assert!(cache.has(&file.digest));
    }
    assert_eq!(
        std::fs::read(
            cache.blob(
                &manifest
                    .files
                    .iter()
                    .find(|f| f.path == "blob.bin")
                    .unwrap()
                    .digest
            )
        )
        .unwrap(),
        content
    );
}

fn cache_bytes(cache: &Path) -> u64 {
    ["blobs", "partial"]
        .iter()
        .flat_map(|sub| {
            std::fs::read_dir(cache.join(sub))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_killed_mid_stream_the_deployer_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    std::fs::create_dir_all(source.join("v1")).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|n| (format!("part-{n}.bin"), noise(100 + n, 6 << 20)))
        .collect();
    for (name, content) in &files {
        std::fs::write(source.join("v1").join(name), content).unwrap();
    }
    let total: u64 = files.iter().map(|(_, c)| c.len() as u64).sum();
    // 12 MiB/s per stream: the 24 MiB version takes about two seconds to send.
    let mut stack = Stack::start(dir.path(), &["--fetch-bytes-per-second", "12582912"]).await;
    let id = stack.track(dir_spec(&source)).await;
    stack.synced(&id, "v1").await;

    let root = dir.path().join("data");
    let mut pod = PodInfo::new(&dir.path().join("podinfo"));
    pod.want("bulk", "v1");
    let sidecar = deployer(
        "sidecar",
        &stack,
        &root,
        &pod,
        ("bulk", &id),
        &[],
        "sidecar",
    );
    let cache = root.join(".cache");
    eventually(
        Duration::from_secs(30),
        "the deployer to be mid-fetch",
        || {
            let got = cache_bytes(&cache);
            async move { (got > 8 << 20).then_some(()) }
        },
    )
    .await;
    let at_kill = cache_bytes(&cache);
    stack.kill_repository();
    assert!(
        !root.join("bulk/current").exists(),
        "killed before the fetch finished"
    );
    // Restart only once the deployer has seen its stream break, so it resumes, rather than
    // never noticing a quick restart.
    sidecar.wait_for_line("The fetch stream broke; resuming", Duration::from_secs(30));
    stack.restart_repository().await;
    wait_current(&root, "bulk", "v1", Duration::from_secs(60)).await;
    for (name, content) in &files {
        assert_eq!(
            &std::fs::read(root.join("bulk/current").join(name)).unwrap(),
            content
        );
    }
    let log = applied_line(&sidecar, "v1", &[]).await;
    let moved = log_field(&log, "Version applied", "fetched_bytes").unwrap();
    let calls = log_field(&log, "Version applied", "fetch_calls").unwrap();
    println!(
        "killed with {at_kill} bytes cached; {moved} bytes moved in {calls} fetch calls for a {total}-byte version"
    );
    assert!(calls >= 2, "the fetch was resumed with a new call");
    assert!(
        moved < total + (1 << 20),
        "resumed where it stopped, not from the start ({moved} bytes)"
    );
}

const READER: &str = r#"
import hashlib, json, os, sys
link, manifests_path, stop = sys.argv[1:4]
manifests = json.load(open(manifests_path))
checks = skipped = 0
while not os.path.exists(stop):
    try:
        before = os.readlink(link)
    except OSError as e:
        print("MISSING current:", e); sys.exit(1)
    seen, error = {}, None
    try:
        for dirpath, dirs, files in os.walk(link + "/"):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as handle:
                    seen[os.path.relpath(path, link + "/")] = hashlib.sha256(handle.read()).hexdigest()
    except OSError as e:
        error = e
    try:
        after = os.readlink(link)
    except OSError as e:
        print("MISSING current:", e); sys.exit(1)
    if before != after:
        skipped += 1
        continue
    if error is not None:
        print("ERROR reading", before, error); sys.exit(1)
    want = manifests.get(before)
    if want is None:
        print("UNKNOWN version dir", before); sys.exit(1)
    if seen != want:
        print("MISMATCH in", before, sorted(set(seen.items()) ^ set(want.items()))[:5]); sys.exit(1)
    checks += 1
print("OK checks=%d skipped=%d" % (checks, skipped))
"#;

fn sha256_hex(bytes: &[u8]) -> String {
    autocrane_api::manifest::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_test_the_reader_never_sees_a_missing_partial_or_mixed_tree() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    std::fs::create_dir_all(&source).unwrap();
    let stack = Stack::start(dir.path(), &[]).await;
    let id = stack.track(dir_spec(&source)).await;

    // Five versions; each has shared files, changed files, and its own files, some large enough
    // that a copy takes a while.
    let mut manifests: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let versions: Vec<String> = (1..=5).map(|n| format!("v{n}")).collect();
    for (n, version) in versions.iter().enumerate() {
        let n = n as u64;
        let staging = source.join(format!(".{version}.tmp"));
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        files.insert(
            "shared/readme.txt".into(),
            b"same in every version\n".to_vec(),
        );
        files.insert(
            "config.json".into(),
            format!("{{\"version\": {n}}}\n").into_bytes(),
        );
        for f in 0..12 {
            files.insert(
                format!("tables/t{f:02}.bin"),
                noise(1000 * n + f, 20_000 + 5_000 * f as usize),
            );
        }
        files.insert(
            format!("only-in-{version}/big.bin"),
            noise(77 + n, 2_000_000),
        );
        for (path, content) in &files {
            let full = staging.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, content).unwrap();
        }
        std::fs::rename(&staging, source.join(version)).unwrap();
        stack.synced(&id, version).await;
        manifests.insert(
            version_dir(version),
            files
                .iter()
                .map(|(p, c)| (p.clone(), sha256_hex(c)))
                .collect(),
        );
    }
    let manifests_path = dir.path().join("manifests.json");
    std::fs::write(&manifests_path, serde_json::to_vec(&manifests).unwrap()).unwrap();

    let root = dir.path().join("data");
    let mut pod = PodInfo::new(&dir.path().join("podinfo"));
    pod.want("tables", &versions[0]);
    let mut sidecar = deployer(
        "sidecar",
        &stack,
        &root,
        &pod,
        ("tables", &id),
        &[],
        "sidecar",
    );
    wait_current(&root, "tables", &versions[0], Duration::from_secs(30)).await;

    let stop = dir.path().join("stop-reader");
    let mut reader = std::process::Command::new("python3")
        .arg("-c")
        .arg(READER)
        .arg(root.join("tables/current"))
        .arg(&manifests_path)
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");

    let started = Instant::now();
    let mut kills = 0;
    let mut seed = 0x5eed_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for swap in 1..=100 {
        let target = &versions[(swap + random() as usize % 4) % 5];
        let target = if std::fs::read_link(root.join("tables/current"))
            .is_ok_and(|t| t == Path::new(&version_dir(target)))
        {
            &versions[(versions.iter().position(|v| v == target).unwrap() + 1) % 5]
        } else {
            target
        };
        pod.want("tables", target);
        if random() % 3 == 0 {
            // SIGKILL at a random moment of the apply (fetching, copying, renaming, swapping).
            tokio::time::sleep(Duration::from_millis(random() % 60)).await;
            sidecar.kill();
            kills += 1;
            sidecar = deployer(
                "sidecar",
                &stack,
                &root,
                &pod,
                ("tables", &id),
                &[],
                "sidecar",
            );
        }
        wait_current(&root, "tables", target, Duration::from_secs(30)).await;
        assert!(
            reader.try_wait().unwrap().is_none(),
            "the reader failed at swap {swap}"
        );
    }
    std::fs::write(&stop, b"").unwrap();
    let output = reader.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    println!(
        "100 swaps, {kills} SIGKILLs, in {:?}; reader: {report}",
        started.elapsed()
    );
    assert!(output.status.success(), "reader: {report}");
    let checks: u64 = report
        .trim()
        .split("checks=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(checks >= 100, "the reader checked {checks} complete trees");
    // Only the live and the previous version stay on disk once the last apply has collected the
    // rest (right after its swap).
    let tables = root.join("tables");
    eventually(
        Duration::from_secs(10),
        "old versions to be collected",
        || {
            let versions = std::fs::read_dir(&tables)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with('v'))
                .count();
            async move { (versions <= 2).then_some(()) }
        },
    )
    .await;
}
