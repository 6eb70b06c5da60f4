//! Logging: JSON lines, or pretty text on a terminal, filtered by level;
//! the level can be changed while the server runs.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Lines not yet written when the log thread falls behind; past this a
/// request waits for the thread rather than a line being dropped.
const BUFFERED_LINES: usize = 64 * 1024;

/// Changes the level filter of the installed subscriber.
pub struct LogLevel {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    current: Mutex<String>,
}

/// Why a level was not applied.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("invalid log level {0:?}: {1}")]
    Invalid(String, String),
    #[error("the log level cannot be changed in this process (no subscriber of ours is installed)")]
    Fixed,
}

impl LogLevel {
    /// A handle that changes nothing (for processes that installed no subscriber).
    pub fn fixed(level: &str) -> LogLevel {
        LogLevel {
            handle: None,
            current: Mutex::new(level.to_string()),
        }
    }

    /// The filter in force, as it was given.
    pub fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the filter with `level` (`info`, `berth=debug,warn`, ...).
    pub fn set(&self, level: &str) -> Result<(), LevelError> {
        let filter = EnvFilter::try_new(level).map_err(|e| LevelError::Invalid(level.to_string(), e.to_string()))?;
        let handle = self.handle.as_ref().ok_or(LevelError::Fixed)?;
        handle
            .reload(filter)
            .map_err(|e| LevelError::Invalid(level.to_string(), e.to_string()))?;
        if let Ok(mut current) = self.current.lock() {
            *current = level.to_string();
        }
        Ok(())
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides the configured level
/// at start (a later change through [`LogLevel`] replaces it). Lines go to
/// stderr from a thread of their own, written in batches; the guard writes
/// what is left when it is dropped, so keep it until the process ends.
pub fn init(config: &LogConfig) -> (LogLevel, tracing_appender::non_blocking::WorkerGuard) {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| EnvFilter::try_new(v).is_ok());
    let level = from_env.unwrap_or_else(|| config.level.clone());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(false)
        .thread_name("berth-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()
    };
    let control = match installed {
        Ok(()) => LogLevel {
            handle: Some(handle),
            current: Mutex::new(level),
        },
        Err(_) => LogLevel::fixed(&level),
    };
    (control, guard)
}

/// The error and its causes in one line (an HTTP client's own message often
/// says only "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
