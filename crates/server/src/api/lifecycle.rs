//! Lifecycle over HTTP: retention policies, preview and run, and garbage
//! collection under the admin API (`/api/v1/`), and the image inventory at
//! `GET /v1/images` for anyone, showing only what they may pull.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use berth_oci::{Digest, ErrorCode, RepoName, Tag};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{Admin, JsonBody};
use super::auth::catalog_challenge;
use super::credentials::{basic_credentials, bearer};
use super::openapi::{CommonErrors, NotFound};
use super::query::Params;
use super::ApiError;
use crate::app::App;
use crate::auth::access::Action;
use crate::clock::rfc3339;
use crate::config::{AuthMode, Rules};
use crate::lifecycle::gc::GcReport;
use crate::lifecycle::inventory::{Cursor, InventoryImage, InventoryQuery};
use crate::lifecycle::plan::Entry;
use crate::lifecycle::{LifecycleError, RunSummary, Scope};
use crate::pattern::Pattern;

type ApiResult = Result<Response, ApiError>;

/// The admin routes, each registered with its documentation (see
/// [`super::openapi`]).
pub fn admin_router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list_policies, set_policy, delete_policy))
        .routes(routes!(preview))
        .routes(routes!(preview_draft))
        .routes(routes!(run))
        .routes(routes!(collect_garbage, last_collection))
}

/// `GET /v1/images`, outside `/api/v1` (it is not for administrators only).
pub fn inventory_router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(inventory))
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Invalid(message) => ApiError::new(ErrorCode::InvalidRequest, message),
            LifecycleError::Meta(inner) => ApiError::meta(&inner),
            other => ApiError::internal(&other),
        }
    }
}

fn pattern_param(text: Option<&str>) -> Result<Option<Pattern>, ApiError> {
    text.map(Pattern::parse)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e))
}

/// Unix milliseconds as RFC 3339 text, as the API's times are written.
pub(super) fn time_text(ms: i64) -> String {
    rfc3339(u64::try_from(ms / 1000).unwrap_or(0))
}

#[derive(Serialize, ToSchema)]
pub(super) struct PolicyList {
    policies: Vec<StoredPolicy>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct StoredPolicy {
    pattern: String,
    /// The rules as stored (written from [`Rules`], so of that shape).
    #[schema(value_type = Rules)]
    rules: serde_json::Value,
    /// `api` or `config`.
    source: String,
    updated_by: String,
    /// RFC 3339.
    updated_at: String,
}

#[utoipa::path(get, path = "/retention/policies", tag = "retention",
    responses((status = 200, description = "The retention policies", body = PolicyList), CommonErrors))]
async fn list_policies(State(app): State<Arc<App>>, _: Admin) -> ApiResult {
    let records = app.lifecycle.stored_policies().await?;
    let policies = records
        .iter()
        .map(|p| StoredPolicy {
            pattern: p.pattern.clone(),
            rules: serde_json::from_str(&p.rules_json).unwrap_or_default(),
            source: p.source.clone(),
            updated_by: p.updated_by.clone(),
            updated_at: time_text(p.updated_ms),
        })
        .collect();
    Ok(Json(PolicyList { policies }).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPolicy {
    /// A repository name or glob.
    #[schema(example = "team/*")]
    pattern: String,
    rules: Rules,
}

/// Sets the policy of a pattern, replacing the one it had.
#[utoipa::path(put, path = "/retention/policies", tag = "retention", request_body = NewPolicy,
    responses((status = 204, description = "Set"), CommonErrors))]
async fn set_policy(
    State(app): State<Arc<App>>,
    Admin(actor): Admin,
    JsonBody(policy): JsonBody<NewPolicy>,
) -> ApiResult {
    app.lifecycle.set_policy(&policy.pattern, policy.rules, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PatternQuery {
    /// The pattern of the policy to delete.
    pattern: String,
}

#[utoipa::path(delete, path = "/retention/policies", tag = "retention", params(PatternQuery),
    responses((status = 204, description = "Deleted"), NotFound, CommonErrors))]
