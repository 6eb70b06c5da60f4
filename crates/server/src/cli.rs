//! The command line: `berth serve` and (later) the operator subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Berth, a self-hosted OCI container registry.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry server.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to listen on, such as 127.0.0.1:5000 (default 0.0.0.0:5000).
    #[arg(long)]
    pub listen: Option<String>,
    /// Directory for all state (default ./berth-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}
