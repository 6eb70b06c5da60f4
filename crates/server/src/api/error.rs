//! The one place where errors become OCI error JSON.
//!
//! distribution-spec: `{"errors":[{"code","message","detail"}]}` with the
//! status of the code. Unexpected failures are logged once and answered as a
//! plain 500 without internals.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_meta::MetaError;
use berth_oci::headers::ChunkRangeError;
use berth_oci::{EndpointError, ErrorCode, NameError};
use berth_storage::StorageError;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::proxy::upstream::UpstreamError;
use crate::proxy::ProxyError;
use crate::registry::RegistryError;

/// An error answer of the `/v2/` API (boxed: it travels in every `Result` of
/// the handlers, and the error path is the rare one).
#[derive(Debug)]
pub struct ApiError(Box<ErrorAnswer>);

#[derive(Debug)]
struct ErrorAnswer {
    code: ErrorCode,
    message: String,
    detail: Option<serde_json::Value>,
    status: Option<StatusCode>,
    headers: HeaderMap,
}

impl ApiError {
    /// An error with the code's own status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(Box::new(ErrorAnswer {
            code,
            message: message.into(),
            detail: None,
            status: None,
            headers: HeaderMap::new(),
        }))
    }

    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    /// The same error answered with another status than the code's default.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = Some(status);
        self
    }

    /// Adds a `detail` object.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.0.detail = Some(detail);
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: String) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.0.headers.insert(name, v);
        }
        self
    }

    /// A 503 for a store that failed or could not be reached: clients retry
    /// it, and nothing was changed (each write is one transaction, and blob
    /// bytes become visible only when recorded).
    pub(super) fn unavailable(what: &str, err: &dyn std::error::Error) -> Self {
        tracing::error!(error = %err, "the {what} is unavailable");
        ApiError::new(
            ErrorCode::Unknown,
            format!("the registry's {what} is unavailable; retry later"),
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .with_header(header::RETRY_AFTER, "5".to_string())
    }

    /// The answer to a request by a reference, digest or session id that
    /// fits no grammar: `absent`, what the registry answers for something that
    /// does not exist, with why the parameter names nothing as its detail.
    pub(super) fn nameless(absent: RegistryError, cause: &EndpointError) -> Self {
        ApiError::from(absent).with_detail(json!({ "reason": cause.to_string() }))
    }

    /// The answer to a failure of the metadata store: a 503 when it could not
    /// be reached, a 400 when it refused a value of the request (a backstop:
    /// values are checked before they reach the store, see `crate::text`),
    /// else a 500.
    pub(super) fn meta(err: &MetaError) -> Self {
        if err.is_unavailable() {
            ApiError::unavailable("metadata database", err)
        } else if err.is_bad_input() {
            tracing::warn!(error = %err, "the metadata database refused a value of a request");
            ApiError::new(
                ErrorCode::InvalidRequest,
                "a value of this request cannot be stored or looked up",
            )
        } else {
            ApiError::internal(err)
        }
    }

    pub(super) fn internal(err: &dyn std::error::Error) -> Self {
        tracing::error!(error = %err, "internal error");
        ApiError::new(ErrorCode::Unknown, ErrorCode::Unknown.default_message())
    }
}

/// The body of every error answer, typed so that the OpenAPI document's
/// error schema is the one written here.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always exactly one error.
    errors: Vec<ErrorEntry>,
}

