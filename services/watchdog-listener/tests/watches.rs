//! End-to-end: the listener opens one Kubernetes pod watch per process, however many
//! WatchPodHealth streams are open; a re-list removes the pods deleted while the watch was down.
//!
//! The watches are counted on the test's side, by wrapping the listener's kube client in a tower
//! service that records every request with `watch=true` (kube-sim is not asked), and checked
//! against the listener's own `autocrane_watchdog_kube_watches_started_total` counter.
//! Before the shared index, the same setup opened 52 watches: the writer's, the prober's and one
//! per stream.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use autocrane_api::proto::watchdog_v1 as pb;
use autocrane_test_support::eventually;
use autocrane_watchdog_listener::pods::is_watch;
use common::{Env, listener_args, post, with_token};
use kube::Client;
use kube_sim::faults::ErrorRule;
use tonic::Streaming;

/// The requests of the listener's kube client, as `METHOD path?query`.
#[derive(Clone, Default)]
struct Requests(Arc<Mutex<Vec<(http::Method, http::Uri)>>>);

impl Requests {
    /// `client`, recording every request into `self`.
    fn wrap(&self, client: Client) -> Client {
        let seen = self.clone();
        let namespace = client.default_namespace().to_string();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            seen.0
                .lock()
                .unwrap()
                .push((request.method().clone(), request.uri().clone()));
            let client = client.clone();
            async move { client.send(request).await }
        });
        Client::new(service, namespace)
    }

    fn pod_requests(&self, watch: bool) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(method, uri)| {
                method == http::Method::GET
                    && uri.path() == "/api/v1/pods"
                    && is_watch(uri) == watch
            })
            .count()
    }

    /// Watches of pods (in any namespace or all).
    fn pod_watches(&self) -> usize {
        let all = self.pod_requests(true);
        let namespaced = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, uri)| uri.path().ends_with("/pods") && uri.path() != "/api/v1/pods")
            .filter(|(_, uri)| is_watch(uri))
            .count();
        all + namespaced
    }

    /// Lists of all pods (the watcher's initial list and re-lists).
    fn pod_lists(&self) -> usize {
        self.pod_requests(false)
    }
}

async fn open_stream(env: &Env, admin: &str) -> Streaming<pb::WatchPodHealthResponse> {
    env.client()
        .await
        .watch_pod_health(with_token(
            pb::WatchPodHealthRequest {
                namespace: "shop".into(),
                ..Default::default()
            },
            admin,
        ))
        .await
        .expect("stream opened")
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::WatchPodHealthResponse>) -> pb::WatchPodHealthResponse {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a message within 30 s")
        .expect("stream healthy")
        .expect("stream open")
}

fn names(pods: &[pb::PodHealth]) -> Vec<String> {
    let mut names: Vec<String> = pods.iter().map(|p| p.pod.clone().unwrap().name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_open_streams_share_the_listeners_one_pod_watch() {
    let requests = Requests::default();
    let env = Env::start_with_client(listener_args(50, None), |client| requests.wrap(client)).await;
    env.pod("shop", "web-0", &[("app", "web")], &[], None).await;
    let admin = env.admin_token();

    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = open_stream(&env, &admin).await;
        // The pod may have been created just before the index listed; wait for it to show.
        let mut first = next(&mut stream).await;
        assert!(first.snapshot, "the first message is the full state");
        while names(&first.pods).is_empty() {
            first = next(&mut stream).await;
        }
        assert_eq!(names(&first.pods), ["web-0"]);
        streams.push(stream);
    }
    env.client()
        .await
        .post_watchdog(with_token(
            post("shop", "web-0", "http", pb::Level::Error, "down"),
            &admin,
        ))
        .await
        .expect("post accepted");
    for stream in &mut streams {
        let change = next(stream).await;
        assert!(!change.snapshot);
        assert_eq!(change.pods[0].health, pb::Health::Error as i32);
    }

    let watches = requests.pod_watches();
    println!(
        "pod watches with 50 open WatchPodHealth streams: {watches} (listener metric: {}; before the shared index: 52)",
        env.listener.kube_watches.get()
    );
    assert_eq!(
        env.listener.index.listings(),
        1,
        "no re-list happened, so no re-watch is expected"
    );
    assert_eq!(watches, 1, "one pod watch for the whole process");
    assert_eq!(requests.pod_lists(), 1, "one initial list");
    assert_eq!(env.listener.kube_watches.get(), 1);
    env.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_the_watch_was_down_is_removed_at_the_relist() {
    let requests = Requests::default();
    let env = Env::start_with_client(listener_args(50, None), |client| requests.wrap(client)).await;
    env.pod("shop", "web-0", &[], &[], None).await;
    env.pod("shop", "web-1", &[], &[], None).await;
    let admin = env.admin_token();
    let mut stream = open_stream(&env, &admin).await;
    let mut first = next(&mut stream).await;
    assert!(first.snapshot);
    while names(&first.pods).len() < 2 {
        first = next(&mut stream).await;
    }

    // The API server refuses pod watches and ends the open one: the listener's watch is down.
    env.sim.faults().add_error(ErrorRule {
        verb: Some("watch".into()),
        resource: Some("pods".into()),
        user: None,
        rate: 1.0,
        code: 500,
        retry_after_seconds: None,
    });
    env.sim.faults().close_watches();
    eventually(
        Duration::from_secs(30),
        "the listener trying to re-watch",
        || async { requests.pod_watches() >= 2 },
    )
    .await;
    // Meanwhile web-1 is deleted and the history compacted, so resuming is impossible.
    kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.sim.client(), "shop")
        .delete("web-1", &Default::default())
        .await
        .expect("pod deleted");
    env.sim.faults().compact();
    env.sim.faults().clear();

    let removed = loop {
        let message = next(&mut stream).await;
        if !message.removed.is_empty() {
            break message;
        }
    };
    assert_eq!(removed.removed[0].name, "web-1");
    assert!(!removed.snapshot);
    eventually(Duration::from_secs(30), "the re-list recorded", || async {
        env.listener.index.listings() == 2
    })
    .await;
    let watches = requests.pod_watches();
    println!(
        "pod watches across one outage and re-list: {watches} (lists: {})",
        requests.pod_lists()
    );
    assert!(requests.pod_lists() >= 2, "the listener re-listed");
    assert_eq!(
        env.listener.kube_watches.get(),
        watches as u64,
        "the listener's metric counts every watch request"
    );
    env.stop();
}
