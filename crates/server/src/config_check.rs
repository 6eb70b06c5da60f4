//! `berth config check`: loads a configuration as `berth serve` does and
//! checks everything that can be checked without opening a store, a
//! database or a network connection, reporting each problem with its key.
//!
//! `berth serve` runs [`check`] before it listens, and the stores, proxy and
//! auth it opens afterwards call the same functions, so that a file that
//! passes does not fail at start for a reason a check could have told (only
//! what needs a store, a database, an upstream or the key file can).

use std::path::Path;
use std::sync::Arc;

use berth_meta::DEFAULT_STORE;

use crate::auth::Auth;
use crate::config::{Config, MetaBackend, StorageBackend, StorageConfig};
use crate::lifecycle::Policy;
use crate::namespaces::NamespaceRules;
use crate::pattern::Pattern;
use crate::proxy::{ProxyConfigError, Upstreams};
use crate::registry::stores::check_store_name;

/// A problem with one configuration key (or with the whole file, such as
/// a TOML syntax error, when `key` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key path, such as `auth.token.lifetime_secs`.
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

/// Runs `berth config check FILE`: prints `FILE: OK`, or fails with the
/// problems found, one per line. Loading stops at the first error in the
/// file; the checks after it report every section's problem.
pub fn run(file: &Path) -> anyhow::Result<()> {
    if !file.is_file() {
        anyhow::bail!("{}: no such file", file.display());
    }
    let problems = check_file(file)?;
    if problems.is_empty() {
        println!("{}: OK", file.display());
        return Ok(());
    }
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    anyhow::bail!("{} is not a valid configuration:\n{}", file.display(), lines.join("\n"))
}

/// Every problem the configuration `file` (with the environment) has.
fn check_file(file: &Path) -> anyhow::Result<Vec<ConfigError>> {
    match Config::load(Some(file), Default::default()) {
        Ok(config) => {
            // The upstreams' HTTP clients are built inside a runtime, as `serve` builds them.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let _entered = runtime.enter();
            Ok(check(&config))
        }
        Err(e) => Ok(load_errors(*e)),
    }
}

/// The problems of a configuration that loaded, section by section.
pub fn check(config: &Config) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    if let Err(e) = check_storage(&config.storage) {
        problems.push(e);
    }
    if config.meta.backend == MetaBackend::Postgres && config.meta.url.is_none() {
        problems.push(ConfigError::new(
            "meta.url",
            "meta.backend = \"postgres\" needs meta.url = \"postgres://...\"",
        ));
    }
    if let Err(e) = NamespaceRules::from_config(&config.lifecycle) {
        problems.push(ConfigError::new("lifecycle.namespaces", e));
    }
    for (pattern, rules) in &config.retention.policies {
        if let Err(e) = Policy::new(pattern, rules.clone()) {
            problems.push(ConfigError::new(format!("retention.policies.{pattern:?}"), e));
        }
    }
    if let Err(e) = Upstreams::configured(&config.proxy) {
        problems.push(match e {
            ProxyConfigError::Networks(reason) => ConfigError::new("proxy.allowed_networks", reason),
            ProxyConfigError::Invalid(reason) => ConfigError::new("proxy.upstreams", reason),
            ProxyConfigError::Upstream(e) => ConfigError::new("proxy.upstreams", e),
        });
    }
    if let Err(e) = Auth::check_config(&config.auth, Arc::new(crate::clock::SystemClock)) {
        problems.push(ConfigError::new("auth", format!("{e:#}")));
    }
    if let Err(e) = crate::ui::Sso::check_config(config) {
        problems.push(ConfigError::new("ui.sso", e));
    }
    if let Err(e) = crate::webhooks::endpoints_of(&config.webhooks) {
        problems.push(ConfigError::new("webhooks", e));
    }
    if let Err(e) = crate::limits::Limiter::new(&config.limits, Arc::new(crate::metrics::Metrics::new())) {
        problems.push(ConfigError::new("limits", e));
    }
    problems
}

/// Checks the store names, the routes and what each store's backend needs,
/// before any store is opened (`berth serve` runs it first too).
pub fn check_storage(storage: &StorageConfig) -> Result<(), ConfigError> {
    for (name, store) in &storage.stores {
        let key = format!("storage.stores.{name}");
        check_store_name(name).map_err(|e| ConfigError::new(&key, e))?;
        check_backend(&key, store.backend, store.redirect, store.s3.is_some())?;
    }
    check_backend("storage", storage.backend, storage.redirect, storage.s3.is_some())?;
    for route in &storage.routes {
        if route.store != DEFAULT_STORE && !storage.stores.contains_key(&route.store) {
            return Err(ConfigError::new(
                "storage.routes",
                format!(
                    "route {:?} sends repositories to the store {:?}, which [storage.stores] does not name \
                     (configured: {})",
                    route.pattern,
                    route.store,
                    std::iter::once(DEFAULT_STORE)
                        .chain(storage.stores.keys().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Pattern::parse(&route.pattern)
            .map_err(|e| ConfigError::new("storage.routes", format!("route {:?}: {e}", route.pattern)))?;
    }
    Ok(())
}

/// What the backend of the store at `key` needs.
fn check_backend(key: &str, backend: StorageBackend, redirect: bool, has_s3: bool) -> Result<(), ConfigError> {
    if backend == StorageBackend::S3 && !has_s3 {
        return Err(ConfigError::new(
            format!("{key}.s3"),
            "backend = \"s3\" needs an s3 section (bucket, endpoint, ...)",
        ));
    }
    if redirect && backend == StorageBackend::Filesystem {
        return Err(ConfigError::new(
            format!("{key}.redirect"),
            "redirect needs a store clients can download from directly (backend = \"s3\")",
        ));
    }
    Ok(())
}

/// The loader's errors, each with the key it is about.
fn load_errors(error: figment::Error) -> Vec<ConfigError> {
    error
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            let mut reason = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    format!("unknown key (the keys here are: {})", expected.join(", "))
                }
                figment::error::Kind::UnknownVariant(value, expected) => {
                    format!("unknown value `{value}` (one of: {})", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            // Name the source when it is not the file itself: a variable of
            // the environment is otherwise hard to find.
            if let Some(metadata) = &e.metadata {
                if metadata.source.is_none() || !metadata.name.contains("TOML") {
                    reason.push_str(&format!(" (from {})", metadata.name));
                }
            }
            ConfigError::new(path.join("."), reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_has_no_problem() {
        assert_eq!(check(&Config::default()), Vec::new());
    }

    #[test]
    fn problems_name_their_keys() {
        let mut config = Config::default();
        config.storage.routes.push(crate::config::RouteConfig {
            pattern: "team/**".into(),
            store: "team".into(),
        });
        config.retention.policies.insert(
            "**".into(),
            crate::config::Rules {
                keep_days: Some(0),
                ..Default::default()
            },
        );
        config.meta.backend = MetaBackend::Postgres;
        let keys: Vec<String> = check(&config).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["storage.routes", "meta.url", "retention.policies.\"**\""]);
    }
}
