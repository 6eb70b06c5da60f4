//! Query strings, read in one of two ways.
//!
//! The `/v2/` API reads its parameters leniently, as the distribution spec
//! and the reference registry do: each has a grammar of its own (`n`, digests,
//! repository names) or is a position in a listing (`last`: any text, the
//! listing starts after it; see `registry::ListStart`), so bytes that are not
//! UTF-8 are read as U+FFFD and nothing is refused here.
//!
//! Berth's own APIs (`/api/v1/`, `/v1/images`) read theirs strictly through
//! [`Params`]: every name and value must percent-decode to UTF-8 text that is
//! printable and at most [`MAX_VALUE_BYTES`] long (see [`crate::text`]), or
//! the request is a 400 `INVALID_REQUEST` naming the parameter. None of their
//! values needs more, and a value the client did not send (a replacement
//! character for an invalid byte) is never looked up in its place.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Uri;
use berth_oci::ErrorCode;
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::text;

/// The longest query value Berth's own APIs accept (an inventory cursor,
/// the longest of them, is about 520 bytes).
pub const MAX_VALUE_BYTES: usize = 1024;

/// The query parameters of a `/v2/` request, read leniently.
pub fn lenient(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A query string of Berth's own APIs, checked strictly and then deserialized.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        strict(&parts.uri).map(Params)
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// One part (`name` or `value`) of a form-encoded pair, decoded strictly.
fn decode(part: &str) -> Option<String> {
    let spaced = part.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8().ok().map(|s| s.into_owned())
}

fn strict<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    let query = uri.query().unwrap_or("");
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name =
            decode(name).ok_or_else(|| invalid(format!("query parameter {name:?}: its name is not UTF-8 text")))?;
        let value =
            decode(value).ok_or_else(|| invalid(format!("query parameter {name:?}: its value is not UTF-8 text")))?;
        for (what, text) in [("name", &name), ("value", &value)] {
            text::printable(text, MAX_VALUE_BYTES)
                .map_err(|e| invalid(format!("query parameter {name:?}: its {what} {e}")))?;
        }
    }
    // Every part is UTF-8 now, so the deserializer (which would replace
    // invalid bytes) reads exactly what was checked.
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|axum::extract::Query(params)| params)
        .map_err(|e| invalid(format!("query string: {}", e.body_text())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Q {
        a: Option<String>,
        n: Option<u32>,
    }

    fn parse(query: &str) -> Result<Q, String> {
        let uri: Uri = format!("/x?{query}").parse().unwrap();
        strict::<Q>(&uri).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn strict_parameters_are_printable_utf8() {
        assert_eq!(
            parse("a=x%20y+z&n=3").unwrap(),
            Q {
                a: Some("x y z".into()),
                n: Some(3)
            }
        );
        assert_eq!(parse("a=J%C3%BCrgen").unwrap().a.as_deref(), Some("Jürgen"));
        assert_eq!(parse("").unwrap(), Q { a: None, n: None });
        for bad in ["a=%ff", "a=%00", "a=x%0ay", "%ff=1", "a%00=1", "n=x"] {
            assert!(parse(bad).unwrap_err().contains("InvalidRequest"), "{bad}");
        }
        let long = format!("a={}", "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(parse(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn lenient_parameters_replace_what_is_not_utf8() {
        let uri: Uri = "/v2/_catalog?last=%00%ff&n=1".parse().unwrap();
        let q = lenient(&uri);
        assert_eq!(q["last"], "\0\u{fffd}");
        assert_eq!(q["n"], "1");
    }
}
