//! The `berth` binary.

mod api;
mod app;
mod auth;
mod cli;
mod clock;
mod config;
mod lifecycle;
mod migrate;
mod operator;
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
        Command::User { store, action } => operator_runtime()?.block_on(operator::user(store, action)),
        Command::Token { store, action } => operator_runtime()?.block_on(operator::token(store, action)),
        Command::Grant { store, action } => operator_runtime()?.block_on(operator::grant(store, action)),
        Command::Retention { store, action } => operator_runtime()?.block_on(operator::retention(store, action)),
        Command::Gc { store, dry_run, json } => operator_runtime()?.block_on(operator::gc(store, dry_run, json)),
        Command::Fsck {
            store,
            verify,
            repair,
            json,
        } => operator_runtime()?.block_on(operator::fsck(store, verify, repair, json)),
        Command::Audit { store, limit } => operator_runtime()?.block_on(operator::audit(store, limit)),
        Command::Migrate(args) => operator_runtime()?.block_on(migrate::run(args)),
    }
}

fn operator_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
