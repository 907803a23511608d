//! The command line: global telemetry flags, then one subcommand per component or tool.

use std::process::ExitCode;

use autocrane_runtime::{
    args::{LogFormat, TelemetryArgs},
    errors::StartupReport,
    process::Process,
    shutdown::Shutdown,
    telemetry,
};
use clap::{Parser, Subcommand};

/// AutoCrane ships container services safely on Kubernetes: watchdog-gated rollouts with automatic
/// rollback, restarts of failing pods within a failing limit, and data deployments that swap files
/// inside running pods without restarting them.
///
/// Every component runs from this one binary; choose it with the subcommand. Every flag can also be
/// set by the environment variable shown in its help.
#[derive(Parser, Debug)]
#[command(name = "autocrane", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Logging (global: may follow the subcommand).
    #[command(flatten)]
    telemetry: TelemetryArgs,

    /// What to run.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the WatchdogListener gRPC server (post, read and watch pod watchdogs).
    WatchdogListener(autocrane_watchdog_listener::Args),
    /// Post, get, list, delete and watch pod watchdogs through a WatchdogListener.
    Watchdog(autocrane_watchdog_listener::cli::WatchdogArgs),
    /// Run the HTTP prober that posts `probe.autocrane.io/<name>` results as watchdogs.
    WatchdogProber(autocrane_watchdog_listener::ProberProcessArgs),
    /// Run the VersionWatcher gRPC server (discover upstream versions and stream them).
    VersionWatcher(autocrane_version_watcher::Args),
    /// Run the DataRepository gRPC server (store data versions and stream them to pods).
    DataRepository(autocrane_data_repository::Args),
    /// Run the DataDeployer in a pod (init: wait for data; sidecar: swap in new data versions).
    DataDeployer(autocrane_data_deployer::Args),
    /// Run the AutoCrane controller (reconcile AutoCraneDeployments: rollouts, rollbacks,
    /// restarts, data).
    Controller(autocrane_reconciler::Args),
    /// Run the test workload: an HTTP app posting its health as watchdog `app` (for trying AutoCrane).
    Testworkload(autocrane_testworkload::Args),
    /// Print the AutoCraneDeployment CustomResourceDefinition as YAML.
    Crd,
    /// Print the install manifests (CRD, RBAC, components) as one YAML stream for kubectl apply.
    Yaml(crate::install::YamlArgs),
}

impl Cli {
    /// Runs the chosen subcommand and maps its outcome to the exit code: 0 on success, 1 when the
    /// component failed (its causes and a hint are printed once), 2 for usage errors (clap's own
    /// code).
    pub(crate) async fn run(self) -> ExitCode {
        let Cli { telemetry, command } = self;
        let service_name = command.service_name();
        let guard = match telemetry::init(service_name, &telemetry) {
            Ok(guard) => guard,
            Err(err) => {
                eprintln!("autocrane: {err}");
                return ExitCode::from(2);
            }
        };
        let outcome = command.run().await;
        guard.shutdown().await;
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let program = format!("autocrane {service_name}");
                let report = StartupReport::new(&program, err.as_ref(), &[kube_hint]);
                print_failure(&report, telemetry.log_format);
                ExitCode::FAILURE
            }
        }
    }
}

/// Prints why a component stopped, once: for people a few lines on stderr (one per cause, then
/// the hint); with `--log-format json` one log line, so that log collectors keep it whole.
fn print_failure(report: &StartupReport, format: LogFormat) {
    match format {
        LogFormat::Plain => eprintln!("{report}"),
        LogFormat::Json => tracing::error!(
            causes = ?report.causes,
            hint = report.hint.as_deref().unwrap_or_default(),
            "{}",
            report.headline
        ),
    }
}

/// No Kubernetes configuration found, in-cluster or in a kubeconfig: the usual first failure of a
/// component started outside a pod.
fn kube_hint(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    err.downcast_ref::<kube::config::InferConfigError>()?;
    Some(
        "no Kubernetes configuration found: set KUBECONFIG to a kubeconfig file (or create ~/.kube/config), or run in a pod with a service account"
            .into(),
    )
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Command {
    fn service_name(&self) -> &'static str {
        match self {
            Command::WatchdogListener(_) => "watchdog-listener",
            Command::Watchdog(_) => "watchdog",
            Command::WatchdogProber(_) => "watchdog-prober",
            Command::VersionWatcher(_) => "version-watcher",
            Command::DataRepository(_) => "data-repository",
            Command::DataDeployer(_) => "data-deployer",
            Command::Controller(_) => "controller",
            Command::Testworkload(_) => "testworkload",
            Command::Crd => "crd",
            Command::Yaml(_) => "yaml",
        }
    }

    async fn run(self) -> Result<(), BoxError> {
        let process = || Process::new(Shutdown::on_signals());
        match self {
            Command::WatchdogListener(args) => {
                autocrane_watchdog_listener::run(args, process()).await?
            }
            Command::Watchdog(args) => autocrane_watchdog_listener::cli::run(args).await?,
            Command::WatchdogProber(args) => {
                autocrane_watchdog_listener::run_prober(args, process()).await?
            }
            Command::VersionWatcher(args) => {
                autocrane_version_watcher::run(args, process()).await?
            }
            Command::DataRepository(args) => {
                autocrane_data_repository::run(args, process()).await?
            }
            Command::DataDeployer(args) => autocrane_data_deployer::run(args, process()).await?,
            Command::Controller(args) => autocrane_reconciler::run(args, process()).await?,
            Command::Testworkload(args) => autocrane_testworkload::run(args, process()).await?,
            Command::Crd => print!("{}", crate::install::crd_yaml()),
            Command::Yaml(args) => print!("{}", crate::install::manifests(&args)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_has_a_one_line_description() {
        let command = Cli::command();
        for sub in command.get_subcommands() {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(!about.is_empty(), "{} has no description", sub.get_name());
            assert!(
                !about.contains('\n'),
                "{} description is not one line",
                sub.get_name()
            );
        }
    }
}
