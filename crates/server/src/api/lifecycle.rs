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
use berth_meta::lifecycle::{ManifestState, RepoState};
use berth_oci::{Digest, ErrorCode, RepoName, Tag};
use serde::Deserialize;
use serde_json::json;

use super::admin::{parse_body, Admin};
use super::auth::{basic_credentials, bearer, catalog_challenge};
use super::query::Params;
use super::ApiError;
use crate::app::App;
use crate::auth::access::{Action, Pattern};
use crate::auth::rfc3339;
use crate::config::AuthMode;
use crate::lifecycle::plan::TagDecision;
use crate::lifecycle::{LifecycleError, Policies, Rules, Scope};

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
    let records = app.lifecycle.store().policies().await.map_err(LifecycleError::from)?;
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
pub(super) struct InventoryQuery {
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

/// A position in the inventory: after this repository and item (a tag, or
/// `@digest` for an untagged image).
fn encode_cursor(repo: &str, item: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{repo}\n{item}"))
}

/// The position of a cursor: a repository name and a tag or `@digest`, as
/// [`encode_cursor`] writes them; anything else was not handed out here.
fn decode_cursor(text: &str) -> Result<(String, String), ApiError> {
    let invalid = || ApiError::new(ErrorCode::InvalidRequest, "cursor is not one this registry handed out");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (repo, item) = text.split_once('\n').ok_or_else(invalid)?;
    let item_ok = match item.strip_prefix('@') {
        Some(digest) => digest.parse::<Digest>().is_ok(),
        None => item.parse::<Tag>().is_ok(),
    };
    if repo.parse::<RepoName>().is_err() || !item_ok {
        return Err(invalid());
    }
    Ok((repo.to_string(), item.to_string()))
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

/// Where a row key sorts in a repository's listing: tags by name, then the
/// untagged `@digest` rows (a tag never starts with `@`).
fn row_order(key: &str) -> (bool, &str) {
    (key.starts_with('@'), key)
}

/// One image of the inventory.
struct Row<'a> {
    key: String,
    tag: Option<&'a TagDecision>,
    manifest: &'a ManifestState,
    lifecycle: serde_json::Value,
    expires_ms: Option<i64>,
}

fn image_json(repo: &str, row: &Row<'_>) -> serde_json::Value {
    let m = row.manifest;
    let (pushed_ms, last_pulled_ms, pull_count) = match row.tag {
        Some(t) => (t.tag.pushed_ms, t.tag.last_pulled_ms, t.tag.pull_count),
        None => (m.pushed_ms, m.last_pulled_ms, m.pull_count),
    };
    json!({
        "repository": repo,
        "tag": row.tag.map(|t| t.tag.name.clone()),
        "digest": m.digest.to_string(),
        "media_type": m.media_type,
        "artifact_type": m.artifact_type,
        "platforms": m.platforms,
        "total_size": m.total_size,
        "provenance": m.provenance,
        "pushed_by": m.pushed_by,
        "pushed_at": time_text(pushed_ms),
        "last_pulled_at": last_pulled_ms.map(time_text),
        "pull_count": pull_count,
        "lifecycle": row.lifecycle,
    })
}

/// The images of one repository in cursor order: tags by name, then untagged
/// top-level manifests as `@digest`.
fn rows<'a>(state: &'a RepoState, plan: &'a crate::lifecycle::RepoPlan) -> Vec<Row<'a>> {
    let by_digest: std::collections::HashMap<_, _> = state.manifests.iter().map(|m| (&m.digest, m)).collect();
    let mut rows: Vec<Row<'a>> = plan
        .tags
        .iter()
        .filter_map(|t| {
            let manifest = by_digest.get(&t.tag.digest)?;
            Some(Row {
                key: t.tag.name.clone(),
                tag: Some(t),
                manifest,
                lifecycle: json!({
                    "rule": t.rule,
                    "action": if t.keep { "keep" } else { "delete" },
                    "reason": t.reason,
                    "expires_at": t.expires_ms.map(time_text),
                }),
                expires_ms: t.expires_ms,
            })
        })
        .collect();
    let tagged: std::collections::HashSet<_> = state.tags.iter().map(|t| &t.digest).collect();
    let listed: std::collections::HashSet<_> = state.manifests.iter().flat_map(|m| m.children.iter()).collect();
    let going: std::collections::HashMap<_, _> = plan.manifests.iter().map(|m| (&m.digest, m)).collect();
    let mut untagged: Vec<Row<'a>> = state
        .manifests
        .iter()
        .filter(|m| !tagged.contains(&m.digest) && !listed.contains(&m.digest) && m.subject.is_none())
        .map(|m| {
            let lifecycle = match going.get(&m.digest) {
                Some(d) => json!({"rule": d.rule, "action": "delete", "reason": d.reason, "expires_at": null}),
                None => json!({"rule": "gc", "action": "keep",
                    "reason": "untagged: garbage collection removes it once the grace period has passed",
                    "expires_at": null}),
            };
            Row {
                key: format!("@{}", m.digest),
                tag: None,
                manifest: m,
                lifecycle,
                expires_ms: None,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    untagged.sort_by(|a, b| a.key.cmp(&b.key));
    rows.extend(untagged);
    rows
}

/// `GET /v1/images`: every image the caller may pull, with provenance, use
/// and the lifecycle rule that applies, filtered and paginated by cursor.
pub async fn inventory(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Params(q): Params<InventoryQuery>,
) -> ApiResult {
    let peer = peer.ip();
    let reader = reader(&app, &headers, peer).await?;
    let limit = q.n.unwrap_or(INVENTORY_PAGE).clamp(1, INVENTORY_MAX_PAGE) as usize;
    let repo_filter = pattern_param(q.repository.as_deref())?;
    let expiring_before = q.expiring_before.as_deref().map(parse_time_ms).transpose()?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    if let Some(p) = q.provenance.as_deref().filter(|p| !PROVENANCES.contains(p)) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("provenance {p:?}: use one of {}", PROVENANCES.join(", ")),
        ));
    }
    app.registry.flush_pulls().await?;
    let policies: Policies = app.lifecycle.policies().await?;
    // (repository, item key, image)
    let mut images: Vec<(String, String, serde_json::Value)> = Vec::new();
    let mut next: Option<String> = None;
    // Listing is exclusive of its start, so start just before the cursor's
    // repository and skip whatever sorts before it.
    let mut after_repo: Option<String> = cursor.as_ref().map(|(repo, _)| {
        let mut before = repo.clone();
        before.pop();
        before
    });
    'outer: loop {
        let names = app
            .registry
            .list_repositories_where(after_repo.as_deref(), 200, |name| {
                reader.may_see(name) && repo_filter.as_ref().is_none_or(|f| f.matches(name))
            })
            .await?;
        for repo in &names.items {
            let resume = match &cursor {
                Some((cursor_repo, _)) if repo < cursor_repo => continue,
                Some((cursor_repo, item)) if repo == cursor_repo => Some(item.as_str()),
                _ => None,
            };
            let Some(state) = app
                .lifecycle
                .store()
                .repository_state(repo)
                .await
                .map_err(LifecycleError::from)?
            else {
                continue;
            };
            let plan = crate::lifecycle::plan::plan(
                &state,
                crate::lifecycle::Settings {
                    now_ms: app.lifecycle.now_ms(),
                    suffix_rules: app.lifecycle.namespaces.suffix_rules(repo),
                    keep_latest: app.lifecycle.namespaces.keep_latest(repo),
                    policy: policies.for_repository(repo),
                },
            );
            for row in rows(&state, &plan) {
                if resume.is_some_and(|after| row_order(&row.key) <= row_order(after)) {
                    continue;
                }
                if q.provenance.as_ref().is_some_and(|p| *p != row.manifest.provenance) {
                    continue;
                }
                if expiring_before.is_some_and(|before| row.expires_ms.is_none_or(|e| e >= before)) {
                    continue;
                }
                if images.len() == limit {
                    next = images.last().map(|(r, k, _)| encode_cursor(r, k));
                    break 'outer;
                }
                images.push((repo.clone(), row.key.clone(), image_json(repo, &row)));
            }
        }
        if !names.more {
            break;
        }
        after_repo = names.items.last().cloned();
    }
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
    let images: Vec<serde_json::Value> = images.into_iter().map(|(_, _, v)| v).collect();
    Ok((
        StatusCode::OK,
        response_headers,
        Json(json!({ "images": images, "next_cursor": next })),
    )
        .into_response())
}
