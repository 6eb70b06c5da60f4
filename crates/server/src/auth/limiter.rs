//! Failed logins, limited per source address and per account with token
//! buckets: each failure takes one token, tokens come back at
//! `failures / window`. Only failures count, so a client that logs in
//! correctly is never slowed. Kept in memory: each replica limits on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked keys, refilled buckets are dropped.
const PRUNE_ABOVE: usize = 10_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct LoginLimiter {
    capacity: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl LoginLimiter {
    pub fn new(failures: u32, window: Duration) -> LoginLimiter {
        let capacity = f64::from(failures.max(1));
        LoginLimiter {
            capacity,
            per_sec: capacity / window.as_secs_f64().max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.capacity);
        bucket.updated = now;
    }

    /// `Err(retry_after)` when any of the keys has no failures left.
    pub fn check(&self, keys: &[String]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(bucket) = buckets.get_mut(key) {
                self.refill(bucket, now);
                if bucket.tokens < 1.0 {
                    let secs = (1.0 - bucket.tokens) / self.per_sec;
                    wait = wait.max(Duration::from_secs_f64(secs.ceil().max(1.0)));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Records one failed login against every key.
    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (capacity, per_sec) = (self.capacity, self.per_sec);
            buckets
                .retain(|_, b| b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * per_sec < capacity);
        }
        for key in keys {
            let bucket = buckets.entry(key.clone()).or_insert(Bucket {
                tokens: self.capacity,
                updated: now,
            });
            self.refill(bucket, now);
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_beyond_the_allowance_are_refused_with_a_wait() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let keys = ["ip:1".to_string(), "account:a".to_string()];
        for _ in 0..3 {
            assert!(limiter.check(&keys).is_ok());
            limiter.failed(&keys);
        }
        let wait = limiter.check(&keys).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another account from another address is not affected.
        assert!(limiter.check(&["ip:2".to_string(), "account:b".to_string()]).is_ok());
        // The same account from another address is.
        assert!(limiter.check(&["ip:2".to_string(), "account:a".to_string()]).is_err());
    }
}
