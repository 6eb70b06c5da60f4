//! HTTP only: parse the request, call the registry core, write headers.
//!
//! `/v2/{*rest}` is routed by [`berth_oci::Endpoint::parse`] because
//! repository names contain slashes; each endpoint has one handler.

mod admin;
pub(crate) mod auth;
mod blobs;
mod credentials;
mod error;
mod lifecycle;
mod listing;
mod manifests;
pub mod openapi;
mod pull_through;
mod query;
mod ui;
mod uploads;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use berth_oci::Endpoint;

use crate::app::App;
use crate::observe::RequestContext;
use crate::proxy::routes::Route;
pub use error::{ApiError, ErrorBody};

type ApiResult = Result<Response, ApiError>;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The HTTP routes of the server.
pub fn router(app: Arc<App>) -> Router {
    let ui = if app.config.ui.enabled {
        crate::ui::router()
    } else {
        Router::new()
    };
    Router::new()
        .route("/v2", any(distribution_api))
        .route("/v2/", any(distribution_api))
        .route("/v2/{*rest}", any(distribution_api))
        .route("/v2/token", get(auth::token_endpoint).post(auth::token_endpoint))
        // `/api/v1/…` and `/v1/images`, with their OpenAPI document.
        .merge(openapi::routes(&app))
        .merge(status_routes())
        .merge(ui)
        .with_state(app)
}

/// The routes of the plain-HTTP listener beside TLS (`tls.plain_listen`):
/// the status routes only; anything else is 404.
pub fn plain_router(app: Arc<App>) -> Router {
    status_routes().with_state(app)
}

/// The routes that tell how the process is, for probes and scrapers: on the
/// main listener and on the plain-HTTP one. `/metrics` belongs here too.
fn status_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
}

/// `GET /metrics` alone, for the registry's listener or `metrics.listen`.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new().route("/metrics", get(render_metrics)).with_state(app)
}

async fn render_metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
        .into_response()
}

/// `GET /readyz`: 200 `ready` when the metadata database and the default
/// blob store both answer, so that a load balancer can leave out a replica
/// that cannot serve; else 503 with what failed as JSON (`/healthz` only
/// says that the process runs).
async fn readiness(State(app): State<Arc<App>>) -> Response {
    let (database, blob_store) = tokio::join!(app.registry.check_database(), app.registry.check_blob_store());
    if database.is_ok() && blob_store.is_ok() {
        return "ready".into_response();
    }
    let state = |r: &Result<(), crate::registry::RegistryError>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(database = %state(&database), blob_store = %state(&blob_store), "not ready");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "5")],
        axum::Json(serde_json::json!({
            "ready": false,
            "database": state(&database),
            "blob_store": state(&blob_store),
        })),
    )
        .into_response()
}

/// The `Range` header value of an upload session holding `offset` bytes.
// distribution-spec: "Range: 0-<offset-1>"; clients expect "0-0" for an empty session.
fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

/// The query parameters of a `/v2/` request, read leniently (see [`query`]).
fn query_of(req: &Request) -> HashMap<String, String> {
    query::lenient(req.uri())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's declared body length, when it declares one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, "content-length").and_then(|v| v.trim().parse().ok())
}

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