async fn delete_policy(State(app): State<Arc<App>>, Admin(actor): Admin, Params(q): Params<PatternQuery>) -> ApiResult {
    if app.lifecycle.delete_policy(&q.pattern, &actor).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("there is no retention policy for {}", q.pattern),
        ))
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RunQuery {
    /// Only repositories matching this name or glob.
    repo: Option<String>,
    /// Preview only: list what would be deleted, not what is kept.
    #[serde(default)]
    deleted_only: bool,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Preview {
    summary: RunSummary,
    entries: Vec<Entry>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct RunReport {
    summary: RunSummary,
}

/// What a retention run would do now, changing nothing.
#[utoipa::path(get, path = "/retention/preview", tag = "retention", params(RunQuery),
    responses((status = 200, description = "What a run would keep and delete", body = Preview), CommonErrors))]
async fn preview(State(app): State<Arc<App>>, _: Admin, Params(q): Params<RunQuery>) -> ApiResult {
    let filter = pattern_param(q.repo.as_deref())?;
    let mut entries = Vec::new();
    let summary = app
        .lifecycle
        .preview(filter.as_ref(), Scope::Retention, |plan| {
            entries.extend(plan.entries(q.deleted_only))
        })
        .await?;
    Ok(Json(Preview { summary, entries }).into_response())
}

/// What the retention policy `rules` for `pattern` would do to the
/// repositories the pattern matches, were it saved (the other policies as
/// they are): the web UI's policy editor previews its drafts with this.
#[utoipa::path(post, path = "/retention/draft", tag = "retention", request_body = NewPolicy,
    responses((status = 200, description = "What a run under the draft would keep and delete", body = Preview),
        CommonErrors))]
async fn preview_draft(State(app): State<Arc<App>>, _: Admin, JsonBody(draft): JsonBody<NewPolicy>) -> ApiResult {
    let mut entries = Vec::new();
    let summary = app
        .lifecycle
        .preview_draft(&draft.pattern, draft.rules, |plan| entries.extend(plan.entries(false)))
        .await?;
    Ok(Json(Preview { summary, entries }).into_response())
}

/// Applies the retention policies (and tag expiry) now.
#[utoipa::path(post, path = "/retention/run", tag = "retention", params(RunQuery),
    responses((status = 200, description = "What the run did", body = RunReport), CommonErrors))]
async fn run(State(app): State<Arc<App>>, Admin(actor): Admin, Params(q): Params<RunQuery>) -> ApiResult {
    let filter = pattern_param(q.repo.as_deref())?;
    let summary = app.lifecycle.run(filter.as_ref(), Scope::Retention, &actor).await?;
    Ok(Json(RunReport { summary }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct GcQuery {
    /// Count what would be removed, removing nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Collects garbage now: manifests and blobs nothing refers to.
#[utoipa::path(post, path = "/gc", tag = "gc", params(GcQuery),
    responses((status = 200, description = "What the collection removed", body = GcReport), CommonErrors))]

async fn collect_garbage(State(app): State<Arc<App>>, _: Admin, Params(q): Params<GcQuery>) -> ApiResult {
    let report = app
        .lifecycle
        .collect_garbage(q.dry_run, |line| tracing::info!("gc: {line}"))
        .await?;
    Ok(Json(report).into_response())
}

/// The last collection this replica ran.
#[derive(Serialize, ToSchema)]
pub(super) struct LastCollection {
    /// When it finished (RFC 3339); absent when none ran since the process started.
    finished_at: Option<String>,
    report: Option<GcReport>,
    /// Seconds between scheduled collections; 0 when only asked for.
    interval_secs: u64,
    grace_secs: u64,
}

/// The schedule and the last collection of this replica (each replica
/// answers for itself; the one leading the job runs the scheduled ones).
#[utoipa::path(get, path = "/gc", tag = "gc",
    responses((status = 200, description = "The schedule and the last collection", body = LastCollection), CommonErrors))]
async fn last_collection(State(app): State<Arc<App>>, _: Admin) -> ApiResult {
    let last = app.lifecycle.last_gc();
    Ok(Json(LastCollection {
        finished_at: last.as_ref().map(|(at, _)| time_text(*at)),
        report: last.map(|(_, report)| report),
        interval_secs: app.config.gc.interval_secs,
        grace_secs: app.config.gc.grace_secs,
    })
    .into_response())
}

