//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use berth_oci::headers::ByteRange;
use berth_oci::{Digest, RepoName};

use super::{empty, set_header, ApiResult, CONTENT_DIGEST};
use crate::registry::Registry;

pub async fn get_blob(registry: &Registry, repo: RepoName, digest: Digest, head: bool, req: Request) -> ApiResult {
    let mut headers = HeaderMap::new();
    set_header(&mut headers, CONTENT_DIGEST, &digest.to_string());
    set_header(&mut headers, header::ETAG, &format!("\"{digest}\""));
    set_header(&mut headers, header::ACCEPT_RANGES, "bytes");
    set_header(&mut headers, header::CONTENT_TYPE, "application/octet-stream");
    if head {
        let size = registry.stat_blob(&repo, &digest).await?;
        set_header(&mut headers, header::CONTENT_LENGTH, &size.to_string());
        return Ok(empty(StatusCode::OK, headers));
    }
    if let Some(url) = registry.blob_download_url(&repo, &digest).await? {
        // The client repeats the request, Range included, at the store.
        set_header(&mut headers, header::LOCATION, &url);
        set_header(&mut headers, header::CONTENT_LENGTH, "0");
        return Ok(empty(StatusCode::TEMPORARY_REDIRECT, headers));
    }
    // HTTP: a Range header that is not one well-formed byte range is ignored.
    let wanted = super::header_str(req.headers(), "range").and_then(ByteRange::parse);
    let blob = registry.open_blob(&repo, &digest, wanted).await?;
    let status = match &blob.range {
        Some(r) => {
            set_header(&mut headers, header::CONTENT_LENGTH, &(r.end - r.start).to_string());
            let range = format!("bytes {}-{}/{}", r.start, r.end - 1, blob.size);
            set_header(&mut headers, header::CONTENT_RANGE, &range);
            StatusCode::PARTIAL_CONTENT
        }
        None => {
            set_header(&mut headers, header::CONTENT_LENGTH, &blob.size.to_string());
            StatusCode::OK
        }
    };
    let mut response = Response::new(Body::from_stream(blob.body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

pub async fn delete_blob(registry: &Registry, repo: RepoName, digest: Digest) -> ApiResult {
    registry.delete_blob(&repo, &digest).await?;
    let mut headers = HeaderMap::new();
    set_header(&mut headers, CONTENT_DIGEST, &digest.to_string());
    set_header(&mut headers, header::CONTENT_LENGTH, "0");
    Ok(empty(StatusCode::ACCEPTED, headers))
}
