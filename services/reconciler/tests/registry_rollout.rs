//! Scenarios 2 and 7 end to end: an app version followed from a real OCI registry (Debian
//! `docker-registry` on loopback) through the VersionWatcher as an `autocrane` process; the
//! controller in-process as it is installed (the `autocrane-controller` ServiceAccount with only
//! the rights `deploy/rbac.yaml` grants), on kube-sim with its kubelet and the real
//! WatchdogListener.
//!
//! - Scenario 2: a new tag pushed to the registry is rolled out step by step — never more than
//!   `maxUnavailable` pods down or `maxSurge` extra, each step holding its bake before the next
//!   one starts — until every pod runs it; the status names current and target versions as
//!   `kubectl get acd` shows them, and the Events tell the rollout in order.
//! - Scenario 7: the same while the API server fails about one in ten of the controller's writes
//!   (500, 429 and 409, scoped to its user so the test's own reads and the other components are
//!   spared), drops every watch now and then and answers one resume with 410 Gone: two rollouts
//!   in a row still converge with the same promises, one pod per slot, no orphan, the status
//!   right.
//! - Scenario 6 on scenario 2: the same two rollouts while two controller replicas, as
//!   `autocrane controller` processes, are SIGKILLed and restarted at 20 seeded random moments.
//!   They log at `--log trace`, and their ServiceAccount token shows in no log or command line.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use autocrane_test_support::{
    Registry, VersionWatcherProcess, assert_no_secrets, assert_traced, command_line, eventually,
};
use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
use kube::{Api, ResourceExt, api::ListParams};
use kube_sim::ErrorRule;
use tokio::time::Instant;

use support::*;

/// The repository the deployment's image and versions come from.
const REPOSITORY: &str = "acme/web";
const REPLICAS: usize = 4;
const MAX_SURGE: usize = 1;
const MAX_UNAVAILABLE: usize = 1;
/// The bake of the first two steps (25 % and 50 %).
const BAKE: Duration = Duration::from_secs(3);
/// Pods of each step of [`registry_deployment_yaml`]'s rollout: 25 %, 50 %, 100 % of 4.
const STEP_PODS: [usize; 3] = [1, 2, 4];
/// How much later than it happened the test may see a pod turn Ready (its polling interval and
/// a list on a loaded machine): a step that waited its bake is seen waiting at least
/// `BAKE - SEEN_LATE`, one that did not is seen waiting next to nothing.
const SEEN_LATE: Duration = Duration::from_secs(1);

/// A deployment of [`REPLICAS`] pods whose version follows [`REPOSITORY`] of `registry` (the
/// highest semantic version, polled every second), rolled out in three steps.
fn registry_deployment_yaml(name: &str, registry: &Registry) -> String {
    let host = format!("127.0.0.1:{}", registry.port);
    let url = registry.url();
    format!(
        r#"apiVersion: autocrane.io/v1alpha1
kind: AutoCraneDeployment
metadata:
  name: {name}
  namespace: {NS}
spec:
  replicas: {REPLICAS}
  version:
    source:
      oci: {{registry: "{url}", repository: {REPOSITORY}}}
      policy: {{semver: {{}}}}
      pollInterval: 1s
  rollout:
    steps:
      - {{percent: 25, bake: 3s}}
      - {{percent: 50, bake: 3s}}
      - {{percent: 100}}
    maxSurge: {MAX_SURGE}
    maxUnavailable: {MAX_UNAVAILABLE}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {host}/{REPOSITORY}:placeholder
          command: ["sleep", "3600"]
"#
    )
}

/// One pod as the test sees it.
#[derive(Clone, Debug)]
struct SeenPod {
    #[expect(dead_code, reason = "shown by failure messages, through Debug")]
    name: String,
    /// The image tag: the app version.
    version: String,
    ready: bool,
    /// The `autocrane.io/slot` label.
    slot: String,
    /// Its controlling owner: (kind, name).
    owner: Option<(String, String)>,
    /// Being deleted.
    terminating: bool,
}

async fn seen_pods(pods: &Api<Pod>) -> Vec<SeenPod> {
    let listed = pods.list(&ListParams::default()).await.unwrap().items;
    listed
        .into_iter()
        .map(|p| {
            let (image, ready) = (pod_image(&p), pod_ready(&p));
            let owner = p
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| (o.kind.clone(), o.name.clone()));
            SeenPod {
                version: image.rsplit_once(':').map(|(_, t)| t).unwrap_or("").into(),
                ready,
                slot: p
                    .labels()
                    .get("autocrane.io/slot")
                    .cloned()
                    .unwrap_or_default(),
                owner,
                terminating: p.metadata.deletion_timestamp.is_some(),
                name: p.name_any(),
            }
        })
        .collect()
}

