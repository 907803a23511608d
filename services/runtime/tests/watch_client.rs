//! The reconnecting watch client against a real tonic server on 127.0.0.1: it waits for the first
//! message, survives the server being killed and restarted on the same address (resuming with its
//! last token), and stops for good on a terminal status.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use autocrane_api::proto::version_v1::{
    SourceState, WatchVersionsRequest, WatchVersionsResponse,
    version_watcher_client::VersionWatcherClient,
    version_watcher_server::{VersionWatcher, VersionWatcherServer},
};
use autocrane_runtime::{
    args::{ClientTlsArgs, ServerArgs},
    client,
    server::GrpcServer,
    shutdown::Shutdown,
    watch_client::{Backoff, WatchClient},
};
use futures::Stream;
use tokio::{net::TcpListener, sync::broadcast};
use tonic::{Request, Response, Status};

type Stream_ = Pin<Box<dyn Stream<Item = Result<WatchVersionsResponse, Status>> + Send>>;

/// A VersionWatcher whose stream sends a snapshot named by `generation`, then whatever the test
/// publishes; it records the resume tokens clients present.
#[derive(Clone)]
struct Scripted {
    generation: u32,
    resume_tokens: Arc<Mutex<Vec<String>>>,
    updates: broadcast::Sender<String>,
    reject: bool,
}

#[tonic::async_trait]
impl VersionWatcher for Scripted {
    async fn watch_versions(
        &self,
        request: Request<WatchVersionsRequest>,
    ) -> Result<Response<Stream_>, Status> {
        if self.reject {
            return Err(Status::invalid_argument(
                "sources[0].oci.repository: must not be empty",
            ));
        }
        self.resume_tokens
            .lock()
            .unwrap()
            .push(request.into_inner().resume_token);
        let generation = self.generation;
        let mut updates = self.updates.subscribe();
        let stream = async_stream::stream! {
            yield Ok(message(true, &format!("snapshot-{generation}"), &format!("g{generation}-0")));
            let mut seq = 0;
            while let Ok(source_id) = updates.recv().await {
                seq += 1;
                yield Ok(message(false, &source_id, &format!("g{generation}-{seq}")));
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

fn message(snapshot: bool, source_id: &str, token: &str) -> WatchVersionsResponse {
    WatchVersionsResponse {
        snapshot,
        sources: vec![SourceState {
            source_id: source_id.into(),
            ..Default::default()
        }],
        events: vec![],
        resume_token: token.into(),
    }
}

/// A server running on a runtime of its own, so that killing it drops the listener and every
/// open connection at once, as killing a process would.
struct ServerProcess {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ServerProcess {
    fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts the scripted server on `addr` (port 0 for any).
fn serve(addr: SocketAddr, service: Scripted) -> (SocketAddr, ServerProcess) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let local = listener.local_addr().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        let grpc = GrpcServer::new(&ServerArgs::local(local))
            .unwrap()
            .add_service(VersionWatcherServer::new(service));
        grpc.serve_with_listener(listener, Shutdown::never())
            .await
            .unwrap();
    });
    (
        local,
        ServerProcess {
            runtime: Some(runtime),
        },
    )
}

/// The test's view of the stream: the source ids seen, in order (a snapshot replaces them).
fn watch(addr: SocketAddr, shutdown: Shutdown) -> WatchClient<Vec<String>> {
    let channel = client::channel(&format!("http://{addr}"), &ClientTlsArgs::default()).unwrap();
    WatchClient::spawn(
        "test-versions",
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        shutdown,
        move |resume_token| {
            let mut client = VersionWatcherClient::new(channel.clone());
            async move {
                client
                    .watch_versions(WatchVersionsRequest {
                        sources: vec![],
                        resume_token: resume_token.unwrap_or_default(),
                    })
                    .await
                    .map(Response::into_inner)
            }
        },
        |state: &mut Option<Vec<String>>, message: WatchVersionsResponse| {
            let ids = message.sources.into_iter().map(|s| s.source_id);
            if message.snapshot {
                *state = Some(ids.collect());
            } else {
                state.get_or_insert_with(Vec::new).extend(ids);
            }
        },
        |message: &WatchVersionsResponse| Some(message.resume_token.clone()),
    )
}

fn scripted(
    generation: u32,
    tokens: &Arc<Mutex<Vec<String>>>,
) -> (Scripted, broadcast::Sender<String>) {
    let (updates, _) = broadcast::channel(16);
    (
        Scripted {
            generation,
            resume_tokens: tokens.clone(),
            updates: updates.clone(),
            reject: false,
        },
        updates,
    )
}

#[tokio::test]
async fn reconnects_and_resumes_after_the_server_is_killed_and_restarted() {
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let (first_service, first_updates) = scripted(1, &tokens);
    let (addr, first_server) = serve("127.0.0.1:0".parse().unwrap(), first_service);
    let (_stop, shutdown) = Shutdown::new();
    let watch = watch(addr, shutdown);

    assert_eq!(watch.first().await.unwrap(), vec!["snapshot-1"]);
    // Wait until the server's stream subscribed before publishing.
    while first_updates.receiver_count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first_updates.send("src-a".into()).unwrap();
    let state = tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_until(|ids| ids.contains(&"src-a".to_string())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(state, vec!["snapshot-1", "src-a"]);

    // Kill the server: the task and every connection go away.
    first_server.kill();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut receiver = watch.receiver();
        receiver.wait_for(|w| !w.connected).await.unwrap();
    })
    .await
    .expect("the client notices the server is gone");

    // Restart on the same address; the client reconnects by itself and resumes from its token.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second_service, _second_updates) = scripted(2, &tokens);
    let (same_addr, _second_server) = serve(addr, second_service);
    assert_eq!(same_addr, addr);
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_until(|ids| ids.first().is_some_and(|id| id == "snapshot-2")),
    )
    .await
    .expect("reconnected within 10 s")
    .unwrap();
    assert_eq!(state, vec!["snapshot-2"]);
    assert_eq!(
        *tokens.lock().unwrap(),
        vec![String::new(), "g1-1".to_string()],
        "first open without a token, the reconnect with the last token received"
    );
    assert!(watch.receiver().borrow().connections >= 2);
}

#[tokio::test]
async fn stops_on_a_terminal_status() {
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let (mut service, _updates) = scripted(1, &tokens);
    service.reject = true;
    let (addr, _server) = serve("127.0.0.1:0".parse().unwrap(), service);
    let (_stop, shutdown) = Shutdown::new();
    let watch = watch(addr, shutdown);

    let error = tokio::time::timeout(Duration::from_secs(5), watch.first())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("sources[0].oci.repository"));
    // No retries after a terminal status.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watched = watch.receiver().borrow().clone();
    assert_eq!(watched.connections, 0);
    assert!(watched.terminal.is_some());
}