async fn distribution_api(State(app): State<Arc<App>>, req: Request) -> Response {
    let routed = if app.webhooks.active() {
        // Events published while serving the request say which request it was.
        let info = request_info(&req);
        crate::registry::events::CURRENT_REQUEST
            .scope(Arc::new(info), route(&app, req))
            .await
    } else {
        route(&app, req).await
    };
    let mut response = match routed {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

async fn route(app: &App, req: Request) -> ApiResult {
    let path = req.uri().path();
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    // The path goes to the parser as sent: it decodes each segment on its own.
    let mut endpoint = Endpoint::parse(req.method().as_str(), rest)?;
    let context = req.extensions().get::<RequestContext>();
    if let (Some(context), Some(repo)) = (context, endpoint.repo_mut()) {
        context.set_repository(repo.as_str());
    }
    // Grants apply to the name as the client addressed it, which is what its
    // token names; the cache behind it is the same whichever name is used.
    let access = auth::authorize(&app.auth, &endpoint, req.headers(), &app.metrics)?;
    if let Some(who) = access.subject() {
        if let Some(context) = context {
            context.set_identity(who);
        }
        crate::registry::events::RequestInfo::set_current_actor(who);
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        app.limiter.admit_identity(who, peer, context)?;
    }
    let registry = &app.registry;
    let writes = is_write(&endpoint);
    let target = match endpoint.repo_mut() {
        Some(repo) => {
            // Only a registry with upstreams reads `?ns=`: the query is parsed
            // on every request otherwise.
            let ns = if app.proxy.has_routes() {
                query_of(&req).remove("ns")
            } else {
                None
            };
            let route = app.proxy.resolve(repo, ns.as_deref());
            if writes {
                *repo = app.proxy.writable(route)?;
                None
            } else {
                match route {
                    Route::Local(local) => {
                        *repo = local;
                        None
                    }
                    other => Some(other),
                }
            }
        }
        None => None,
    };
    if let Some(route) = target {
        return pull_through::serve(app, endpoint, route, req).await;
    }
    match endpoint {
        Endpoint::Base => Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()),
        Endpoint::Catalog => listing::list_repositories(registry, req, &access).await,
        Endpoint::ListTags { repo } => listing::list_tags(registry, repo, req).await,
        Endpoint::ListReferrers { repo, digest } => listing::list_referrers(registry, repo, digest, req).await,
        Endpoint::GetManifest { repo, reference, head } => {
            manifests::get_manifest(registry, repo, reference, head, req).await
        }
        Endpoint::PutManifest { repo, reference } => {
            manifests::put_manifest(registry, repo, reference, req, access.subject()).await
        }
        Endpoint::DeleteManifest { repo, reference } => manifests::delete_manifest(registry, repo, reference).await,
        Endpoint::GetBlob { repo, digest, head } => blobs::get_blob(registry, repo, digest, head, req).await,
        Endpoint::DeleteBlob { repo, digest } => blobs::delete_blob(registry, repo, digest).await,
        Endpoint::StartUpload { repo } => uploads::start_upload(registry, repo, req, &access, &app.limiter).await,
        Endpoint::GetUpload { repo, id } => uploads::get_upload(registry, repo, id).await,
        Endpoint::PatchUpload { repo, id } => uploads::patch_upload(registry, repo, id, req).await,
        Endpoint::FinishUpload { repo, id } => uploads::finish_upload(registry, repo, id, req).await,
        Endpoint::CancelUpload { repo, id } => uploads::cancel_upload(registry, repo, id).await,
        Endpoint::Nameless(nameless) => {
            let absent = registry.absent(&nameless.repo, nameless.resource).await;
            Err(ApiError::nameless(absent, &nameless.cause))
        }
    }
}

/// The request as an event's `request` describes it.
fn request_info(req: &Request) -> crate::registry::events::RequestInfo {
    let header = |name: &str| header_str(req.headers(), name).unwrap_or_default().to_string();
    crate::registry::events::RequestInfo {
        id: header("x-request-id"),
        addr: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_default(),
        host: header("host"),
        method: req.method().to_string(),
        user_agent: header("user-agent"),
        actor: Default::default(),
    }
}

/// Whether the endpoint changes a repository (or an upload session of one):
/// refused for remote repositories and in mirror mode.
fn is_write(endpoint: &Endpoint) -> bool {
    match endpoint {
        Endpoint::PutManifest { .. }
        | Endpoint::DeleteManifest { .. }
        | Endpoint::DeleteBlob { .. }
        | Endpoint::StartUpload { .. }
        | Endpoint::GetUpload { .. }
        | Endpoint::PatchUpload { .. }
        | Endpoint::FinishUpload { .. }
        | Endpoint::CancelUpload { .. } => true,
        Endpoint::Nameless(nameless) => nameless.intent != berth_oci::Intent::Read,
        _ => false,
    }
}

/// A response with no body and the given status and headers.
fn empty(status: StatusCode, headers: HeaderMap) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}
