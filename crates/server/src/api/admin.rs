//! The admin JSON API under `/api/v1/`: users, robot tokens, grants and the
//! audit log. Administrators only: a bearer token of an administrator, or an
//! administrator's Basic credentials. With `auth.mode = "none"` it is open,
//! like the rest of the registry.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_meta::access::{AuditEntry, GrantRecord, RobotRecord, UserRecord};
use berth_oci::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::{basic_credentials, bearer};
use super::openapi::{CommonErrors, Conflict, NotFound};
use super::query::Params;
use super::ApiError;
use crate::app::App;
use crate::auth::manage::ManageError;
use crate::config::AuthMode;
use crate::metrics::AuthFailure;
use crate::observe::RequestContext;
use crate::tls::VerifiedClientCertificate;

type AdminResult = Result<Response, ApiError>;

/// The routes, each registered with its documentation (see [`super::openapi`]).
pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(set_password))
        .routes(routes!(disable_user))
        .routes(routes!(enable_user))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_grants, add_grant))
        .routes(routes!(remove_grant))
        .routes(routes!(audit_log))
        .routes(routes!(list_upstreams))
        .routes(routes!(evict_cached))
        .routes(routes!(evict_over_cap))
        .routes(routes!(log_level, set_log_level))
        .routes(routes!(list_webhooks))
}

/// The log level filter in force.
#[derive(Serialize, Deserialize, ToSchema)]
pub(super) struct LogLevel {
    /// A `tracing` filter such as `info` or `berth_server=debug,info`.
    #[schema(example = "info")]
    level: String,
}

/// `GET /api/v1/log`: the log level filter in force.
#[utoipa::path(get, path = "/log", tag = "log",
    responses((status = 200, description = "The log level filter in force", body = LogLevel), CommonErrors))]
async fn log_level(State(app): State<Arc<App>>, _admin: Admin) -> AdminResult {
    Ok(Json(LogLevel {
        level: app.log.current(),
    })
    .into_response())
}

/// `PUT /api/v1/log` with `{"level": "debug"}`: changes the log level
/// without a restart, until the next change or SIGHUP (which applies the
/// configuration file's `log.level`).
#[utoipa::path(put, path = "/log", tag = "log", request_body = LogLevel,
    responses((status = 200, description = "The new log level filter", body = LogLevel), CommonErrors))]
async fn set_log_level(
    State(app): State<Arc<App>>,
    Admin(who): Admin,
    JsonBody(change): JsonBody<LogLevel>,
) -> AdminResult {
    app.log
        .set(&change.level)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    tracing::info!(level = %change.level, by = %who, "log level changed");
    Ok(Json(LogLevel {
        level: app.log.current(),
    })
    .into_response())
}

#[derive(Serialize, ToSchema)]
pub(super) struct WebhookList {
    endpoints: Vec<WebhookState>,
}

/// A webhook endpoint's filters and delivery state. An endpoint no longer
/// configured is still listed while it has a delivery record.
#[derive(Serialize, ToSchema)]
pub(super) struct WebhookState {
    name: String,
    configured: bool,
    /// Without credentials.
    url: Option<String>,
    repositories: Vec<String>,
    actions: Vec<String>,
    queued: i64,
    delivered: i64,
    failed: i64,
    dropped: i64,
    attempts: i64,
    /// RFC 3339.
    next_attempt: Option<String>,
    last_error: Option<String>,
    last_error_at: Option<String>,
    last_success_at: Option<String>,
}

