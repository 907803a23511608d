//! kube-runtime 5 `watcher` and `Controller` against kube-sim with faults: dropped watches,
//! compacted history (in-stream 410 and relist) and error rates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use autocrane_test_support::eventually;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher::{self, Event};
use kube_sim::{ErrorRule, KubeSim};
use serde_json::json;
use tokio::sync::mpsc;

fn cm(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.data = Some(BTreeMap::from([("value".to_string(), name.to_string())]));
    c
}

#[derive(Debug, PartialEq)]
enum Seen {
    Init,
    Object(String),
    Error,
}

async fn next_matching(rx: &mut mpsc::UnboundedReceiver<Seen>, want: &Seen, log: &mut Vec<Seen>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {want:?}; saw {log:?}"))
            .expect("watcher running");
        let hit = ev == *want;
        log.push(ev);
        if hit {
            return;
        }
    }
}

#[tokio::test]
async fn watcher_recovers_from_dropped_watches_and_410() {
    let sim = KubeSim::builder().start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = watcher::watcher(api.clone(), watcher::Config::default()).default_backoff();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let seen = match ev {
                Ok(Event::Init) => Seen::Init,
                Ok(Event::Apply(o) | Event::InitApply(o)) => Seen::Object(o.metadata.name.unwrap()),
                Ok(_) => continue,
                Err(_) => Seen::Error,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    let mut log = Vec::new();
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    next_matching(&mut rx, &Seen::Object("a".into()), &mut log).await;
    log.clear();

    // Dropped watch: the watcher re-watches from its resourceVersion and misses nothing.
    sim.faults().close_watches();
    api.create(&PostParams::default(), &cm("b")).await.unwrap();
    next_matching(&mut rx, &Seen::Object("b".into()), &mut log).await;
    assert!(
        !log.contains(&Seen::Init),
        "a dropped watch must not relist: {log:?}"
    );

    // Block re-watches, drop the watch, change things and compact: the resume gets an in-stream
    // 410 and the watcher relists, seeing the object created meanwhile.
    sim.faults().add_error(ErrorRule {
        verb: Some("watch".into()),
        resource: Some("configmaps".into()),
        user: None,
        rate: 1.0,
        code: 500,
        retry_after_seconds: None,
    });
    sim.faults().close_watches();
    next_matching(&mut rx, &Seen::Error, &mut log).await;
    assert!(
        sim.faults().injected_by_verb().get("watch") > Some(&0),
        "the watch error was injected"
    );
    api.create(&PostParams::default(), &cm("c")).await.unwrap();
    sim.faults().compact();
    sim.faults().clear();
    next_matching(&mut rx, &Seen::Init, &mut log).await;
    next_matching(&mut rx, &Seen::Object("c".into()), &mut log).await;
    task.abort();
}

#[tokio::test]
async fn controller_reconciles_through_faults() {
    let sim = KubeSim::builder().seed(3).start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    struct Ctx {
        api: Api<ConfigMap>,
    }
    async fn reconcile(o: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        let name = o.metadata.name.clone().unwrap();
        let value = o
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .cloned()
            .unwrap_or_default();
        let p = json!({"metadata": {"annotations": {"reconciled": value}}});
        ctx.api
            .patch(&name, &PatchParams::default(), &Patch::Merge(p))
            .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &kube::Error, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let ctx = Arc::new(Ctx { api: api.clone() });
    let controller = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {}),
    );
    let all_reconciled = |names: Vec<String>| {
        let api = api.clone();
        async move {
            let what = format!("all of {names:?} reconciled");
            eventually(Duration::from_secs(30), &what, || async {
                let mut ok = true;
                for n in &names {
                    let c = api.get(n).await.ok();
                    let ann = c
                        .as_ref()
                        .and_then(|c| c.metadata.annotations.as_ref())
                        .and_then(|a| a.get("reconciled"))
                        .cloned();
                    ok &= ann.as_deref() == Some(n.as_str());
                }
                ok
            })
            .await;
        }
    };
    api.create(&PostParams::default(), &cm("one"))
        .await
        .unwrap();
    all_reconciled(vec!["one".into()]).await;
    // 30% of patches fail with 500 and 20% of the others with 409 (each matching rule draws in
    // turn); watches drop and history is compacted.
    sim.faults().add_error(ErrorRule {
        verb: Some("patch".into()),
        resource: None,
        user: None,
        rate: 0.3,
        code: 500,
        retry_after_seconds: None,
    });
    sim.faults().add_error(ErrorRule {
        verb: Some("patch".into()),
        resource: None,
        user: None,
        rate: 0.2,
        code: 409,
        retry_after_seconds: None,
    });
    sim.faults().add_error(ErrorRule {
        verb: Some("watch".into()),
        resource: None,
        user: None,
        rate: 1.0,
        code: 500,
        retry_after_seconds: None,
    });
    sim.faults().close_watches();
    for n in ["two", "three"] {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    sim.faults().compact();
    // The controller's re-watch has hit the injected watch error.
    eventually(
        Duration::from_secs(30),
        "an injected watch error",
        || async { sim.faults().injected_by_verb().get("watch") > Some(&0) },
    )
    .await;
    let rules: Vec<ErrorRule> = sim
        .faults()
        .get()
        .errors
        .into_iter()
        .filter(|r| r.verb.as_deref() != Some("watch"))
        .collect();
    sim.faults().set(kube_sim::FaultConfig {
        errors: rules,
        latency_ms: 5,
        seed: None,
    });
    api.create(&PostParams::default(), &cm("four"))
        .await
        .unwrap();
    all_reconciled(vec![
        "one".into(),
        "two".into(),
        "three".into(),
        "four".into(),
    ])
    .await;
    assert!(sim.faults().injected() > 0, "the faults fired");
    controller.abort();
}
