//! # DataDeployer
//!
//! Runs in every pod that has data sources, as an init container (`init`: block until the desired
//! data versions are live) and as a sidecar (`sidecar`: follow changes of the desired versions and
//! swap them in atomically). It reads the desired versions from the pod's downward-API annotations
//! file, fetches missing files from the DataRepository, and reports each outcome as a watchdog.
//!
//! Status: not implemented yet (issue #7); the subcommand exits with an error saying so.

use std::path::PathBuf;

/// Flags of `autocrane data-deployer`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// `init` blocks until every desired version is live, `sidecar` keeps following changes.
    #[arg(value_enum)]
    pub mode: Mode,
    /// URL of the DataRepository.
    #[arg(long, env = "AUTOCRANE_DATA_REPOSITORY")]
    pub repository: Option<String>,
    /// Directory under which `<source>/current` points at the live version.
    #[arg(long, env = "AUTOCRANE_DATA_ROOT")]
    pub root: Option<PathBuf>,
    /// The downward-API file holding the pod's annotations.
    #[arg(long, env = "AUTOCRANE_DESIRED_FILE")]
    pub desired_file: Option<PathBuf>,
}

/// How the deployer runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Init container: exit 0 once every desired version is live.
    Init,
    /// Sidecar: keep the live versions equal to the desired ones.
    Sidecar,
}

/// Errors of the DataDeployer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This build does not contain the DataDeployer yet.
    #[error("the data deployer is not implemented in this build (issue #7)")]
    NotImplemented,
}

/// Runs the deployer.
pub async fn run(args: Args) -> Result<(), Error> {
    let Args {
        mode,
        repository: _,
        root: _,
        desired_file: _,
    } = args;
    tracing::error!(?mode, "The data deployer is not implemented in this build");
    Err(Error::NotImplemented)
}
