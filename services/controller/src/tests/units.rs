//! Small scenarios on single decisions, built from pods directly.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::builders::*;
use crate::model::{DeleteReason, PodPhase, PodView};
use crate::rollout::{Budget, converge, step_count};

fn budget(replicas: usize, surge: usize, max_unavailable: usize) -> Budget {
    Budget {
        replicas,
        surge,
        max_unavailable,
    }
}

#[test]
fn a_pod_is_available_when_ready_not_in_error_and_not_deleting() {
    assert!(pod("a").build().available());
    assert!(!pod("a").not_ready().build().available());
    assert!(!pod("a").health(Error, t(0)).build().available());
    assert!(!pod("a").deleting().build().available());
    assert!(
        pod("a").health(Warning, t(0)).build().available(),
        "warnings still serve"
    );
}

#[test]
fn bake_counts_from_the_later_of_ready_and_health_change() {
    let p = pod("a").ready_since(t(10)).health(Info, t(30)).build();
    assert_eq!(p.good_since(), Some(t(30)));
    assert!(
        !p.failing_for(std::time::Duration::ZERO, t(40)),
        "not in error"
    );
    let failing = pod("a").health(Error, t(30)).build();
    assert!(failing.failing_for(std::time::Duration::from_secs(10), t(40)));
    assert!(!failing.failing_for(std::time::Duration::from_secs(11), t(40)));
}

#[test]
fn terminated_pods_are_finished() {
    assert!(pod("a").phase(PodPhase::Failed).build().finished());
    assert!(pod("a").phase(PodPhase::Succeeded).build().finished());
    assert!(!pod("a").phase(PodPhase::Pending).build().finished());
}

#[test]
fn step_counts_round_up_and_keep_at_least_one_pod() {
    assert_eq!(step_count(25, 4), 1);
    assert_eq!(step_count(25, 5), 2);
    assert_eq!(step_count(1, 3), 1);
    assert_eq!(step_count(100, 7), 7);
    assert_eq!(step_count(50, 0), 0);
}

#[test]
fn budget_rounds_surge_up_and_unavailable_down() {
    let spec = deployment()
        .replicas(10)
        .surge(IntOrString::String("25%".into()))
        .max_unavailable(IntOrString::String("25%".into()))
        .build()
        .spec;
    assert_eq!(Budget::from_spec(&spec).unwrap(), budget(10, 3, 2));
    let zero = deployment()
        .replicas(10)
        .surge(IntOrString::Int(0))
        .max_unavailable(IntOrString::Int(0))
        .build()
        .spec;
    assert_eq!(
        Budget::from_spec(&zero).unwrap().surge,
        1,
        "both zero would deadlock"
    );
}

#[test]
fn converge_deletes_unavailable_pods_first_and_keeps_the_floor() {
    let pods: Vec<PodView> = vec![
        pod("old-1").revision("old").build(),
        pod("old-2").revision("old").build(),
        pod("old-3").revision("old").not_ready().build(),
        pod("new-1").revision("new").created(t(5)).build(),
    ];
    let live: Vec<&PodView> = pods.iter().collect();
    let desired = [("new".to_string(), None, 2), ("old".to_string(), None, 1)];
    let (creates, deletes) = converge(&live, &desired, budget(3, 1, 0));
    assert_eq!(
        deletes[0],
        ("old-3".to_string(), DeleteReason::ScaleDown),
        "the unready pod goes first"
    );
    assert_eq!(
        deletes.len(),
        1,
        "available 3 = floor 3: no available pod may go"
    );
    assert_eq!(creates, [("new".to_string(), None, 1)]);
}

#[test]
fn converge_replaces_pods_of_unwanted_revisions() {
    let pods = [
        pod("bad")
            .revision("bad")
            .version("v2")
            .slot("s")
            .health(Error, t(0))
            .build(),
        pod("ok").revision("good").build(),
    ];
    let live: Vec<&PodView> = pods.iter().collect();
    let (creates, deletes) = converge(&live, &[("good".to_string(), None, 2)], budget(2, 0, 0));
    assert_eq!(deletes, [("bad".to_string(), DeleteReason::Replaced)]);
    assert_eq!(creates, [("good".to_string(), None, 1)]);
}
