//! The `berth` binary.

mod api;
mod app;
mod auth;
mod cli;
mod clock;
mod config;
mod registry;
mod telemetry;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{Config, Overrides};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let overrides = Overrides {
                listen: args.listen,
                data_dir: args.data_dir,
            };
            let config = Config::load(args.config.as_deref(), overrides)?;
            telemetry::init(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(app::serve(config))
        }
    }
}
