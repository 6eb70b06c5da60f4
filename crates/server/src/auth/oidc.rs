//! OpenID Connect ID tokens as passwords (workload identity for CI).
//!
//! A token is accepted when its `iss` is a configured issuer, its signature
//! verifies with a key from the issuer's JWKS (found through discovery,
//! cached, fetched again when a token names an unknown `kid`), and `aud`,
//! `exp` and `nbf` hold. Claim rules then decide what the token may do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use globset::{GlobBuilder, GlobMatcher};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::access::Grant;
use super::{token, Failure};
use crate::clock::Clock;
use crate::config::{OidcIssuerConfig, OidcRule};

/// A JWKS older than this is fetched again even when every `kid` is known.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Who an accepted token speaks for.
#[derive(Debug, Clone)]
pub struct OidcIdentity {
    /// The username claim's value.
    pub name: String,
    pub groups: Vec<String>,
    pub grants: Vec<Grant>,
    pub admin: bool,
    /// The `nonce` claim, which a sign-in through the web UI checks.
    pub nonce: Option<String>,
}

struct CompiledRule {
    claims: Vec<(String, GlobMatcher)>,
    grants: Vec<String>,
    admin: bool,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

struct Issuer {
    config: OidcIssuerConfig,
    rules: Vec<CompiledRule>,
    keys: Mutex<Keys>,
}

pub struct OidcVerifier {
    issuers: Vec<Issuer>,
    /// Made only when an issuer is configured: a client loads the system's
    /// CA certificates, most of the start-up work of a registry without OIDC.
    client: Option<reqwest::Client>,
    clock: Arc<dyn Clock>,
}

fn compile_rule(rule: &OidcRule) -> anyhow::Result<CompiledRule> {
    let mut claims = Vec::new();
    for (claim, glob) in &rule.claims {
        let matcher = GlobBuilder::new(glob)
            .literal_separator(false)
            .build()
            .map_err(|e| anyhow::anyhow!("claim rule {claim} = {glob:?}: {e}"))?
            .compile_matcher();
        claims.push((claim.clone(), matcher));
    }
    for grant in &rule.grants {
        // Placeholders are checked with a stand-in value, so that typos fail at startup.
        Grant::parse(&substitute_with(grant, |_| Some("x".into())).unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("claim rule grant {grant:?}: {e}"))?;
    }
    Ok(CompiledRule {
        claims,
        grants: rule.grants.clone(),
        admin: rule.admin,
    })
}

fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `grant` with each `{claim}` replaced by `lookup(claim)`; `None` when a
/// placeholder has no value or is unclosed.
fn substitute_with(grant: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = grant;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        out.push_str(&lookup(&rest[open + 1..close])?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A claim value that may stand in a repository pattern: name characters
/// only, so a token cannot widen a grant with wildcards of its own.
fn safe_in_pattern(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
}

impl CompiledRule {
    fn matches(&self, claims: &Map<String, Value>) -> bool {
        self.claims.iter().all(|(name, glob)| match claims.get(name) {
            Some(Value::Array(items)) => items.iter().filter_map(claim_text).any(|v| glob.is_match(&v)),
            Some(v) => claim_text(v).is_some_and(|v| glob.is_match(&v)),
            None => false,
        })
    }

    fn grants(&self, claims: &Map<String, Value>) -> Vec<Grant> {
        self.grants
            .iter()
            .filter_map(|spec| {
                let expanded = substitute_with(spec, |name| {
                    let value = claims.get(name).and_then(claim_text)?.to_ascii_lowercase();
                    safe_in_pattern(&value).then_some(value)
                });
                match expanded.as_deref().map(Grant::parse) {
                    Some(Ok(grant)) => Some(grant),
                    _ => {
                        tracing::warn!(grant = %spec, "claim rule grant left out: a claim it names is missing or unsafe");
                        None
                    }
                }
            })
            .collect()
    }
}

/// The unverified `iss` of something shaped like a JWT.
pub fn unverified_issuer(token: &str) -> Option<String> {
    if token.split('.').count() != 3 {
        return None;
    }
    let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// A JWT NumericDate (RFC 7519 2: seconds, possibly fractional) as whole
/// seconds; `None` for anything else, negative or out of range.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl OidcVerifier {
    pub fn new(configs: &[OidcIssuerConfig], clock: Arc<dyn Clock>) -> anyhow::Result<OidcVerifier> {
        let mut issuers = Vec::new();
        for config in configs {
            anyhow::ensure!(
                !config.audience.is_empty(),
                "OIDC issuer {}: audience is required",
                config.issuer
            );
            let rules = config
                .rules
                .iter()
                .map(compile_rule)
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| anyhow::anyhow!("OIDC issuer {}: {e}", config.issuer))?;
            issuers.push(Issuer {
                config: config.clone(),
                rules,
                keys: Mutex::new(Keys::default()),
            });
        }
        let client = if issuers.is_empty() {
            None
        } else {
            Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::limited(3))
                    .build()?,
            )
        };
        Ok(OidcVerifier { issuers, client, clock })
    }

    /// Whether `iss` is one of the configured issuers.
    pub fn knows(&self, iss: &str) -> bool {
        self.issuers.iter().any(|i| i.config.issuer == iss)
    }

