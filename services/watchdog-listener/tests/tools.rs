//! End-to-end with tools nobody here wrote: grpcurl (through server reflection), a Python client
//! generated from `proto/` by grpcio-tools, and the `autocrane watchdog` client commands. A missing
//! tool fails the test.

mod common;

use autocrane_api::proto::watchdog_v1 as pb;
use autocrane_watchdog_listener::cli::{
    ConnectArgs, LevelArg, Output, WatchdogArgs, WatchdogCommand,
};
use common::{Env, assert_output_ok, pod_ref, venv_tool, with_token, workspace};
use kube::ResourceExt;

async fn grpcurl(env: &Env, token: &str, args: &[&str]) -> String {
    let addr = env.listener.addr.to_string();
    let header = format!("authorization: Bearer {token}");
    let mut all = vec!["-plaintext", "-H", header.as_str()];
    all.extend_from_slice(args);
    let (last, rest) = all.split_last().map(|(l, r)| (*l, r.to_vec())).unwrap();
    let mut full = rest;
    full.push(addr.as_str());
    full.push(last);
    let output = tokio::process::Command::new(venv_tool("grpcurl"))
        .args(&full)
        .output()
        .await
        .expect("grpcurl runs");
    assert_output_ok("grpcurl", &full, &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn grpcurl_posts_and_reads_a_watchdog_through_reflection() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let admin = env.admin_token();

    let services = grpcurl(&env, &admin, &["list"]).await;
    assert!(
        services.contains("autocrane.watchdog.v1.WatchdogListener"),
        "{services}"
    );

    let body = r#"{"pod":{"namespace":"shop","name":"web-0"},"name":"grpcurl","level":"LEVEL_ERROR","message":"posted by grpcurl","ttl":"300s"}"#;
    let posted = grpcurl(
        &env,
        &admin,
        &[
            "-d",
            body,
            "autocrane.watchdog.v1.WatchdogListener/PostWatchdog",
        ],
    )
    .await;
    let posted: serde_json::Value = serde_json::from_str(&posted).expect("grpcurl prints JSON");
    assert_eq!(posted["podHealth"]["health"], "HEALTH_ERROR", "{posted}");

    let got = grpcurl(
        &env,
        &admin,
        &[
            "-d",
            r#"{"pod":{"namespace":"shop","name":"web-0"}}"#,
            "autocrane.watchdog.v1.WatchdogListener/GetPodHealth",
        ],
    )
    .await;
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    let watchdog = &got["podHealth"]["watchdogs"][0];
    assert_eq!(watchdog["name"], "grpcurl");
    assert_eq!(watchdog["level"], "LEVEL_ERROR");
    assert_eq!(watchdog["message"], "posted by grpcurl");
    assert!(watchdog["expiresAt"].is_string(), "{got}");
    assert_eq!(env.kubectl_health("shop", "web-0").await, "error");
}

#[tokio::test]
async fn a_generated_python_client_posts_and_reads_a_watchdog() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let python = venv_tool("python");
    let out = env.dir.path().join("py");
    std::fs::create_dir_all(&out).unwrap();
    let proto = workspace().join("proto");
    let generate = std::process::Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg("autocrane/watchdog/v1/watchdog.proto")
        .output()
        .expect("grpc_tools runs");
    assert_output_ok("grpc_tools.protoc", &[], &generate);

    let script = r#"
import sys, grpc
sys.path.insert(0, sys.argv[1])
from autocrane.watchdog.v1 import watchdog_pb2 as pb, watchdog_pb2_grpc as rpc
stub = rpc.WatchdogListenerStub(grpc.insecure_channel(sys.argv[2]))
md = [("authorization", "Bearer " + sys.argv[3])]
pod = pb.PodRef(namespace="shop", name="web-0")
posted = stub.PostWatchdog(pb.PostWatchdogRequest(pod=pod, name="python", level=pb.LEVEL_WARNING, message="from python"), metadata=md)
print("posted", pb.Health.Name(posted.pod_health.health))
got = stub.GetPodHealth(pb.GetPodHealthRequest(pod=pod), metadata=md)
for w in got.pod_health.watchdogs:
    print("watchdog", w.name, pb.Level.Name(w.level), w.message)
try:
    stub.PostWatchdog(pb.PostWatchdogRequest(pod=pod, name="python", message="no level"), metadata=md)
except grpc.RpcError as e:
    print("refused", e.code().name, e.details())
try:
    stub.GetPodHealth(pb.GetPodHealthRequest(pod=pod))
except grpc.RpcError as e:
    print("refused", e.code().name)
"#;
    let output = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&out)
        .arg(env.listener.addr.to_string())
        .arg(env.admin_token())
        .output()
        .await
        .expect("python runs");
    assert_output_ok("python", &["client.py"], &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "posted HEALTH_WARNING", "{stdout}");
    assert_eq!(
        lines[1], "watchdog python LEVEL_WARNING from python",
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("refused INVALID_ARGUMENT level:"),
        "{stdout}"
    );
    assert_eq!(lines[3], "refused UNAUTHENTICATED", "{stdout}");
    assert_eq!(env.kubectl_health("shop", "web-0").await, "warning");
}

#[tokio::test]
async fn the_cli_posts_with_a_token_file() {
    let env = Env::start().await;
    env.pod("shop", "web-0", &[], &[], None).await;
    let token = env.sim.issue_token("shop", "web", Some("web-0"));
    let token_file = env.dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let connect = ConnectArgs {
        server: env.url.clone(),
        token: None,
        token_file: Some(token_file),
        no_token: false,
        output: Output::Json,
        timeout: std::time::Duration::from_secs(10).into(),
        timeout_secs: None,
        tls: Default::default(),
    };
    let post = WatchdogArgs {
        connect: connect.clone(),
        command: WatchdogCommand::Post {
            pod: "shop/web-0".into(),
            name: "cli".into(),
            level: LevelArg::Error,
            message: "posted by the CLI".into(),
            ttl: Some("5m".parse().unwrap()),
        },
    };
    autocrane_watchdog_listener::cli::run(post)
        .await
        .expect("CLI post");
    let mut client = env.client().await;
    let got = client
        .get_pod_health(with_token(
            pb::GetPodHealthRequest {
                pod: pod_ref("shop", "web-0"),
            },
            &env.admin_token(),
        ))
        .await
        .unwrap()
        .into_inner()
        .pod_health
        .unwrap();
    assert_eq!(got.watchdogs[0].name, "cli");
    assert!(got.watchdogs[0].expires_at.is_some());

    // The same token may not touch another pod; the CLI reports the server's refusal.
    env.pod("shop", "web-1", &[], &[], None).await;
    let other = WatchdogArgs {
        connect,
        command: WatchdogCommand::Delete {
            pod: "shop/web-1".into(),
            name: "cli".into(),
        },
    };
    let err = autocrane_watchdog_listener::cli::run(other)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PermissionDenied"), "{err}");
    assert!(
        env.get_pod("shop", "web-0")
            .await
            .annotations()
            .contains_key("status.autocrane.io/cli")
    );
}
