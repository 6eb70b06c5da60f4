//! Configuration: defaults, then an optional TOML file, then `BERTH_*`
//! environment variables, then command-line flags; later sources win.
//!
//! Nested keys are reached from the environment with a double underscore:
//! `BERTH_UPLOADS__STALE_AFTER_SECS=3600` sets `uploads.stale_after_secs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use globset::{Glob, GlobMatcher};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The whole configuration of a `berth serve` process.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: String,
    /// Directory holding all state of the embedded backends.
    pub data_dir: PathBuf,
    /// On SIGTERM or SIGINT, how long requests in progress may take to
    /// finish before their connections are closed; 0 waits for them however long.
    pub shutdown_grace_secs: u64,
    /// Logging.
    pub log: LogConfig,
    /// Upload sessions.
    pub uploads: UploadConfig,
    /// Sizes, rates, concurrency and timeouts of requests.
    pub limits: LimitConfig,
    /// Authentication and authorization.
    pub auth: AuthConfig,
    /// Tag-suffix expiry and per-namespace settings.
    pub lifecycle: LifecycleConfig,
    /// Retention policies.
    pub retention: RetentionConfig,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Blob stores.
    pub storage: StorageConfig,
    /// The metadata database.
    pub meta: MetaConfig,
    /// What the registry API is for.
    pub registry: crate::proxy::config::RegistryConfig,
    /// Pull-through caching of upstream registries.
    pub proxy: crate::proxy::config::ProxyConfig,
    /// Prometheus metrics.
    pub metrics: crate::metrics::MetricsConfig,
    /// Native HTTPS; plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Event notifications to webhook endpoints.
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// The web UI under `/ui/`.
    pub ui: UiConfig,
}

/// The web UI, served by the same listener under `/ui/`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Serve the UI; when false, `/ui/` is 404 and `/` answers nothing.
    pub enabled: bool,
    /// How long a browser session lasts after sign-in, however busy.
    pub session_lifetime_secs: u64,
    /// A session unused for this long ends.
    pub session_idle_secs: u64,
    /// Sign-in through an OpenID Connect provider (authorization code with PKCE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<SsoConfig>,
}

/// `[ui.sso]`: single sign-on. The issuer must also be configured under
/// `[[auth.oidc]]` with `audience` = `client_id`: its claim rules (and
/// `auth.admin_groups`, and group grants) decide what its users may do, as
/// for ID tokens presented to the token endpoint. Users are created on first
/// sign-in, without a password; a local user's name is never taken over.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// The provider's issuer URL.
    #[schemars(example = &"https://issuer.example.com")]
    pub issuer: String,
    /// This registry's client id at the provider.
    #[schemars(example = &"berth")]
    pub client_id: String,
    /// The client secret, for a confidential client; a public client proves
    /// itself with PKCE alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back; by default
    /// `SCHEME://HOST/ui/sso/callback` of the sign-in request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"https://registry.example.com/ui/sso/callback")]
    pub redirect_url: Option<String>,
    /// Scopes asked for; `openid` is always among them.
    #[serde(default = "default_sso_scopes")]
    pub scopes: Vec<String>,
    /// The sign-in button's text.
    #[serde(default = "default_sso_label")]
    pub label: String,
}

fn default_sso_scopes() -> Vec<String> {
    vec!["openid".into()]
}

fn default_sso_label() -> String {
    "Sign in with single sign-on".into()
}

/// Where blob bytes live: the `default` store, further named stores and the
/// routes that send repositories to them. See `docs/scale-out.md`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `filesystem` (under the data directory) or `s3`.
    pub backend: StorageBackend,
    /// Answer blob downloads with a 307 to a presigned URL of the store, so
    /// that clients fetch the bytes from it directly (S3 only).
    pub redirect: bool,
    /// The bucket of the `s3` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<berth_storage::s3::S3Config>,
    /// Blob stores besides `default`, by name (`[storage.stores.NAME]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, StoreConfig>,
    /// Which repositories push into which store; the first matching route
    /// wins, and a repository no route matches uses `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