    pub async fn verify(&self, token: &str) -> Result<OidcIdentity, Failure> {
        let iss = unverified_issuer(token).ok_or(Failure::Invalid)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(Failure::Invalid)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::Invalid)?;
        if !asymmetric(header.alg) {
            return Err(Failure::Invalid);
        }
        let key = self.key(issuer, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&[&issuer.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| {
                tracing::info!(issuer = %iss, reason = %e, "OIDC token refused");
                Failure::Invalid
            })?
            .claims;
        // The times, by the registry's clock (see `token::valid_at`).
        let exp = claims.get("exp").and_then(numeric_date).ok_or(Failure::Invalid)?;
        let nbf = match claims.get("nbf") {
            Some(value) => Some(numeric_date(value).ok_or(Failure::Invalid)?),
            None => None,
        };
        let now = token::secs_of(self.clock.now_ms());
        if !token::valid_at(exp, nbf, now, issuer.config.leeway_secs) {
            tracing::info!(issuer = %iss, exp, ?nbf, now, "OIDC token refused: expired or not yet valid");
            return Err(Failure::Invalid);
        }
        let name = claims
            .get(&issuer.config.username_claim)
            .and_then(claim_text)
            .ok_or(Failure::Invalid)?;
        let groups = issuer
            .config
            .groups_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(claim_text).collect())
            .unwrap_or_default();
        let matching: Vec<&CompiledRule> = issuer.rules.iter().filter(|r| r.matches(&claims)).collect();
        if matching.is_empty() {
            tracing::info!(issuer = %iss, identity = %name, "OIDC token valid but no claim rule matches it");
            return Err(Failure::Invalid);
        }
        Ok(OidcIdentity {
            name,
            groups,
            grants: matching.iter().flat_map(|r| r.grants(&claims)).collect(),
            admin: matching.iter().any(|r| r.admin),
            nonce: claims.get("nonce").and_then(claim_text),
        })
    }

    /// The issuer's key named `kid`, fetching the JWKS when it is not cached,
    /// too old, or lacks the kid (at most once per `jwks_min_refresh_secs`).
    async fn key(&self, issuer: &Issuer, kid: Option<&str>) -> Result<DecodingKey, Failure> {
        let mut keys = issuer.keys.lock().await;
        let age = keys.fetched.map(|t| t.elapsed());
        let known = keys.set.as_ref().is_some_and(|set| find(set, kid).is_some());
        let may_refresh = age.is_none_or(|a| a >= Duration::from_secs(issuer.config.jwks_min_refresh_secs));
        if age.is_none_or(|a| a >= JWKS_MAX_AGE) || (!known && may_refresh) {
            match self.fetch_jwks(&issuer.config.issuer).await {
                Ok(set) => {
                    keys.set = Some(set);
                    keys.fetched = Some(Instant::now());
                }
                // A stale set still verifies tokens of keys it knows.
                Err(e) if known => tracing::warn!(issuer = %issuer.config.issuer, error = %e, "JWKS refresh failed"),
                Err(e) => {
                    tracing::warn!(issuer = %issuer.config.issuer, error = %e, "JWKS fetch failed");
                    return Err(Failure::Unavailable("the OpenID Connect issuer is unreachable".into()));
                }
            }
        }
        let set = keys.set.as_ref().ok_or(Failure::Invalid)?;
        let jwk = find(set, kid).ok_or(Failure::Invalid)?;
        DecodingKey::from_jwk(jwk).map_err(|_| Failure::Invalid)
    }

    async fn fetch_jwks(&self, issuer: &str) -> anyhow::Result<JwkSet> {
        let discovery = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let client = self.client.as_ref().context("no OpenID Connect issuer is configured")?;
        let doc: Value = client.get(&discovery).send().await?.error_for_status()?.json().await?;
        anyhow::ensure!(
            doc.get("issuer").and_then(Value::as_str) == Some(issuer),
            "discovery document at {discovery} names another issuer"
        );
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow::anyhow!("discovery document at {discovery} has no jwks_uri"))?;
        Ok(client.get(jwks_uri).send().await?.error_for_status()?.json().await?)
    }
}

fn find<'a>(set: &'a JwkSet, kid: Option<&str>) -> Option<&'a jsonwebtoken::jwk::Jwk> {
    match kid {
        Some(kid) => set.find(kid),
        // Without a kid, only an issuer with a single key is unambiguous.
        None if set.keys.len() == 1 => set.keys.first(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn rule(claims: &[(&str, &str)], grants: &[&str]) -> CompiledRule {
        compile_rule(&OidcRule {
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
            admin: false,
        })
        .unwrap()
    }

    #[test]
    fn rules_match_claims_by_glob_and_fill_placeholders() {
        let claims = json!({"sub": "repo:acme/app:ref:refs/heads/main", "repository": "Acme/App", "groups": ["ci"]});
        let claims = claims.as_object().unwrap();
        let main_only = rule(&[("sub", "repo:acme/*:ref:refs/heads/main")], &["{repository}:push"]);
        assert!(main_only.matches(claims));
        let grants = main_only.grants(claims);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].to_string(), "acme/app:push");
        assert!(!rule(&[("sub", "repo:*:ref:refs/tags/*")], &[]).matches(claims));
        assert!(rule(&[("groups", "ci")], &[]).matches(claims));
        assert!(!rule(&[("missing", "*")], &[]).matches(claims));
    }

    #[test]
    fn claim_values_cannot_widen_a_grant() {
        let claims = json!({"repository": "acme/*"});
        let r = rule(&[], &["{repository}:push"]);
        assert!(r.grants(claims.as_object().unwrap()).is_empty());
        assert!(compile_rule(&OidcRule {
            claims: BTreeMap::new(),
            grants: vec!["{repository".into()],
            admin: false
        })
        .is_err());
    }

    #[test]
    fn only_jwt_shaped_tokens_have_an_issuer() {
        assert_eq!(unverified_issuer("berth_rt_abc"), None);
        assert_eq!(unverified_issuer("a.b"), None);
    }
}
