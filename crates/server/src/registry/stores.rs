//! The named blob stores and the routes that send repositories to them
//! ("bring your own storage").
//!
//! This owns two decisions: which store a repository's new blobs go to (its
//! route), and which store a read of a recorded blob uses (the route's when
//! it holds a copy, else the first configured one that does). The blob stores
//! know nothing of names or routes; the metadata store only records names.

use std::sync::Arc;

use berth_meta::{StoreSet, DEFAULT_STORE};
use berth_storage::BlobStore;

use crate::pattern::Pattern;

/// A blob store with the name the configuration gives it.
pub struct NamedStore {
    name: String,
    store: Arc<dyn BlobStore>,
    /// Whether downloads are answered with a redirect to the store's own URL.
    redirect: bool,
}

impl NamedStore {
    pub fn new(name: impl Into<String>, store: Arc<dyn BlobStore>, redirect: bool) -> NamedStore {
        NamedStore {
            name: name.into(),
            store,
            redirect,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn store(&self) -> &dyn BlobStore {
        self.store.as_ref()
    }

    pub fn redirects(&self) -> bool {
        self.redirect
    }
}

/// Why a set of stores and routes cannot work.
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    #[error("store name {0:?}: use lowercase letters, digits, '-' and '_', starting with a letter or digit")]
    BadName(String),
    #[error("[storage.stores.default] is not allowed: the top-level [storage] section is the store named \"default\"")]
    DefaultRedeclared,
    #[error("store {0:?} is configured twice")]
    Duplicate(String),
    #[error("route {pattern:?} sends repositories to the store {store:?}, which [storage.stores] does not name")]
    UnknownStore { pattern: String, store: String },
    #[error("route: {0}")]
    BadPattern(String),
}

/// Checks a store name of `[storage.stores.NAME]`: names are recorded
/// comma-separated in the database, so they are kept to `[a-z0-9][a-z0-9_-]*`.
pub fn check_store_name(name: &str) -> Result<(), StoreConfigError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !(first_ok && rest_ok) {
        return Err(StoreConfigError::BadName(name.to_string()));
    }
    if name == DEFAULT_STORE {
        return Err(StoreConfigError::DefaultRedeclared);
    }
    Ok(())
}

/// Every configured blob store, `default` first, and the routes among them.
pub struct BlobStores {
    /// `default` first, then the others in the order configured.
    stores: Vec<NamedStore>,
    /// (pattern, index into `stores`); the first match wins.
    routes: Vec<(Pattern, usize)>,
}

impl BlobStores {
    /// The default store, further named stores and routes as (pattern, store name).
    pub fn new(
        default: NamedStore,
        others: Vec<NamedStore>,
        routes: &[(String, String)],
    ) -> Result<BlobStores, StoreConfigError> {
        let mut stores = vec![default];
        for store in others {
            check_store_name(store.name())?;
            if stores.iter().any(|s| s.name() == store.name()) {
                return Err(StoreConfigError::Duplicate(store.name().to_string()));
            }
            stores.push(store);
        }
        let routes =
            routes
                .iter()
                .map(|(pattern, store)| {
                    let index = stores.iter().position(|s| s.name() == store).ok_or_else(|| {
                        StoreConfigError::UnknownStore {
                            pattern: pattern.clone(),
                            store: store.clone(),
                        }
                    })?;
                    Ok((Pattern::parse(pattern).map_err(StoreConfigError::BadPattern)?, index))
                })
                .collect::<Result<Vec<_>, StoreConfigError>>()?;
        Ok(BlobStores { stores, routes })
    }

    /// The store the top-level `[storage]` section configures.
    pub fn default_store(&self) -> &NamedStore {
        &self.stores[0]
    }

    /// Every configured store, `default` first.
    pub fn all(&self) -> &[NamedStore] {
        &self.stores
    }

    pub fn get(&self, name: &str) -> Option<&NamedStore> {
        self.stores.iter().find(|s| s.name() == name)
    }