/// A named blob store of `[storage.stores.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `filesystem` or `s3`.
    #[schemars(example = &"filesystem")]
    pub backend: StorageBackend,
    /// Answer blob downloads from this store with a 307 to a presigned URL
    /// (S3 only).
    #[serde(default)]
    pub redirect: bool,
    /// The bucket of an `s3` store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<berth_storage::s3::S3Config>,
    /// The directory of a `filesystem` store; by default `stores/NAME` in
    /// the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// `[[storage.routes]]`: repositories matching `match` push into `store`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Repository pattern (`*` one path component, `**` across).
    #[serde(rename = "match")]
    #[schemars(example = &"team-a/**")]
    pub pattern: String,
    /// A store of `[storage.stores]`, or `default`.
    #[schemars(example = &"team-a")]
    pub store: String,
}

/// Where a blob store keeps its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Filesystem,
    S3,
}

/// Where every fact but blob bytes lives. See `docs/scale-out.md`.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// `sqlite` (a file in the data directory) or `postgres`.
    pub backend: MetaBackend,
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` for the `postgres` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"postgres://berth:PASSWORD@db:5432/berth")]
    pub url: Option<String>,
    /// Most connections to PostgreSQL this process keeps open.
    pub max_connections: u32,
    /// Connections to PostgreSQL kept open even when idle.
    pub min_connections: u32,
    /// How long a request waits for a free connection before it fails.
    pub acquire_timeout_secs: u64,
}

/// Which database holds the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetaBackend {
    Sqlite,
    Postgres,
}

impl MetaConfig {
    /// The PostgreSQL URL with any password replaced, for messages and logs.
    pub fn redacted_url(&self) -> String {
        match &self.url {
            Some(url) => redact_url(url),
            None => "(no meta.url)".into(),
        }
    }
}

/// `url` with any password replaced, for messages, logs and debug prints.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot have a password, and this one has one.
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        // Unparsable text may still hold a password: show none of it.
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Shows the database URL without its password.
impl std::fmt::Debug for MetaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaConfig")
            .field("backend", &self.backend)
            .field("url", &self.url.as_ref().map(|_| self.redacted_url()))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .finish()
    }
}

/// A policy's rules. A tag survives if any keep rule keeps it; `keep_min` is
/// a floor under the result; `untagged` removes untagged manifests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Keep the N most recently pushed tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = 10)]
    pub keep_last: Option<u32>,
    /// Keep tags pushed in the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = 30)]
    pub keep_days: Option<u32>,
    /// Keep tags pulled in the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = 30)]
    pub keep_pulled_within: Option<u32>,
    /// Tag globs (`v*`, `latest`) never deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(example = &["v*", "latest"])]
    pub keep_patterns: Vec<String>,
    /// Never leave fewer than N tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = 1)]
    pub keep_min: Option<u32>,
    /// Delete untagged manifests N days after they lost their last tag (or
    /// were pushed without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = 7)]
    pub untagged: Option<u32>,
    /// A cache's rule: keep what was pulled recently, let the rest go some
    /// days after it was last used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_by_age: Option<KeepByAge>,
}

/// `keep_by_age = { max_age_days = 30, match_pulled_in_last_days = 14 }`:
/// a tag pulled in the last `match_pulled_in_last_days` is kept; any other
/// expires `max_age_days` after its last access (its push or caching, or
/// its last pull, whichever is later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepByAge {
    /// Days after its last access (push, caching or pull) that a tag expires.
    #[schemars(example = 30)]
    pub max_age_days: u32,
    /// Tags pulled in the last N days are kept whatever their age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = 14)]
    pub match_pulled_in_last_days: Option<u32>,
}

impl Rules {
    /// Whether any rule decides about tags. A policy with none (only
    /// `untagged` or `keep_min`) deletes no tag: no rule means no deletion.
    pub fn decides_tags(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_days.is_some()
            || self.keep_pulled_within.is_some()
            || self.keep_by_age.is_some()
            || !self.keep_patterns.is_empty()
    }

    /// Checks the rules and compiles the tag globs.
    pub fn compile(&self) -> Result<Vec<GlobMatcher>, String> {
        for (name, days) in [
            ("keep_days", self.keep_days),
            ("keep_pulled_within", self.keep_pulled_within),
            ("untagged", self.untagged),
            (
                "keep_by_age.max_age_days",
                self.keep_by_age.as_ref().map(|k| k.max_age_days),
            ),
            (
                "keep_by_age.match_pulled_in_last_days",
                self.keep_by_age.as_ref().and_then(|k| k.match_pulled_in_last_days),
            ),
        ] {
            if let Some(days) = days {
                if !(1..=36_500).contains(&days) {
                    return Err(format!("{name} must be between 1 and 36500 days, not {days}"));
                }
            }
        }
        self.keep_patterns
            .iter()
            .map(|p| {
                if p.is_empty() {
                    return Err("keep_patterns holds an empty pattern".to_string());
                }
                Glob::new(p)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| format!("keep_patterns {p:?}: {e}"))
            })
            .collect()
    }
}

/// Tag-suffix rules and keep-latest mode. See `docs/lifecycle.md`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Whether `--ttl-7d` and `--idle-30d` tag suffixes are honoured (unless a
    /// namespace says otherwise).
    pub suffix_rules: bool,
    /// What a push with a malformed or out-of-window suffix gets.
    pub invalid_suffix: InvalidSuffix,
    /// How often expired suffix tags and keep-latest leftovers are removed;
    /// 0 turns the schedule off.
    pub expiry_interval_secs: u64,
    /// Settings for repositories matching a pattern; the most specific wins.
    pub namespaces: Vec<NamespaceConfig>,
}

/// What a push with a malformed or out-of-window tag suffix gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvalidSuffix {
    /// Refuse the push with MANIFEST_INVALID.
    Reject,
    /// Accept it as a plain tag that never expires.
    Plain,
}

/// `[[lifecycle.namespaces]]`: settings for the repositories matching a
/// pattern.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Repository pattern (`*` one path component, `**` across).
    #[schemars(example = &"ci/**")]
    pub pattern: String,
    /// Whether tag suffixes are honoured here; unset: as `lifecycle.suffix_rules` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_rules: Option<bool>,
    /// Only the most recently pushed plain (suffix-free) tag of each repository survives.
    #[serde(default)]
    pub keep_latest: bool,
}

/// Retention policies declared here are written to the database at start
/// (replacing a CLI- or API-made policy of the same pattern).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often retention runs; 0 turns the schedule off.
    pub interval_secs: u64,
    /// Policies by repository pattern; `"**"` is the global default.
    pub policies: std::collections::BTreeMap<String, Rules>,
}

/// Garbage collection of unreferenced blobs, links and untagged manifests.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// How long a blob, link or untagged manifest must have been unreferenced
    /// before it is collected.
    pub grace_secs: u64,
    /// How often garbage collection runs; 0 turns the schedule off.
    pub interval_secs: u64,
}

/// Logging to standard error.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (pretty on a terminal, JSON otherwise), `json` or `pretty`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `berth=debug,info`; `RUST_LOG`
    /// overrides it at start. While the server runs, `PUT /api/v1/log` or
    /// a SIGHUP (which reads this file again) changes it.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

/// Blob upload sessions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Upload sessions untouched for this long are purged.
    pub stale_after_secs: u64,
    /// How often stale sessions are looked for.
    pub purge_interval_secs: u64,
}

pub use crate::limits::LimitConfig;

/// Who may do what. See `docs/auth.md` for every option.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` (everyone may do everything) or `token` (Docker token auth).
    pub mode: AuthMode,
    /// The `service` of challenges and tokens.
    pub service: String,
    /// The token endpoint announced in challenges; by default
    /// `http://HOST/v2/token` with the host the client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"https://registry.example.com/v2/token")]
    pub realm: Option<String>,
    /// Repository patterns anyone may pull without credentials.
    pub anonymous: Vec<String>,
    /// Groups (from the external service or OIDC claims) whose members are administrators.
    pub admin_groups: Vec<String>,
    /// The tokens the token endpoint issues.
    pub token: TokenConfig,
    /// Throttling of failed logins.
    pub login_limit: LoginLimitConfig,
    /// An external service that validates credentials.
    pub external: ExternalAuthConfig,
    /// OpenID Connect issuers whose ID tokens are accepted as passwords.
    pub oidc: Vec<OidcIssuerConfig>,
}

