//! `POST /v2/<name>/blobs/uploads/` and the session endpoints
//! `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.

use std::io;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use berth_oci::headers::ChunkRange;
use berth_oci::{Digest, ErrorCode, RepoName, UploadId};
use berth_storage::ByteStream;
use futures::TryStreamExt;

use super::{
    content_length, empty, header_str, query_of, set_header, upload_range, ApiError, ApiResult, CONTENT_DIGEST,
    UPLOAD_UUID,
};
use crate::auth::access::Access;
use crate::auth::access::Action;
use crate::limits::Limiter;
use crate::registry::{MountOrUpload, Registry, RegistryError, UploadProgress};

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(io::Error::other))
}

/// The chunk's `Content-Range`, checked against its `Content-Length`.
fn checked_range(headers: &HeaderMap) -> Result<Option<ChunkRange>, ApiError> {
    Ok(ChunkRange::of_chunk(
        header_str(headers, "content-range"),
        content_length(headers),
    )?)
}

fn parse_digest(query: &std::collections::HashMap<String, String>) -> Result<Option<Digest>, ApiError> {
    query
        .get("digest")
        .map(|d| {
            d.parse::<Digest>()
                .map_err(|e| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
        })
        .transpose()
}

fn session_headers(repo: &RepoName, progress: &UploadProgress) -> HeaderMap {
    let mut headers = HeaderMap::new();
    set_header(
        &mut headers,
        header::LOCATION,
        &format!("/v2/{repo}/blobs/uploads/{}", progress.id),
    );
    set_header(&mut headers, header::RANGE, &upload_range(progress.offset));
    set_header(&mut headers, UPLOAD_UUID, progress.id.as_str());
    set_header(&mut headers, header::CONTENT_LENGTH, "0");
    headers
}

fn created(repo: &RepoName, digest: &Digest) -> ApiResult {
    let mut headers = HeaderMap::new();
    set_header(&mut headers, header::LOCATION, &format!("/v2/{repo}/blobs/{digest}"));
    set_header(&mut headers, CONTENT_DIGEST, &digest.to_string());
    set_header(&mut headers, header::CONTENT_LENGTH, "0");
    Ok(empty(StatusCode::CREATED, headers))
}

pub async fn start_upload(
    registry: &Registry,
    repo: RepoName,
    req: Request,
    access: &Access,
    limiter: &Limiter,
) -> ApiResult {
    let query = query_of(&req);
    let owner = access.subject();
    if let Some(mount) = query.get("mount") {
        // distribution-spec: a mount with invalid arguments falls back to an ordinary upload.
        let digest = mount.parse::<Digest>().ok();
        let from = match query.get("from") {
            None => Some(None),
            Some(f) => f.parse::<RepoName>().ok().map(Some),
        };
        let from = match (&digest, from) {
            (Some(digest), Some(from)) => mount_source(registry, access, digest, from).await?,
            _ => None,
        };
        // A mount may fall back to a session: it is counted like one.
        within_session_limit(registry, owner, limiter).await?;
        if let (Some(digest), Some(from)) = (digest, from) {
            return match registry
                .mount_or_start_upload(&repo, &digest, from.as_ref(), owner)
                .await?
            {
                MountOrUpload::Created(d) => created(&repo, &d),
                MountOrUpload::Session(p) => Ok(empty(StatusCode::ACCEPTED, session_headers(&repo, &p))),
            };
        }
        let progress = registry.start_upload(&repo, owner).await?;
        return Ok(empty(StatusCode::ACCEPTED, session_headers(&repo, &progress)));
    }
    if let Some(digest) = parse_digest(&query)? {
        let len = content_length(req.headers());
        let body = body_stream(req.into_body());
        let digest = registry.push_blob(&repo, &digest, body, len).await?;
        return created(&repo, &digest);
    }
    within_session_limit(registry, owner, limiter).await?;
    let progress = registry.start_upload(&repo, owner).await?;
    Ok(empty(StatusCode::ACCEPTED, session_headers(&repo, &progress)))
}

/// Refuses a new session to an identity that has `limits.uploads_per_identity` open.
async fn within_session_limit(registry: &Registry, owner: Option<&str>, limiter: &Limiter) -> Result<(), ApiError> {
    let Some(owner) = owner.filter(|_| limiter.uploads_per_identity > 0) else {
        return Ok(());
    };
    match limiter.uploads_refusal(registry.open_uploads_of(owner).await?) {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

/// Where a mount may take the blob from: `from` (or, without it, any
/// repository holding the blob) only when the caller may pull there.
/// `Some(None)` is an unrestricted mount; `None` means open a session instead.
async fn mount_source(
    registry: &Registry,
    access: &Access,
    digest: &Digest,
    from: Option<RepoName>,
) -> Result<Option<Option<RepoName>>, ApiError> {
    if access.sees_everything() {
        return Ok(Some(from));
    }
    if let Some(from) = from {
        return Ok(access.may(from.as_str(), Action::Pull).then_some(Some(from)));
    }
    let holders = registry.repositories_with_blob(digest).await?;
    Ok(holders
        .into_iter()
        .find(|r| access.may(r.as_str(), Action::Pull))
        .map(Some))
}

pub async fn get_upload(registry: &Registry, repo: RepoName, id: UploadId) -> ApiResult {
    let progress = registry.upload_progress(&repo, &id).await?;
    let mut headers = session_headers(&repo, &progress);
    headers.remove(header::CONTENT_LENGTH);
    Ok(empty(StatusCode::NO_CONTENT, headers))
}

/// A request's own error, unless the session it addresses does not exist:
/// then that is the answer (as distribution checks the session first). The
/// session is looked up only on this error path, so a well-formed request
/// costs no extra read.
async fn unless_unknown(registry: &Registry, repo: &RepoName, id: &UploadId, err: ApiError) -> ApiError {
    match registry.upload_progress(repo, id).await {
        Ok(_) => err,
        Err(unknown) => unknown.into(),
    }
}

pub async fn patch_upload(registry: &Registry, repo: RepoName, id: UploadId, req: Request) -> ApiResult {
    let range = match checked_range(req.headers()) {
        Ok(range) => range,
        Err(e) => return Err(unless_unknown(registry, &repo, &id, e).await),
    };
    let body = body_stream(req.into_body());
    let progress = registry
        .append_upload(&repo, &id, range, body)
        .await
        .map_err(|e| with_session(e, &repo, &id))?;
    Ok(empty(StatusCode::ACCEPTED, session_headers(&repo, &progress)))
}

/// distribution-spec: a 416 for a misplaced chunk also says where the session is,
/// so the client can resume from `Range` at `Location`; so does the 416 for a
/// chunk sent while another request writes to the session.
fn with_session(err: RegistryError, repo: &RepoName, id: &UploadId) -> ApiError {
    let resumable = matches!(
        err,
        RegistryError::ChunkOutOfOrder { .. } | RegistryError::UploadBusy { .. }
    );
    let api = ApiError::from(err);
    if resumable {
        api.with_header(header::LOCATION, format!("/v2/{repo}/blobs/uploads/{id}"))
            .with_header(UPLOAD_UUID, id.to_string())
    } else {
        api
    }
}

pub async fn finish_upload(registry: &Registry, repo: RepoName, id: UploadId, req: Request) -> ApiResult {
    let query = query_of(&req);
    let checked = parse_digest(&query)
        .and_then(|d| {
            d.ok_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "the final PUT of an upload needs ?digest="))
        })
        .and_then(|digest| Ok((digest, checked_range(req.headers())?)));
    let (digest, range) = match checked {
        Ok(checked) => checked,
        Err(e) => return Err(unless_unknown(registry, &repo, &id, e).await),
    };
    // The body itself knows whether it is empty (HTTP/2 needs no Content-Length).
    let has_body = !axum::body::HttpBody::is_end_stream(req.body());
    let last_chunk = has_body.then(|| body_stream(req.into_body()));
    let digest = registry
        .finish_upload(&repo, &id, &digest, range, last_chunk)
        .await
        .map_err(|e| with_session(e, &repo, &id))?;
    created(&repo, &digest)
}

pub async fn cancel_upload(registry: &Registry, repo: RepoName, id: UploadId) -> ApiResult {
    registry.cancel_upload(&repo, &id).await?;
    Ok(empty(StatusCode::NO_CONTENT, HeaderMap::new()))
}
