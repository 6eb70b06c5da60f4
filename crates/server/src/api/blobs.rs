//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use std::ops::Range;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use berth_oci::headers::ByteRange;
use berth_oci::{Digest, RepoName};
use berth_storage::ByteStream;

use super::{empty, set_header, ApiResult, CONTENT_DIGEST};
use crate::registry::Registry;

pub async fn get_blob(registry: &Registry, repo: RepoName, digest: Digest, head: bool, req: Request) -> ApiResult {
    let mut headers = blob_headers(&digest);
    if head {
        let size = registry.stat_blob(&repo, &digest).await?;
        return Ok(blob_size(&digest, size));
    }
    if let Some(url) = registry.blob_download_url(&repo, &digest).await? {
        // The client repeats the request, Range included, at the store.
        set_header(&mut headers, header::LOCATION, &url);
        set_header(&mut headers, header::CONTENT_LENGTH, "0");
        return Ok(empty(StatusCode::TEMPORARY_REDIRECT, headers));
    }
    let blob = registry.open_blob(&repo, &digest, wanted_range(&req)).await?;
    Ok(blob_body(&digest, blob.size, blob.range, blob.body))
}

/// The range a `GET` asks for.
pub fn wanted_range(req: &Request) -> Option<ByteRange> {
    // HTTP: a Range header that is not one well-formed byte range is ignored.
    super::header_str(req.headers(), "range").and_then(ByteRange::parse)
}

fn blob_headers(digest: &Digest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    set_header(&mut headers, CONTENT_DIGEST, &digest.to_string());
    set_header(&mut headers, header::ETAG, &format!("\"{digest}\""));
    set_header(&mut headers, header::ACCEPT_RANGES, "bytes");
    set_header(&mut headers, header::CONTENT_TYPE, "application/octet-stream");
    headers
}

/// The answer to a `HEAD` of a blob of `size` bytes.
pub fn blob_size(digest: &Digest, size: u64) -> Response {
    let mut headers = blob_headers(digest);
    set_header(&mut headers, header::CONTENT_LENGTH, &size.to_string());
    empty(StatusCode::OK, headers)
}

/// The answer to a `GET` of a blob (or of the `range` of it) whose bytes
/// `body` streams.
pub fn blob_body(digest: &Digest, size: u64, range: Option<Range<u64>>, body: ByteStream) -> Response {
    let mut headers = blob_headers(digest);
    let status = match &range {
        Some(r) => {
            set_header(&mut headers, header::CONTENT_LENGTH, &(r.end - r.start).to_string());
            let range = format!("bytes {}-{}/{}", r.start, r.end - 1, size);
            set_header(&mut headers, header::CONTENT_RANGE, &range);
            StatusCode::PARTIAL_CONTENT
        }
        None => {
            set_header(&mut headers, header::CONTENT_LENGTH, &size.to_string());
            StatusCode::OK
        }
    };
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

pub async fn delete_blob(registry: &Registry, repo: RepoName, digest: Digest) -> ApiResult {
    registry.delete_blob(&repo, &digest).await?;
    let mut headers = HeaderMap::new();
    set_header(&mut headers, CONTENT_DIGEST, &digest.to_string());
    set_header(&mut headers, header::CONTENT_LENGTH, "0");
    Ok(empty(StatusCode::ACCEPTED, headers))
}
