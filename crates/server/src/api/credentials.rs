//! The credentials a request presents in its `Authorization` header.

use axum::http::HeaderMap;
use base64::Engine;
use berth_oci::ErrorCode;

use super::{header_str, ApiError};

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `Basic` credentials of a request: login and password.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = header_str(headers, "authorization") else {
        return Ok(None);
    };
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let malformed = || ApiError::new(ErrorCode::Unauthorized, "malformed Basic credentials");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let (login, password) = text.split_once(':').ok_or_else(malformed)?;
    Ok(Some((login.to_string(), password.to_string())))
}
