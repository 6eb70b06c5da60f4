//! The cache's size cap (`proxy.max_bytes`): when the images pulled through
//! add up to more, the least recently used ones are evicted (their
//! manifests and tags; garbage collection reclaims the blobs after its
//! grace period, as for any deletion). A full cache evicts; it never
//! refuses a pull.
//!
//! An image's size is the inventory's (its manifest and blobs, and its
//! children for an index), so blobs shared between cached images count once
//! per image: the cap is reached a little early, never late. Only
//! `mirrored` content is evicted; preloaded and imported snapshots are what
//! an operator put there on purpose.

use std::collections::HashMap;

use berth_oci::{Digest, Reference, RepoName};

use crate::lifecycle::inventory::{Cursor, InventoryQuery};
use crate::lifecycle::Lifecycle;
use crate::registry::{Registry, RegistryError};

/// What an eviction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Eviction {
    /// Bytes of cached images before the pass.
    pub cached_bytes: u64,
    pub images_evicted: u64,
    pub bytes_evicted: u64,
}

/// Why an eviction pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvictionError {
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One cached manifest: where, how big, when last used.
struct Cached {
    repo: String,
    digest: Digest,
    size: u64,
    last_used_ms: i64,
}

/// Evicts least recently used cached images until they add up to at most `max_bytes`.
pub async fn evict_over_cap(
    lifecycle: &Lifecycle,
    registry: &Registry,
    max_bytes: u64,
) -> Result<Eviction, EvictionError> {
    // Pulls are gathered in memory for a second or so: the ones not yet
    // written would otherwise leave an image just pulled looking unused.
    registry.flush_pulls().await?;
    let mut by_manifest: HashMap<(String, Digest), Cached> = HashMap::new();
    let mut cursor: Option<Cursor> = None;
    let everything = |_: &str| true;
    loop {
        let page = lifecycle
            .inventory(&InventoryQuery {
                repositories: None,
                provenance: Some("mirrored"),
                expiring_before_ms: None,
                limit: 1000,
                cursor: cursor.take(),
                may_see: &everything,
            })
            .await?;
        for image in page.images {
            let last_used_ms = image.last_pulled_ms.unwrap_or(0).max(image.pushed_ms);
            let key = (image.repository.clone(), image.manifest.digest.clone());
            let entry = by_manifest.entry(key).or_insert_with(|| Cached {
                repo: image.repository.clone(),
                digest: image.manifest.digest.clone(),
                size: image.manifest.total_size.unwrap_or(0),
                last_used_ms,
            });
            // A manifest under several tags was last used when any of them was.
            entry.last_used_ms = entry.last_used_ms.max(last_used_ms);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut cached: Vec<Cached> = by_manifest.into_values().collect();
    let mut report = Eviction {
        cached_bytes: cached.iter().map(|c| c.size).sum(),
        ..Eviction::default()
    };
    let mut total = report.cached_bytes;
    if total <= max_bytes {
        return Ok(report);
    }
    cached.sort_by_key(|c| c.last_used_ms);
    for victim in cached {
        if total <= max_bytes {
            break;
        }
        let Ok(repo) = victim.repo.parse::<RepoName>() else {
            continue;
        };
        match registry
            .delete_manifest(&repo, &Reference::Digest(victim.digest.clone()))
            .await
        {
            // Gone already (a retention run, another replica): it counted anyway.
            Ok(()) | Err(RegistryError::ManifestUnknown | RegistryError::NameUnknown) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(repo = %repo, digest = %victim.digest, bytes = victim.size, "evicted from the cache (proxy.max_bytes)");
        total = total.saturating_sub(victim.size);
        report.images_evicted += 1;
        report.bytes_evicted += victim.size;
    }
    Ok(report)
}
