//! Time, behind a trait so lifecycle rules can be tested without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that stands still until moved, for unit tests.
#[cfg(test)]
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

#[cfg(test)]
impl ManualClock {
    pub fn at(ms: i64) -> std::sync::Arc<ManualClock> {
        std::sync::Arc::new(ManualClock(std::sync::atomic::AtomicI64::new(ms)))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Names a file holding a number of milliseconds to add to the wall clock.
/// Tests move time forward by rewriting the file, in the server and in
/// operator commands alike, instead of sleeping for days.
///
/// Only debug builds (the ones the tests run) honour it: the offset clock
/// reads a file on every call, which has no place on a release server's async
/// threads, and a production clock must not be movable by an environment
/// variable. A release build started with it set refuses to start rather
/// than ignore it, so a test run against the wrong build fails at once.
pub const OFFSET_FILE_ENV: &str = "BERTH_TEST_CLOCK_OFFSET_FILE";

/// The wall clock plus an offset read from a file on every call.
#[cfg(debug_assertions)]
#[derive(Debug)]
pub struct OffsetClock {
    file: std::path::PathBuf,
}

#[cfg(debug_assertions)]
impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        let offset = std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        SystemClock.now_ms().saturating_add(offset)
    }
}

/// Latest second that RFC 3339 can write (9999-12-31T23:59:59Z).
const RFC3339_MAX_SECS: u64 = 253_402_300_799;

/// `2026-11-23T12:14:30Z`; a later time than RFC 3339 can write is written
/// as its last second.
pub fn rfc3339(secs: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(secs.min(RFC3339_MAX_SECS));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The clock of this process: the wall clock, unless a debug build is given
/// [`OFFSET_FILE_ENV`].
pub fn from_env() -> anyhow::Result<std::sync::Arc<dyn Clock>> {
    let Some(file) = std::env::var_os(OFFSET_FILE_ENV) else {
        return Ok(std::sync::Arc::new(SystemClock));
    };
    #[cfg(debug_assertions)]
    {
        tracing::warn!("the clock is offset by the contents of {file:?} ({OFFSET_FILE_ENV}); for tests only");
        Ok(std::sync::Arc::new(OffsetClock { file: file.into() }))
    }
    #[cfg(not(debug_assertions))]
    {
        anyhow::bail!(
            "{OFFSET_FILE_ENV} is set ({file:?}), but only debug builds move their clock for tests; unset it \
             to run this release build"
        )
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_436_070), "2026-11-23T12:14:30Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn the_offset_file_moves_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offset");
        let clock = OffsetClock { file: file.clone() };
        let base = SystemClock.now_ms();
        assert!((clock.now_ms() - base).abs() < 60_000, "a missing file means no offset");
        std::fs::write(&file, "86400000\n").unwrap();
        assert!(clock.now_ms() - base >= 86_400_000);
    }
}

#[cfg(all(test, not(debug_assertions)))]
mod release_tests {
    #[test]
    fn a_release_build_refuses_the_offset_hook() {
        // The only test of this binary that touches the variable.
        std::env::set_var(super::OFFSET_FILE_ENV, "/nonexistent");
        let err = super::from_env().err().expect("a release build must refuse the hook");
        std::env::remove_var(super::OFFSET_FILE_ENV);
        assert!(err.to_string().contains("only debug builds"), "{err}");
    }
}
