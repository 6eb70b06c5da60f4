//! The admin JSON API under `/api/v1/`: users, robot tokens, grants and the
//! audit log. Administrators only: a bearer token of an administrator, or an
//! administrator's Basic credentials. With `auth.mode = "none"` it is open,
//! like the rest of the registry.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use berth_meta::access::{AuditEntry, GrantRecord, RobotRecord, UserRecord};
use berth_oci::ErrorCode;
use serde::Deserialize;
use serde_json::json;

use super::credentials::{basic_credentials, bearer};
use super::query::Params;
use super::ApiError;
use crate::app::App;
use crate::auth::manage::ManageError;
use crate::config::AuthMode;
use crate::metrics::AuthFailure;
use crate::observe::RequestContext;
use crate::tls::VerifiedClientCertificate;

type AdminResult = Result<Response, ApiError>;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{name}/password", put(set_password))
        .route("/users/{name}/{state}", post(set_user_state))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}", delete(revoke_token))
        .route("/grants", get(list_grants).post(add_grant))
        .route("/grants/{id}", delete(remove_grant))
        .route("/audit", get(audit_log))
        .route("/proxy/upstreams", get(list_upstreams))
        .route("/proxy/cache/{*image}", delete(evict_cached))
        .route("/proxy/evict", post(evict_over_cap))
        .route("/log", get(log_level).put(set_log_level))
        .route("/webhooks", get(list_webhooks))
}

/// `GET /api/v1/log`: the log level filter in force.
async fn log_level(State(app): State<Arc<App>>, _admin: Admin) -> AdminResult {
    Ok(Json(json!({ "level": app.log.current() })).into_response())
}

#[derive(Deserialize)]
struct LevelChange {
    level: String,
}

/// `PUT /api/v1/log` with `{"level": "debug"}`: changes the log level
/// without a restart, until the next change or SIGHUP (which applies the
/// configuration file's `log.level`).
async fn set_log_level(State(app): State<Arc<App>>, Admin(who): Admin, body: axum::body::Bytes) -> AdminResult {
    let change: LevelChange = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("expected {{\"level\": \"...\"}}: {e}"),
        )
    })?;
    app.log
        .set(&change.level)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    tracing::info!(level = %change.level, by = %who, "log level changed");
    Ok(Json(json!({ "level": app.log.current() })).into_response())
}

/// `GET /api/v1/webhooks`: each endpoint's filters and delivery state.
async fn list_webhooks(State(app): State<Arc<App>>, _admin: Admin) -> AdminResult {
    let states = app
        .webhooks
        .states()
        .await
        .map_err(crate::registry::RegistryError::Meta)?;
    let at = |ms: Option<i64>| ms.map(|ms| crate::clock::rfc3339(u64::try_from(ms / 1000).unwrap_or(0)));
    let endpoints: Vec<_> = states
        .into_iter()
        .map(|(endpoint, record)| {
            json!({
                "name": record.endpoint,
                "configured": endpoint.is_some(),
                "url": endpoint.map(|e| e.shown_url()),
                "repositories": endpoint.map(|e| e.repositories()).unwrap_or_default(),
                "actions": endpoint.map(|e| e.actions()).unwrap_or_default(),
                "queued": record.queued,
                "delivered": record.delivered,
                "failed": record.failed,
                "dropped": record.dropped,
                "attempts": record.attempts,
                "next_attempt": at(Some(record.next_attempt_ms).filter(|ms| *ms > 0)),
                "last_error": record.last_error,
                "last_error_at": at(record.last_error_ms),
                "last_success_at": at(record.last_success_ms),
            })
        })
        .collect();
    Ok(Json(json!({ "endpoints": endpoints })).into_response())
}

/// `POST /api/v1/proxy/evict`: applies `proxy.max_bytes` now.
async fn evict_over_cap(State(app): State<Arc<App>>, _admin: Admin) -> Result<Response, ApiError> {
    if app.config.proxy.max_bytes == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "proxy.max_bytes is not set: the cache has no size cap",
        ));
    }
    let report = crate::proxy::evict::evict_over_cap(&app.lifecycle, &app.registry, app.config.proxy.max_bytes)
        .await
        .map_err(|e| match e {
            crate::proxy::evict::EvictionError::Registry(e) => ApiError::from(e),
            crate::proxy::evict::EvictionError::Lifecycle(e) => ApiError::from(e),
        })?;
    Ok(Json(report).into_response())
}

