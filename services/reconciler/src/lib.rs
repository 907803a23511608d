//! # autocrane-reconciler: the AutoCrane controller's Kubernetes and gRPC wiring
//!
//! The decisions live in `autocrane-controller` (pure: `Input` → `plan()` → `Plan`); this crate
//! observes the world, calls the core and carries out its plans.
//!
//! | module | does I/O | job |
//! |---|---|---|
//! | [`pod_builder`] | no | deployment + `CreatePod` → the `Pod` (owner ref, labels, version, readiness gate, DataDeployer injection, hardening) |
//! | [`observe`] | no | `Pod` → `PodView` (phase, readiness, health and since when, data reports) |
//! | [`status`] | no | the status merge patch (the status itself, failures included, is the core's) |
//! | [`lease`] | both | leader election on a `coordination.k8s.io/v1` Lease: a pure decision over the Lease and a loop that applies it |
//! | [`upstream`] | gRPC | VersionWatcher / DataRepository clients behind traits, so deployments without sources need neither |
//! | [`apply`] | kube + gRPC | carries out a `Plan`: pods, annotations, status subresource, Events, quarantines and pins; the pins finalizer |
//! | [`events`] | kube | Events on deployments; a repeat (same reason *and* note) counts up a series, decided by a pure function |
//! | [`controller`] | kube | the kube-runtime `Controller`: one pod watch feeding the owned-pods store, reconcile, error policy, metrics |
//! | this file | — | the `autocrane controller` flags and [`run`] |

pub mod apply;
pub mod controller;
pub mod events;
pub mod lease;
pub mod observe;
pub mod pod_builder;
pub mod status;
pub mod upstream;

use std::{sync::Arc, time::Duration};

use autocrane_controller::{conditions::reason, model::Failure};
use autocrane_runtime::{
    RuntimeError,
    admin::serve_admin,
    args::{ClientTlsArgs, OptionalAddr, parse_optional_addr},
    process::Process,
};
use tracing::Instrument;

