//! Lifecycle over HTTP: retention policies, preview and run, and garbage
//! collection under the admin API (`/api/v1/`), and the image inventory at
//! `GET /v1/images` for anyone, showing only what they may pull.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use berth_oci::{Digest, ErrorCode, RepoName, Tag};
use serde::Deserialize;
use serde_json::json;

use super::admin::{parse_body, Admin};
use super::auth::catalog_challenge;
use super::credentials::{basic_credentials, bearer};
use super::query::Params;
use super::ApiError;
use crate::app::App;
use crate::auth::access::Action;
use crate::clock::rfc3339;
use crate::config::AuthMode;
use crate::lifecycle::inventory::{Cursor, InventoryImage, InventoryQuery};
use crate::lifecycle::{LifecycleError, Rules, Scope};
use crate::pattern::Pattern;

type ApiResult = Result<Response, ApiError>;

pub fn admin_router() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/retention/policies",
            get(list_policies).put(set_policy).delete(delete_policy),
        )
        .route("/retention/preview", get(preview))
        .route("/retention/run", post(run))
        .route("/gc", post(collect_garbage))
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

fn time_text(ms: i64) -> String {
    rfc3339(u64::try_from(ms / 1000).unwrap_or(0))
}

async fn list_policies(State(app): State<Arc<App>>, _: Admin) -> ApiResult {
    let records = app.lifecycle.stored_policies().await?;
    let policies: Vec<serde_json::Value> = records
        .iter()
        .map(|p| {
            json!({
                "pattern": p.pattern,
                "rules": serde_json::from_str::<serde_json::Value>(&p.rules_json).unwrap_or_default(),
                "source": p.source,
                "updated_by": p.updated_by,
                "updated_at": time_text(p.updated_ms),
            })
        })
        .collect();
    Ok(Json(json!({ "policies": policies })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    pattern: String,
    rules: Rules,
}

async fn set_policy(State(app): State<Arc<App>>, Admin(actor): Admin, body: axum::body::Bytes) -> ApiResult {
    let policy: PolicyBody = parse_body(&body)?;
    app.lifecycle.set_policy(&policy.pattern, policy.rules, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct PatternQuery {
    pattern: String,
}

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

#[derive(Deserialize)]
struct RunQuery {
    repo: Option<String>,
    #[serde(default)]
    deleted_only: bool,
}

async fn preview(State(app): State<Arc<App>>, _: Admin, Params(q): Params<RunQuery>) -> ApiResult {
    let filter = pattern_param(q.repo.as_deref())?;
    let mut entries = Vec::new();
    let summary = app
        .lifecycle
        .preview(filter.as_ref(), Scope::Retention, |plan| {
            entries.extend(plan.entries(q.deleted_only))
        })
        .await?;
    Ok(Json(json!({ "summary": summary, "entries": entries })).into_response())
}

async fn run(State(app): State<Arc<App>>, Admin(actor): Admin, Params(q): Params<RunQuery>) -> ApiResult {
    let filter = pattern_param(q.repo.as_deref())?;
    let summary = app.lifecycle.run(filter.as_ref(), Scope::Retention, &actor).await?;
    Ok(Json(json!({ "summary": summary })).into_response())
}

#[derive(Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn collect_garbage(State(app): State<Arc<App>>, _: Admin, Params(q): Params<GcQuery>) -> ApiResult {
    let report = app
        .lifecycle
        .collect_garbage(q.dry_run, |line| tracing::info!("gc: {line}"))
        .await?;
    Ok(Json(report).into_response())
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

#[derive(Deserialize)]
pub(super) struct InventoryParams {
    /// A repository name or pattern.
    repository: Option<String>,
    provenance: Option<String>,
    /// RFC 3339 time or Unix seconds: only images whose lifecycle rule ends before it.
    expiring_before: Option<String>,
    n: Option<u32>,
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

fn image_json(image: &InventoryImage) -> serde_json::Value {
    let m = &image.manifest;
    let verdict = &image.lifecycle;
    json!({
        "repository": image.repository,
        "tag": image.tag,
        "digest": m.digest.to_string(),
        "media_type": m.media_type,
        "artifact_type": m.artifact_type,
        "platforms": m.platforms,
        "total_size": m.total_size,
        "provenance": m.provenance,
        "pushed_by": m.pushed_by,
        "pushed_at": time_text(image.pushed_ms),
        "last_pulled_at": image.last_pulled_ms.map(time_text),
        "pull_count": image.pull_count,
        "lifecycle": {
            "rule": verdict.rule,
            "action": if verdict.keep { "keep" } else { "delete" },
            "reason": verdict.reason,
            "expires_at": verdict.expires_ms.map(time_text),
        },
    })
}

/// `GET /v1/images`: every image the caller may pull, with provenance, use
/// and the lifecycle rule that applies, filtered and paginated by cursor. A
/// page may end before `n` images when its work bound is reached; its `Link`
/// then resumes where the work stopped.
pub async fn inventory(
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
    let images: Vec<serde_json::Value> = page.images.iter().map(image_json).collect();
    Ok((
        StatusCode::OK,
        response_headers,
        Json(json!({ "images": images, "next_cursor": next })),
    )
        .into_response())
}