/// `GET /api/v1/webhooks`: each endpoint's filters and delivery state.
#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    responses((status = 200, description = "Each endpoint's filters and delivery state", body = WebhookList), CommonErrors))]
async fn list_webhooks(State(app): State<Arc<App>>, _admin: Admin) -> AdminResult {
    let states = app
        .webhooks
        .states()
        .await
        .map_err(crate::registry::RegistryError::Meta)?;
    let at = |ms: Option<i64>| ms.map(|ms| crate::clock::rfc3339(u64::try_from(ms / 1000).unwrap_or(0)));
    let endpoints = states
        .into_iter()
        .map(|(endpoint, record)| WebhookState {
            name: record.endpoint,
            configured: endpoint.is_some(),
            url: endpoint.map(|e| e.shown_url()),
            repositories: endpoint
                .map(|e| e.repositories().into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            actions: endpoint
                .map(|e| e.actions().into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            queued: record.queued,
            delivered: record.delivered,
            failed: record.failed,
            dropped: record.dropped,
            attempts: record.attempts,
            next_attempt: at(Some(record.next_attempt_ms).filter(|ms| *ms > 0)),
            last_error: record.last_error,
            last_error_at: at(record.last_error_ms),
            last_success_at: at(record.last_success_ms),
        })
        .collect();
    Ok(Json(WebhookList { endpoints }).into_response())
}

/// `POST /api/v1/proxy/evict`: applies `proxy.max_bytes` now.
#[utoipa::path(post, path = "/proxy/evict", tag = "proxy",
    responses((status = 200, description = "What the eviction pass did", body = crate::proxy::evict::Eviction), CommonErrors))]
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
#[utoipa::path(delete, path = "/proxy/cache/{*image}", tag = "proxy",
    params(("image" = String, Path, description = "`<repository>@<digest>`, the repository's slashes unescaped",
        example = "docker.io/library/alpine@sha256:0000000000000000000000000000000000000000000000000000000000000000")),
    responses((status = 204, description = "Evicted"), NotFound, CommonErrors))]
async fn evict_cached(
    State(app): State<Arc<App>>,
    admin: Admin,
    image: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let image = path(image)?;
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

/// The pull-through cache: its upstreams and what it has done since the
/// process started.
#[derive(Serialize, ToSchema)]
pub(super) struct ProxyState {
    mode: ProxyMode,
    upstreams: Vec<Upstream>,
    counters: ProxyCounters,
}

/// `mirror` when the registry only mirrors its upstreams (no pushes).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum ProxyMode {
    Mirror,
    Registry,
}

#[derive(Serialize, ToSchema)]
struct Upstream {
    name: String,
    url: String,
}

#[derive(Serialize, ToSchema)]
struct ProxyCounters {
    hits: u64,
    misses: u64,
    upstream_errors: u64,
    served_stale: u64,
    blob_fetches: u64,
    bytes_fetched: u64,
}

/// `GET /api/v1/proxy/upstreams`: the configured upstreams and what the
/// cache has done since the process started.
#[utoipa::path(get, path = "/proxy/upstreams", tag = "proxy",
    responses((status = 200, description = "The upstreams and the cache's counters", body = ProxyState), CommonErrors))]
