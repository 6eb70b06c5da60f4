//! Request limits: rates and concurrency per client address and per
//! authenticated identity, refused with 429 `TOOMANYREQUESTS` and a
//! `Retry-After`; and a request body that stalls for too long is cut.
//!
//! Rates are token buckets (GCRA, the `governor` crate): `rate` requests a
//! second on average with bursts of `burst`. Concurrency counts requests
//! until their response body ends, so a long download holds its slot.
//! Every replica keeps its own counts: behind a load balancer spreading one
//! client over N replicas, the effective limit is up to N times the
//! configured one.

use std::collections::HashMap;
use std::future::Future as _;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_oci::ErrorCode;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use hyper::body::{Frame, SizeHint};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::metrics::Metrics;
use crate::observe::RequestContext;

/// `[limits]`: sizes, rates, concurrency and timeouts of requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Largest manifest accepted, in bytes.
    pub manifest_max_bytes: usize,
    /// Requests a second one client address may make on average; 0 for no limit.
    pub rate_per_client: f64,
    /// Requests a client address may make at once above its rate; 0 for twice the rate.
    pub burst_per_client: u32,
    /// Requests one client address may have in progress at once; 0 for no limit.
    pub concurrent_per_client: u32,
    /// Requests a second one identity (user, robot, OIDC subject) may make
    /// on average; 0 for no limit.
    pub rate_per_identity: f64,
    /// Requests an identity may make at once above its rate; 0 for twice the rate.
    pub burst_per_identity: u32,
    /// Requests one identity may have in progress at once; 0 for no limit.
    pub concurrent_per_identity: u32,
    /// Upload sessions one identity may have open (started, neither finished
    /// nor cancelled nor purged as stale), over all replicas; 0 for no limit.
    pub uploads_per_identity: u32,
    /// Client networks no rate or concurrency limit applies to (`10.0.0.0/8`).
    pub exempt_networks: Vec<String>,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection stays open waiting for the next request.
    pub header_read_timeout_secs: u64,
    /// How long a request body (a blob upload) may go without a byte before
    /// the request is cut; 0 for no limit.
    pub body_idle_timeout_secs: u64,
    /// How long a response may wait for a client that reads nothing before
    /// the connection is closed; 0 for no limit.
    pub write_stall_timeout_secs: u64,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            manifest_max_bytes: 4 << 20,
            rate_per_client: 0.0,
            burst_per_client: 0,
            concurrent_per_client: 0,
            rate_per_identity: 0.0,
            burst_per_identity: 0,
            concurrent_per_identity: 0,
            uploads_per_identity: 0,
            exempt_networks: Vec::new(),
            header_read_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            write_stall_timeout_secs: 60,
        }
    }
}

/// A configuration the limits cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("limits.{0} must be a finite number of requests a second, at least 0 (not {1})")]
    Rate(&'static str, f64),
    #[error("limits.exempt_networks: {0:?} is not a network such as 10.0.0.0/8 or ::1/128")]
    Network(String),
}

/// The limits in force, with their counters.
pub struct Limiter {
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_identity: Option<DefaultKeyedRateLimiter<String>>,
    client_slots: Slots<IpAddr>,
    identity_slots: Slots<String>,
    exempt: Vec<IpNet>,
    body_idle: Option<Duration>,
    pub uploads_per_identity: u32,
    metrics: Arc<Metrics>,
}

/// Why a request was refused: the 429 to answer.
fn too_many(what: &str, retry_after: Duration) -> ApiError {
    ApiError::new(
        ErrorCode::TooManyRequests,
        format!("too many requests: {what}; retry later"),
    )
    .with_header(
        axum::http::header::RETRY_AFTER,
        retry_after.as_secs_f64().ceil().max(1.0).to_string(),
    )
}