/// Who may see which repositories in the inventory.
enum Reader {
    Everything,
    Pullable(Box<dyn Fn(&str) -> bool + Send + Sync>),
}

impl Reader {
    fn may_see(&self, repo: &str) -> bool {
        match self {
            Reader::Everything => true,
            Reader::Pullable(may) => may(repo),
        }
    }
}

/// The inventory's caller: a bearer token (with the catalog scope, or with
/// pull on the repositories shown) or Basic credentials.
async fn reader(app: &App, headers: &HeaderMap, peer: IpAddr) -> Result<Reader, ApiError> {
    let auth = &app.auth;
    if auth.mode == AuthMode::None {
        return Ok(Reader::Everything);
    }
    if let Some(token) = bearer(headers) {
        let Some(claims) = auth.verify(token) else {
            return Err(catalog_challenge(&app.auth, headers));
        };
        if claims.adm {
            return Ok(Reader::Everything);
        }
        let patterns: Vec<Pattern> = claims.cat.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
        return Ok(Reader::Pullable(Box::new(move |repo| {
            claims.allows(repo, Action::Pull.as_str()) || patterns.iter().any(|p| p.matches(repo))
        })));
    }
    if let Some((login, password)) = basic_credentials(headers)? {
        let identity = auth.login(peer, &login, &password).await?;
        if identity.permissions.admin {
            return Ok(Reader::Everything);
        }
        let perms = identity.permissions;
        return Ok(Reader::Pullable(Box::new(move |repo| {
            perms.allowed(repo).contains(Action::Pull)
        })));
    }
    // Anonymous pull grants still show their repositories.
    let perms = auth.anonymous().permissions;
    Ok(Reader::Pullable(Box::new(move |repo| {
        perms.allowed(repo).contains(Action::Pull)
    })))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct InventoryParams {
    /// A repository name or pattern.
    repository: Option<String>,
    /// `pushed`, `mirrored` or `snapshot`.
    provenance: Option<String>,
    /// RFC 3339 time or Unix seconds: only images whose lifecycle rule ends before it.
    expiring_before: Option<String>,
    /// Images per page, 1 to 1000 (default 100).
    n: Option<u32>,
    /// Where to resume: a `next_cursor` handed out before.
    cursor: Option<String>,
}

const INVENTORY_PAGE: u32 = 100;
const INVENTORY_MAX_PAGE: u32 = 1000;

/// A cursor as handed out: base64 of `repository \n item`, where an empty
/// item means "after the whole repository" (a row key is never empty).
fn encode_cursor(cursor: &Cursor) -> String {
    let text = match cursor {
        Cursor::Within { repo, item } => format!("{repo}\n{item}"),
        Cursor::After { repo } => format!("{repo}\n"),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// The position of a cursor, as [`encode_cursor`] writes it: a repository
/// name and a tag, an `@digest` or nothing; anything else was not handed out
/// here.
fn decode_cursor(text: &str) -> Result<Cursor, ApiError> {
    let invalid = || ApiError::new(ErrorCode::InvalidRequest, "cursor is not one this registry handed out");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (repo, item) = text.split_once('\n').ok_or_else(invalid)?;
    if repo.parse::<RepoName>().is_err() {
        return Err(invalid());
    }
    let repo = repo.to_string();
    Ok(match item {
        "" => Cursor::After { repo },
        item => {
            let item_ok = match item.strip_prefix('@') {
                Some(digest) => digest.parse::<Digest>().is_ok(),
                None => item.parse::<Tag>().is_ok(),
            };
            if !item_ok {
                return Err(invalid());
            }
            Cursor::Within {
                repo,
                item: item.to_string(),
            }
        }
    })
}

/// How a manifest can have arrived (`ManifestState::provenance`).
const PROVENANCES: [&str; 3] = ["pushed", "mirrored", "snapshot"];

fn parse_time_ms(text: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("expiring_before {text:?}: {e}; use RFC 3339 such as 2026-12-01T00:00:00Z, or Unix seconds"),
        )
    })?;
    Ok(time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0))
}

#[derive(Serialize, ToSchema)]
pub(super) struct ImagePage {
    images: Vec<Image>,
    /// The `cursor` of the next page; null at the end.
    next_cursor: Option<String>,
}