#[tokio::test]
async fn keeps_retrying_while_the_server_is_down_and_connects_when_it_comes_up() {
    // Reserve a port, then free it: nothing listens there yet.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (_stop, shutdown) = Shutdown::new();
    let watch = watch(addr, shutdown);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(watch.current().is_none());

    let tokens = Arc::new(Mutex::new(Vec::new()));
    let (service, _updates) = scripted(7, &tokens);
    let (_addr, _server) = serve(addr, service);
    let first = tokio::time::timeout(Duration::from_secs(10), watch.first())
        .await
        .expect("connected once the server came up")
        .unwrap();
    assert_eq!(first, vec!["snapshot-7"]);
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_the_server_stops_promptly() {
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let (service, _updates) = scripted(3, &tokens);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = Shutdown::new();
    let grpc = GrpcServer::new(&ServerArgs::local(addr))
        .unwrap()
        .add_service(VersionWatcherServer::new(service));
    let server = tokio::spawn(grpc.serve_with_listener(listener, shutdown));

    let channel = client::connect(&format!("http://{addr}"), &ClientTlsArgs::default())
        .await
        .unwrap();
    let mut stream = VersionWatcherClient::new(channel)
        .watch_versions(WatchVersionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("the snapshot");
    assert!(first.snapshot);

    let started = std::time::Instant::now();
    stop.trigger();
    let end = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("the open stream ends soon after shutdown");
    assert!(matches!(end, Ok(None)), "ended with OK, got {end:?}");
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the server stops well before the drain timeout")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < autocrane_runtime::server::DRAIN_TIMEOUT / 2);
}

/// A VersionWatcher whose `GetSource` takes a while, to hold a call open.
#[derive(Clone, Copy)]
struct Slow;

#[tonic::async_trait]
impl VersionWatcher for Slow {
    async fn get_source(
        &self,
        _request: Request<autocrane_api::proto::version_v1::GetSourceRequest>,
    ) -> Result<Response<autocrane_api::proto::version_v1::GetSourceResponse>, Status> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Response::new(Default::default()))
    }
}

/// Starts the slow VersionWatcher with `limit` applied to its args; returns its address, the
/// trigger that stops it and the serving task.
async fn slow_server(
    limit: impl FnOnce(&mut ServerArgs),
) -> (
    std::net::SocketAddr,
    autocrane_runtime::shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<Result<(), autocrane_runtime::RuntimeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args = ServerArgs::local(addr);
    limit(&mut args);
    let grpc = GrpcServer::new(&args)
        .unwrap()
        .add_service(VersionWatcherServer::new(Slow));
    let (stop, shutdown) = Shutdown::new();
    let server = tokio::spawn(grpc.serve_with_listener(listener, shutdown));
    (addr, stop, server)
}

async fn get_source(channel: &client::AutoCraneChannel) -> Result<(), Status> {
    VersionWatcherClient::new(channel.clone())
        .get_source(autocrane_api::proto::version_v1::GetSourceRequest::default())
        .await
        .map(drop)
}

/// One call per channel, all at once: (answered, refused with RESOURCE_EXHAUSTED).
async fn call_at_once(channels: &[client::AutoCraneChannel]) -> (usize, usize) {
    let results = futures::future::join_all(channels.iter().map(get_source)).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let exhausted = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::ResourceExhausted))
        .count();
    assert_eq!(ok + exhausted, results.len(), "{results:?}");
    (ok, exhausted)
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_get_resource_exhausted() {
    let (addr, stop, server) = slow_server(|args| args.max_concurrent_requests = 2).await;
    // One connection, five calls at once: two run, the rest are refused at once.
    let channel = client::connect(&format!("http://{addr}"), &ClientTlsArgs::default())
        .await
        .unwrap();
    assert_eq!(call_at_once(&vec![channel.clone(); 5]).await, (2, 3));
    // Once the load is gone, calls succeed again.
    get_source(&channel).await.unwrap();
    stop.trigger();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn calls_beyond_the_process_wide_limit_get_resource_exhausted_whatever_their_connection() {
    let (addr, stop, server) = slow_server(|args| args.max_concurrent_requests_total = 2).await;
    // Five clients, each on its own connection (well under the per-connection limit), at once.
    let mut channels = Vec::new();
    for _ in 0..5 {
        channels.push(
            client::connect(&format!("http://{addr}"), &ClientTlsArgs::default())
                .await
                .unwrap(),
        );
    }
    assert_eq!(call_at_once(&channels).await, (2, 3));
    // The permits come back: every connection can call again.
    for channel in &channels {
        get_source(channel).await.unwrap();
    }
    stop.trigger();
    server.await.unwrap().unwrap();
}
