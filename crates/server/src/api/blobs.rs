//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use berth_oci::{Digest, RepoName};

use super::{empty, set_header, ApiResult, CONTENT_DIGEST};
use crate::registry::{ByteRange, Registry};

/// Parses a `Range: bytes=…` header. Anything but one well-formed byte range
/// is ignored, as HTTP allows, and the whole blob is served.
fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return last.parse().ok().map(ByteRange::Suffix);
    }
    let first = first.parse().ok()?;
    let last = if last.is_empty() {
        None
    } else {
        Some(last.parse().ok()?)
    };
    Some(ByteRange::From { first, last })
}

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
    let wanted = super::header_str(req.headers(), "range").and_then(parse_range);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        assert_eq!(
            parse_range("bytes=0-9"),
            Some(ByteRange::From {
                first: 0,
                last: Some(9)
            })
        );
        assert_eq!(parse_range("bytes=5-"), Some(ByteRange::From { first: 5, last: None }));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range("bytes=0-1,4-5"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=a-b"), None);
        assert_eq!(parse_range("bytes=-"), None);
    }
}