/// Whether clients must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Token,
}

/// The Docker registry tokens the token endpoint issues and the API accepts.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime of the access tokens the token endpoint issues.
    pub lifetime_secs: u64,
    /// Lifetime of refresh tokens (`access_type=offline`, local users and robots only).
    pub refresh_lifetime_secs: u64,
    /// The signing secret itself (at least 32 bytes). Give every replica the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// File holding the signing secret; created on first start when missing.
    /// Default: `token.key` in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"/etc/berth/token.key")]
    pub key_file: Option<PathBuf>,
}

/// Shows whether a signing key is set, never the key.
impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("lifetime_secs", &self.lifetime_secs)
            .field("refresh_lifetime_secs", &self.refresh_lifetime_secs)
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .field("key_file", &self.key_file)
            .finish()
    }
}

/// Throttling of failed logins, per source address and per account.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginLimitConfig {
    /// Failed logins allowed per source address, and per account, within `window_secs`.
    pub failures: u32,
    /// The window in which `failures` failed logins are allowed; the
    /// allowance refills evenly over it.
    pub window_secs: u64,
}

/// An external service that says whether a user name and password (or
/// token) are valid, and which groups the user is in.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthConfig {
    /// Base URL of the validation service (`/api/auth/info` is appended when
    /// missing). Also read from `VALIDATION_SERVICE_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"https://auth.example.com")]
    pub url: Option<String>,
    /// How long a positive answer is reused; negative answers never are.
    pub cache_secs: u64,
    /// How long a request to the service may take, connecting included.
    pub timeout_secs: u64,
}