async fn list_upstreams(State(app): State<Arc<App>>, _admin: Admin) -> Result<Response, ApiError> {
    let counters = &app.proxy.counters;
    Ok(Json(ProxyState {
        mode: if app.proxy.mirror_only() {
            ProxyMode::Mirror
        } else {
            ProxyMode::Registry
        },
        upstreams: app
            .proxy
            .upstream_names()
            .into_iter()
            .map(|(name, url)| Upstream { name, url })
            .collect(),
        counters: ProxyCounters {
            hits: counters.hits.get(),
            misses: counters.misses.get(),
            upstream_errors: counters.upstream_errors.get(),
            served_stale: counters.served_stale.get(),
            blob_fetches: counters.blob_fetches.get(),
            bytes_fetched: counters.bytes_fetched.get(),
        },
    })
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

#[derive(Serialize, ToSchema)]
pub(super) struct UserList {
    users: Vec<User>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct User {
    name: String,
    admin: bool,
    disabled: bool,
    /// Unix milliseconds.
    created_ms: i64,
}

impl From<&UserRecord> for User {
    fn from(u: &UserRecord) -> Self {
        User {
            name: u.name.clone(),
            admin: u.admin,
            disabled: u.disabled,
            created_ms: u.created_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct RobotTokenList {
    tokens: Vec<RobotToken>,
}

/// A robot token as listed: never the token itself.
#[derive(Serialize, ToSchema)]
pub(super) struct RobotToken {
    name: String,
    created_by: String,
    /// Unix milliseconds, as are the other times.
    created_ms: i64,
    expires_ms: Option<i64>,
    revoked_ms: Option<i64>,
    last_used_ms: Option<i64>,
}

impl From<&RobotRecord> for RobotToken {
    fn from(r: &RobotRecord) -> Self {
        RobotToken {
            name: r.name.clone(),
            created_by: r.created_by.clone(),
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            revoked_ms: r.revoked_ms,
            last_used_ms: r.last_used_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct GrantList {
    grants: Vec<Grant>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Grant {
    id: i64,
    /// `user:<name>`, `robot:<name>` or `anonymous:`…, as given when added.
    #[schema(example = "user:alice")]
    subject: String,
    /// A repository name or glob.
    #[schema(example = "team/*")]
    pattern: String,
    #[schema(example = "push")]
    role: String,
    created_by: String,
    created_ms: i64,
}

impl From<&GrantRecord> for Grant {
    fn from(g: &GrantRecord) -> Self {
        Grant {
            id: g.id,
            subject: format!("{}:{}", g.subject_kind.as_str(), g.subject),
            pattern: g.pattern.clone(),
            role: g.role.clone(),
            created_by: g.created_by.clone(),
            created_ms: g.created_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct AuditLog {
    /// Newest first.
    entries: Vec<AuditEvent>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AuditEvent {
    id: i64,
    at_ms: i64,
    actor: String,
    action: String,
    target: String,
    detail: Option<String>,
}

impl From<&AuditEntry> for AuditEvent {
    fn from(e: &AuditEntry) -> Self {
        AuditEvent {
            id: e.id,
            at_ms: e.at_ms,
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: e.detail.clone(),
        }
    }
}

pub(super) fn created(body: impl Serialize) -> AdminResult {
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The path's parameters, with a JSON `INVALID_REQUEST` instead of axum's
/// plain-text rejection (a segment that is not UTF-8 text, for instance).
pub(super) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("path: {}", e.body_text())))
}

/// A JSON request body of type `T`. Unlike axum's `Json`, a body that cannot
/// be read or parsed is a JSON `INVALID_REQUEST` rather than plain text, and
/// no `Content-Type` is required (the API has always taken bodies without).
pub(super) struct JsonBody<T>(pub(super) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(ErrorCode::InvalidRequest, format!("request body: {}", e.body_text())).with_status(e.status())
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("request body: {e}")))
    }
}

#[utoipa::path(get, path = "/users", tag = "users",
    responses((status = 200, description = "Every local user", body = UserList), CommonErrors))]
async fn list_users(State(app): State<Arc<App>>, _: Admin) -> AdminResult {
    let users = app.auth.accounts().list_users().await?;
    Ok(Json(UserList {
        users: users.iter().map(User::from).collect(),
    })
    .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    /// 1 to 128 letters, digits, `.`, `_`, `@` or `-` (see `auth::manage`).
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,128}$")]
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CreatedUser {
    name: String,
    admin: bool,
}

#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUser,
    responses((status = 201, description = "Created", body = CreatedUser), Conflict, CommonErrors))]
async fn create_user(
    State(app): State<Arc<App>>,
    Admin(actor): Admin,
    JsonBody(user): JsonBody<NewUser>,
) -> AdminResult {
    app.auth
        .accounts()
        .create_user(&user.name, &user.password, user.admin, &actor)
        .await?;
    created(CreatedUser {
        name: user.name,
        admin: user.admin,
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPassword {
    password: String,
}

#[utoipa::path(put, path = "/users/{name}/password", tag = "users", request_body = NewPassword,
    params(("name" = String, Path, description = "The user's name", pattern = r"^[A-Za-z0-9._@-]{1,128}$")),
    responses((status = 204, description = "Changed"), NotFound, CommonErrors))]
async fn set_password(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
    JsonBody(change): JsonBody<NewPassword>,
) -> AdminResult {
    let name = path(name)?;
    app.auth
        .accounts()
        .set_password(&name, &change.password, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A disabled user cannot log in until enabled again.
#[utoipa::path(post, path = "/users/{name}/disable", tag = "users",
    params(("name" = String, Path, description = "The user's name", pattern = r"^[A-Za-z0-9._@-]{1,128}$")),
    responses((status = 204, description = "Disabled"), NotFound, CommonErrors))]
async fn disable_user(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
) -> AdminResult {
    let name = path(name)?;
    app.auth.accounts().set_disabled(&name, true, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/users/{name}/enable", tag = "users",
    params(("name" = String, Path, description = "The user's name", pattern = r"^[A-Za-z0-9._@-]{1,128}$")),
    responses((status = 204, description = "Enabled"), NotFound, CommonErrors))]
async fn enable_user(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
) -> AdminResult {
    let name = path(name)?;
    app.auth.accounts().set_disabled(&name, false, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses((status = 200, description = "Every robot token, revoked ones too", body = RobotTokenList), CommonErrors))]
async fn list_tokens(State(app): State<Arc<App>>, _: Admin) -> AdminResult {
    let robots = app.auth.accounts().list_robots().await?;
    Ok(Json(RobotTokenList {
        tokens: robots.iter().map(RobotToken::from).collect(),
    })
    .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRobotToken {
    /// As a user's name.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,128}$")]
    name: String,
    /// `<pattern>:<role>` each, such as `ci/*:push`.
    #[schema(example = json!(["ci/*:push"]))]
    grants: Vec<String>,
    /// A duration such as `90d`; none for a token that does not expire.
    #[serde(default)]
    #[schema(example = "90d")]
    expires: Option<String>,
}

/// The new token: shown only here, once.
#[derive(Serialize, ToSchema)]
pub(super) struct CreatedRobotToken {
    name: String,
    token: String,
}

#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = NewRobotToken,
    responses((status = 201, description = "Created", body = CreatedRobotToken), Conflict, CommonErrors))]
async fn create_token(
    State(app): State<Arc<App>>,
    Admin(actor): Admin,
    JsonBody(new): JsonBody<NewRobotToken>,
) -> AdminResult {
    let token = app
        .auth
        .accounts()
        .create_token(&new.name, &new.grants, new.expires.as_deref(), &actor)
        .await?;
    created(CreatedRobotToken { name: new.name, token })
}

#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "The robot token's name", pattern = r"^[A-Za-z0-9._@-]{1,128}$")),
    responses((status = 204, description = "Revoked"), NotFound, CommonErrors))]
async fn revoke_token(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
) -> AdminResult {
    let name = path(name)?;
    app.auth.accounts().revoke_token(&name, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/grants", tag = "grants",
    responses((status = 200, description = "Every grant", body = GrantList), CommonErrors))]
async fn list_grants(State(app): State<Arc<App>>, _: Admin) -> AdminResult {
    let grants = app.auth.accounts().list_grants().await?;
    Ok(Json(GrantList {
        grants: grants.iter().map(Grant::from).collect(),
    })
    .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewGrant {
    #[schema(example = "user:alice")]
    subject: String,
    #[schema(example = "team/*")]
    pattern: String,
    #[schema(example = "push")]
    role: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CreatedGrant {
    id: i64,
    subject: String,
    pattern: String,
    role: String,
}

#[utoipa::path(post, path = "/grants", tag = "grants", request_body = NewGrant,
    responses((status = 201, description = "Added", body = CreatedGrant), NotFound, Conflict, CommonErrors))]
async fn add_grant(State(app): State<Arc<App>>, Admin(actor): Admin, JsonBody(g): JsonBody<NewGrant>) -> AdminResult {
    let id = app
        .auth
        .accounts()
        .add_grant(&g.subject, &g.pattern, &g.role, &actor)
        .await?;
    created(CreatedGrant {
        id,
        subject: g.subject,
        pattern: g.pattern,
        role: g.role,
    })
}

#[utoipa::path(delete, path = "/grants/{id}", tag = "grants",
    params(("id" = i64, Path, description = "The grant's id")),
    responses((status = 204, description = "Removed"), NotFound, CommonErrors))]
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

/// Numbers are read as text so that a bad one is named in the error.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// How many entries, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// Only entries with a smaller id: the last id of the previous page.
    #[param(value_type = Option<i64>)]
    before: Option<String>,
}

#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "A page of the audit log", body = AuditLog), CommonErrors))]
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
    Ok(Json(AuditLog {
        entries: entries.iter().map(AuditEvent::from).collect(),
    })
    .into_response())
}
