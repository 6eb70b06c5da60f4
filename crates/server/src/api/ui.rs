//! The JSON API of what the web UI shows and does beyond the admin API:
//! browsing (repositories, tags with their lifecycle verdicts, pull counts
//! per day), stars and personal access tokens for whoever calls, and browser
//! sessions and registry totals for administrators. The UI's pages call the
//! same core functions (`crate::browse`, the accounts, the UI store).
//!
//! Callers are known as on `/v2/`: a bearer token from `/v2/token`, Basic
//! credentials, or nobody (anonymous pull grants apply). Browser sessions are
//! not accepted here, so no request of another site can use one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_meta::ui::{RepoSummary, SessionRecord, TagCursor, TagRow};
use berth_oci::{ErrorCode, RepoName, Tag};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{created, path, Admin, JsonBody, RobotToken};
use super::auth::catalog_challenge;
use super::credentials::{basic_credentials, bearer};
use super::lifecycle::time_text;
use super::openapi::{CommonErrors, Conflict, NotFound};
use super::query::Params;
use super::ApiError;
use crate::app::App;
use crate::auth::access::{Action, Permissions};
use crate::auth::token::AccessClaims;
use crate::browse::BrowseError;
use crate::config::AuthMode;
use crate::lifecycle::inventory::Verdict;
use crate::pattern::Pattern;

type ApiResult = Result<Response, ApiError>;

/// Days of pull counts a repository's answer carries.
const PULL_DAYS: i64 = 30;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// The routes for any caller, with their full paths.
pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list_repositories))
        .routes(routes!(repository, delete_repository))
        .routes(routes!(list_tags, delete_tag))
        .routes(routes!(starred))
        .routes(routes!(star, unstar))
        .routes(routes!(personal_tokens, create_personal_token))
        .routes(routes!(revoke_personal_token))
}

/// The administrators' routes, relative to `/api/v1`.
pub fn admin_router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .routes(routes!(end_sessions_of))
        .routes(routes!(registry_totals))
}

impl From<BrowseError> for ApiError {
    fn from(e: BrowseError) -> Self {
        match e {
            BrowseError::Meta(m) => ApiError::meta(&m),
            BrowseError::Lifecycle(l) => l.into(),
        }
    }
}

impl From<berth_meta::MetaError> for ApiError {
    fn from(e: berth_meta::MetaError) -> Self {
        ApiError::meta(&e)
    }
}

/// What the caller may do, as `/v2/` would allow it.
enum Rights {
    All,
    Token(Arc<AccessClaims>, Vec<Pattern>),
    Grants(Permissions),
}

/// Whoever calls: their subject (none when anonymous or when the registry is
/// open) and what they may do to which repository.
pub(super) struct Caller {
    subject: Option<String>,
    rights: Rights,
}

impl Caller {
    fn may(&self, repo: &str, action: Action) -> bool {
        match &self.rights {
            Rights::All => true,
            Rights::Token(claims, patterns) => {
                claims.adm
                    || claims.allows(repo, action.as_str())
                    || (action == Action::Pull && patterns.iter().any(|p| p.matches(repo)))
            }
            Rights::Grants(perms) => perms.admin || perms.allowed(repo).contains(action),
        }
    }

    /// The user stars and personal tokens belong to: signed in, and not a robot.
    fn user(&self) -> Result<&str, ApiError> {
        match self.subject.as_deref() {
            None => Err(ApiError::new(ErrorCode::Unauthorized, "sign in as a user for this")),
            Some(s) if s.starts_with("robot:") || s.starts_with("oidc:") => Err(ApiError::new(
                ErrorCode::Denied,
                "robot tokens and ID tokens have no stars or personal tokens",
            )),
            Some(s) => Ok(s),
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let auth = &app.auth;
        if auth.mode == AuthMode::None {
            return Ok(Caller {
                subject: None,
                rights: Rights::All,
            });
        }
        if let Some(token) = bearer(&parts.headers) {
            let claims = auth
                .verify(token)
                .ok_or_else(|| catalog_challenge(auth, &parts.headers))?;
            let patterns = claims.cat.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
            return Ok(Caller {
                subject: Some(claims.sub.clone()),
                rights: Rights::Token(claims, patterns),
            });
        }
        if let Some((login, password)) = basic_credentials(&parts.headers)? {
            let peer = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            let identity = auth.login(peer, &login, &password).await?;
            return Ok(Caller {
                subject: Some(identity.subject),
                rights: Rights::Grants(identity.permissions),
            });
        }
        Ok(Caller {
            subject: None,
            rights: Rights::Grants(auth.anonymous().permissions),
        })
    }
}

/// A caller with credentials (or any caller of an open registry);
/// extracting it refuses anonymous callers before the query is read.
pub(super) struct Credentialed(Caller);

impl FromRequestParts<Arc<App>> for Credentialed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        if caller.subject.is_none() && !matches!(caller.rights, Rights::All) {
            return Err(ApiError::new(ErrorCode::Unauthorized, "this needs credentials"));
        }
        Ok(Credentialed(caller))
    }
}

