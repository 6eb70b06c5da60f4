//! Failed logins, limited per source address and per account with token
//! buckets: each attempt takes one token up front and gives it back when it
//! succeeds, so only failures count and concurrent attempts cannot overrun
//! the limit; tokens come back at `failures / window`. Kept in memory: each
//! replica limits on its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked keys, refilled buckets are dropped (at most once a second).
const PRUNE_ABOVE: usize = 10_000;
/// Above this many even after pruning, the table starts over rather than grow.
const HARD_CAP: usize = 200_000;
/// Longest part of a login name that goes into a key.
const LOGIN_KEY_CHARS: usize = 128;

/// The key of a source address; IPv6 addresses count per /64, which is what
/// one client usually holds.
pub fn address_key(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The key of an account, by its login name.
pub fn account_key(login: &str) -> String {
    let name: String = login.chars().take(LOGIN_KEY_CHARS).collect();
    format!("account:{}", name.to_lowercase())
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct LoginLimiter {
    capacity: f64,
    per_sec: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<String, Bucket>,
    pruned: Instant,
}

impl LoginLimiter {
    pub fn new(failures: u32, window: Duration) -> LoginLimiter {
        let capacity = f64::from(failures.max(1));
        LoginLimiter {
            capacity,
            per_sec: capacity / window.as_secs_f64().max(1.0),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                pruned: Instant::now(),
            }),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.capacity);
        bucket.updated = now;
    }

    /// Takes one attempt from every key's allowance, or none and
    /// `Err(retry_after)` when any key has none left.
    pub fn take(&self, keys: &[String]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut buckets, now);
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(bucket) = buckets.map.get_mut(key) {
                self.refill(bucket, now);
                if bucket.tokens < 1.0 {
                    let secs = (1.0 - bucket.tokens) / self.per_sec;
                    wait = wait.max(Duration::from_secs_f64(secs.ceil().max(1.0)));
                }
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for key in keys {
            let bucket = buckets.map.entry(key.clone()).or_insert(Bucket {
                tokens: self.capacity,
                updated: now,
            });
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
        Ok(())
    }

    /// Gives back the attempt [`LoginLimiter::take`] took: it did not fail.
    pub fn refund(&self, keys: &[String]) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(bucket) = buckets.map.get_mut(key) {
                self.refill(bucket, now);
                bucket.tokens = (bucket.tokens + 1.0).min(self.capacity);
            }
        }
    }

    fn prune(&self, buckets: &mut Buckets, now: Instant) {
        if buckets.map.len() <= PRUNE_ABOVE || now.saturating_duration_since(buckets.pruned) < Duration::from_secs(1) {
            return;
        }
        buckets.pruned = now;
        let (capacity, per_sec) = (self.capacity, self.per_sec);
        buckets
            .map
            .retain(|_, b| b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * per_sec < capacity);
        if buckets.map.len() > HARD_CAP {
            tracing::warn!(keys = buckets.map.len(), "login limiter table full; starting over");
            buckets.map.clear();
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
        // A success gives its attempt back.
        limiter.take(&keys).unwrap();
        limiter.refund(&keys);
        for _ in 0..3 {
            assert!(limiter.take(&keys).is_ok());
        }
        let wait = limiter.take(&keys).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another account from another address is not affected.
        assert!(limiter.take(&["ip:2".to_string(), "account:b".to_string()]).is_ok());
        // The same account from another address is.
        assert!(limiter.take(&["ip:2".to_string(), "account:a".to_string()]).is_err());
    }

    #[test]
    fn keys_group_ipv6_by_prefix_and_bound_login_names() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:10.0.0.1".parse().unwrap()), "ip:10.0.0.1");
        assert_eq!(account_key("Alice"), "account:alice");
        assert_eq!(account_key(&"x".repeat(10_000)).len(), "account:".len() + 128);
    }
}
