//! W3C trace context across one gRPC hop, observed by a real OTLP receiver (a TraceService built on
//! the official `opentelemetry-proto` messages): the server process's span is a child of the client
//! process's span, in the same trace.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use autocrane_runtime::{
    args::{ClientTlsArgs, TelemetryArgs},
    client, telemetry,
};
use autocrane_test_support::{Running, tool, workspace_root};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing::Instrument;

/// The OTLP receiver: a child process printing one JSON line per span.
struct Sink {
    child: std::process::Child,
    spans: mpsc::Receiver<serde_json::Value>,
    port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sink() -> Sink {
    let mut child = Command::new(tool("python"))
        .arg(workspace_root().join("integration-tests/e2e/python/otlp_sink.py"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the OTLP sink");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("sink prints its port").unwrap();
    let port = first
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("unexpected sink output {first:?}"))
        .parse()
        .unwrap();
    let (sender, spans) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(span) = serde_json::from_str(&line) {
                let _ = sender.send(span);
            }
        }
    });
    Sink { child, spans, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_span_is_the_parent_of_the_server_span_across_a_grpc_hop() {
    let sink = start_sink();
    let endpoint = format!("http://127.0.0.1:{}", sink.port);

    let mut command = Command::new(env!("CARGO_BIN_EXE_autocrane-runtime-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "trace-test-server");
    let mut server = Running::spawn(command);
    let address = server.grpc_address();

    let guard = telemetry::init_with_otlp(
        "trace-test-client",
        &TelemetryArgs::default(),
        Some(&endpoint),
    )
    .unwrap();
    assert!(guard.exporting());
    async {
        let channel = client::connect(&format!("http://{address}"), &ClientTlsArgs::default())
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap();
    }
    .instrument(tracing::info_span!("trace-test"))
    .await;
    guard.shutdown().await;
    // The server flushes its spans on SIGTERM.
    let exit = server
        .terminate(Duration::from_secs(10))
        .expect("server exits");
    assert!(exit.success());

    let mut client_span = None;
    let mut server_span = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (client_span.is_none() || server_span.is_none()) && Instant::now() < deadline {
        let Ok(span) = sink.spans.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if span["name"] != "grpc.health.v1.Health/Check" {
            continue;
        }
        match span["service"].as_str() {
            Some("trace-test-client") => client_span = Some(span),
            Some("trace-test-server") => server_span = Some(span),
            _ => {}
        }
    }
    let client_span = client_span.expect("the client's span reached the OTLP receiver");
    let server_span = server_span.expect("the server's span reached the OTLP receiver");
    // OTLP span kinds: 2 = SERVER, 3 = CLIENT.
    assert_eq!(client_span["kind"], 3, "{client_span}");
    assert_eq!(server_span["kind"], 2, "{server_span}");
    assert_eq!(server_span["trace_id"], client_span["trace_id"]);
    assert_eq!(
        server_span["parent_span_id"], client_span["span_id"],
        "server span {server_span} is not a child of client span {client_span}"
    );
}