/// Shows the service URL without a password it may carry.
impl std::fmt::Debug for ExternalAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuthConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("cache_secs", &self.cache_secs)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// `[[auth.oidc]]`: an OpenID Connect issuer whose ID tokens are accepted
/// as passwords.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The `iss` of accepted tokens; discovery is at `ISSUER/.well-known/openid-configuration`.
    #[schemars(example = &"https://issuer.example.com")]
    pub issuer: String,
    /// The `aud` accepted tokens must carry.
    #[schemars(example = &"berth")]
    pub audience: String,
    /// The claim naming the identity (in logs, the audit log and tokens).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// A claim holding a list of group names, matched against group grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"groups")]
    pub groups_claim: Option<String>,
    /// Allowed clock difference for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Least time between two JWKS fetches caused by an unknown `kid`.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// Which tokens get which grants. A token no rule matches is refused.
    #[serde(default)]
    pub rules: Vec<OidcRule>,
}

/// `[[auth.oidc.rules]]`: the grants of ID tokens whose claims match.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcRule {
    /// Claim name to glob (`*` matches anything); all must match.
    #[schemars(example = std::collections::BTreeMap::from([("sub", "repo:acme/*")]))]
    pub claims: std::collections::BTreeMap<String, String>,
    /// `PATTERN:ROLE` grants; `{claim}` is replaced by that claim's value.
    #[serde(default)]
    #[schemars(example = &["acme/**:push"])]
    pub grants: Vec<String>,
    /// Matching tokens make their bearer an administrator.
    #[serde(default)]
    pub admin: bool,
}

fn default_username_claim() -> String {
    "sub".into()
}

fn default_leeway() -> u64 {
    60
}

