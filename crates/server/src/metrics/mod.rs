//! Prometheus metrics: what the server counts and how `/metrics` renders it.
//!
//! One [`Metrics`] per server (in [`crate::app::App`]), with its own
//! registry, so that nothing here is global. Label values come from closed
//! sets (route classes, methods, status codes, store operations, configured
//! namespaces and upstream names): never a repository name or a digest, so
//! the number of series stays bounded however the registry is used.

pub mod blobstore;
pub mod config;
pub mod meta;
pub mod usage;

pub use config::MetricsConfig;

use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What kind of request a path is, the label of every HTTP metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `/v2/` itself.
    Base,
    Blob,
    Manifest,
    Upload,
    Tags,
    Referrers,
    Catalog,
    Token,
    Admin,
    Health,
    Metrics,
    Other,
}

impl RouteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Base => "base",
            RouteClass::Blob => "blob",
            RouteClass::Manifest => "manifest",
            RouteClass::Upload => "upload",
            RouteClass::Tags => "tags",
            RouteClass::Referrers => "referrers",
            RouteClass::Catalog => "catalog",
            RouteClass::Token => "token",
            RouteClass::Admin => "admin",
            RouteClass::Health => "health",
            RouteClass::Metrics => "metrics",
            RouteClass::Other => "other",
        }
    }

    /// The class of a request path. A repository name may itself contain
    /// `blobs` or `manifests` as a component, so the last marker decides:
    /// `/v2/a/manifests/b/blobs/sha256:…` reads a blob of `a/manifests/b`.
    pub fn of_path(path: &str) -> RouteClass {
        match path {
            "/v2" | "/v2/" => return RouteClass::Base,
            "/v2/_catalog" => return RouteClass::Catalog,
            "/v2/token" => return RouteClass::Token,
            "/healthz" | "/readyz" => return RouteClass::Health,
            "/metrics" => return RouteClass::Metrics,
            _ => {}
        }
        if path.starts_with("/api/") || path.starts_with("/v1/") {
            return RouteClass::Admin;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return RouteClass::Other;
        };
        let marker = ["/blobs/uploads", "/blobs/", "/manifests/", "/tags/list", "/referrers/"]
            .iter()
            .filter_map(|m| rest.rfind(m).map(|at| (at, *m)))
            // The rightmost marker; at one position, the longer one
            // (`/blobs/uploads` over `/blobs/`).
            .max_by_key(|(at, m)| (*at, m.len()));
        match marker {
            Some((_, "/blobs/uploads")) => RouteClass::Upload,
            Some((_, "/blobs/")) => RouteClass::Blob,
            Some((_, "/manifests/")) => RouteClass::Manifest,
            Some((_, "/tags/list")) => RouteClass::Tags,
            Some((_, "/referrers/")) => RouteClass::Referrers,
            _ => RouteClass::Other,
        }
    }
}

/// The method label: the common ones by name, anything else as `other`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Why a request's credentials were not accepted (`berth_auth_failures_total`).
#[derive(Debug, Clone, Copy)]
pub enum AuthFailure {
    /// No credentials where some are needed (the usual first request of a client).
    Missing,
    /// A bearer token that is malformed, expired or signed by someone else.
    BadToken,
    /// A password, robot token or ID token that was refused.
    BadCredentials,
    /// Authenticated, but not allowed the action.
    Denied,
}

impl AuthFailure {
    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::BadToken => "bad_token",
            AuthFailure::BadCredentials => "bad_credentials",
            AuthFailure::Denied => "denied",
        }
    }
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGaugeVec,
    pub http_bytes_in: IntCounterVec,
    pub http_bytes_out: IntCounterVec,
    pub blobstore_duration: HistogramVec,
    pub db_duration: HistogramVec,
    auth_failures: IntCounterVec,
    rate_limited: IntCounterVec,
    pub uploads_open: IntGauge,
    pub namespace_bytes: IntGaugeVec,
    pub namespace_blobs: IntGaugeVec,
    pub namespace_repositories: IntGaugeVec,
    pub usage_refreshed: IntGauge,
    jobs: JobMetrics,
}

/// GC, retention and expiry runs.
struct JobMetrics {
    runs: IntCounterVec,
    duration: HistogramVec,
    last_success: IntGaugeVec,
    items: IntCounterVec,
    bytes: IntCounterVec,
}

/// A scheduled job's name, the `job` label.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    Gc,
    Retention,
    Expiry,
    CacheEviction,
}

