//! What every request leaves behind: its request id, one access log line
//! and its HTTP metrics.
//!
//! The line and the metrics are written when the response body ends (or the
//! client goes away), so that a blob download's duration and bytes are the
//! whole transfer's, not the time to its first byte. Handlers add what only
//! they know (the repository, the authenticated identity) to the request's
//! [`RequestContext`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use prometheus::IntCounter;
use tracing::Instrument;

use crate::metrics::{method_label, Metrics, RouteClass};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client; longer ones are replaced.
const REQUEST_ID_MAX: usize = 128;

/// What handlers learn about a request that the access log line reports.
#[derive(Default)]
struct Facts {
    repository: OnceLock<String>,
    identity: OnceLock<String>,
    /// What must live as long as the request (limit slots).
    held: std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>>,
}

/// A request's id and the facts handlers add, in the request's extensions.
#[derive(Clone)]
pub struct RequestContext {
    id: Arc<str>,
    facts: Arc<Facts>,
}

impl RequestContext {
    /// The repository the request is about (the first call wins).
    pub fn set_repository(&self, repository: &str) {
        let _ = self.facts.repository.set(repository.to_string());
    }

    /// Keeps `thing` until the request's response has ended (or was abandoned).
    pub fn hold(&self, thing: Box<dyn std::any::Any + Send>) {
        self.facts.held.lock().unwrap_or_else(|p| p.into_inner()).push(thing);
    }

    /// Who the request was authenticated as (the first call wins).
    pub fn set_identity(&self, identity: &str) {
        let _ = self.facts.identity.set(identity.to_string());
    }
}

/// Whether a client's `X-Request-Id` may be kept: short, printable, and
/// nothing that could split a log line or a header.
fn acceptable_request_id(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    let ok = !id.is_empty()
        && id.len() <= REQUEST_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='));
    ok.then_some(id)
}

/// The middleware: wraps every request of the router it is layered on.
pub async fn observe(State(metrics): State<Arc<Metrics>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id: Arc<str> = match req.headers().get(&REQUEST_ID).and_then(acceptable_request_id) {
        Some(id) => Arc::from(id),
        None => Arc::from(uuid::Uuid::new_v4().to_string()),
    };
    let id_header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
    req.headers_mut().insert(REQUEST_ID, id_header.clone());
    let class = RouteClass::of_path(req.uri().path());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let context = RequestContext {
        id: id.clone(),
        facts: Arc::default(),
    };
    req.extensions_mut().insert(context.clone());

    let in_flight = metrics.http_in_flight.with_label_values(&[class.as_str()]);
    in_flight.inc();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let req = req.map(|body| {
        Body::new(Counted {
            inner: body,
            counter: metrics.http_bytes_in.with_label_values(&[class.as_str()]),
            total: bytes_in.clone(),
            on_end: None,
        })
    });
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(req).instrument(span).await;
    response.headers_mut().insert(REQUEST_ID, id_header);

    // A body with nothing to send (a 201 of an upload) is complete as it is.
    let empty = hyper::body::Body::is_end_stream(response.body());
    let finish = Finish {
        metrics,
        started,
        class,
        method,
        path,
        peer,
        status: response.status(),
        context,
        bytes_in,
        bytes_out: Arc::new(AtomicU64::new(0)),
        completed: AtomicBool::new(empty),
        in_flight,
    };
    response.map(|body| {
        let bytes_out = finish.bytes_out.clone();
        let counter = finish.metrics.http_bytes_out.with_label_values(&[class.as_str()]);
        Body::new(Counted {
            inner: body,
            counter,
            total: bytes_out,
            on_end: Some(finish),
        })
    })
}

/// A body that counts the bytes passing through it; a response body also
/// carries what is reported when it ends.
struct Counted {
    inner: Body,
    counter: IntCounter,
    total: Arc<AtomicU64>,
    on_end: Option<Finish>,
}

impl Counted {
    fn mark_complete(&self) {
        if let Some(finish) = &self.on_end {
            finish.completed.store(true, Ordering::Relaxed);
        }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.counter.inc_by(n);
                    self.total.fetch_add(n, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => self.mark_complete(),
            _ => {}
        }
        // hyper stops polling a body that says it has ended (a body of known
        // length, after its last frame): that is its completion too.
        if self.inner.is_end_stream() {
            self.mark_complete();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    // Kept exact, so that a known length still goes out as Content-Length.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a finished request reports: written when its response body is
/// dropped, after the last byte or when the client went away.
struct Finish {
    metrics: Arc<Metrics>,
    started: Instant,
    class: RouteClass,
    method: axum::http::Method,
    path: String,
    peer: Option<SocketAddr>,
    status: StatusCode,
    context: RequestContext,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    completed: AtomicBool,
    in_flight: prometheus::IntGauge,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.in_flight.dec();
        self.context
            .facts
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let elapsed = self.started.elapsed();
        let class = self.class.as_str();
        let method = method_label(&self.method);
        self.metrics
            .http_requests
            .with_label_values(&[class, method, self.status.as_str()])
            .inc();
        self.metrics
            .http_duration
            .with_label_values(&[class, method])
            .observe(elapsed.as_secs_f64());
        let facts = &self.context.facts;
        let repository = facts.repository.get().map_or("-", String::as_str);
        let identity = facts.identity.get().map_or("-", String::as_str);
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let bytes_out = self.bytes_out.load(Ordering::Relaxed);
        let completed = self.completed.load(Ordering::Relaxed);
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let peer = self.peer.map(|p| p.ip().to_string()).unwrap_or_default();
        // Probes and scrapes arrive every few seconds: not worth a line each.
        if matches!(self.class, RouteClass::Health | RouteClass::Metrics) {
            tracing::debug!(target: "berth::access", request_id = %self.context.id, method = %self.method,
                route = class, path = %self.path, status = self.status.as_u16(), duration_ms, "request");
            return;
        }
        tracing::info!(
            target: "berth::access",
            request_id = %self.context.id,
            method = %self.method,
            route = class,
            path = %self.path,
            repository,
            status = self.status.as_u16(),
            bytes_in,
            bytes_out,
            duration_ms,
            identity,
            peer,
            completed,
            "request"
        );
    }
}

/// Reads a whole body, for tests of the wrapper.
#[cfg(test)]
async fn collect(body: Body) -> Vec<u8> {
    use http_body_util::BodyExt;
    body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_printable_request_ids_are_kept() {
        let ok = |s: &str| acceptable_request_id(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("3f2a9c1e-5b8d-4f7a-9e2b-1c0d4e6f8a9b"));
        assert!(ok("trace:abc/def+1="));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok("quote\"d"));
        assert!(!ok(&"x".repeat(REQUEST_ID_MAX + 1)));
        assert!(acceptable_request_id(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
    }

    #[tokio::test]
    async fn a_counted_body_keeps_its_length_and_counts_its_bytes() {
        let counter = IntCounter::new("t", "t").unwrap();
        let total = Arc::new(AtomicU64::new(0));
        let body = Body::new(Counted {
            inner: Body::from(vec![7u8; 1000]),
            counter: counter.clone(),
            total: total.clone(),
            on_end: None,
        });
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(1000));
        assert_eq!(collect(body).await.len(), 1000);
        assert_eq!(counter.get(), 1000);
        assert_eq!(total.load(Ordering::Relaxed), 1000);
    }
}