/// Waits until the namespace holds the [`REPLICAS`] converged pods and nothing else (no pod left
/// over, none terminating for long).
async fn no_pod_left_over(cluster: &Cluster) {
    eventually(WAIT, "no pod but the converged ones", || async {
        cluster
            .pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            == REPLICAS
    })
    .await;
}

/// What a user would look at when a wait fails: pods, the deployment, Events.
async fn diagnose(cluster: &Cluster) -> String {
    let mut out = cluster
        .kubectl_lenient(&["get", "pods", "-n", NS, "-o", "wide", "--show-labels"])
        .await;
    out += &cluster
        .kubectl_lenient(&["get", "acd", "-n", NS, "-o", "yaml"])
        .await;
    out += &cluster.kubectl_lenient(&["get", "events", "-n", NS]).await;
    out
}

/// Every pod of the namespace is owned by deployment `name`, live, Ready and on `version`, one
/// per slot, [`REPLICAS`] of them: converged with no duplicate slot and no orphan.
fn converged(pods: &[SeenPod], name: &str, version: &str) -> bool {
    let slots: BTreeSet<&str> = pods.iter().map(|p| p.slot.as_str()).collect();
    pods.len() == REPLICAS
        && slots.len() == REPLICAS
        && pods.iter().all(|p| {
            p.ready
                && !p.terminating
                && p.version == version
                && !p.slot.is_empty()
                && p.owner == Some(("AutoCraneDeployment".into(), name.into()))
        })
}