impl Job {
    fn as_str(self) -> &'static str {
        match self {
            Job::Gc => "gc",
            Job::Retention => "retention",
            Job::Expiry => "expiry",
            Job::CacheEviction => "cache_eviction",
        }
    }
}

/// What one finished job run removed.
#[derive(Debug, Default, Clone)]
pub struct JobOutcome {
    /// How many of each kind (`tags`, `manifests`, `blobs`, ...) it removed.
    pub removed: Vec<(&'static str, u64)>,
    pub bytes: u64,
}

/// Histogram buckets for request and store latencies: 0.5 ms to about 65 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 18).unwrap_or_default()
}

impl Metrics {
    /// The metrics of one server, registered in a registry of their own;
    /// `process_*` (CPU, memory, open files) comes along where the platform has it.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "berth_http_requests_total",
                    "HTTP requests answered, by route class, method and status.",
                ),
                &["route", "method", "status"],
            )
            .expect("valid metric"),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "berth_http_request_duration_seconds",
                    "Time from a request's arrival to the end of its response body.",
                )
                .buckets(latency_buckets()),
                &["route", "method"],
            )
            .expect("valid metric"),
            http_in_flight: IntGaugeVec::new(
                Opts::new(
                    "berth_http_requests_in_flight",
                    "Requests being answered now (for `upload`: uploads in progress).",
                ),
                &["route"],
            )
            .expect("valid metric"),
            http_bytes_in: IntCounterVec::new(
                Opts::new("berth_http_request_bytes_total", "Request body bytes received."),
                &["route"],
            )
            .expect("valid metric"),
            http_bytes_out: IntCounterVec::new(
                Opts::new("berth_http_response_bytes_total", "Response body bytes sent."),
                &["route"],
            )
            .expect("valid metric"),
            blobstore_duration: HistogramVec::new(
                HistogramOpts::new(
                    "berth_blobstore_operation_duration_seconds",
                    "Blob store operations by store, operation and result; a read until its stream opens.",
                )
                .buckets(latency_buckets()),
                &["store", "operation", "result"],
            )
            .expect("valid metric"),
            db_duration: HistogramVec::new(
                HistogramOpts::new(
                    "berth_db_operation_duration_seconds",
                    "Metadata database operations by operation and result.",
                )
                .buckets(latency_buckets()),
                &["operation", "result"],
            )
            .expect("valid metric"),
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "berth_auth_failures_total",
                    "Requests refused for their credentials or grants.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "berth_rate_limited_total",
                    "Requests refused by a rate or concurrency limit.",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            uploads_open: IntGauge::new(
                "berth_upload_sessions_open",
                "Upload sessions started and not yet finished or purged (all replicas).",
            )
            .expect("valid metric"),
            namespace_bytes: IntGaugeVec::new(
                Opts::new(
                    "berth_storage_bytes",
                    "Bytes of the blobs linked into the repositories of a namespace (a blob shared by several \
                     counts in each); refreshed periodically.",
                ),
                &["namespace"],
            )
            .expect("valid metric"),
            namespace_blobs: IntGaugeVec::new(
                Opts::new("berth_storage_blobs", "Blob links of the repositories of a namespace."),
                &["namespace"],
            )
            .expect("valid metric"),
            namespace_repositories: IntGaugeVec::new(
                Opts::new(
                    "berth_repositories",
                    "Repositories of a namespace that hold at least one blob.",
                ),
                &["namespace"],
            )
            .expect("valid metric"),
            usage_refreshed: IntGauge::new(
                "berth_storage_usage_refreshed_timestamp_seconds",
                "When the storage gauges were last computed (Unix time).",
            )
            .expect("valid metric"),
            jobs: JobMetrics {
                runs: IntCounterVec::new(
                    Opts::new(
                        "berth_job_runs_total",
                        "Runs of GC, retention, expiry and cache eviction by result.",
                    ),
                    &["job", "result"],
                )
                .expect("valid metric"),
                duration: HistogramVec::new(
                    HistogramOpts::new("berth_job_duration_seconds", "How long each job run took.")
                        .buckets(exponential_buckets(0.01, 4.0, 10).unwrap_or_default()),
                    &["job"],
                )
                .expect("valid metric"),
                last_success: IntGaugeVec::new(
                    Opts::new(
                        "berth_job_last_success_timestamp_seconds",
                        "When a run of the job last succeeded on this replica (Unix time).",
                    ),
                    &["job"],
                )
                .expect("valid metric"),
                items: IntCounterVec::new(
                    Opts::new("berth_job_removed_total", "Tags, manifests and blobs the job removed."),
                    &["job", "kind"],
                )
                .expect("valid metric"),
                bytes: IntCounterVec::new(
                    Opts::new("berth_job_reclaimed_bytes_total", "Bytes the job reclaimed."),
                    &["job"],
                )
                .expect("valid metric"),
            },
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.http_in_flight.clone()),
            Box::new(self.http_bytes_in.clone()),
            Box::new(self.http_bytes_out.clone()),
            Box::new(self.blobstore_duration.clone()),
            Box::new(self.db_duration.clone()),
            Box::new(self.auth_failures.clone()),
            Box::new(self.rate_limited.clone()),
            Box::new(self.uploads_open.clone()),
            Box::new(self.namespace_bytes.clone()),
            Box::new(self.namespace_blobs.clone()),
            Box::new(self.namespace_repositories.clone()),
            Box::new(self.usage_refreshed.clone()),
            Box::new(self.jobs.runs.clone()),
            Box::new(self.jobs.duration.clone()),
            Box::new(self.jobs.last_success.clone()),
            Box::new(self.jobs.items.clone()),
            Box::new(self.jobs.bytes.clone()),
            #[cfg(target_os = "linux")]
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            // Only a name registered twice fails, and the list above has each once.
            if let Err(e) = self.registry.register(c) {
                tracing::error!(error = %e, "a metric could not be registered");
            }
        }
    }

    /// Adds collectors owned elsewhere (the pull-through cache's counters).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::error!(error = %e, "a metric could not be registered");
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 << 10);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn auth_failure(&self, why: AuthFailure) {
        self.auth_failures.with_label_values(&[why.as_str()]).inc();
    }

    /// A request refused by the limit named `limit` (`login`, `rate`, `concurrency`, `uploads`).
    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited.with_label_values(&[limit]).inc();
    }

    /// A job run that finished, well or not, after `took`.
    pub fn job_run(&self, job: Job, took: Duration, outcome: Option<JobOutcome>, now_secs: i64) {
        let name = job.as_str();
        self.jobs
            .duration
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
        match outcome {
            Some(outcome) => {
                self.jobs.runs.with_label_values(&[name, "success"]).inc();
                self.jobs.last_success.with_label_values(&[name]).set(now_secs);
                for (kind, n) in outcome.removed {
                    self.jobs.items.with_label_values(&[name, kind]).inc_by(n);
                }
                self.jobs.bytes.with_label_values(&[name]).inc_by(outcome.bytes);
            }
            None => self.jobs.runs.with_label_values(&[name, "failure"]).inc(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_marker_of_a_path_decides_its_class() {
        for (path, class) in [
            ("/v2/", RouteClass::Base),
            ("/v2", RouteClass::Base),
            ("/v2/_catalog", RouteClass::Catalog),
            ("/v2/token", RouteClass::Token),
            ("/v2/a/b/manifests/latest", RouteClass::Manifest),
            ("/v2/a/blobs/sha256:00", RouteClass::Blob),
            ("/v2/a/blobs/uploads/", RouteClass::Upload),
            ("/v2/a/blobs/uploads/1234-5678", RouteClass::Upload),
            ("/v2/a/manifests/b/blobs/sha256:00", RouteClass::Blob),
            ("/v2/a/blobs/b/manifests/v1", RouteClass::Manifest),
            ("/v2/a/blobs/uploads/manifests/v1", RouteClass::Manifest),
            ("/v2/a/tags/list", RouteClass::Tags),
            ("/v2/a/referrers/sha256:00", RouteClass::Referrers),
            ("/v2/just/a/name", RouteClass::Other),
            ("/api/v1/users", RouteClass::Admin),
            ("/v1/images", RouteClass::Admin),
            ("/healthz", RouteClass::Health),
            ("/readyz", RouteClass::Health),
            ("/metrics", RouteClass::Metrics),
            ("/favicon.ico", RouteClass::Other),
        ] {
            assert_eq!(RouteClass::of_path(path), class, "{path}");
        }
    }

    #[test]
    fn a_fresh_registry_renders_every_family_it_has_values_for() {
        let m = Metrics::new();
        m.http_requests.with_label_values(&["blob", "GET", "200"]).inc();
        m.auth_failure(AuthFailure::Missing);
        let text = m.render();
        assert!(
            text.contains(r#"berth_http_requests_total{method="GET",route="blob",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"berth_auth_failures_total{reason="missing"} 1"#),
            "{text}"
        );
    }
}