/// `DELETE /api/v1/proxy/cache/<repository>@<digest>`: evicts a cached
/// image (its manifest and tags; garbage collection reclaims its blobs).
/// Only repositories that are caches of an upstream: pushed content is
/// deleted through `/v2/`.
async fn evict_cached(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(image): Path<String>,
) -> Result<Response, ApiError> {
    let invalid = |why: String| ApiError::new(ErrorCode::InvalidRequest, why);
    let (repo, digest) = image
        .rsplit_once('@')
        .ok_or_else(|| invalid(format!("{image:?} is not <repository>@<digest>")))?;
    let repo: berth_oci::RepoName = repo.parse().map_err(|e| invalid(format!("{e}")))?;
    let digest: berth_oci::Digest = digest.parse().map_err(|e| invalid(format!("{e}")))?;
    match app.proxy.resolve(&repo, None) {
        crate::proxy::routes::Route::Remote(remote) | crate::proxy::routes::Route::AnyHost(remote)
            if remote.repo == repo => {}
        _ => return Err(invalid(format!("{repo} is not a cache of an upstream"))),
    }
    app.registry
        .delete_manifest(&repo, &berth_oci::Reference::Digest(digest.clone()))
        .await?;
    tracing::info!(actor = %admin.0, %repo, %digest, "cached image evicted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/proxy/upstreams`: the configured upstreams and what the
/// cache has done since the process started.
async fn list_upstreams(State(app): State<Arc<App>>, _admin: Admin) -> Result<Response, ApiError> {
    let counters = &app.proxy.counters;
    let upstreams: Vec<_> = app
        .proxy
        .upstream_names()
        .into_iter()
        .map(|(name, url)| serde_json::json!({ "name": name, "url": url }))
        .collect();
    Ok(axum::Json(serde_json::json!({
        "mode": if app.proxy.mirror_only() { "mirror" } else { "registry" },
        "upstreams": upstreams,
        "counters": {
            "hits": counters.hits.get(),
            "misses": counters.misses.get(),
            "upstream_errors": counters.upstream_errors.get(),
            "served_stale": counters.served_stale.get(),
            "blob_fetches": counters.blob_fetches.get(),
            "bytes_fetched": counters.bytes_fetched.get(),
        },
    }))
    .into_response())
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        let message = e.to_string();
        match e {
            ManageError::Invalid(_) => ApiError::new(ErrorCode::InvalidRequest, message),
            ManageError::Conflict(_) => ApiError::new(ErrorCode::Conflict, message),
            ManageError::NotFound(_) => ApiError::new(ErrorCode::NotFound, message),
            ManageError::Store(ref inner) => ApiError::meta(inner),
        }
    }
}

/// With `tls.client_ca_file` set, refuses admin requests that did not come
/// over a connection with a client certificate from one of its CAs. It is
/// required in addition to an administrator's credentials, not instead: a
/// stolen password alone, or a certificate alone, is not enough.
pub(super) async fn require_client_certificate(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let required = app.config.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
    if required && req.extensions().get::<VerifiedClientCertificate>().is_none() {
        return ApiError::new(
            ErrorCode::Denied,
            "the admin API needs a client certificate signed by a CA of tls.client_ca_file",
        )
        .with_status(StatusCode::FORBIDDEN)
        .into_response();
    }
    next.run(req).await
}

/// The administrator making the request, as an audit actor. Extracting it
/// is the admin check: a handler that takes an `Admin` runs for
/// administrators only.
pub(super) struct Admin(pub(super) String);

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let found = admin_of(parts, app).await;
        match &found {
            Ok(Admin(who)) => {
                if let Some(context) = parts.extensions.get::<RequestContext>() {
                    context.set_identity(who);
                }
            }
            Err(e) => match e.code() {
                ErrorCode::Unauthorized => app.metrics.auth_failure(AuthFailure::BadCredentials),
                ErrorCode::Denied => app.metrics.auth_failure(AuthFailure::Denied),
                ErrorCode::TooManyRequests => app.metrics.rate_limited("login"),
                _ => {}
            },
        }
        found
    }
}

/// The administrator the request's credentials name, or why there is none.
async fn admin_of(parts: &Parts, app: &Arc<App>) -> Result<Admin, ApiError> {
    {
        let auth = &app.auth;
        if auth.mode == AuthMode::None {
            return Ok(Admin("anonymous".into()));
        }
        let unauthorized = || {
            ApiError::new(ErrorCode::Unauthorized, "administrator credentials required").with_header(
                axum::http::header::WWW_AUTHENTICATE,
                format!("Basic realm=\"{} admin\"", auth.service),
            )
        };
        let denied = || ApiError::new(ErrorCode::Denied, "only administrators may use the admin API");
        if let Some(token) = bearer(&parts.headers) {
            let claims = auth.verify(token).ok_or_else(unauthorized)?;
            return if claims.adm {
                Ok(Admin(crate::auth::actor_of_subject(&claims.sub)))
            } else {
                Err(denied())
            };
        }
        let (login, password) = basic_credentials(&parts.headers)?.ok_or_else(unauthorized)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let identity = auth.login(peer, &login, &password).await?;
        if identity.permissions.admin {
            Ok(Admin(identity.actor()))
        } else {
            Err(denied())
        }
    }
}

fn user_json(u: &UserRecord) -> serde_json::Value {
    json!({ "name": u.name, "admin": u.admin, "disabled": u.disabled, "created_ms": u.created_ms })
}

