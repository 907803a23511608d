//! End to end on the emulated cluster (kube-sim with kubelet-sim: pods are real local processes),
//! the controller in-process as `autocrane controller` runs it (leader election on), beside the
//! real `autocrane watchdog-listener`: the controller's pods carry the readiness gate
//! `autocrane.io/healthy`, which kubelet-sim honours as a kubelet does, so without the listener
//! keeping that condition no pod would ever be Ready:
//! - a pinned `AutoCraneDeployment` as a user sees it through `kubectl` — pods Running and owned,
//!   status and printer columns filled, Events — a changed `version.pinned` rolled out in steps,
//!   and no pod left once the deployment is deleted;
//! - a template the API server rejects gets a Warning Event and a condition naming the cause while
//!   another deployment keeps running, and recovers once fixed;
//! - of two replicas only the Lease holder acts, and the other takes over when it stops;
//! - a deployment deleted while it carries the pins finalizer `autocrane.io/pins` is released
//!   by the controller (its core plan: the unpins, here none) and then gone. The unpin calls
//!   themselves need a DataRepository, which this suite does not run: they are checked against a
//!   fake `DataCalls` in `src/apply.rs`'s unit tests.

mod support;

use std::{collections::BTreeSet, time::Duration};

use autocrane_test_support::eventually;
use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event};
use kube::{Api, ResourceExt, api::ListParams};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_deployment_runs_rolls_out_in_steps_and_is_collected() {
    let cluster = Cluster::start().await;
    let controller = cluster.controller("replica-a", 15);
    cluster.apply(&deployment_yaml("web", "1.0", 3)).await;

    // Three pods, Running and Ready, owned by the deployment, on version 1.0.
    let pods = cluster.pods();
    eventually(WAIT, "3 ready pods on 1.0", || async {
        let live = live_pods(&pods).await;
        live.len() == 3
            && live
                .iter()
                .all(|(_, image, ready)| image == "registry.local/web:1.0" && *ready)
    })
    .await;
    let mut slots = BTreeSet::new();
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("AutoCraneDeployment", "web")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        // Ready through the gate: the listener set the condition the kubelet waits for.
        let gates = pod.spec.as_ref().unwrap().readiness_gates.clone();
        assert_eq!(
            gates.unwrap_or_default()[0].condition_type,
            "autocrane.io/healthy"
        );
        let status = pod.status.unwrap();
        let healthy = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "autocrane.io/healthy")
            .unwrap_or_else(|| panic!("no gate condition: {status:?}"));
        assert_eq!(
            (healthy.status.as_str(), healthy.reason.as_deref()),
            ("True", Some("NoWatchdogs"))
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["autocrane.io/deployment"], "web");
        assert!(labels.contains_key("autocrane.io/revision"));
        slots.insert(labels["autocrane.io/slot"].clone());
    }

    assert_eq!(slots.len(), 3, "one pod per slot");

    // Status and printer columns, as kubectl shows them.
    eventually(WAIT, "status filled", || async {
        cluster
            .kubectl(&[
                "get", "acd", "web", "-n", NS, "-o",
                "jsonpath={.status.replicas} {.status.readyReplicas} {.status.currentVersion} {.status.phase}",
            ])
            .await
            == "3 3 1.0 Available"
    })
    .await;
    let table = cluster.kubectl(&["get", "acd", "-n", NS]).await;
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..7],
        ["web", "3", "3", "3", "1.0", "1.0", "Available"],
        "{table}"
    );

    // A new pinned version rolls out in steps: never more than replicas + maxSurge live pods, a
    // moment with both versions, then every pod on 2.0.
    cluster.apply(&deployment_yaml("web", "2.0", 3)).await;
    let mut most = 0;
    let mut mixed = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let live = live_pods(&pods).await;
        most = most.max(live.len());
        let images: BTreeSet<&str> = live.iter().map(|(_, i, _)| i.as_str()).collect();
        mixed |= images.len() == 2;
        if live.len() == 3
            && live
                .iter()
                .all(|(_, image, ready)| image == "registry.local/web:2.0" && *ready)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout to 2.0 did not finish: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(most <= 4, "at most replicas + maxSurge pods, saw {most}");
    assert!(mixed, "the rollout went in steps");
    eventually(WAIT, "status on 2.0", || async {
        cluster
            .kubectl(&[
                "get",
                "acd",
                "web",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.currentVersion} {.status.phase}",
            ])
            .await
            == "2.0 Available"
    })
    .await;

    eventually(WAIT, "the old pods gone", || async {
        pods.list(&ListParams::default()).await.unwrap().items.len() == 3
    })
    .await;
    // Idle once converged: no pass without a change (no polling, no status write loop). The last
    // pod deletions may still be echoing through the watches, so first wait until the count
    // stops moving for a second (a polling or status-write loop never does, and fails here);
    // then the only sleep of the suite, standing for "nothing happens".
    let seen = std::cell::Cell::new(controller.reconciles().await);
    let last = eventually(WAIT, "the controller to go quiet", || {
        let (controller, seen) = (&controller, &seen);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = controller.reconciles().await;
            (now == seen.replace(now)).then_some(now)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(controller.reconciles().await, last, "reconciles while idle");

    // The rollout left Events on the deployment (events.k8s.io/v1).
    let reasons = cluster.event_reasons("web").await;
    assert!(reasons.contains("RolloutStarted"), "{reasons:?}");

    // Deleting the deployment leaves no pod (owner references, garbage collection).
    cluster.kubectl(&["delete", "acd", "web", "-n", NS]).await;
    eventually(WAIT, "no pod left", || async {
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;

    controller.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_template_is_reported_and_other_deployments_keep_running() {
    let cluster = Cluster::start().await;
    let controller = cluster.controller("replica-a", 15);
    cluster.apply(&deployment_yaml("good", "1.0", 2)).await;
    // A second container without an image: the API server refuses every pod built from it.
    let broken = deployment_yaml("broken", "1.0", 2).replace(
        "          command: [\"sleep\", \"3600\"]\n",
        "          command: [\"sleep\", \"3600\"]\n        - name: helper\n",
    );
    cluster.apply(&broken).await;

    eventually(WAIT, "a TemplateRejected condition", || async {
        cluster
            .kubectl(&[
                "get",
                "acd",
                "broken",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
            ])
            .await
            == "TemplateRejected"
    })
    .await;
    let message = cluster
        .kubectl(&[
            "get",
            "acd",
            "broken",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].message}",
        ])
        .await;
    assert!(message.contains("spec.containers[1].image"), "{message}");
    eventually(WAIT, "a TemplateRejected Warning Event", || async {
        cluster
            .event_reasons("broken")
            .await
            .contains("TemplateRejected")
    })
    .await;

    // The other deployment is undisturbed.
    let pods = cluster.pods();
    eventually(WAIT, "the good deployment's pods", || async {
        let live = live_pods(&pods).await;
        live.iter()
            .filter(|(n, _, ready)| n.starts_with("good") && *ready)
            .count()
            == 2
    })
    .await;

    // Fixed, the broken one comes up and its conditions are the core's again.
    cluster.apply(&deployment_yaml("broken", "1.0", 2)).await;
    eventually(WAIT, "the fixed deployment available", || async {
        cluster
            .kubectl(&[
                "get",
                "acd",
                "broken",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.readyReplicas} {.status.phase}",
            ])
            .await
            == "2 Available"
    })
    .await;

    controller.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_acts_and_a_standby_takes_over() {
    let cluster = Cluster::start().await;
    let leases: Api<Lease> = Api::namespaced(cluster.sim.client(), "default");
    let holder = || async {
        leases
            .get_opt("autocrane-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    };
    let a = cluster.controller("replica-a", 3);
    eventually(WAIT, "replica-a holds the Lease", || async {
        holder().await.as_deref() == Some("replica-a")
    })
    .await;
    let b = cluster.controller("replica-b", 3);
    cluster.apply(&deployment_yaml("web", "1.0", 2)).await;
    let pods = cluster.pods();
    eventually(WAIT, "2 ready pods", || async {
        live_pods(&pods).await.iter().filter(|(_, _, r)| *r).count() == 2
    })
    .await;
    // Every write came from the leader: each Event names its reporting instance.
    let events: Api<Event> = Api::namespaced(cluster.sim.client(), NS);
    let instances: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert!(!instances.contains("replica-b"), "{instances:?}");
    assert_eq!(holder().await.as_deref(), Some("replica-a"));

    let before: BTreeSet<String> = live_pods(&pods)
        .await
        .into_iter()
        .map(|(n, ..)| n)
        .collect();

    // The leader goes; the standby takes over and acts (a scale-up is carried out) without
    // replacing what runs: it converges from the cluster's state.
    a.stop().await;
    eventually(WAIT, "replica-b holds the Lease", || async {
        holder().await.as_deref() == Some("replica-b")
    })
    .await;
    cluster.apply(&deployment_yaml("web", "1.0", 3)).await;
    eventually(WAIT, "3 ready pods", || async {
        live_pods(&pods).await.iter().filter(|(_, _, r)| *r).count() == 3
    })
    .await;

    let after: BTreeSet<String> = live_pods(&pods)
        .await
        .into_iter()
        .map(|(n, ..)| n)
        .collect();
    assert!(after.is_superset(&before), "{before:?} → {after:?}");

    b.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_deployment_with_the_pins_finalizer_is_released_and_gone() {
    let cluster = Cluster::start().await;
    // As a controller that held pins left it: the finalizer is on, and the deployment is deleted
    // while no controller runs.
    let yaml = deployment_yaml("web", "1.0", 1).replace(
        "  namespace: shop\n",
        "  namespace: shop\n  finalizers: [\"autocrane.io/pins\"]\n",
    );
    cluster.apply(&yaml).await;
    cluster
        .kubectl(&["delete", "acd", "web", "-n", NS, "--wait=false"])
        .await;
    let acds: Api<autocrane_api::crd::AutoCraneDeployment> =
        Api::namespaced(cluster.sim.client(), NS);
    let held = acds.get("web").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.metadata.finalizers.as_deref(),
        Some(&["autocrane.io/pins".to_string()][..]),
        "held by the finalizer"
    );

    let controller = cluster.controller("replica-a", 15);
    eventually(WAIT, "the deployment gone", || async {
        acds.get_opt("web").await.unwrap().is_none()
    })
    .await;
    assert!(
        cluster
            .pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no pod was created for a deployment being deleted"
    );
    // The reaction-time histograms are exposed beside the reconcile metrics.
    let metrics = controller.metrics().await;
    for name in [
        "autocrane_controller_error_to_rollback_seconds",
        "autocrane_controller_version_to_first_pod_seconds",
        "autocrane_controller_data_synced_to_applied_seconds",
    ] {
        assert!(
            metrics.contains(&format!("{name}_count 0")),
            "{name}: {metrics}"
        );
    }

    controller.stop().await;
    cluster.shutdown().await;
}

/// Scenario 3, pinned: a version whose pods post `error` (the real test workload, version
/// `2.0-bad`) is rolled back within the error threshold plus a little, marked bad in the status
/// and never retried, while the old version keeps serving (the pods the first step did not
/// replace stay Ready throughout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_version_is_rolled_back_and_never_retried_while_the_old_one_serves() {
    log_to_test_output();
    let cluster = Cluster::start().await;
    let controller = cluster.controller("replica-a", 15);
    let listener = cluster.listener_addr;
    let good = "registry.local/testworkload:1.0";
    let bad = "registry.local/testworkload:2.0-bad";
    cluster
        .apply(&testworkload_yaml("app", "1.0", 3, "3s", listener))
        .await;
    let pods = cluster.pods();
    eventually(WAIT, "3 ready pods on 1.0 posting `info`", || async {
        let live = workload_pods(&pods).await;
        live.len() == 3
            && live
                .iter()
                .all(|(_, image, ready, level)| image == good && *ready && level == "info")
    })
    .await;

    cluster
        .apply(&testworkload_yaml("app", "2.0-bad", 3, "3s", listener))
        .await;
    let mut bad_pods = BTreeSet::new();
    let mut first_error: Option<tokio::time::Instant> = None;
    let mut rolled_back_after = None;
    let mut fewest_ready_good = usize::MAX;
    let mut error_and_ready = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let live = workload_pods(&pods).await;
        let ready_good = live.iter().filter(|(_, i, r, _)| i == good && *r).count();
        fewest_ready_good = fewest_ready_good.min(ready_good);
        for (name, image, ready, level) in &live {
            if image == bad {
                // Ready until its first post (no watchdog is healthy), then out of its Services
                // as soon as the listener has turned the readiness gate (one write window).
                if *ready && level == "error" {
                    let since = *error_and_ready
                        .entry(name.clone())
                        .or_insert_with(tokio::time::Instant::now);
                    assert!(
                        since.elapsed() < Duration::from_secs(2),
                        "a pod in error stayed Ready: {live:?}"
                    );
                }
                bad_pods.insert(name.clone());
                if level == "error" && first_error.is_none() {
                    first_error = Some(tokio::time::Instant::now());
                }
            }
        }
        if let Some(at) = first_error
            && rolled_back_after.is_none()
            && !bad_pods.is_empty()
            && live.iter().all(|(_, i, _, _)| i != bad)
        {
            rolled_back_after = Some(at.elapsed());
        }
        if rolled_back_after.is_some() && ready_good == 3 && live.len() == 3 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let acd = cluster
                .kubectl(&["get", "acd", "app", "-n", NS, "-o", "yaml"])
                .await;
            let events = cluster.kubectl(&["get", "events", "-n", NS]).await;
            panic!("no rollback: {live:?}, first error seen: {first_error:?}\n{acd}\n{events}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rolled_back_after = rolled_back_after.unwrap();
    println!("error seen → bad pods gone: {rolled_back_after:?} (threshold 3 s)");
    assert!(
        rolled_back_after <= Duration::from_secs(3 + 3),
        "rollback took {rolled_back_after:?}, threshold 3 s"
    );
    // The first step (34 % of 3) replaces one old pod once the new one is Ready; the other two
    // old pods serve throughout.
    assert!(
        fewest_ready_good >= 2,
        "the old version kept serving: fewest Ready {fewest_ready_good}"
    );

    // Marked bad, with the reason, and not retried.
    let bad_versions = cluster
        .kubectl(&[
            "get",
            "acd",
            "app",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.badVersions[*].version} {.status.currentVersion}",
        ])
        .await;
    assert_eq!(bad_versions, "2.0-bad 1.0");
    let reasons = cluster.event_reasons("app").await;
    assert!(reasons.contains("RolledBack"), "{reasons:?}");
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < quiet_until {
        let live = workload_pods(&pods).await;
        assert!(
            live.iter().all(|(_, i, _, _)| i == good),
            "the bad version was retried: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    controller.stop().await;
    cluster.shutdown().await;
}

/// Scenario 4: a stable pod forced into `error` is restarted once it has been in error for the
/// threshold (the same slot, a new pod); after `maxRestartsPerPod` restarts in the window the
/// deployment is Degraded (`RestartLimitExceeded`) and the failing pod is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pod_is_restarted_within_the_failing_limit_then_left_alone() {
    log_to_test_output();
    let cluster = Cluster::start().await;
    let controller = cluster.controller("replica-a", 15);
    let listener = cluster.listener_addr;
    cluster
        .apply(&testworkload_yaml("app", "1.0", 2, "2s", listener))
        .await;
    let pods = cluster.pods();
    eventually(WAIT, "2 ready pods posting `info`", || async {
        let live = workload_pods(&pods).await;
        live.len() == 2
            && live
                .iter()
                .all(|(_, _, ready, level)| *ready && level == "info")
    })
    .await;
    let first = workload_pods(&pods).await[0].0.clone();
    let slot = pods.get(&first).await.unwrap().labels()["autocrane.io/slot"].clone();

    // maxRestartsPerPod: 2 — two restarts, each after the threshold.
    for restart in 1..=2 {
        let (victim, uid) = in_slot(&pods, &slot).await.expect("the slot has a pod");
        force_error(listener, &victim).await;
        let forced_at = tokio::time::Instant::now();
        let replaced = eventually(WAIT, "the failing pod to be restarted", || async {
            in_slot(&pods, &slot)
                .await
                .filter(|(_, new)| *new != uid)
                .map(|_| forced_at.elapsed())
        })
        .await;
        println!("restart {restart}: error posted → replaced after {replaced:?} (threshold 2 s)");
        assert!(
            replaced >= Duration::from_millis(1500),
            "restarted before the threshold: {replaced:?}"
        );
        assert!(
            replaced <= Duration::from_secs(2 + 5),
            "restart {restart} took {replaced:?}"
        );
        eventually(WAIT, "the replacement to be Ready", || async {
            let Some((name, _)) = in_slot(&pods, &slot).await else {
                return false;
            };
            workload_pods(&pods)
                .await
                .iter()
                .any(|(n, _, ready, level)| *n == name && *ready && level == "info")
        })
        .await;
    }
    let restarts = cluster
        .kubectl(&[
            "get",
            "acd",
            "app",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.restarts[*].pod}",
        ])
        .await;
    assert_eq!(restarts, format!("{slot} {slot}"));

    // The third failure: Degraded, and the pod stays.
    let (victim, uid) = in_slot(&pods, &slot).await.expect("the slot has a pod");
    force_error(listener, &victim).await;
    eventually(WAIT, "Degraded: RestartLimitExceeded", || async {
        cluster
            .kubectl(&[
                "get",
                "acd",
                "app",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Degraded\")].reason}",
            ])
            .await
            == "RestartLimitExceeded"
    })
    .await;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            in_slot(&pods, &slot).await,
            Some((victim.clone(), uid.clone())),
            "a pod past its restart limit was killed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reasons = cluster.event_reasons("app").await;
    assert!(reasons.contains("PodRestarted"), "{reasons:?}");
    controller.stop().await;
    cluster.shutdown().await;
}
