//! The shared server runtime as a user of any AutoCrane server sees it: TLS with client
//! certificates (checked with grpcurl and a tonic client), the admin listener's `/metrics` and
//! `/healthz`, message-size limits, and a clean exit on SIGTERM.

use std::{process::Command, time::Duration};

use autocrane_api::proto::watchdog_v1::{
    GetPodHealthRequest, PodRef, watchdog_listener_client::WatchdogListenerClient,
};
use autocrane_runtime::{args::ClientTlsArgs, client};
use autocrane_test_support::{Running, http_get, run, tool};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn server(extra: &[&str]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_autocrane-runtime-server"));
    command.args(["--listen", "127.0.0.1:0"]).args(extra);
    Running::spawn(command)
}

/// A CA plus a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "autocrane test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            params.distinguished_name.push(DnType::CommonName, stem);
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{stem}-key.pem")),
                key.serialize_pem(),
            )
            .unwrap();
        };
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(
            vec!["client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn tls_with_client_certificates_admits_only_certified_clients() {
    let pki = Pki::generate();
    let server = server(&[
        "--admin-listen",
        "off",
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server-key.pem"),
        "--tls-client-ca",
        &pki.path("ca.pem"),
    ]);
    let address = server.grpc_address();
    let url = format!("https://{address}");

    let with_cert = ClientTlsArgs {
        client_tls_ca: Some(pki.path("ca.pem").into()),
        client_tls_cert: Some(pki.path("client.pem").into()),
        client_tls_key: Some(pki.path("client-key.pem").into()),
        client_tls_server_name: Some("localhost".into()),
    };
    let channel = client::connect(&url, &with_cert).await.unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING over mutual TLS");

    let without_cert = ClientTlsArgs {
        client_tls_cert: None,
        client_tls_key: None,
        ..with_cert.clone()
    };
    let refused = match client::connect(&url, &without_cert).await {
        Err(_) => true,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");

    // The users' tool agrees.
    let grpcurl = tool("grpcurl");
    let address = address.to_string();
    let (ok, out, err) = run(Command::new(&grpcurl).args([
        "-cacert",
        &pki.path("ca.pem"),
        "-cert",
        &pki.path("client.pem"),
        "-key",
        &pki.path("client-key.pem"),
        "-servername",
        "localhost",
        &address,
        "grpc.health.v1.Health/Check",
    ]));
    assert!(
        ok && out.contains("SERVING"),
        "grpcurl over mTLS: {out}{err}"
    );
    let (ok, _, _) = run(Command::new(&grpcurl).args([
        "-connect-timeout",
        "2",
        "-cacert",
        &pki.path("ca.pem"),
        "-servername",
        "localhost",
        &address,
        "grpc.health.v1.Health/Check",
    ]));
    assert!(!ok, "grpcurl without a client certificate must fail");
    let (ok, _, _) =
        run(Command::new(&grpcurl).args(["-plaintext", "-connect-timeout", "2", &address, "list"]));
    assert!(!ok, "plaintext must not reach a TLS server");
}

#[tokio::test]
async fn admin_listener_serves_metrics_and_health() {
    let server = server(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_address();
    let grpc = server.grpc_address();

    let (status, body) = http_get(admin, "/healthz");
    assert_eq!(status, 200, "{body}");

    let channel = client::connect(&format!("http://{grpc}"), &ClientTlsArgs::default())
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();

    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"grpc_server_started_total{method="grpc.health.v1.Health/Check"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("grpc_server_handling_seconds_bucket"),
        "{metrics}"
    );
    let (status, _) = http_get(admin, "/nothing-here");
    assert_eq!(status, 404);
}

#[tokio::test]
async fn oversized_messages_are_refused_before_reaching_the_service() {
    let server = server(&["--admin-listen", "off", "--max-message-bytes", "1024"]);
    let address = server.grpc_address();
    let channel = client::connect(&format!("http://{address}"), &ClientTlsArgs::default())
        .await
        .unwrap();
    let mut watchdogs = WatchdogListenerClient::new(channel);
    let request = |name: String| GetPodHealthRequest {
        pod: Some(PodRef {
            namespace: "default".into(),
            name,
        }),
    };
    let small = watchdogs
        .get_pod_health(request("web-0".into()))
        .await
        .unwrap_err();
    assert_eq!(small.code(), tonic::Code::Unimplemented);
    let large = watchdogs
        .get_pod_health(request("x".repeat(4096)))
        .await
        .unwrap_err();
    assert_eq!(large.code(), tonic::Code::OutOfRange, "{large:?}");
    assert!(
        large.message().contains("message length too large"),
        "{large:?}"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = server(&["--admin-listen", "off"]);
    server.grpc_address();
    let status = server
        .terminate(Duration::from_secs(5))
        .expect("the server exits within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(server.stderr_text().contains("gRPC server stopped"));
}

#[test]
fn tls_flags_are_checked_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.pem");
    let mut command = Command::new(env!("CARGO_BIN_EXE_autocrane-runtime-server"));
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        missing.to_str().unwrap(),
    ]);
    let (ok, _, stderr) = run(&mut command);
    assert!(!ok);
    assert!(stderr.contains("absent.pem"), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line_and_the_filter_applies() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_autocrane-runtime-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("AUTOCRANE_LOG_FORMAT", "json")
        .env("AUTOCRANE_LOG", "warn,autocrane_runtime::server=info");
    let server = Running::spawn(command);
    let line = server.wait_for_line("gRPC server listening", Duration::from_secs(30));
    let event: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["fields"]["message"], "gRPC server listening");
    assert!(
        event["fields"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // The filter let the server's info line through but not the runtime's other info lines.
    assert!(
        !server.stderr_text().contains("Admin listener"),
        "{}",
        server.stderr_text()
    );
}