/// One image: a tag, or an untagged top-level manifest. Times are RFC 3339.
#[derive(Serialize, ToSchema)]
pub(super) struct Image {
    repository: String,
    /// Null for an untagged manifest.
    tag: Option<String>,
    digest: String,
    media_type: String,
    artifact_type: Option<String>,
    platforms: Vec<String>,
    total_size: Option<u64>,
    /// `pushed`, `mirrored` or `snapshot`.
    provenance: String,
    pushed_by: Option<String>,
    pushed_at: String,
    last_pulled_at: Option<String>,
    pull_count: u64,
    lifecycle: ImageLifecycle,
}

/// What a lifecycle run would now do with the image, and why.
#[derive(Serialize, ToSchema)]
pub(super) struct ImageLifecycle {
    rule: &'static str,
    action: KeepOrDelete,
    reason: String,
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum KeepOrDelete {
    Keep,
    Delete,
}

impl From<&InventoryImage> for Image {
    fn from(image: &InventoryImage) -> Self {
        let m = &image.manifest;
        let verdict = &image.lifecycle;
        Image {
            repository: image.repository.clone(),
            tag: image.tag.clone(),
            digest: m.digest.to_string(),
            media_type: m.media_type.clone(),
            artifact_type: m.artifact_type.clone(),
            platforms: m.platforms.clone(),
            total_size: m.total_size,
            provenance: m.provenance.clone(),
            pushed_by: m.pushed_by.clone(),
            pushed_at: time_text(image.pushed_ms),
            last_pulled_at: image.last_pulled_ms.map(time_text),
            pull_count: image.pull_count,
            lifecycle: ImageLifecycle {
                rule: verdict.rule,
                action: if verdict.keep {
                    KeepOrDelete::Keep
                } else {
                    KeepOrDelete::Delete
                },
                reason: verdict.reason.clone(),
                expires_at: verdict.expires_ms.map(time_text),
            },
        }
    }
}

/// `GET /v1/images`: every image the caller may pull, with provenance, use
/// and the lifecycle rule that applies, filtered and paginated by cursor. A
/// page may end before `n` images when its work bound is reached; its `Link`
/// then resumes where the work stopped.
#[utoipa::path(get, path = "/v1/images", tag = "images", params(InventoryParams),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of images", body = ImagePage,
            headers(("Link" = String, description = "The next page, `rel=\"next\"`, when there is one"))),
        CommonErrors))]
async fn inventory(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Params(q): Params<InventoryParams>,
) -> ApiResult {
    let reader = reader(&app, &headers, peer.ip()).await?;
    let limit = q.n.unwrap_or(INVENTORY_PAGE).clamp(1, INVENTORY_MAX_PAGE);
    let repositories = pattern_param(q.repository.as_deref())?;
    if let Some(p) = q.provenance.as_deref().filter(|p| !PROVENANCES.contains(p)) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("provenance {p:?}: use one of {}", PROVENANCES.join(", ")),
        ));
    }
    let may_see = |repo: &str| reader.may_see(repo);
    let page = app
        .lifecycle
        .inventory(&InventoryQuery {
            repositories: repositories.as_ref(),
            provenance: q.provenance.as_deref(),
            expiring_before_ms: q.expiring_before.as_deref().map(parse_time_ms).transpose()?,
            limit: limit as usize,
            cursor: q.cursor.as_deref().map(decode_cursor).transpose()?,
            may_see: &may_see,
        })
        .await?;
    let next = page.next.as_ref().map(encode_cursor);
    let mut response_headers = HeaderMap::new();
    if let Some(cursor) = &next {
        let mut link = format!("</v1/images?n={limit}&cursor={cursor}");
        for (key, value) in [
            ("repository", &q.repository),
            ("provenance", &q.provenance),
            ("expiring_before", &q.expiring_before),
        ] {
            if let Some(v) = value {
                link.push_str(&format!(
                    "&{key}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                ));
            }
        }
        link.push_str(">; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            response_headers.insert(header::LINK, v);
        }
    }
    let images = page.images.iter().map(Image::from).collect();
    Ok((
        StatusCode::OK,
        response_headers,
        Json(ImagePage {
            images,
            next_cursor: next,
        }),
    )
        .into_response())
}
