//! The registry's own bearer tokens: short-lived access tokens whose `access`
//! claim lists what was granted (Docker token spec), and refresh tokens for
//! the OAuth2 variant. Both are HS256 JWTs under one secret, which every
//! replica must share.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::clock::Clock;

/// Least length of a configured secret.
const MIN_KEY_BYTES: usize = 32;

/// One entry of the `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub typ: String,
    pub access: Vec<AccessEntry>,
    /// Administrator of the whole registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adm: bool,
    /// Patterns the holder may pull, present with the catalog scope, so the
    /// catalog can be filtered without looking the identity up again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cat: Vec<String>,
}

impl AccessClaims {
    /// Whether the token grants `action` on `repo`.
    pub fn allows(&self, repo: &str, action: &str) -> bool {
        self.access.iter().any(|e| {
            e.kind == "repository"
                && (e.name == repo || (self.adm && e.name == "*"))
                && e.actions.iter().any(|a| a == action)
        })
    }

    pub fn allows_catalog(&self) -> bool {
        self.access.iter().any(|e| e.kind == "registry" && e.name == "catalog")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshClaims {
    pub iss: String,
    /// `user:NAME` or `robot:NAME`.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub typ: String,
    /// The generation of the credential the login used (see `Identity`).
    pub gen: String,
}

const ACCESS: &str = "access";
const REFRESH: &str = "refresh";

/// Signs and verifies Berth's tokens.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    service: String,
    lifetime: Duration,
    refresh_lifetime: Duration,
    access_validation: Validation,
    clock: Arc<dyn Clock>,
}

/// Unix seconds of a clock reading in milliseconds (0 before 1970).
pub fn secs_of(ms: i64) -> u64 {
    u64::try_from(ms / 1000).unwrap_or(0)
}

/// Allowed clock difference between replicas for Berth's own tokens.
const LEEWAY_SECS: u64 = 5;

/// Whether a token with these `exp` and `nbf` claims is valid at `now`,
/// allowing `leeway` seconds either way (RFC 7519 4.1.4, 4.1.5).
///
/// The claims' times are checked here rather than by `jsonwebtoken`, which
/// reads the system clock: the registry's clock is the one tests can move.
pub fn valid_at(exp: u64, nbf: Option<u64>, now: u64, leeway: u64) -> bool {
    exp.saturating_add(leeway) > now && nbf.is_none_or(|nbf| nbf <= now.saturating_add(leeway))
}

/// A validation that checks everything but the times, which [`valid_at`] checks.
fn without_times(mut validation: Validation) -> Validation {
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation
}

fn token_id() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl TokenService {
    pub fn new(
        secret: &[u8],
        service: &str,
        lifetime: Duration,
        refresh_lifetime: Duration,
        clock: Arc<dyn Clock>,
    ) -> TokenService {
        let digest = sha2::Sha256::digest(secret);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[service]);
        validation.set_issuer(&[service]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        TokenService {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            kid: hex::encode(&digest[..8]),
            service: service.to_string(),
            lifetime,
            refresh_lifetime,
            access_validation: without_times(validation),
            clock,
        }
    }

    fn now_secs(&self) -> u64 {
        secs_of(self.clock.now_ms())
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        header
    }

    /// An access token; returns it with its issue time (seconds).
    pub fn issue(
        &self,
        sub: &str,
        access: Vec<AccessEntry>,
        adm: bool,
        cat: Vec<String>,
    ) -> anyhow::Result<(String, u64)> {
        let now = self.now_secs();
        let claims = AccessClaims {
            iss: self.service.clone(),
            sub: sub.to_string(),
            aud: self.service.clone(),
            exp: now + self.lifetime.as_secs(),
            nbf: now,
            iat: now,
            jti: token_id(),
            typ: ACCESS.into(),
            access,
            adm,
            cat,
        };
        let token = jsonwebtoken::encode(&self.header(), &claims, &self.encoding).context("signing a token")?;
        Ok((token, now))
    }

    pub fn issue_refresh(&self, sub: &str, gen: &str) -> anyhow::Result<String> {
        let now = self.now_secs();
        let claims = RefreshClaims {
            iss: self.service.clone(),
            sub: sub.to_string(),
            aud: self.service.clone(),
            exp: now + self.refresh_lifetime.as_secs(),
            iat: now,
            jti: token_id(),
            typ: REFRESH.into(),
            gen: gen.to_string(),
        };
        jsonwebtoken::encode(&self.header(), &claims, &self.encoding).context("signing a refresh token")
    }

    /// The claims of a valid, unexpired access token of this registry.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, jsonwebtoken::errors::Error> {
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.access_validation)?;
        let claims = &data.claims;
        if !valid_at(claims.exp, Some(claims.nbf), self.now_secs(), LEEWAY_SECS) {
            return Err(jsonwebtoken::errors::ErrorKind::ExpiredSignature.into());
        }
        if data.claims.typ != ACCESS {
            return Err(jsonwebtoken::errors::ErrorKind::InvalidToken.into());
        }
        Ok(data.claims)
    }

    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, jsonwebtoken::errors::Error> {
        let mut validation = self.access_validation.clone();
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<RefreshClaims>(token, &self.decoding, &validation)?;
        if !valid_at(data.claims.exp, None, self.now_secs(), LEEWAY_SECS) {
            return Err(jsonwebtoken::errors::ErrorKind::ExpiredSignature.into());
        }
        if data.claims.typ != REFRESH {
            return Err(jsonwebtoken::errors::ErrorKind::InvalidToken.into());
        }
        Ok(data.claims)
    }
}