fn robot_json(r: &RobotRecord) -> serde_json::Value {
    json!({
        "name": r.name,
        "created_by": r.created_by,
        "created_ms": r.created_ms,
        "expires_ms": r.expires_ms,
        "revoked_ms": r.revoked_ms,
        "last_used_ms": r.last_used_ms,
    })
}

fn grant_json(g: &GrantRecord) -> serde_json::Value {
    json!({
        "id": g.id,
        "subject": format!("{}:{}", g.subject_kind.as_str(), g.subject),
        "pattern": g.pattern,
        "role": g.role,
        "created_by": g.created_by,
        "created_ms": g.created_ms,
    })
}

fn audit_json(e: &AuditEntry) -> serde_json::Value {
    json!({
        "id": e.id,
        "at_ms": e.at_ms,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "detail": e.detail,
    })
}

fn created(body: serde_json::Value) -> AdminResult {
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The path's parameters, with a JSON `INVALID_REQUEST` instead of axum's
/// plain-text rejection (a segment that is not UTF-8 text, for instance).
fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("path: {}", e.body_text())))
}

/// A JSON body, with a clear error instead of axum's plain-text rejection.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("request body: {e}")))
}

async fn list_users(State(app): State<Arc<App>>, _: Admin) -> AdminResult {
    let users = app.auth.accounts().list_users().await?;
    Ok(Json(json!({ "users": users.iter().map(user_json).collect::<Vec<_>>() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(State(app): State<Arc<App>>, Admin(actor): Admin, body: axum::body::Bytes) -> AdminResult {
    let user: NewUser = parse_body(&body)?;
    app.auth
        .accounts()
        .create_user(&user.name, &user.password, user.admin, &actor)
        .await?;
    created(json!({ "name": user.name, "admin": user.admin }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
    body: axum::body::Bytes,
) -> AdminResult {
    let name = path(name)?;
    let change: NewPassword = parse_body(&body)?;
    app.auth
        .accounts()
        .set_password(&name, &change.password, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /users/{name}/disable` and `…/enable`.
async fn set_user_state(
    State(app): State<Arc<App>>,
    params: Result<Path<(String, String)>, PathRejection>,
    Admin(actor): Admin,
) -> AdminResult {
    let (name, state) = path(params)?;
    let disabled = match state.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return Err(ApiError::new(ErrorCode::NotFound, format!("no such action {state:?}"))),
    };
    app.auth.accounts().set_disabled(&name, disabled, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tokens(State(app): State<Arc<App>>, _: Admin) -> AdminResult {
    let robots = app.auth.accounts().list_robots().await?;
    Ok(Json(json!({ "tokens": robots.iter().map(robot_json).collect::<Vec<_>>() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    grants: Vec<String>,
    #[serde(default)]
    expires: Option<String>,
}

async fn create_token(State(app): State<Arc<App>>, Admin(actor): Admin, body: axum::body::Bytes) -> AdminResult {
    let new: NewToken = parse_body(&body)?;
    let token = app
        .auth
        .accounts()
        .create_token(&new.name, &new.grants, new.expires.as_deref(), &actor)
        .await?;
    created(json!({ "name": new.name, "token": token }))
}

async fn revoke_token(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
) -> AdminResult {
    let name = path(name)?;
    app.auth.accounts().revoke_token(&name, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_grants(State(app): State<Arc<App>>, _: Admin) -> AdminResult {
    let grants = app.auth.accounts().list_grants().await?;
    Ok(Json(json!({ "grants": grants.iter().map(grant_json).collect::<Vec<_>>() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGrantBody {
    subject: String,
    pattern: String,
    role: String,
}

async fn add_grant(State(app): State<Arc<App>>, Admin(actor): Admin, body: axum::body::Bytes) -> AdminResult {
    let g: NewGrantBody = parse_body(&body)?;
    let id = app
        .auth
        .accounts()
        .add_grant(&g.subject, &g.pattern, &g.role, &actor)
        .await?;
    created(json!({ "id": id, "subject": g.subject, "pattern": g.pattern, "role": g.role }))
}

async fn remove_grant(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
) -> AdminResult {
    let id = path(id)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("grant id {id:?} is not a number")))?;
    app.auth.accounts().remove_grant(id, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<String>,
    before: Option<String>,
}

async fn audit_log(State(app): State<Arc<App>>, _: Admin, Params(q): Params<AuditQuery>) -> AdminResult {
    let number = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("{name}={s:?} is not a number")))
            })
            .transpose()
    };
    let limit = number("limit", &q.limit)?.unwrap_or(100).clamp(1, 1000);
    let before = number("before", &q.before)?;
    let entries = app
        .auth
        .accounts()
        .audit_log(before, u32::try_from(limit).unwrap_or(100))
        .await?;
    Ok(Json(json!({ "entries": entries.iter().map(audit_json).collect::<Vec<_>>() })).into_response())
}