/// Waits up to [`WAIT`] for `name` to be [`converged`] on `version` with its status saying so.
async fn wait_converged(cluster: &Cluster, name: &str, version: &str) {
    let pods = cluster.pods();
    let deadline = Instant::now() + WAIT;
    let wanted = format!("{REPLICAS} {version} {version} Available");
    loop {
        let seen = seen_pods(&pods).await;
        if converged(&seen, name, version)
            && acd_fields(
                cluster,
                name,
                &[
                    "status.readyReplicas",
                    "status.currentVersion",
                    "status.targetVersion",
                    "status.phase",
                ],
            )
            .await
                == wanted
        {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{name} did not converge on {version}: {seen:#?}\n{}",
                diagnose(cluster).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the test saw of a rollout from `from` to `to`, sampled as fast as the API answers.
#[derive(Debug, Default)]
struct Timeline {
    /// Most live (not terminating) pods at once.
    most_live: usize,
    /// Fewest live Ready pods at once.
    fewest_ready: usize,
    /// When the test first saw `n` live pods of the new version (created), by `n`.
    created: BTreeMap<usize, Instant>,
    /// When the test first saw `n` Ready pods of the new version, by `n`.
    ready: BTreeMap<usize, Instant>,
    /// The status once named the new version as target while the old one was current.
    saw_in_progress: bool,
    /// Fewer live pods of the new version than seen before: the rollout went backwards.
    went_back: Option<String>,
}

/// Samples pods and the deployment's status until every pod of `name` runs `to` (or [`WAIT`]).
async fn follow_rollout(cluster: &Cluster, name: &str, from: &str, to: &str) -> Timeline {
    let pods = cluster.pods();
    let acds: Api<autocrane_api::crd::AutoCraneDeployment> =
        Api::namespaced(cluster.sim.client(), NS);
    let mut timeline = Timeline {
        fewest_ready: usize::MAX,
        ..Timeline::default()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = seen_pods(&pods).await;
        let now = Instant::now();
        let live: Vec<&SeenPod> = seen.iter().filter(|p| !p.terminating).collect();
        timeline.most_live = timeline.most_live.max(live.len());
        timeline.fewest_ready = timeline
            .fewest_ready
            .min(live.iter().filter(|p| p.ready).count());
        let new = live.iter().filter(|p| p.version == to);
        let most_new = timeline.created.len();
        if new.clone().count() < most_new && timeline.went_back.is_none() {
            timeline.went_back = Some(format!(
                "{} live pods of {to} after {most_new}: {seen:?}",
                new.clone().count()
            ));
        }
        for n in 1..=new.clone().count() {
            timeline.created.entry(n).or_insert(now);
        }
        for n in 1..=new.filter(|p| p.ready).count() {
            timeline.ready.entry(n).or_insert(now);
        }
        if let Some(status) = acds.get(name).await.unwrap().status {
            timeline.saw_in_progress |= status.current_version.as_deref() == Some(from)
                && status.target_version.as_deref() == Some(to);
        }
        if converged(&seen, name, to) {
            return timeline;
        }
        if now >= deadline {
            panic!(
                "the rollout to {to} did not finish: {seen:#?}\n{timeline:?}\n{}",
                diagnose(cluster).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The promises of a stepped rollout, as the test saw them.
fn assert_stepped(timeline: &Timeline) {
    println!("{timeline:?}");
    assert!(
        timeline.most_live <= REPLICAS + MAX_SURGE,
        "more than replicas + maxSurge pods: {timeline:?}"
    );
    assert!(
        timeline.fewest_ready >= REPLICAS - MAX_UNAVAILABLE,
        "more than maxUnavailable pods down: {timeline:?}"
    );
    assert!(
        timeline.saw_in_progress,
        "the status never showed the rollout in progress"
    );
    assert_eq!(timeline.went_back, None, "the rollout went backwards");
    // Each step's pods were Ready for its bake before the next step's first pod was created.
    for step in STEP_PODS.windows(2) {
        let (done, next) = (step[0], step[0] + 1);
        let baked = timeline.created[&next].duration_since(timeline.ready[&done]);
        println!("step of {done} pod(s): Ready → pod {next} created after {baked:?}");
        assert!(
            baked >= BAKE - SEEN_LATE,
            "pod {next} of the new version was created {baked:?} after the step of {done} was Ready; the bake is {BAKE:?}"
        );
        assert!(
            timeline.created[&next] >= timeline.ready[&done],
            "a step started before the previous one was Ready: {timeline:?}"
        );
    }
}

/// The VersionWatcher, the registry with `1.0.0` pushed, and the deployment `web` following it,
/// converged on `1.0.0` under `controller`. Returns the registry, the VersionWatcher and its
/// directory, which must live as long as the scenario.
async fn registry_scenario_start(
    cluster: &Cluster,
    start_controller: impl FnOnce(&str) -> Replica,
) -> (Registry, VersionWatcherProcess, tempfile::TempDir, Replica) {
    let registry = Registry::start(None).await;
    registry.push_tag(REPOSITORY, "1.0.0").await;
    let vw_dir = tempfile::tempdir().unwrap();
    let vw = VersionWatcherProcess::start(vw_dir.path()).await;
    let controller = start_controller(&vw.url);
    cluster
        .apply(&registry_deployment_yaml("web", &registry))
        .await;
    wait_converged(cluster, "web", "1.0.0").await;
    (registry, vw, vw_dir, controller)
}

/// Scenario 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tag_is_rolled_out_in_baked_steps_to_every_pod_with_events_in_order() {
    log_to_test_output();
    let cluster = Cluster::start().await;
    cluster.install_rbac().await;
    let (registry, vw, _vw_dir, controller) = registry_scenario_start(&cluster, |vw_url| {
        cluster.controller_as_installed("replica-a", &["--version-watcher", vw_url])
    })
    .await;
    let table = cluster.kubectl(&["get", "acd", "-n", NS]).await;
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..7],
        ["web", "4", "4", "4", "1.0.0", "1.0.0", "Available"],
        "{table}"
    );

    let pushed = Instant::now();
    registry.push_tag(REPOSITORY, "2.0.0").await;
    let timeline = follow_rollout(&cluster, "web", "1.0.0", "2.0.0").await;
    println!(
        "tag pushed → first pod of 2.0.0 created after {:?}, every pod on it after {:?}",
        timeline.created[&1].duration_since(pushed),
        pushed.elapsed()
    );
    assert_stepped(&timeline);
    wait_converged(&cluster, "web", "2.0.0").await;

    // What `kubectl get acd` shows: Desired, Ready, Healthy, Current, Target, Phase.
    let table = cluster.kubectl(&["get", "acd", "-n", NS]).await;
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..7],
        ["web", "4", "4", "4", "2.0.0", "2.0.0", "Available"],
        "{table}"
    );

    // The rollout's Events, in the order they happened, each with its own message.
    let events: Api<Event> = Api::namespaced(cluster.sim.client(), NS);
    let mut told: Vec<(i128, String, String)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
        .filter(|e| e.note.as_deref().unwrap_or("").contains("2.0.0"))
        .map(|e| {
            (
                e.event_time.as_ref().map_or(0, |t| t.0.as_nanosecond()),
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default(),
            )
        })
        .collect();
    told.sort();
    let story: Vec<(&str, &str)> = told
        .iter()
        .map(|(_, reason, note)| (reason.as_str(), note.as_str()))
        .collect();
    assert_eq!(
        story,
        [
            ("RolloutStarted", "rolling out 2.0.0 over 1.0.0"),
            ("RolloutStepAdvanced", "2.0.0: step 2 of 3 (50%)"),
            ("RolloutStepAdvanced", "2.0.0: step 3 of 3 (100%)"),
            ("RolloutComplete", "2.0.0 runs on all 4 pods"),
        ],
        "{}",
        diagnose(&cluster).await
    );

    controller.stop().await;
    drop(vw);
    cluster.shutdown().await;
}

/// Scenario 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tag_converges_while_the_api_server_fails_the_controller() {
    log_to_test_output();
    let cluster = Cluster::start().await;
    cluster.install_rbac().await;
    // About one in ten of the controller's writes fails, spread over the three answers a real
    // API server gives under trouble: 500, 429 (with Retry-After) and 409.
    // Every write of the controller draws from one seeded sequence, so the seed fixes which of
    // its writes fail by their order, not by timing: with this one, the first fault falls in
    // the first rollout, whatever the machine's speed.
    let faults = cluster.sim.faults();
    faults.seed(13);
    for verb in ["create", "update", "patch", "delete"] {
        for (code, rate) in [(500, 0.04), (429, 0.03), (409, 0.03)] {
            faults.add_error(ErrorRule {
                verb: Some(verb.into()),
                resource: None,
                user: Some(controller_user()),
                rate,
                code,
                retry_after_seconds: Some(1),
            });
        }
    }
    let (registry, vw, _vw_dir, controller) = registry_scenario_start(&cluster, |vw_url| {
        cluster.controller_as_installed("replica-a", &["--version-watcher", vw_url])
    })
    .await;
    let before = faults.injected_by_verb();

    // While the rollout runs, every watch is dropped every 2 s, and once the history is
    // compacted first, so the resumes get 410 Gone and must list again.
    let disturbing = {
        let faults = faults.clone();
        tokio::spawn(async move {
            for round in 0.. {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if round == 1 {
                    faults.compact();
                }
                faults.close_watches();
            }
        })
    };
    // Two rollouts one after the other.
    for (from, to) in [("1.0.0", "2.0.0"), ("2.0.0", "3.0.0")] {
        registry.push_tag(REPOSITORY, to).await;
        let timeline = follow_rollout(&cluster, "web", from, to).await;
        assert_stepped(&timeline);
        wait_converged(&cluster, "web", to).await;
    }
    disturbing.abort();

    // The faults did fire, on the controller's writes only.
    let after = faults.injected_by_verb();
    println!("injected before the push: {before:?}, in all: {after:?}");
    let during = after.values().sum::<u64>() - before.values().sum::<u64>();
    println!("injected during the rollouts: {during}");
    assert!(after.values().sum::<u64>() > 0, "no fault fired: {after:?}");
    assert!(
        after
            .keys()
            .all(|verb| ["create", "update", "patch", "delete"].contains(&verb.as_str())),
        "only writes fail: {after:?}"
    );
    let failures = controller
        .metrics()
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix("autocrane_controller_reconcile_failures_total ")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    println!("reconciles that ended in an error: {failures}");

    // Nothing but the deployment's pods, and no pod left terminating for long.
    no_pod_left_over(&cluster).await;

    controller.stop().await;
    drop(vw);
    cluster.shutdown().await;
}

/// A seeded pseudo-random sequence (SplitMix64): the moments of the kills, repeatable from the
/// printed seed.
struct Moments(u64);

impl Moments {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Checks, over the replicas' logs (`logs[i]` of replica `i`), that every pod write ("Pod
/// created", "Pod deleted") falls in the writer's leader term: the latest term to begin before
/// it ("Controller starting", logged as each term begins) is the writer's own. Returns how many
/// writes were checked.
fn only_the_leader_wrote(logs: &[String]) -> usize {
    let strip = |line: &str| -> String {
        // Colours, if any: ESC [ … m.
        let mut out = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    // (timestamp, replica, begins a term)
    let mut moments: Vec<(String, usize, bool)> = Vec::new();
    for (replica, log) in logs.iter().enumerate() {
        for line in log.lines().map(strip) {
            let term = line.contains("Controller starting");
            let write = line.contains("Pod created") || line.contains("Pod deleted");
            if term || write {
                let at = line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                moments.push((at, replica, term));
            }
        }
    }
    moments.sort();
    let mut leader = None;
    let mut writes = 0;
    for (at, replica, term) in &moments {
        if *term {
            leader = Some(*replica);
        } else {
            writes += 1;
            assert_eq!(
                leader,
                Some(*replica),
                "replica {replica} wrote at {at} while another replica led: {moments:#?}"
            );
        }
    }
    writes
}

/// How many times the controllers are killed.
const KILLS: usize = 20;

/// Scenario 6, on scenario 2: two controller replicas as `autocrane controller` processes, one
/// of them SIGKILLed and restarted at 20 random moments (the seed is printed;
/// `AUTOCRANE_KILL_SEED` repeats a run) while two tags are rolled out: the rollouts still
/// converge within the same promises, one pod per slot, no orphan, the status right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tag_converges_while_controllers_are_killed_at_random_moments() {
    let seed = std::env::var("AUTOCRANE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill seed: {seed} (AUTOCRANE_KILL_SEED={seed} repeats the moments)");
    let cluster = Cluster::start().await;
    cluster.install_rbac().await;
    let registry = Registry::start(None).await;
    registry.push_tag(REPOSITORY, "1.0.0").await;
    let vw_dir = tempfile::tempdir().unwrap();
    let vw = VersionWatcherProcess::start(vw_dir.path()).await;
    // A short Lease, so that a standby takes over a killed leader soon; every crate's trace
    // output, where a careless Debug of a request or a config would show a token.
    let flags = [
        "--version-watcher",
        &vw.url,
        "--lease-duration-secs",
        "2",
        "--log",
        "trace",
    ];
    let mut replicas = [
        cluster.controller_process("replica-a", &flags),
        cluster.controller_process("replica-b", &flags),
    ];
    cluster
        .apply(&registry_deployment_yaml("web", &registry))
        .await;
    wait_converged(&cluster, "web", "1.0.0").await;

    let killed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = tokio::spawn({
        let killed = killed.clone();
        async move {
            let mut moments = Moments(seed);
            for _ in 0..KILLS {
                let wait = 300 + moments.next() % 1200;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let victim = (moments.next() % 2) as usize;
                replicas[victim].kill_and_restart();
                killed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            replicas
        }
    });
    for (from, to) in [("1.0.0", "2.0.0"), ("2.0.0", "3.0.0")] {
        registry.push_tag(REPOSITORY, to).await;
        let timeline = follow_rollout(&cluster, "web", from, to).await;
        assert_stepped(&timeline);
        wait_converged(&cluster, "web", to).await;
    }
    let during = killed.load(std::sync::atomic::Ordering::SeqCst);
    println!("kills while the two rollouts ran: {during} of {KILLS}");
    assert!(during > 0, "no kill landed during the rollouts");
    let replicas = killer.await.unwrap();
    // Every kill done; whoever leads now keeps it converged, and no pod is left over.
    wait_converged(&cluster, "web", "3.0.0").await;
    no_pod_left_over(&cluster).await;
    // Only the leader wrote: every pod write a replica logged came after its own term began and
    // before any other replica's term began.
    let logs: Vec<String> = replicas
        .iter()
        .map(|r| std::fs::read_to_string(&r.log).unwrap())
        .collect();
    let writes = only_the_leader_wrote(&logs);
    println!("pod writes, each by the replica leading then: {writes}");
    assert!(writes > 0, "no pod write was logged");
    // The replicas' token (their kubeconfig's) shows in no log line and no command line.
    let tokens: Vec<String> = replicas.iter().map(|r| r.token().to_string()).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    for (replica, log) in replicas.iter().zip(&logs) {
        let name = format!("controller {}", replica.log.display());
        assert_traced(&name, log, 100);
        assert_no_secrets(&format!("{name}'s log"), log, &tokens);
        if let Some(pid) = replica.pid() {
            assert_no_secrets(
                &format!("{name}'s command line"),
                &command_line(pid),
                &tokens,
            );
        }
    }
    drop(replicas);
    drop(vw);
    cluster.shutdown().await;
}
