//! `autocrane`: one binary for every AutoCrane component, so one image serves all.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod install;

#[tokio::main]
async fn main() -> ExitCode {
    cli::Cli::parse().run().await
}