fn rate_limiter<K: Hash + Eq + Clone>(
    name: &'static str,
    rate: f64,
    burst: u32,
) -> Result<Option<DefaultKeyedRateLimiter<K>>, LimitsError> {
    if !rate.is_finite() || rate < 0.0 {
        return Err(LimitsError::Rate(name, rate));
    }
    if rate == 0.0 {
        return Ok(None);
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let burst = if burst == 0 {
        (rate * 2.0).ceil().min(f64::from(u32::MAX)) as u32
    } else {
        burst
    };
    let quota = Quota::with_period(period)
        .ok_or(LimitsError::Rate(name, rate))?
        .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN));
    Ok(Some(DefaultKeyedRateLimiter::keyed(quota)))
}

impl Limiter {
    pub fn new(config: &LimitConfig, metrics: Arc<Metrics>) -> Result<Limiter, LimitsError> {
        let exempt = config
            .exempt_networks
            .iter()
            .map(|n| n.parse::<IpNet>().map_err(|_| LimitsError::Network(n.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Limiter {
            per_client: rate_limiter("rate_per_client", config.rate_per_client, config.burst_per_client)?,
            per_identity: rate_limiter("rate_per_identity", config.rate_per_identity, config.burst_per_identity)?,
            client_slots: Slots::new(config.concurrent_per_client),
            identity_slots: Slots::new(config.concurrent_per_identity),
            exempt,
            body_idle: (config.body_idle_timeout_secs > 0).then(|| Duration::from_secs(config.body_idle_timeout_secs)),
            uploads_per_identity: config.uploads_per_identity,
            metrics,
        })
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(&ip))
    }

    /// Admits a request of the client at `ip`, or says why not. The slot it
    /// takes is held by `context` until the response ends.
    fn admit_client(&self, ip: IpAddr, context: Option<&RequestContext>) -> Result<(), ApiError> {
        if self.exempt(ip) {
            return Ok(());
        }
        if let Some(limiter) = &self.per_client {
            if let Err(not_until) = limiter.check_key(&ip) {
                self.metrics.rate_limited("client_rate");
                return Err(too_many(
                    "this client's request rate is over limits.rate_per_client",
                    not_until.wait_time_from(DefaultClock::default().now()),
                ));
            }
        }
        if let Some(slot) = self.client_slots.take(ip) {
            match slot {
                Some(slot) => {
                    if let Some(context) = context {
                        context.hold(Box::new(slot));
                    }
                }
                None => {
                    self.metrics.rate_limited("client_concurrency");
                    return Err(too_many(
                        "this client has limits.concurrent_per_client requests in progress",
                        Duration::from_secs(1),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Admits a request of an authenticated identity, as [`Limiter::admit_client`] does.
    pub fn admit_identity(
        &self,
        identity: &str,
        peer: Option<IpAddr>,
        context: Option<&RequestContext>,
    ) -> Result<(), ApiError> {
        if peer.is_some_and(|ip| self.exempt(ip)) {
            return Ok(());
        }
        if let Some(limiter) = &self.per_identity {
            if let Err(not_until) = limiter.check_key(&identity.to_string()) {
                self.metrics.rate_limited("identity_rate");
                return Err(too_many(
                    "this identity's request rate is over limits.rate_per_identity",
                    not_until.wait_time_from(DefaultClock::default().now()),
                ));
            }
        }
        if let Some(slot) = self.identity_slots.take(identity.to_string()) {
            match slot {
                Some(slot) => {
                    if let Some(context) = context {
                        context.hold(Box::new(slot));
                    }
                }
                None => {
                    self.metrics.rate_limited("identity_concurrency");
                    return Err(too_many(
                        "this identity has limits.concurrent_per_identity requests in progress",
                        Duration::from_secs(1),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The refusal of a new upload session for an identity that has `open` of them.
    pub fn uploads_refusal(&self, open: u64) -> Option<ApiError> {
        let max = u64::from(self.uploads_per_identity);
        (max > 0 && open >= max).then(|| {
            self.metrics.rate_limited("upload_sessions");
            too_many(
                &format!("{open} upload sessions are open for this identity (limits.uploads_per_identity = {max}); finish or cancel one"),
                Duration::from_secs(5),
            )
        })
    }

    /// Forgets the rate state of clients not seen for a while, so that the
    /// tables do not grow with every address that ever connected.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.per_client {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_identity {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Counts of requests in progress per key, up to a maximum.
struct Slots<K: Hash + Eq + Clone + Send + 'static> {
    max: u32,
    held: Arc<Mutex<HashMap<K, u32>>>,
}

/// One request's slot, given back when dropped.
struct Slot<K: Hash + Eq + Clone + Send + 'static> {
    key: K,
    held: Arc<Mutex<HashMap<K, u32>>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Slots<K> {
    fn new(max: u32) -> Self {
        Slots {
            max,
            held: Arc::default(),
        }
    }

    /// `None` when there is no limit; `Some(None)` when the key has all its slots.
    fn take(&self, key: K) -> Option<Option<Slot<K>>> {
        if self.max == 0 {
            return None;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return Some(None);
        }
        *count += 1;
        Some(Some(Slot {
            key,
            held: self.held.clone(),
        }))
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The middleware: the client limits, and the idle timeout on request bodies.
pub async fn limit_clients(State(limiter): State<Arc<Limiter>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = peer {
        if let Err(refusal) = limiter.admit_client(ip, req.extensions().get::<RequestContext>()) {
            return refusal.into_response();
        }
    }
    // Most requests have no body (every GET): no timer for those.
    let req = match limiter.body_idle {
        Some(idle) if !hyper::body::Body::is_end_stream(req.body()) => {
            req.map(|body| Body::new(IdleTimeout::new(body, idle)))
        }
        _ => req,
    };
    next.run(req).await
}

/// A request body that fails when no byte arrives for `idle`: a client that
/// stops sending mid-upload gives up its worker and its file handle.
struct IdleTimeout {
    inner: Body,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimeout {
    fn new(inner: Body, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl hyper::body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no byte of the request body for {} s (limits.body_idle_timeout_secs)",
                        self.idle.as_secs()
                    ),
                ))))),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(config: LimitConfig) -> Limiter {
        Limiter::new(&config, Arc::new(Metrics::new())).unwrap()
    }

    #[test]
    fn a_client_over_its_rate_is_refused_until_its_bucket_refills() {
        let l = limiter(LimitConfig {
            rate_per_client: 1.0,
            burst_per_client: 3,
            ..LimitConfig::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.admit_client(ip, None).is_ok());
        }
        assert!(l.admit_client(ip, None).is_err());
        // Another client has its own bucket.
        assert!(l.admit_client("192.0.2.2".parse().unwrap(), None).is_ok());
    }

    #[test]
    fn exempt_networks_pass_every_limit() {
        let l = limiter(LimitConfig {
            rate_per_client: 1.0,
            burst_per_client: 1,
            exempt_networks: vec!["10.0.0.0/8".into()],
            ..LimitConfig::default()
        });
        for _ in 0..10 {
            assert!(l.admit_client("10.1.2.3".parse().unwrap(), None).is_ok());
        }
    }

    #[test]
    fn slots_come_back_when_dropped() {
        let slots: Slots<String> = Slots::new(2);
        let a = slots.take("x".into()).unwrap().unwrap();
        let _b = slots.take("x".into()).unwrap().unwrap();
        assert!(slots.take("x".into()).unwrap().is_none());
        drop(a);
        assert!(slots.take("x".into()).unwrap().is_some());
        assert!(Slots::<String>::new(0).take("x".into()).is_none(), "0 means no limit");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = Limiter::new(
            &LimitConfig {
                rate_per_client: -1.0,
                ..LimitConfig::default()
            },
            Arc::new(Metrics::new()),
        );
        assert!(matches!(bad, Err(LimitsError::Rate("rate_per_client", _))));
        let bad = Limiter::new(
            &LimitConfig {
                exempt_networks: vec!["ten".into()],
                ..LimitConfig::default()
            },
            Arc::new(Metrics::new()),
        );
        assert!(matches!(bad, Err(LimitsError::Network(_))));
    }
}