fn default_jwks_refresh() -> u64 {
    30
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            service: "berth".into(),
            realm: None,
            anonymous: Vec::new(),
            admin_groups: Vec::new(),
            token: TokenConfig {
                lifetime_secs: 15 * 60,
                refresh_lifetime_secs: 7 * 24 * 3600,
                key: None,
                key_file: None,
            },
            login_limit: LoginLimitConfig {
                failures: 10,
                window_secs: 60,
            },
            external: ExternalAuthConfig {
                url: None,
                cache_secs: 60,
                timeout_secs: 5,
            },
            oidc: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".into(),
            data_dir: PathBuf::from("./berth-data"),
            shutdown_grace_secs: 30,
            log: LogConfig {
                format: LogFormat::Auto,
                level: "info".into(),
            },
            ui: UiConfig {
                enabled: true,
                session_lifetime_secs: 12 * 3600,
                session_idle_secs: 2 * 3600,
                sso: None,
            },
            uploads: UploadConfig {
                stale_after_secs: 24 * 3600,
                purge_interval_secs: 600,
            },
            limits: LimitConfig::default(),
            auth: AuthConfig::default(),
            lifecycle: LifecycleConfig {
                suffix_rules: true,
                invalid_suffix: InvalidSuffix::Reject,
                expiry_interval_secs: 300,
                namespaces: Vec::new(),
            },
            retention: RetentionConfig {
                interval_secs: 3600,
                policies: Default::default(),
            },
            gc: GcConfig {
                grace_secs: 24 * 3600,
                interval_secs: 3600,
            },
            storage: StorageConfig {
                backend: StorageBackend::Filesystem,
                redirect: false,
                s3: None,
                stores: BTreeMap::new(),
                routes: Vec::new(),
            },
            meta: MetaConfig {
                backend: MetaBackend::Sqlite,
                url: None,
                max_connections: 16,
                min_connections: 1,
                acquire_timeout_secs: 10,
            },
            registry: Default::default(),
            proxy: Default::default(),
            metrics: Default::default(),
            tls: None,
            webhooks: Default::default(),
        }
    }
}

/// Values given on the command line, which override every other source.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// Top-level keys, so that other tools' `BERTH_*` variables (`BERTH_BIN` in
/// our own scripts, say) are not taken for misspelt settings.
const TOP_LEVEL_KEYS: [&str; 17] = [
    "listen",
    "data_dir",
    "shutdown_grace_secs",
    "log",
    "uploads",
    "limits",
    "auth",
    "lifecycle",
    "retention",
    "gc",
    "storage",
    "meta",
    "registry",
    "proxy",
    "metrics",
    "tls",
    "webhooks",
];

/// The variable other tools use to name an external token validation service.
const VALIDATION_SERVICE_URL: &str = "VALIDATION_SERVICE_URL";

impl Config {
    fn environment() -> Env {
        Env::prefixed("BERTH_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                TOP_LEVEL_KEYS
                    .iter()
                    .any(|top| key == *top || key.starts_with(&format!("{top}__")))
            })
            .split("__")
    }

    /// Loads the configuration from every source.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::raw()
                    .only(&[VALIDATION_SERVICE_URL])
                    .map(|_| "auth.external.url".into()),
            )
            .merge(Self::environment())
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment::Jail fixes the closures' error type")]
mod tests {
    use super::*;

    #[test]
    fn sources_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "berth.toml",
                "listen = \"127.0.0.1:1\"\ndata_dir = \"/from-file\"\n[uploads]\nstale_after_secs = 5\n",
            )?;
            jail.set_env("BERTH_DATA_DIR", "/from-env");
            jail.set_env("BERTH_LIMITS__MANIFEST_MAX_BYTES", "1000");
            jail.set_env("BERTH_BIN", "/not/a/setting");
            let c = Config::load(
                Some(Path::new("berth.toml")),
                Overrides {
                    listen: Some("127.0.0.1:2".into()),
                    data_dir: None,
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(c.listen, "127.0.0.1:2");
            assert_eq!(c.data_dir, PathBuf::from("/from-env"));
            assert_eq!(c.uploads.stale_after_secs, 5);
            assert_eq!(c.uploads.purge_interval_secs, 600);
            assert_eq!(c.limits.manifest_max_bytes, 1000);
            assert_eq!(c.auth.mode, AuthMode::None);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("berth.toml", "lisen = \"x\"\n")?;
            assert!(Config::load(Some(Path::new("berth.toml")), Overrides::default()).is_err());
            assert!(Config::load(Some(Path::new("missing.toml")), Overrides::default()).is_err());
            jail.set_env("BERTH_LOG__LEVL", "debug");
            assert!(Config::load(None, Overrides::default()).is_err());
            Ok(())
        });
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment::Jail fixes the closures' error type")]
mod storage_tests {
    use super::*;

