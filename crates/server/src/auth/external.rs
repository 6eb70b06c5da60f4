//! The external token validation contract: the presented password goes as a
//! bearer token to `GET {url}/api/auth/info`; a 200 naming the user validates
//! it, and the login name must be that user's id, username or email.
//!
//! Positive answers are cached briefly (keyed by a hash of the token, never
//! the token); negative ones never, so a revoked token stops working at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sha2::Digest as _;

use super::Failure;
use crate::clock::Clock;

const INFO_PATH: &str = "/api/auth/info";

/// Above this many cached answers, expired ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// A user as the validation service describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalUser {
    pub id: String,
    pub username: String,
    pub email: String,
    pub provider: String,
    /// Group and role names, from `groups`/`roles` of the user or the answer.
    pub groups: Vec<String>,
}

impl ExternalUser {
    /// The name grants to `user:NAME` are looked up by.
    pub fn name(&self) -> &str {
        if self.username.is_empty() {
            &self.id
        } else {
            &self.username
        }
    }

    fn is_named(&self, login: &str) -> bool {
        !login.is_empty()
            && [&self.id, &self.username, &self.email]
                .iter()
                .any(|n| n.as_str() == login)
    }
}

pub struct ExternalValidator {
    url: String,
    /// The URL without user info or query, for logs.
    log_url: String,
    client: reqwest::Client,
    ttl: Duration,
    /// Answers by token hash, with the clock reading (ms) when they came.
    cache: Mutex<HashMap<[u8; 32], (ExternalUser, i64)>>,
    clock: Arc<dyn Clock>,
}

/// `{url}/api/auth/info`, unless the URL already ends with that path.
fn info_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(INFO_PATH) {
        base.to_string()
    } else {
        format!("{base}{INFO_PATH}")
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn names(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("name").map(text),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_answer(body: &Value) -> Option<ExternalUser> {
    let user = body.get("user")?.as_object()?;
    let mut groups = Vec::new();
    for source in [
        user.get("groups"),
        user.get("roles"),
        body.get("groups"),
        body.get("roles"),
    ] {
        groups.extend(names(source));
    }
    groups.sort();
    groups.dedup();
    let parsed = ExternalUser {
        id: user.get("id").map(text).unwrap_or_default(),
        username: user.get("username").map(text).unwrap_or_default(),
        email: user.get("email").map(text).unwrap_or_default(),
        provider: body.get("authProvider").map(text).unwrap_or_default(),
        groups,
    };
    (!parsed.id.is_empty() || !parsed.username.is_empty()).then_some(parsed)
}

impl ExternalValidator {
    pub fn new(
        url: &str,
        ttl: Duration,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<ExternalValidator> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let url = info_url(url);
        let log_url = match reqwest::Url::parse(&url) {
            Ok(u) => format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or(""), u.path()),
            Err(_) => "(unparsable URL)".into(),
        };
        Ok(ExternalValidator {
            log_url,
            url,
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
            clock,
        })
    }

    /// Whether an answer received at `at_ms` may still be used at `now_ms`.
    fn fresh(&self, at_ms: i64, now_ms: i64) -> bool {
        u128::try_from(now_ms.saturating_sub(at_ms)).is_ok_and(|age| age < self.ttl.as_millis())
    }

    fn cached(&self, key: &[u8; 32]) -> Option<ExternalUser> {
        let now_ms = self.clock.now_ms();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, at_ms)| self.fresh(*at_ms, now_ms))
            .map(|(user, _)| user.clone())
    }

    fn remember(&self, key: [u8; 32], user: &ExternalUser) {
        if self.ttl.is_zero() {
            return;
        }
        let now_ms = self.clock.now_ms();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > PRUNE_ABOVE {
            cache.retain(|_, (_, at_ms)| self.fresh(*at_ms, now_ms));
        }
        cache.insert(key, (user.clone(), now_ms));
    }

    /// The user the token belongs to, if the service vouches for it and
    /// `login` names that user.
    pub async fn validate(&self, login: &str, token: &str) -> Result<ExternalUser, Failure> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let user = match self.cached(&key) {
            Some(user) => user,
            None => {
                let user = self.ask(token).await?;
                self.remember(key, &user);
                user
            }
        };
        if user.is_named(login) {
            Ok(user)
        } else {
            Err(Failure::Invalid)
        }
    }

    async fn ask(&self, token: &str) -> Result<ExternalUser, Failure> {
        let response = self
            .client
            .get(&self.url)
            .bearer_auth(token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                let why = if e.is_timeout() { "timed out" } else { "unreachable" };
                // Without its URL: a configured URL may hold credentials.
                tracing::warn!(url = %self.log_url, error = %e.without_url(), "external validation service {why}");
                Failure::Unavailable(format!("the authentication service is {why}"))
            })?;
        let status = response.status();
        if status.is_server_error() || status.is_redirection() {
            tracing::warn!(url = %self.log_url, %status, "external validation service failed");
            return Err(Failure::Unavailable(format!(
                "the authentication service answered {status}"
            )));
        }
        if status != reqwest::StatusCode::OK {
            return Err(Failure::Invalid);
        }
        let body: Value = response.json().await.map_err(|e| {
            tracing::warn!(url = %self.log_url, error = %e.without_url(), "external validation service sent no JSON");
            Failure::Unavailable("the authentication service sent an unreadable answer".into())
        })?;
        parse_answer(&body).ok_or_else(|| {
            tracing::warn!(url = %self.log_url, "external validation service answered 200 without a user");
            Failure::Unavailable("the authentication service sent an answer without a user".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_info_path_is_appended_once() {
        assert_eq!(info_url("https://a.example"), "https://a.example/api/auth/info");
        assert_eq!(info_url("https://a.example/"), "https://a.example/api/auth/info");
        assert_eq!(
            info_url("https://a.example/api/auth/info"),
            "https://a.example/api/auth/info"
        );
    }

    #[test]
    fn answers_give_the_user_and_their_groups() {
        let body = json!({
            "user": {"id": 42, "username": "bob", "email": "bob@example.com", "groups": ["dev", {"name": "ops"}]},
            "authProvider": "github",
            "roles": ["dev"]
        });
        let user = parse_answer(&body).unwrap();
        assert_eq!(user.id, "42");
        assert_eq!(user.groups, ["dev", "ops"]);
        assert!(user.is_named("bob") && user.is_named("42") && user.is_named("bob@example.com"));
        assert!(!user.is_named("alice") && !user.is_named(""));
        assert_eq!(parse_answer(&json!({"authProvider": "x"})), None);
        assert_eq!(parse_answer(&json!({"user": {}})), None);
    }
}
