//! The `[webhooks]` section: where event notifications go, which events each
//! endpoint takes, and how the queue behind them is bounded.
//!
//! Data only; [`super::Endpoint::from_config`] checks it and reads secrets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[webhooks]`: the queue's bounds and pace, and the endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// The most events one endpoint's queue holds; beyond it the oldest are
    /// dropped (counted as `dropped` and warned about).
    pub max_queued: u64,
    /// The most events sent in one POST.
    pub batch_size: u32,
    /// How long pull events gather in memory before they are written to
    /// the queue in one transaction (milliseconds); pushes, deletions and
    /// lifecycle removals are queued before they are answered.
    pub flush_interval_ms: u64,
    /// The first retry's delay; each further failure doubles it (seconds).
    pub backoff_base_secs: f64,
    /// The longest delay between retries (seconds).
    pub backoff_max_secs: f64,
    /// `[[webhooks.endpoints]]`.
    pub endpoints: Vec<EndpointConfig>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            max_queued: 1_000_000,
            batch_size: 100,
            flush_interval_ms: 100,
            backoff_base_secs: 1.0,
            backoff_max_secs: 300.0,
            endpoints: Vec::new(),
        }
    }
}

/// One `[[webhooks.endpoints]]`.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The endpoint's name in the admin API, logs and the queue: renaming it
    /// starts a new queue.
    pub name: String,
    /// Where the events are POSTed (`http://` or `https://`).
    pub url: String,
    /// Signs each body with HMAC-SHA256 under this key, sent as
    /// `X-Berth-Signature: sha256=<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// As `secret`, read from this file (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Repository patterns whose events the endpoint takes (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// Actions the endpoint takes: push, pull, delete, expire, retention, gc
    /// (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// How long one POST may take (seconds).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Failed attempts after which a batch is given up (counted as
    /// `failed`); 0: retry until it is delivered or dropped from a full queue.
    #[serde(default)]
    pub max_attempts: u32,
    /// Extra headers sent with every POST (an `Authorization`, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn default_timeout_secs() -> u64 {
    10
}

/// Hides the signing secret and the header values (an `Authorization`, say):
/// the configuration is printed at debug level and in error messages.
impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |present: bool| if present { "REDACTED" } else { "(none)" };
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &shown_url(&self.url))
            .field("secret", &hidden(self.secret.is_some()))
            .field("secret_file", &self.secret_file)
            .field("repositories", &self.repositories)
            .field("actions", &self.actions)
            .field("timeout_secs", &self.timeout_secs)
            .field("max_attempts", &self.max_attempts)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `url` without credentials or query (a token may sit in either).
pub(super) fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}
