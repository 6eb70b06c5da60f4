//! `GET /v2/_catalog`, `GET /v2/<name>/tags/list` and
//! `GET /v2/<name>/referrers/<digest>`.

use std::collections::HashMap;

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use berth_oci::{media_type, Digest, ErrorCode, RepoName};
use serde_json::json;

use super::{query_of, set_header, ApiError, ApiResult, OCI_FILTERS_APPLIED};
use crate::auth::access::Access;
use crate::registry::{ManifestPage, Registry};

#[derive(serde::Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

#[derive(serde::Serialize)]
struct Catalog<'a> {
    repositories: &'a [String],
}

/// Largest page a client may ask for; bigger `n` is capped (with a `Link` to the rest).
const MAX_PAGE: u32 = 10_000;
/// Catalog page size when the client gives no `n`.
const DEFAULT_CATALOG_PAGE: u32 = 1_000;
/// Referrers page size when the client gives no `n`: a subject with more
/// gets a `Link` to the rest (and a page also ends at about 1 MiB of
/// descriptors: the registry's `REFERRERS_PAGE_BYTES`).
const DEFAULT_REFERRERS_PAGE: u32 = 1_000;

/// `n` from the query: `None` when absent, capped at [`MAX_PAGE`].
fn page_size(query: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    match query.get("n") {
        None => Ok(None),
        Some(n) => n.parse::<u32>().map(|n| Some(n.min(MAX_PAGE))).map_err(|_| {
            ApiError::new(
                ErrorCode::PaginationNumberInvalid,
                format!("n={n:?} is not a non-negative integer"),
            )
        }),
    }
}

/// The RFC 5988 `Link` header to the page after `page`.
fn next_link(headers: &mut HeaderMap, path: &str, n: u32, page: &ManifestPage) {
    if let (true, Some(last)) = (page.more, page.items.last()) {
        let last: String = url_encode(last);
        set_header(
            headers,
            header::LINK,
            &format!("<{path}?n={n}&last={last}>; rel=\"next\""),
        );
    }
}

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub async fn list_tags(registry: &Registry, repo: RepoName, req: Request) -> ApiResult {
    let query = query_of(&req);
    // distribution-spec: without n, every tag is listed.
    let n = page_size(&query)?;
    let limit = n.unwrap_or(u32::MAX - 1);
    let page = registry
        .list_tags(&repo, query.get("last").map(String::as_str), limit)
        .await?;
    let mut headers = HeaderMap::new();
    next_link(&mut headers, &format!("/v2/{repo}/tags/list"), limit, &page);
    Ok((
        StatusCode::OK,
        headers,
        axum::Json(TagList {
            name: repo.as_str(),
            tags: &page.items,
        }),
    )
        .into_response())
}

/// `tags/list` of a repository whose tags were gathered elsewhere (from an
/// upstream, from the members of a virtual repository): `tags` sorted and
/// without duplicates, paginated as the registry's own are.
pub fn list_gathered_tags(name: &RepoName, tags: Vec<String>, req: &Request) -> ApiResult {
    let query = query_of(req);
    let n = page_size(&query)?;
    let limit = n.unwrap_or(u32::MAX - 1);
    let after: Vec<String> = match query.get("last") {
        Some(last) => tags.into_iter().filter(|t| t.as_bytes() > last.as_bytes()).collect(),
        None => tags,
    };
    let more = after.len() > limit as usize;
    let items: Vec<String> = after.into_iter().take(limit as usize).collect();
    let page = ManifestPage { items, more };
    let mut headers = HeaderMap::new();
    next_link(&mut headers, &format!("/v2/{name}/tags/list"), limit, &page);
    Ok((
        StatusCode::OK,
        headers,
        axum::Json(TagList {
            name: name.as_str(),
            tags: &page.items,
        }),
    )
        .into_response())
}

pub async fn list_repositories(registry: &Registry, req: Request, access: &Access) -> ApiResult {
    let query = query_of(&req);
    let n = page_size(&query)?.unwrap_or(DEFAULT_CATALOG_PAGE);
    let last = query.get("last").map(String::as_str);
    let page = if access.sees_everything() {
        registry.list_repositories(last, n).await?
    } else {
        registry.list_repositories_where(last, n, access.may_list()).await?
    };
    let mut headers = HeaderMap::new();
    next_link(&mut headers, "/v2/_catalog", n, &page);
    Ok((
        StatusCode::OK,
        headers,
        axum::Json(Catalog {
            repositories: &page.items,
        }),
    )
        .into_response())
}

pub async fn list_referrers(registry: &Registry, repo: RepoName, subject: Digest, req: Request) -> ApiResult {
    list_referrers_with(registry, repo, subject, req, Vec::new()).await
}

/// The referrers list of `subject` with `extra` referrers that the store
/// does not list by subject (a pull-through cache's tag-schema
/// signatures): they go on the first page.
pub async fn list_referrers_with(
    registry: &Registry,
    repo: RepoName,
    subject: Digest,
    req: Request,
    extra: Vec<berth_meta::Referrer>,
) -> ApiResult {
    let query = query_of(&req);
    let filter = query.get("artifactType").filter(|t| !t.is_empty());
    // The spec leaves the page size to the registry; `n` and `last` work as
    // for tags, `last` being the digest the previous page ended with.
    let n = page_size(&query)?.unwrap_or(DEFAULT_REFERRERS_PAGE);
    let after = match query.get("last").filter(|l| !l.is_empty()) {
        None => None,
        Some(last) => Some(last.parse::<Digest>().map_err(|e| {
            ApiError::new(
                ErrorCode::DigestInvalid,
                format!("last={last:?} is not the digest a previous page ended with: {e}"),
            )
        })?),
    };
    let page = registry
        .referrers(&repo, &subject, filter.map(String::as_str), after.as_ref(), n)
        .await?;
    let listed: std::collections::HashSet<Digest> = page.referrers.iter().map(|r| r.digest.clone()).collect();
    let extra = extra.into_iter().filter(|r| {
        after.is_none()
            && filter.is_none_or(|t| r.artifact_type.as_deref() == Some(t.as_str()))
            && !listed.contains(&r.digest)
    });
    let manifests: Vec<serde_json::Value> = page
        .referrers
        .into_iter()
        .chain(extra)
        .map(|r| {
            let mut d = json!({
                "mediaType": r.media_type,
                "digest": r.digest.to_string(),
                "size": r.size,
            });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = json!(t);
            }
            if let Some(a) = r
                .annotations_json
                .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let mut headers = HeaderMap::new();
    set_header(&mut headers, header::CONTENT_TYPE, media_type::OCI_INDEX);
    if filter.is_some() {
        set_header(&mut headers, OCI_FILTERS_APPLIED, "artifactType");
    }
    // distribution-spec: when the descriptors do not fit one answer, a Link
    // with rel="next"; each page is an image index of its own. The filter
    // goes along, so every page is filtered.
    if let Some(last) = page.next {
        let filter = filter
            .map(|t| format!("&artifactType={}", url_encode(t)))
            .unwrap_or_default();
        set_header(
            &mut headers,
            header::LINK,
            &format!(
                "</v2/{repo}/referrers/{subject}?n={n}&last={}{filter}>; rel=\"next\"",
                url_encode(&last.to_string())
            ),
        );
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    let body = serde_json::to_vec(&index).map_err(|e| ApiError::new(ErrorCode::Unknown, e.to_string()))?;
    Ok((StatusCode::OK, headers, body).into_response())
}