/// A caller who is a user (see [`Caller::user`]); extracting it refuses
/// anyone else before the body is read.
pub(super) struct SignedIn(Caller);

impl SignedIn {
    fn name(&self) -> &str {
        self.0.subject.as_deref().unwrap_or_default()
    }
}

impl FromRequestParts<Arc<App>> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        caller.user()?;
        Ok(SignedIn(caller))
    }
}

/// A repository as lists show it.
#[derive(Serialize, ToSchema)]
pub(super) struct Repository {
    #[schema(example = "team/app")]
    name: String,
    /// Tags, leaving out signatures, attestations, SBOMs (`sha256-…` tags and
    /// tags of manifests with a subject).
    tags: u64,
    last_pushed_at: Option<String>,
    pull_count: u64,
    last_pulled_at: Option<String>,
}

impl From<&RepoSummary> for Repository {
    fn from(r: &RepoSummary) -> Self {
        Repository {
            name: r.name.clone(),
            tags: r.tags,
            last_pushed_at: r.last_pushed_ms.map(time_text),
            pull_count: r.pull_count,
            last_pulled_at: r.last_pulled_ms.map(time_text),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct RepositoryList {
    repositories: Vec<Repository>,
    /// Pass as `after` for the next page; absent on the last.
    next_after: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only names containing this text (ASCII case-insensitive).
    q: Option<String>,
    /// Only names after this one.
    after: Option<String>,
    /// Repositories per page, 1 to 500 (default 50).
    n: Option<u32>,
}

fn printable(what: &str, text: Option<&str>) -> Result<(), ApiError> {
    match text {
        Some(t) => crate::text::printable(t, 512)
            .map(drop)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("{what} {e}"))),
        None => Ok(()),
    }
}

/// The repositories the caller may pull, in name order, searched by a part
/// of the name.
#[utoipa::path(get, path = "/api/v1/repositories", tag = "browse", params(ListParams),
    security((), ("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "A page of repositories", body = RepositoryList), CommonErrors))]
async fn list_repositories(State(app): State<Arc<App>>, caller: Caller, Params(p): Params<ListParams>) -> ApiResult {
    printable("q", p.q.as_deref())?;
    printable("after", p.after.as_deref())?;
    let limit = p.n.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let q = p.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let page = crate::browse::repositories(&app, q, p.after.as_deref(), limit, |name| {
        caller.may(name, Action::Pull)
    })
    .await?;
    Ok(Json(RepositoryList {
        repositories: page.repositories.iter().map(Repository::from).collect(),
        next_after: page.next_after,
    })
    .into_response())
}

/// The repository `name`, when the caller may pull it (else it is unknown, as on `/v2/`).
async fn visible(app: &App, caller: &Caller, name: &str) -> Result<(RepoName, RepoSummary), ApiError> {
    let unknown = || ApiError::new(ErrorCode::NameUnknown, "repository name not known to registry");
    let repo: RepoName = name.parse().map_err(|_| unknown())?;
    if !caller.may(repo.as_str(), Action::Pull) {
        return Err(unknown());
    }
    let summary = app.ui.repository_summary(repo.as_str()).await?.ok_or_else(unknown)?;
    Ok((repo, summary))
}

#[derive(Serialize, ToSchema)]
pub(super) struct DayPulls {
    #[schema(example = "2026-12-05")]
    day: String,
    pulls: u64,
}

#[derive(Serialize, ToSchema)]
pub(super) struct RepositoryDetail {
    #[serde(flatten)]
    repository: Repository,
    stars: u64,
    /// Whether the caller starred it.
    starred: bool,
    /// Pulls per day of the last 30 days (UTC), days without pulls left out.
    daily_pulls: Vec<DayPulls>,
}

/// A repository's summary, stars and pulls per day.
#[utoipa::path(get, path = "/api/v1/repositories/{*name}", tag = "browse",
    params(("name" = String, Path, description = "The repository name, slashes unescaped", example = "team/app")),
    security((), ("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "The repository", body = RepositoryDetail), NotFound, CommonErrors))]
async fn repository(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    caller: Caller,
) -> ApiResult {
    let (repo, summary) = visible(&app, &caller, &path(name)?).await?;
    let today = app.now_ms().div_euclid(86_400_000);
    let user = caller.user().ok();
    let ((starred, stars), days) = tokio::try_join!(
        app.ui.stars_of(user, repo.as_str()),
        app.ui.daily_pulls(repo.as_str(), today - PULL_DAYS + 1)
    )?;
    let daily_pulls = days
        .iter()
        .map(|d| DayPulls {
            day: time_text(d.day.saturating_mul(86_400_000)).chars().take(10).collect(),
            pulls: d.pulls,
        })
        .collect();
    Ok(Json(RepositoryDetail {
        repository: Repository::from(&summary),
        stars,
        starred,
        daily_pulls,
    })
    .into_response())
}

#[derive(Serialize, ToSchema)]
pub(super) struct RepositoryDeleted {
    manifests_deleted: u64,
}

/// Deletes every tag of the repository and the manifests they name (what is
/// left untagged goes with the next garbage collection). Needs delete on it.
#[utoipa::path(delete, path = "/api/v1/repositories/{*name}", tag = "browse",
    params(("name" = String, Path, description = "The repository name, slashes unescaped", example = "team/app")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Deleted", body = RepositoryDeleted), NotFound, CommonErrors))]
async fn delete_repository(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Credentialed(caller): Credentialed,
) -> ApiResult {
    let (repo, _) = visible(&app, &caller, &path(name)?).await?;
    if !caller.may(repo.as_str(), Action::Delete) {
        return Err(ApiError::new(
            ErrorCode::Denied,
            "deleting this repository needs the delete role on it",
        ));
    }
    let deleted = app.registry.delete_repository(&repo).await?;
    tracing::info!(repository = %repo, manifests = deleted, by = ?caller.subject, "repository deleted");
    Ok(Json(RepositoryDeleted {
        manifests_deleted: deleted as u64,
    })
    .into_response())
}

/// What the lifecycle would now do with a tag.
#[derive(Serialize, ToSchema)]
pub(super) struct Lifecycle {
    /// The deciding rule, such as `keep_last`, `ttl` or `none`.
    rule: String,
    /// `keep` or `delete`.
    action: &'static str,
    reason: String,
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TagInfo {
    name: String,
    digest: String,
    media_type: String,
    artifact_type: Option<String>,
    /// The manifest this one is about (signatures, attestations).
    subject: Option<String>,
    pushed_at: String,
    pushed_by: Option<String>,
    /// `pushed`, `mirrored` or `snapshot`.
    provenance: String,
    platforms: Vec<String>,
    total_size: Option<u64>,
    pull_count: u64,
    last_pulled_at: Option<String>,
    lifecycle: Option<Lifecycle>,
}

fn tag_info(t: &TagRow, verdict: Option<&Verdict>) -> TagInfo {
    TagInfo {
        name: t.name.clone(),
        digest: t.digest.to_string(),
        media_type: t.media_type.clone(),
        artifact_type: t.artifact_type.clone(),
        subject: t.subject.as_ref().map(|s| s.to_string()),
        pushed_at: time_text(t.pushed_ms),
        pushed_by: t.pushed_by.clone(),
        provenance: t.provenance.clone(),
        platforms: t.platforms.clone(),
        total_size: t.total_size,
        pull_count: t.pull_count,
        last_pulled_at: t.last_pulled_ms.map(time_text),
        lifecycle: verdict.map(|v| Lifecycle {
            rule: v.rule.to_string(),
            action: if v.keep { "keep" } else { "delete" },
            reason: v.reason.clone(),
            expires_at: v.expires_ms.map(time_text),
        }),
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct TagCursorInfo {
    after_ms: i64,
    after_tag: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TagList {
    /// Tags the repository has in all.
    total: u64,
    tags: Vec<TagInfo>,
    /// Pass as `after_ms` and `after_tag` for the next page; absent on the last.
    next: Option<TagCursorInfo>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TagParams {
    /// With `after_tag`: only tags pushed before this (Unix ms), or at it and named after `after_tag`.
    after_ms: Option<i64>,
    after_tag: Option<String>,
    /// Tags per page, 1 to 500 (default 50).
    n: Option<u32>,
}

/// A repository's tags, newest push first, with their manifests' facts and
/// what the lifecycle would do with each.
#[utoipa::path(get, path = "/api/v1/tags/{*name}", tag = "browse", params(
        ("name" = String, Path, description = "The repository name, slashes unescaped", example = "team/app"),
        TagParams),
    security((), ("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "A page of tags", body = TagList), NotFound, CommonErrors))]
async fn list_tags(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    caller: Caller,
    Params(p): Params<TagParams>,
) -> ApiResult {
    let (_, summary) = visible(&app, &caller, &path(name)?).await?;
    let cursor = match (p.after_ms, p.after_tag) {
        (Some(ms), Some(tag)) => {
            tag.parse::<Tag>()
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "after_tag is not a tag"))?;
            Some(TagCursor {
                pushed_ms: ms,
                name: tag,
            })
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "after_ms and after_tag go together",
            ))
        }
    };
    let limit = p.n.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let page = crate::browse::tags(&app, &summary, cursor.as_ref(), limit).await?;
    Ok(Json(TagList {
        total: page.total,
        tags: page
            .rows
            .iter()
            .map(|t| tag_info(t, page.verdicts.get(&t.name)))
            .collect(),
        next: page.next.map(|c| TagCursorInfo {
            after_ms: c.pushed_ms,
            after_tag: c.name,
        }),
    })
    .into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TagName {
    /// The tag to delete.
    #[param(example = "v1")]
    tag: String,
}

/// Deletes a tag (not its manifest), as `DELETE /v2/<name>/manifests/<tag>`
/// does. Needs delete on the repository.
#[utoipa::path(delete, path = "/api/v1/tags/{*name}", tag = "browse", params(
        ("name" = String, Path, description = "The repository name, slashes unescaped", example = "team/app"),
        TagName),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Deleted"), NotFound, CommonErrors))]
async fn delete_tag(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Credentialed(caller): Credentialed,
    Params(q): Params<TagName>,
) -> ApiResult {
    let (repo, _) = visible(&app, &caller, &path(name)?).await?;
    if !caller.may(repo.as_str(), Action::Delete) {
        return Err(ApiError::new(
            ErrorCode::Denied,
            "deleting a tag needs the delete role on the repository",
        ));
    }
    let tag: Tag = q
        .tag
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "tag is not a tag name"))?;
    app.registry
        .delete_manifest(&repo, &berth_oci::Reference::Tag(tag))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The caller's starred repositories (those they may still pull), by name.
#[utoipa::path(get, path = "/api/v1/stars", tag = "stars",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Starred repositories", body = RepositoryList), CommonErrors))]
async fn starred(State(app): State<Arc<App>>, user: SignedIn) -> ApiResult {
    let list = app.ui.starred(user.name()).await?;
    let caller = &user.0;
    Ok(Json(RepositoryList {
        repositories: list
            .iter()
            .filter(|r| caller.may(&r.name, Action::Pull))
            .map(Repository::from)
            .collect(),
        next_after: None,
    })
    .into_response())
}

/// Stars a repository for the caller (again is no change).
#[utoipa::path(put, path = "/api/v1/stars/{*name}", tag = "stars",
    params(("name" = String, Path, description = "The repository name, slashes unescaped", example = "team/app")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Starred"), NotFound, CommonErrors))]
async fn star(State(app): State<Arc<App>>, name: Result<Path<String>, PathRejection>, user: SignedIn) -> ApiResult {
    let (repo, _) = visible(&app, &user.0, &path(name)?).await?;
    app.ui.star(user.name(), repo.as_str(), app.now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Takes the caller's star away.
#[utoipa::path(delete, path = "/api/v1/stars/{*name}", tag = "stars",
    params(("name" = String, Path, description = "The repository name, slashes unescaped", example = "team/app")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Unstarred"), NotFound, CommonErrors))]
async fn unstar(State(app): State<Arc<App>>, name: Result<Path<String>, PathRejection>, user: SignedIn) -> ApiResult {
    let (repo, _) = visible(&app, &user.0, &path(name)?).await?;
    if app.ui.unstar(user.name(), repo.as_str()).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            "you have not starred this repository",
        ))
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokenList {
    tokens: Vec<RobotToken>,
}

/// The caller's personal access tokens (never the tokens themselves).
#[utoipa::path(get, path = "/api/v1/account/tokens", tag = "account",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "The caller's tokens", body = TokenList), CommonErrors))]
async fn personal_tokens(State(app): State<Arc<App>>, user: SignedIn) -> ApiResult {
    let tokens = app.auth.accounts().personal_tokens(user.name()).await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(RobotToken::from).collect(),
    })
    .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPersonalToken {
    /// The token is named `USER.LABEL`.
    #[schema(example = "laptop", pattern = r"^[A-Za-z0-9._@-]{1,128}$")]
    label: String,
    /// A lifetime such as `90d`; without it the token does not expire.
    #[schema(example = "90d")]
    expires: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CreatedPersonalToken {
    name: String,
    /// Shown only here, once: the password for `docker login` as the caller.
    token: String,
}

/// Creates a personal access token: it signs in as the caller, with what
/// they may do at each use.
#[utoipa::path(post, path = "/api/v1/account/tokens", tag = "account", request_body = NewPersonalToken,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 201, description = "Created", body = CreatedPersonalToken), Conflict, CommonErrors))]
async fn create_personal_token(
    State(app): State<Arc<App>>,
    user: SignedIn,
    JsonBody(new): JsonBody<NewPersonalToken>,
) -> ApiResult {
    let user = user.name();
    let token = app
        .auth
        .accounts()
        .create_personal_token(user, &new.label, new.expires.as_deref())
        .await?;
    created(CreatedPersonalToken {
        name: format!("{user}.{}", new.label),
        token,
    })
}

/// Revokes one of the caller's personal access tokens.
#[utoipa::path(delete, path = "/api/v1/account/tokens/{name}", tag = "account",
    params(("name" = String, Path, description = "The token's full name, `USER.LABEL`", pattern = r"^[A-Za-z0-9._@-]{1,128}$")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Revoked"), NotFound, CommonErrors))]
async fn revoke_personal_token(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    user: SignedIn,
) -> ApiResult {
    let name = path(name)?;
    app.auth.accounts().revoke_personal_token(user.name(), &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A browser session of the web UI (never its secret).
#[derive(Serialize, ToSchema)]
pub(super) struct Session {
    /// The SHA-256 of the session's secret, which names it here.
    id: String,
    subject: String,
    created_at: String,
    last_seen_at: String,
    expires_at: String,
    user_agent: String,
    addr: String,
}

impl From<&SessionRecord> for Session {
    fn from(s: &SessionRecord) -> Self {
        Session {
            id: s.id_hash.clone(),
            subject: s.subject.clone(),
            created_at: time_text(s.created_ms),
            last_seen_at: time_text(s.last_seen_ms),
            expires_at: time_text(s.expires_ms),
            user_agent: s.user_agent.clone(),
            addr: s.addr.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct SessionList {
    sessions: Vec<Session>,
}

/// The web UI's live browser sessions, latest use first.
#[utoipa::path(get, path = "/sessions", tag = "sessions",
    responses((status = 200, description = "Live sessions", body = SessionList), CommonErrors))]
async fn list_sessions(State(app): State<Arc<App>>, _: Admin) -> ApiResult {
    let sessions = app.ui.sessions(app.now_ms()).await?;
    Ok(Json(SessionList {
        sessions: sessions.iter().map(Session::from).collect(),
    })
    .into_response())
}

/// Ends one browser session.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session's id as listed")),
    responses((status = 204, description = "Ended"), NotFound, CommonErrors))]
async fn end_session(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
) -> ApiResult {
    let id = path(id)?;
    if app.ui.delete_session(&id).await? {
        tracing::info!(by = %actor, "a web UI session was ended");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(ErrorCode::NotFound, "no such session"))
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct SessionsEnded {
    ended: u64,
}

/// Ends every browser session of a user.
#[utoipa::path(delete, path = "/users/{name}/sessions", tag = "sessions",
    params(("name" = String, Path, description = "The user's name", pattern = r"^[A-Za-z0-9._@-]{1,128}$")),
    responses((status = 200, description = "How many sessions ended", body = SessionsEnded), CommonErrors))]
async fn end_sessions_of(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    Admin(actor): Admin,
) -> ApiResult {
    let name = path(name)?;
    printable("name", Some(&name))?;
    let ended = app.ui.delete_sessions_of(&name).await?;
    tracing::info!(by = %actor, user = %name, ended, "web UI sessions ended");
    Ok(Json(SessionsEnded { ended }).into_response())
}

#[derive(Serialize, ToSchema)]
pub(super) struct RegistryTotals {
    users: u64,
    repositories: u64,
    tags: u64,
    /// Bytes of all recorded blobs, each counted once.
    stored_bytes: u64,
}

/// The registry's totals, as the admin dashboard shows them.
#[utoipa::path(get, path = "/summary", tag = "browse",
    responses((status = 200, description = "Totals", body = RegistryTotals), CommonErrors))]
async fn registry_totals(State(app): State<Arc<App>>, _: Admin) -> ApiResult {
    let c = app.ui.registry_counts().await?;
    Ok(Json(RegistryTotals {
        users: c.users,
        repositories: c.repositories,
        tags: c.tags,
        stored_bytes: c.stored_bytes,
    })
    .into_response())
}