    #[test]
    fn stores_and_routes_come_from_the_file_and_the_default_store_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "berth.toml",
                r#"
[storage.stores.team-a]
backend = "filesystem"
path = "/srv/team-a"
[[storage.routes]]
match = "team-a/*"
store = "team-a"
"#,
            )?;
            jail.set_env("BERTH_STORAGE__REDIRECT", "false");
            let c = Config::load(Some(Path::new("berth.toml")), Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.storage.backend, StorageBackend::Filesystem);
            let team_a = &c.storage.stores["team-a"];
            assert_eq!(team_a.path.as_deref(), Some(Path::new("/srv/team-a")));
            assert!(!team_a.redirect);
            assert_eq!(c.storage.routes[0].pattern, "team-a/*");
            assert_eq!(c.storage.routes[0].store, "team-a");
            Ok(())
        });
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment::Jail fixes the closures' error type")]
mod auth_tests {
    use super::*;

    #[test]
    fn auth_settings_come_from_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "berth.toml",
                r#"
[auth]
mode = "token"
anonymous = ["public/*"]
[[auth.oidc]]
issuer = "https://issuer.example"
audience = "berth"
[[auth.oidc.rules]]
claims = { sub = "repo:acme/*" }
grants = ["acme/{repository}:push"]
"#,
            )?;
            jail.set_env("VALIDATION_SERVICE_URL", "https://auth.example");
            jail.set_env("BERTH_AUTH__TOKEN__LIFETIME_SECS", "60");
            let c = Config::load(Some(Path::new("berth.toml")), Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.auth.mode, AuthMode::Token);
            assert_eq!(c.auth.anonymous, ["public/*"]);
            assert_eq!(c.auth.token.lifetime_secs, 60);
            assert_eq!(c.auth.external.url.as_deref(), Some("https://auth.example"));
            assert_eq!(c.auth.oidc[0].username_claim, "sub");
            assert_eq!(c.auth.oidc[0].rules[0].grants, ["acme/{repository}:push"]);
            jail.set_env("BERTH_AUTH__EXTERNAL__URL", "https://wins.example");
            let c = Config::load(Some(Path::new("berth.toml")), Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.auth.external.url.as_deref(), Some("https://wins.example"));
            Ok(())
        });
    }

    #[test]
    fn no_secret_appears_in_a_debug_print_of_the_whole_config() {
        const SECRETS: [&str; 7] = [
            "token-key-0123456789abcdef0123456789",
            "pg-password-x1",
            "ext-password-x2",
            "AKIA-default-x3",
            "s3-secret-default-x4",
            "s3-session-default-x5",
            "s3-secret-named-x6",
        ];
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "berth.toml",
                &format!(
                    r#"
[auth]
mode = "token"
token = {{ key = "{}" }}
external = {{ url = "https://svc:{}@auth.example/" }}
[meta]
backend = "postgres"
url = "postgres://berth:{}@db:5432/berth"
[storage]
backend = "s3"
s3 = {{ bucket = "b", access_key_id = "{}", secret_access_key = "{}", session_token = "{}" }}
[storage.stores.team]
backend = "s3"
s3 = {{ bucket = "t", access_key_id = "id", secret_access_key = "{}" }}
"#,
                    SECRETS[0], SECRETS[2], SECRETS[1], SECRETS[3], SECRETS[4], SECRETS[5], SECRETS[6]
                ),
            )?;
            let c = Config::load(Some(Path::new("berth.toml")), Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.auth.token.key.as_deref(), Some(SECRETS[0]), "the secrets were read");
            let printed = format!("{c:?} {c:#?}");
            for secret in SECRETS {
                assert!(!printed.contains(secret), "{secret} appears in {printed}");
            }
            assert!(printed.contains("auth.example") && printed.contains("db:5432"));
            Ok(())
        });
    }
}
