//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use berth_meta::StoredManifest;
use berth_oci::{ErrorCode, Reference, RepoName};

use super::{content_length, empty, header_str, set_header, ApiError, ApiResult, CONTENT_DIGEST, OCI_SUBJECT};
use crate::registry::{Registry, RegistryError};

pub async fn get_manifest(
    registry: &Registry,
    repo: RepoName,
    reference: Reference,
    head: bool,
    req: Request,
) -> ApiResult {
    let manifest = registry.get_manifest(&repo, &reference, &accepted(&req), !head).await?;
    Ok(manifest_answer(manifest, head))
}

/// [`get_manifest`] with the manifest read already (see [`Registry::serve_manifest`]).
pub fn serve_manifest(
    registry: &Registry,
    repo: &RepoName,
    reference: &Reference,
    manifest: StoredManifest,
    head: bool,
    req: &Request,
) -> ApiResult {
    let manifest = registry.serve_manifest(repo, reference, manifest, &accepted(req), !head)?;
    Ok(manifest_answer(manifest, head))
}

fn accepted(req: &Request) -> Vec<String> {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

fn manifest_answer(manifest: StoredManifest, head: bool) -> Response {
    let mut headers = HeaderMap::new();
    set_header(&mut headers, header::CONTENT_TYPE, &manifest.media_type);
    set_header(&mut headers, header::CONTENT_LENGTH, &manifest.body.len().to_string());
    set_header(&mut headers, CONTENT_DIGEST, &manifest.digest.to_string());
    set_header(&mut headers, header::ETAG, &format!("\"{}\"", manifest.digest));
    if head {
        return empty(StatusCode::OK, headers);
    }
    let mut response = Response::new(Body::from(manifest.body));
    *response.headers_mut() = headers;
    response
}

pub async fn put_manifest(
    registry: &Registry,
    repo: RepoName,
    reference: Reference,
    req: Request,
    pushed_by: Option<&str>,
) -> ApiResult {
    let limit = registry.manifest_limit();
    let too_large = || ApiError::from(RegistryError::ManifestTooLarge { limit });
    if content_length(req.headers()).is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let content_type = header_str(req.headers(), "content-type").map(str::to_owned);
    let body = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            too_large()
        } else {
            ApiError::new(ErrorCode::ManifestInvalid, format!("reading the manifest failed: {e}"))
        }
    })?;
    let pushed = registry
        .put_manifest(&repo, &reference, content_type.as_deref(), body.to_vec(), pushed_by)
        .await?;
    let mut headers = HeaderMap::new();
    set_header(
        &mut headers,
        header::LOCATION,
        &format!("/v2/{repo}/manifests/{}", pushed.digest),
    );
    set_header(&mut headers, CONTENT_DIGEST, &pushed.digest.to_string());
    set_header(&mut headers, header::CONTENT_LENGTH, "0");
    if let Some(subject) = &pushed.subject {
        set_header(&mut headers, OCI_SUBJECT, &subject.to_string());
    }
    Ok(empty(StatusCode::CREATED, headers))
}

pub async fn delete_manifest(registry: &Registry, repo: RepoName, reference: Reference) -> ApiResult {
    registry.delete_manifest(&repo, &reference).await?;
    let mut headers = HeaderMap::new();
    set_header(&mut headers, header::CONTENT_LENGTH, "0");
    Ok(empty(StatusCode::ACCEPTED, headers))
}