/// One error of [`ErrorBody`].
#[derive(Serialize, ToSchema)]
struct ErrorEntry {
    /// An OCI error code (`NAME_UNKNOWN`, `DENIED`, …) or one of Berth's
    /// (`INVALID_REQUEST`, `NOT_FOUND`, `CONFLICT`, …).
    #[schema(example = "INVALID_REQUEST")]
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let status = this
            .status
            .unwrap_or_else(|| StatusCode::from_u16(this.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        let body = ErrorBody {
            errors: vec![ErrorEntry {
                code: this.code.as_str(),
                message: this.message,
                detail: this.detail,
            }],
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().extend(this.headers);
        response
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        let message = e.to_string();
        match e {
            ProxyError::Registry(e) => e.into(),
            ProxyError::ReadOnlyRemote { .. } | ProxyError::MirrorOnly | ProxyError::VirtualReadOnly { .. } => {
                ApiError::new(ErrorCode::Denied, message)
            }
            // A preload's errors; no request meets them.
            ProxyError::NotRemote(_) => ApiError::new(ErrorCode::NameUnknown, message),
            ProxyError::NoSuchPlatform { .. } => ApiError::new(ErrorCode::ManifestUnknown, message),
            ProxyError::Upstream(upstream) => match upstream.as_ref() {
                UpstreamError::NotFound { .. } => ApiError::new(ErrorCode::ManifestUnknown, message),
                UpstreamError::Denied { .. } | UpstreamError::Invalid { .. } | UpstreamError::Unavailable { .. } => {
                    tracing::warn!(error = %message, "pull through an upstream failed");
                    ApiError::new(ErrorCode::Unknown, message).with_status(StatusCode::BAD_GATEWAY)
                }
            },
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use RegistryError as R;
        let message = e.to_string();
        match e {
            R::BlobUnknown => ApiError::new(ErrorCode::BlobUnknown, message),
            R::UploadUnknown => ApiError::new(ErrorCode::BlobUploadUnknown, message),
            R::UploadInvalid(_) => ApiError::new(ErrorCode::BlobUploadInvalid, message),
            R::ChunkOutOfOrder { current } | R::UploadBusy { current } => {
                ApiError::new(ErrorCode::RangeInvalid, message)
                    .with_header(HeaderName::from_static("range"), super::upload_range(current))
            }
            R::RangeNotSatisfiable { size } => ApiError::new(ErrorCode::RangeInvalid, message)
                .with_header(HeaderName::from_static("content-range"), format!("bytes */{size}")),
            R::DigestInvalid(_) => ApiError::new(ErrorCode::DigestInvalid, message),
            R::SizeInvalid(_) => ApiError::new(ErrorCode::SizeInvalid, message),
            R::ManifestInvalid(_) => ApiError::new(ErrorCode::ManifestInvalid, message),
            R::ManifestTooLarge { .. } => {
                ApiError::new(ErrorCode::SizeInvalid, message).with_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            R::ManifestUnknown | R::ManifestNotAcceptable { .. } => ApiError::new(ErrorCode::ManifestUnknown, message),
            R::ManifestBlobUnknown(ref d) => {
                let digest = d.to_string();
                ApiError::new(ErrorCode::ManifestBlobUnknown, message).with_detail(json!({ "digest": digest }))
            }
            R::NameUnknown => ApiError::new(ErrorCode::NameUnknown, message),
            // The operator removed a store that still holds data: retrying
            // helps once it is configured again, and the message says which.
            R::StoreNotConfigured { .. } => {
                tracing::error!(error = %message, "data recorded in a blob store that is not configured");
                ApiError::new(ErrorCode::Unavailable, message).with_header(header::RETRY_AFTER, "5".to_string())
            }
            R::Storage(ref inner @ StorageError::Backend(_)) => ApiError::unavailable("blob store", inner),
            R::Storage(ref inner) => ApiError::internal(inner),
            R::Meta(ref inner) => ApiError::meta(inner),
        }
    }
}

impl From<ChunkRangeError> for ApiError {
    fn from(e: ChunkRangeError) -> Self {
        let message = e.to_string();
        match e {
            ChunkRangeError::Malformed(_) => ApiError::new(ErrorCode::RangeInvalid, message),
            ChunkRangeError::LengthMismatch { .. } => ApiError::new(ErrorCode::SizeInvalid, message),
        }
    }
}

impl From<EndpointError> for ApiError {
    fn from(e: EndpointError) -> Self {
        let message = e.to_string();
        match e {
            EndpointError::NotFound => {
                ApiError::new(ErrorCode::Unsupported, message).with_status(StatusCode::NOT_FOUND)
            }
            EndpointError::MethodNotAllowed { allow } => {
                ApiError::new(ErrorCode::Unsupported, message).with_header(header::ALLOW, allow.to_owned())
            }
            EndpointError::Name(_) => ApiError::new(ErrorCode::NameInvalid, message),
            EndpointError::Reference(NameError::InvalidDigest(_)) | EndpointError::Digest(_) => {
                ApiError::new(ErrorCode::DigestInvalid, message)
            }
            // distribution-spec: MANIFEST_INVALID is in the closed set of codes; TAG_INVALID is not.
            EndpointError::Reference(_) => ApiError::new(ErrorCode::ManifestInvalid, message),
            // Only a nameless session request (answered as an unknown session) has this cause.
            EndpointError::UploadId => ApiError::new(ErrorCode::BlobUploadUnknown, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: RegistryError) -> (StatusCode, Option<String>) {
        let response = ApiError::from(e).into_response();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (response.status(), retry)
    }

    #[test]
    fn an_unreachable_store_is_a_503_to_retry_and_other_store_errors_a_500() {
        // Which database errors count as unavailable is tested in berth-meta.
        let failing_bucket = RegistryError::Storage(StorageError::Backend("GET blobs/x: connection refused".into()));
        assert_eq!(
            status_of(failing_bucket),
            (StatusCode::SERVICE_UNAVAILABLE, Some("5".into()))
        );
        let damaged = RegistryError::Meta(MetaError::Corrupt("bad digest".into()));
        assert_eq!(status_of(damaged), (StatusCode::INTERNAL_SERVER_ERROR, None));
    }
}
