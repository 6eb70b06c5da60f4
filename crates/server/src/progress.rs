//! Progress of a long operator command (`berth migrate`, `export`, `import`):
//! a bar on standard error when it is a terminal, a plain line every few
//! seconds otherwise (a log keeps those; a bar's redraws would be noise).
//!
//! Only what people read goes here; a command's results go to its summary.

use std::io::{self, IsTerminal};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often progress is printed when standard error is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What a phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Things of this name, such as `rows`.
    Items(&'static str),
}

/// One phase of a command: a progress bar on a terminal, or a line every few
/// seconds otherwise. Lines are prefixed with the command's name.
pub struct Phase {
    command: &'static str,
    name: &'static str,
    pub bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Phase {
    /// Starts a phase of `len` units (unknown: `None`); must run inside a
    /// tokio runtime.
    pub fn start(command: &'static str, name: &'static str, len: Option<u64>, unit: Unit) -> Phase {
        let terminal = io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(len, target);
        let template = match (unit, len) {
            (Unit::Bytes, Some(_)) => {
                "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}".to_string()
            }
            (Unit::Bytes, None) => "{prefix:>9} {bytes} {bytes_per_sec} {msg}".to_string(),
            (Unit::Items(what), Some(_)) => format!("{{prefix:>9}} [{{bar:30}}] {{pos}}/{{len}} {what} {{msg}}"),
            (Unit::Items(what), None) => format!("{{prefix:>9}} {{pos}} {what} {{msg}}"),
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name);
        let label = match unit {
            Unit::Bytes => "bytes",
            Unit::Items(what) => what,
        };
        let ticker = (!terminal).then(|| {
            match len {
                Some(len) => eprintln!("{command}: {name}: {len} {label}"),
                None => eprintln!("{command}: {name}"),
            }
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PLAIN_PROGRESS_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let of = bar.length().map(|len| format!("/{len}")).unwrap_or_default();
                    eprintln!("{command}: {name}: {}{of} {label} {}", bar.position(), bar.message());
                }
            })
        });
        Phase {
            command,
            name,
            bar,
            ticker,
        }
    }

    /// A line for people, above the bar.
    pub fn note(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{}: {line}", self.command));
    }

    /// Ends the phase with a closing line.
    pub fn finish(mut self, line: String) {
        self.bar.finish_and_clear();
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        eprintln!("{}: {}: {line}", self.command, self.name);
    }
}

impl Drop for Phase {
    /// A phase given up on (an error ended the command) stops its ticker and
    /// clears its bar, so the error is the last thing shown.
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