/// Flags of `autocrane controller`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// URL of the VersionWatcher (deployments whose `spec.version.source` is set need it).
    #[arg(long, env = "AUTOCRANE_VERSION_WATCHER")]
    pub version_watcher: Option<String>,

    /// URL of the DataRepository (deployments with `spec.data` need it); also passed to the
    /// injected DataDeployers.
    #[arg(long, env = "AUTOCRANE_DATA_REPOSITORY")]
    pub data_repository: Option<String>,

    /// URL of the WatchdogListener the injected DataDeployers post their `data-<source>` watchdog
    /// to; none: they do not report (data rollouts then never see an apply).
    #[arg(long, env = "AUTOCRANE_WATCHDOG_LISTENER")]
    pub watchdog_listener: Option<String>,

    /// File holding the bearer token sent to the VersionWatcher (re-read on every call, as
    /// projected ServiceAccount tokens rotate); unset sends none.
    #[arg(long, env = "AUTOCRANE_VERSION_WATCHER_TOKEN_FILE")]
    pub version_watcher_token_file: Option<std::path::PathBuf>,

    /// File holding the bearer token sent to the DataRepository (re-read on every call); unset
    /// sends none.
    #[arg(long, env = "AUTOCRANE_DATA_REPOSITORY_TOKEN_FILE")]
    pub data_repository_token_file: Option<std::path::PathBuf>,

    /// Audience of the projected token the DataDeployers present to the DataRepository.
    #[arg(
        long,
        env = "AUTOCRANE_DATA_REPOSITORY_AUDIENCE",
        default_value = "autocrane-data-repository"
    )]
    pub data_repository_audience: String,

    /// Audience of the projected token the DataDeployers present to the WatchdogListener.
    #[arg(
        long,
        env = "AUTOCRANE_WATCHDOG_AUDIENCE",
        default_value = "autocrane-watchdog-listener"
    )]
    pub watchdog_audience: String,

    /// Image of the injected DataDeployer. Default: the controller's own image, read from its
    /// pod (`POD_NAME`/`POD_NAMESPACE` from the downward API), so the deployer always matches the
    /// controller's version; outside a pod `autocrane:latest`.
    #[arg(long, env = "AUTOCRANE_DATA_DEPLOYER_IMAGE")]
    pub data_deployer_image: Option<String>,

    /// Secret (in each deployment's namespace) holding `ca.crt`, `tls.crt` and `tls.key`, as
    /// cert-manager writes them, mounted into the injected DataDeployers for their `https://`
    /// connections to the DataRepository and the WatchdogListener: the CA that signs those
    /// servers' certificates and the deployer's client certificate. Renewals reach running
    /// deployers without a restart.
    #[arg(long, env = "AUTOCRANE_DATA_DEPLOYER_TLS_SECRET")]
    pub data_deployer_tls_secret: Option<String>,

    /// Reconcile only the deployments (and pods) of this namespace; all namespaces when unset.
    #[arg(long, env = "AUTOCRANE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Act only while holding the Lease `--lease-namespace/--lease-name`, so that of several
    /// replicas exactly one writes.
    #[arg(
        long,
        env = "AUTOCRANE_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        env = "AUTOCRANE_LEASE_NAMESPACE",
        default_value = "autocrane-system"
    )]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "AUTOCRANE_LEASE_NAME",
        default_value = "autocrane-controller"
    )]
    pub lease_name: String,

    /// How long a Lease stays valid without renewal; a standby takes over after it expires.
    #[arg(long, env = "AUTOCRANE_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,

    /// This replica's identity in the Lease (default: `$POD_NAME`, else the host name and PID).
    #[arg(long, env = "AUTOCRANE_IDENTITY")]
    pub identity: Option<String>,

    /// Deployments reconciled at once (0: no limit).
    #[arg(long, env = "AUTOCRANE_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// Address of the admin HTTP listener serving /metrics and /healthz; `off` disables it.
    #[arg(long, env = "AUTOCRANE_ADMIN_LISTEN", default_value = "127.0.0.1:9090", value_parser = parse_optional_addr)]
    pub admin_listen: OptionalAddr,

    /// TLS towards the VersionWatcher and the DataRepository (`https://` URLs).
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
}

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The deployment breaks a rule the pod builder or the wiring needs (user-visible).
    #[error("invalid {field}: {rule}")]
    InvalidSpec {
        /// The field path.
        field: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    /// The decision core refused the input.
    #[error("planning")]
    Plan(#[source] autocrane_controller::model::PlanError),
    /// The API server rejected a pod built from the template (user-visible).
    #[error("the API server rejected pod {pod} built from spec.template: {message}")]
    TemplateRejected {
        /// The pod name.
        pod: String,
        /// The API server's message.
        message: String,
    },
    /// Creating a pod failed.
    #[error("creating pod {pod}")]
    CreatePod {
        /// The pod name.
        pod: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Deleting a pod failed.
    #[error("deleting pod {pod}")]
    DeletePod {
        /// The pod name.
        pod: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Patching a pod's annotations failed.
    #[error("patching the annotations of pod {pod}")]
    PatchPod {
        /// The pod name.
        pod: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the pins finalizer failed.
    #[error("updating the finalizers of {deployment}")]
    Finalizer {
        /// `namespace/name`.
        deployment: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Writing the status subresource failed.
    #[error("writing the status of {deployment}")]
    WriteStatus {
        /// `namespace/name`.
        deployment: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A deployment needs a service the controller was started without (user-visible).
    #[error("{field} needs {flag}, which this controller was started without")]
    MissingUpstream {
        /// The spec field that needs it.
        field: &'static str,
        /// The flag.
        flag: &'static str,
    },
    /// The upstream has not said yet what the wiring needs (a source id, the first versions).
    #[error("waiting for {0}")]
    Waiting(String),
    /// A call to the VersionWatcher or DataRepository failed.
    #[error("{call} failed: {code:?}: {message}")]
    Upstream {
        /// The RPC and its subject.
        call: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// No Kubernetes client could be configured (in-cluster or KUBECONFIG).
    #[error("configuring the Kubernetes client")]
    ConnectKube(#[source] kube::Error),
    /// A gRPC client or the admin listener could not be set up.
    #[error("setting up {0}")]
    Runtime(&'static str, #[source] RuntimeError),
    /// Reading or writing the leader-election Lease failed.
    #[error("{action} the Lease {lease}")]
    Lease {
        /// What was done.
        action: &'static str,
        /// `namespace/name`.
        lease: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The failure a person must see (the core turns it into a `Progressing=False` condition and
    /// a Warning Event): a spec to fix, a template the API server rejects, an upstream that is
    /// not configured or not reachable. Other errors are retried quietly with back-off.
    pub fn failure(&self) -> Option<Failure> {
        let reason = match self {
            Error::Plan(e) => return Some(e.failure()),
            Error::InvalidSpec { .. } => reason::INVALID_SPEC,
            Error::TemplateRejected { .. } => reason::TEMPLATE_REJECTED,
            Error::MissingUpstream { .. }
            | Error::Upstream {
                code: tonic::Code::Unavailable | tonic::Code::DeadlineExceeded,
                ..
            } => reason::UPSTREAM_UNAVAILABLE,
            _ => return None,
        };
        Some(Failure {
            reason,
            message: controller::chain(self),
        })
    }
}

/// This replica's identity: the flag, else `$POD_NAME`, else host name and PID.
fn identity(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "autocrane".into());
            format!("{host}-{}", std::process::id())
        })
}

/// The image injected DataDeployers get when `--data-deployer-image` is not set and the
/// controller's own pod cannot tell.
pub const FALLBACK_DATA_DEPLOYER_IMAGE: &str = "autocrane:latest";

/// The controller's own image, read from its pod (`POD_NAME`, `POD_NAMESPACE`); the fallback, with
/// a warning saying why, when that is impossible.
async fn own_image(client: &kube::Client) -> String {
    let (Ok(name), Ok(namespace)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE"))
    else {
        tracing::info!(
            fallback = FALLBACK_DATA_DEPLOYER_IMAGE,
            "Not in a pod (POD_NAME/POD_NAMESPACE unset) and no --data-deployer-image"
        );
        return FALLBACK_DATA_DEPLOYER_IMAGE.into();
    };
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), &namespace);
    match pods.get(&name).await {
        Ok(pod) => controller_image(&pod).unwrap_or_else(|| {
            tracing::warn!(
                pod = %name,
                fallback = FALLBACK_DATA_DEPLOYER_IMAGE,
                "The controller's pod has no container running `controller`"
            );
            FALLBACK_DATA_DEPLOYER_IMAGE.into()
        }),
        Err(e) => {
            tracing::warn!(
                pod = %name,
                error = %e,
                fallback = FALLBACK_DATA_DEPLOYER_IMAGE,
                "Reading the controller's own pod failed; set --data-deployer-image"
            );
            FALLBACK_DATA_DEPLOYER_IMAGE.into()
        }
    }
}

/// The image of the container that runs `autocrane controller` in `pod` (its first argument or
/// command word after the binary is `controller`); else the only container's image.
pub fn controller_image(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let containers = &pod.spec.as_ref()?.containers;
    let runs_controller = |c: &&k8s_openapi::api::core::v1::Container| {
        let words = c
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(c.args.iter().flatten());
        words
            .filter(|w| !w.starts_with('-'))
            .take(1)
            .any(|w| w == "controller")
    };
    containers
        .iter()
        .find(runs_controller)
        .or(if containers.len() == 1 {
            containers.first()
        } else {
            None
        })
        .and_then(|c| c.image.clone())
}

/// Runs the controller until the process shuts down, with the default Kubernetes client.
pub async fn run(args: Args, process: Process) -> Result<(), Error> {
    let client = kube::Client::try_default()
        .await
        .map_err(Error::ConnectKube)?;
    run_with(args, process, client).await
}

/// Runs the controller with `client` until the process shuts down (tests, embedding).
pub async fn run_with(args: Args, process: Process, client: kube::Client) -> Result<(), Error> {
    let Args {
        version_watcher,
        data_repository,
        version_watcher_token_file,
        data_repository_token_file,
        data_repository_audience,
        watchdog_listener,
        watchdog_audience,
        data_deployer_image,
        data_deployer_tls_secret,
        watch_namespace,
        leader_election,
        lease_namespace,
        lease_name,
        lease_duration_secs,
        identity: identity_flag,
        concurrency,
        admin_listen,
        client_tls,
    } = args;
    let identity = identity(identity_flag);
    if let Some(addr) = admin_listen.0 {
        let (bound, admin) = serve_admin(addr, process.registry.clone(), process.shutdown.clone())
            .await
            .map_err(|e| Error::Runtime("the admin listener", e))?;
        tracing::info!(address = %bound, "Admin listener serving");
        tokio::spawn(admin.instrument(tracing::info_span!("admin", address = %bound)));
    }
    let upstream = upstream::Upstream::connect(
        version_watcher
            .as_deref()
            .map(|url| (url, version_watcher_token_file.as_deref())),
        data_repository
            .as_deref()
            .map(|url| (url, data_repository_token_file.as_deref())),
        &client_tls,
        process.shutdown.clone(),
    )?;
    let data_deployer_image = match data_deployer_image {
        Some(image) => image,
        None => own_image(&client).await,
    };
    tracing::info!(image = %data_deployer_image, "DataDeployer image");
    let injection = pod_builder::Injection {
        image: data_deployer_image,
        repository: data_repository,
        watchdog_listener,
        token_audience: watchdog_audience,
        data_repository_audience,
        tls_secret: data_deployer_tls_secret,
    };
    let settings = controller::Settings {
        namespace: watch_namespace,
        concurrency,
        identity: identity.clone(),
        injection,
    };
    let metrics = controller::Metrics::register(&process.registry);
    if !leader_election {
        tracing::warn!("Leader election is off: run one replica only");
        return controller::run(
            client,
            settings,
            Arc::new(upstream),
            metrics,
            process.shutdown,
        )
        .await;
    }
    let lease = lease::LeaseConfig {
        namespace: lease_namespace,
        name: lease_name,
        identity,
        duration: Duration::from_secs(lease_duration_secs.max(2)),
    };
    lease::lead(
        client.clone(),
        lease,
        process.shutdown.clone(),
        move |leading| {
            controller::run(
                client.clone(),
                settings.clone(),
                Arc::new(upstream.clone()),
                metrics.clone(),
                leading,
            )
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn pod(containers: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({"spec": {"containers": containers}})).unwrap()
    }

    #[test]
    fn the_data_deployer_image_defaults_to_the_image_running_the_controller() {
        let two = pod(serde_json::json!([
            {"name": "proxy", "image": "envoy:1", "args": ["--config", "x"]},
            {"name": "c", "image": "reg/autocrane:1.4.2", "args": ["controller", "--concurrency", "4"]},
        ]));
        assert_eq!(
            controller_image(&two).as_deref(),
            Some("reg/autocrane:1.4.2")
        );
        let by_command = pod(serde_json::json!([
            {"name": "other", "image": "busybox"},
            {"name": "c", "image": "autocrane@sha256:ab", "command": ["/autocrane", "controller"]},
        ]));
        assert_eq!(
            controller_image(&by_command).as_deref(),
            Some("autocrane@sha256:ab")
        );
        let only = pod(serde_json::json!([{"name": "c", "image": "mine:2"}]));
        assert_eq!(controller_image(&only).as_deref(), Some("mine:2"));
        let ambiguous = pod(serde_json::json!([
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1", "args": ["data-deployer"]},
        ]));
        assert_eq!(controller_image(&ambiguous), None);
    }

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn leader_election_is_on_by_default_and_can_be_turned_off() {
        let on = Cli::try_parse_from(["x"]).unwrap();
        assert!(on.args.leader_election);
        assert_eq!(on.args.lease_name, "autocrane-controller");
        let off = Cli::try_parse_from(["x", "--leader-election", "false"]).unwrap();
        assert!(!off.args.leader_election);
    }
}
