//! The `berth` server as a library: the binary (`main.rs`) parses its
//! command line and calls [`run`]; fuzz targets link the parsers they test.

mod airgap;
mod api;
mod app;
mod auth;
mod backup;
mod browse;
mod cli;
mod clock;
mod config;
mod config_check;
mod config_doc;
mod connections;
mod healthcheck;
mod lifecycle;
mod limits;
mod metrics;
mod migrate;
mod namespaces;
mod observe;
mod operator;
mod pattern;
mod progress;
mod proxy;
mod registry;
mod tag_names;
mod telemetry;
mod text;
mod tls;
mod ui;
mod webhooks;

pub use crate::cli::Cli;

/// The server's parsers of untrusted input that live outside the pure
/// `berth-oci` crate, for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::api::auth::TokenRequest;
    pub use crate::auth::oidc::unverified_issuer;
    pub use crate::auth::token::TokenService;
    pub use crate::clock::{Clock, SystemClock};
}
use crate::cli::{Command, ConfigCommand};
use crate::config::{Config, Overrides};

/// Runs one `berth` command to its end.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let overrides = Overrides {
                listen: args.listen,
                data_dir: args.data_dir,
            };
            let config = Config::load(args.config.as_deref(), overrides.clone())?;
            // Dropped after the runtime: the last lines (`stopped`) are written.
            let (log, _log_writer) = telemetry::init(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let source = app::ConfigSource {
                file: args.config,
                overrides,
            };
            runtime.block_on(app::serve(config, source, log))
        }
        Command::User { store, action } => operator_runtime()?.block_on(operator::user(store, action)),
        Command::Token { store, action } => operator_runtime()?.block_on(operator::token(store, action)),
        Command::Grant { store, action } => operator_runtime()?.block_on(operator::grant(store, action)),
        Command::Retention { store, action } => operator_runtime()?.block_on(operator::retention(store, action)),
        Command::Gc {
            store,
            dry_run,
            json,
            nice,
        } => {
            lower_priority(nice);
            operator_runtime()?.block_on(operator::gc(store, dry_run, json))
        }
        Command::Fsck {
            store,
            verify,
            repair,
            json,
        } => operator_runtime()?.block_on(operator::fsck(store, verify, repair, json)),
        Command::Cache { store, action } => operator_runtime()?.block_on(operator::cache(store, action)),
        Command::Audit { store, limit } => operator_runtime()?.block_on(operator::audit(store, limit)),
        Command::Migrate(args) => operator_runtime()?.block_on(migrate::run(args)),
        Command::Backup(args) => operator_runtime()?.block_on(backup::run(args)),
        Command::Export(args) => run_to_end(operator::export(args)),
        Command::Import(args) => run_to_end(operator::import(args)),
        Command::Config { action } => match action {
            ConfigCommand::Reference => {
                print!("{}", config_doc::reference());
                Ok(())
            }
            ConfigCommand::Example => {
                print!("{}", config_doc::example());
                Ok(())
            }
            ConfigCommand::Check { file } => config_check::run(&file),
        },
        Command::Healthcheck { url, timeout } => {
            // With TLS the main port answers plain HTTP with a 400: probe the
            // plain listener when the environment names one.
            let listen = std::env::var("BERTH_TLS__PLAIN_LISTEN").or_else(|_| std::env::var("BERTH_LISTEN"));
            let url = url.unwrap_or_else(|| healthcheck::default_url(listen.ok().as_deref()));
            healthcheck::probe(&url, std::time::Duration::from_secs(timeout.max(1)))
        }
    }
}

/// Runs an operator command whose threads may still be reading standard
/// input or writing standard output when it fails: they are not waited for
/// long, so the error is reported and the process exits.
fn run_to_end(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = operator_runtime()?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

fn operator_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Makes this process `by` steps nicer. On Linux a priority belongs to the
/// thread, and threads inherit it when they start: call this before any
/// runtime starts its threads. Failing only warns, since the work can run
/// at the caller's priority just as well.
fn lower_priority(by: u8) {
    if by == 0 {
        return;
    }
    // nice() returns the new value, which may be -1: errno tells failure.
    // SAFETY: nice and errno touch only this thread's state.
    let failed = unsafe {
        *libc::__errno_location() = 0;
        libc::nice(i32::from(by)) == -1 && *libc::__errno_location() != 0
    };
    if failed {
        eprintln!(
            "berth: warning: could not lower the CPU priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    /// This thread's nice value.
    fn niceness() -> i32 {
        // SAFETY: getpriority only reads its arguments.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn threads_started_after_lowering_the_priority_run_at_the_lower_one() {
        // In a thread of its own: the test harness's threads keep theirs.
        std::thread::spawn(|| {
            let before = niceness();
            super::lower_priority(3);
            let after = niceness();
            assert_eq!(after, (before + 3).min(19));
            let child = std::thread::spawn(niceness).join().unwrap();
            assert_eq!(child, after, "a thread started afterwards inherits it");
            super::lower_priority(0);
            assert_eq!(niceness(), after, "0 changes nothing");
        })
        .join()
        .unwrap();
    }
}