    /// The store new blobs of `repo` go to: the first matching route's, else `default`.
    pub fn route(&self, repo: &str) -> &NamedStore {
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(repo))
            .map_or(self.default_store(), |(_, index)| &self.stores[*index])
    }

    /// Whether any store answers downloads with a redirect.
    pub fn any_redirects(&self) -> bool {
        self.stores.iter().any(|s| s.redirect)
    }

    /// The configured stores holding a copy of a blob, best first for a read
    /// in `repo`: the repository's route store when it holds one, then the
    /// others in configuration order. Empty when no store that holds a copy
    /// is configured.
    pub fn readers(&self, repo: Option<&str>, stores: &StoreSet) -> Vec<&NamedStore> {
        let routed = repo.map(|r| self.route(r).name());
        let mut readers: Vec<&NamedStore> = self.stores.iter().filter(|s| stores.contains(s.name())).collect();
        // A stable sort keeps configuration order behind the routed store.
        readers.sort_by_key(|s| Some(s.name()) != routed);
        readers
    }

    /// Names in `stores` that the configuration does not name.
    pub fn unconfigured<'a>(&self, stores: &'a StoreSet) -> Vec<&'a str> {
        stores.names().filter(|name| self.get(name).is_none()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_storage::FsBlobStore;

    fn fs_store(name: &str, dir: &std::path::Path) -> NamedStore {
        let store = FsBlobStore::open(dir.join(name)).expect("a store directory");
        NamedStore::new(name, Arc::new(store), false)
    }

    fn routes(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect()
    }

    #[test]
    fn the_first_matching_route_wins_and_no_match_means_default() {
        let dir = tempfile::tempdir().unwrap();
        let stores = BlobStores::new(
            fs_store(DEFAULT_STORE, dir.path()),
            vec![fs_store("a", dir.path()), fs_store("b", dir.path())],
            &routes(&[("team/special", "b"), ("team/*", "a"), ("**", "b")]),
        )
        .unwrap();
        assert_eq!(stores.route("team/special").name(), "b");
        assert_eq!(stores.route("team/app").name(), "a");
        assert_eq!(stores.route("other/app").name(), "b");
        let no_routes = BlobStores::new(fs_store(DEFAULT_STORE, dir.path()), vec![], &[]).unwrap();
        assert_eq!(no_routes.route("team/app").name(), DEFAULT_STORE);
    }

    #[test]
    fn reads_prefer_the_route_store_then_configuration_order() {
        let dir = tempfile::tempdir().unwrap();
        let stores = BlobStores::new(
            fs_store(DEFAULT_STORE, dir.path()),
            vec![fs_store("a", dir.path()), fs_store("b", dir.path())],
            &routes(&[("team/*", "b")]),
        )
        .unwrap();
        let held = StoreSet::only("a").with("b").with(DEFAULT_STORE);
        let names = |repo| -> Vec<&str> { stores.readers(repo, &held).iter().map(|s| s.name()).collect() };
        assert_eq!(names(Some("team/app")), ["b", DEFAULT_STORE, "a"]);
        assert_eq!(names(Some("other")), [DEFAULT_STORE, "a", "b"]);
        let gone = StoreSet::only("removed").with("a");
        assert_eq!(stores.readers(None, &gone).len(), 1);
        assert_eq!(stores.unconfigured(&gone), ["removed"]);
    }

    #[test]
    fn bad_names_and_unknown_stores_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Team", "-a", "a,b", "a b"] {
            assert!(
                matches!(check_store_name(bad), Err(StoreConfigError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(check_store_name("team-a_2").is_ok());
        assert!(matches!(
            check_store_name(DEFAULT_STORE),
            Err(StoreConfigError::DefaultRedeclared)
        ));
        let unknown = BlobStores::new(
            fs_store(DEFAULT_STORE, dir.path()),
            vec![],
            &routes(&[("a/*", "nowhere")]),
        );
        assert!(matches!(unknown, Err(StoreConfigError::UnknownStore { .. })));
        let bad_pattern = BlobStores::new(
            fs_store(DEFAULT_STORE, dir.path()),
            vec![],
            &routes(&[("A/*", "default")]),
        );
        assert!(matches!(bad_pattern, Err(StoreConfigError::BadPattern(_))));
    }
}
