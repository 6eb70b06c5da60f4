//! Verification of bearer tokens: Berth's own access and refresh tokens, and
//! the issuer an OIDC token names before it is verified.
//!
//! The input is tried as a whole token, and as the claims of a token signed
//! with the registry's key, so the claim checks (expiry, audience, issuer,
//! type) are reached too; an access token is accepted only when its claims
//! say what the registry issues.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_server::fuzzing::{unverified_issuer, SystemClock, TokenService};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-fuzzing";
const SERVICE: &str = "berth";

fn service() -> TokenService {
    let hour = Duration::from_secs(3600);
    TokenService::new(SECRET, SERVICE, hour, hour, Arc::new(SystemClock))
}

/// `claims` as the payload of an HS256 token signed with the registry's key.
fn signed(header: &str, claims: &[u8]) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256)
        .expect("HS256 signs anything");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let tokens = service();
    let text = String::from_utf8_lossy(data);
    let _ = tokens.verify(&text);
    let _ = tokens.verify_refresh(&text);
    let _ = unverified_issuer(&text);
    for header in [
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"alg":"HS256","kid":"x","crit":["b64"]}"#,
    ] {
        let token = signed(header, data);
        if let Ok(claims) = tokens.verify(&token) {
            assert_eq!(
                (claims.iss.as_str(), claims.aud.as_str(), claims.typ.as_str()),
                (SERVICE, SERVICE, "access")
            );
        }
        let _ = tokens.verify_refresh(&token);
        let _ = unverified_issuer(&token);
    }
});