/// Refuses an `auth.token.key` too short to sign with.
pub fn check_configured_key(key: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        key.len() >= MIN_KEY_BYTES,
        "auth.token.key must be at least {MIN_KEY_BYTES} bytes long"
    );
    Ok(())
}

/// The signing secret: the configured one, else the key file's, else a new
/// random one written to the key file (readable by the owner only).
pub fn load_secret(configured: Option<&str>, key_file: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = configured {
        check_configured_key(key)?;
        return Ok(key.as_bytes().to_vec());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    match std::fs::read_to_string(key_file) {
        Ok(text) => {
            let key = b64
                .decode(text.trim())
                .with_context(|| format!("token key file {} is not base64", key_file.display()))?;
            anyhow::ensure!(
                key.len() >= MIN_KEY_BYTES,
                "token key file {} holds fewer than {MIN_KEY_BYTES} bytes",
                key_file.display()
            );
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; MIN_KEY_BYTES];
            rand::rng().fill_bytes(&mut key);
            match create_private(key_file) {
                Ok(mut file) => {
                    file.write_all(b64.encode(&key).as_bytes())?;
                    file.write_all(b"\n")?;
                    file.sync_all()?;
                    Ok(key)
                }
                // Another replica over the same directory was first: use its key.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_secret(None, key_file),
                Err(e) => Err(e).with_context(|| format!("cannot create the token key file {}", key_file.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the token key file {}", key_file.display())),
    }
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};

    fn service() -> TokenService {
        TokenService::new(
            &[7u8; 32],
            "berth",
            Duration::from_secs(60),
            Duration::from_secs(600),
            Arc::new(SystemClock),
        )
    }

    #[test]
    fn tokens_expire_by_the_registry_clock() {
        let clock = ManualClock::at(1_800_000_000_000);
        let tokens = TokenService::new(
            &[7u8; 32],
            "berth",
            Duration::from_secs(60),
            Duration::from_secs(600),
            clock.clone(),
        );
        let (access, issued) = tokens.issue("alice", vec![], false, vec![]).unwrap();
        assert_eq!(issued, 1_800_000_000, "issued at the registry's time");
        let refresh = tokens.issue_refresh("user:alice", "g1").unwrap();
        clock.advance(64_000);
        assert!(tokens.verify(&access).is_ok(), "within the lifetime and its leeway");
        clock.advance(2_000);
        assert!(tokens.verify(&access).is_err(), "past the lifetime and the leeway");
        assert!(tokens.verify_refresh(&refresh).is_ok());
        clock.advance(600_000);
        assert!(tokens.verify_refresh(&refresh).is_err());
    }

    #[test]
    fn times_are_valid_within_the_leeway() {
        assert!(valid_at(100, Some(90), 99, 0));
        assert!(!valid_at(100, Some(90), 100, 0), "exp is the first invalid second");
        assert!(valid_at(100, None, 104, 5));
        assert!(!valid_at(100, None, 105, 5));
        assert!(!valid_at(100, Some(90), 84, 5), "not before nbf minus the leeway");
        assert!(valid_at(100, Some(90), 85, 5));
        assert!(valid_at(u64::MAX, Some(u64::MAX), u64::MAX - 1, 5), "no overflow");
    }

    #[test]
    fn access_tokens_verify_and_carry_their_grants() {
        let tokens = service();
        let entry = AccessEntry {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        };
        let (token, _) = tokens.issue("alice", vec![entry], false, vec![]).unwrap();
        let claims = tokens.verify(&token).unwrap();
        assert!(claims.allows("team/app", "pull"));
        assert!(!claims.allows("team/app", "push"));
        assert!(!claims.allows("team/other", "pull"));
        assert!(
            tokens.verify_refresh(&token).is_err(),
            "an access token is not a refresh token"
        );
        let other = TokenService::new(
            &[8u8; 32],
            "berth",
            Duration::from_secs(60),
            Duration::from_secs(600),
            Arc::new(SystemClock),
        );
        assert!(other.verify(&token).is_err(), "another key's token is refused");
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 3, 'A');
        assert!(tokens.verify(&tampered).is_err());
    }

    #[test]
    fn refresh_tokens_are_not_access_tokens() {
        let tokens = service();
        let refresh = tokens.issue_refresh("user:alice", "g1").unwrap();
        assert_eq!(tokens.verify_refresh(&refresh).unwrap().sub, "user:alice");
        assert!(tokens.verify(&refresh).is_err());
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let first = load_secret(None, &path).unwrap();
        assert_eq!(load_secret(None, &path).unwrap(), first);
        assert!(load_secret(Some("short"), &path).is_err());
        assert_eq!(load_secret(Some(&"k".repeat(32)), &path).unwrap(), b"k".repeat(32));
    }
}
