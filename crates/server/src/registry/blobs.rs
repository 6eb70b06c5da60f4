//! Reading, mounting and unlinking blobs of a repository.
//!
//! A blob may be held by several named stores (see [`super::stores`]): reads
//! use the repository's route store when it holds a copy, else another that
//! does; a mount into a repository whose route store holds no copy makes one.

use std::ops::Range;

use berth_meta::BlobRecord;
use berth_oci::headers::ByteRange;
use berth_oci::{Digest, RepoName};
use berth_storage::{ByteStream, StorageError};

use super::stores::NamedStore;
use super::touches::Touch;
use super::{Registry, RegistryError, Result};

/// A blob ready to be sent: its total size, the range served and the bytes.
pub struct BlobContent {
    pub size: u64,
    pub range: Option<Range<u64>>,
    pub body: ByteStream,
}

impl Registry {
    /// The size of a blob linked to `repo` (a read: it touches the link).
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        Ok(self.linked_blob(repo, digest).await?.size)
    }

    /// The size of a blob the registry holds (in any repository), or `None`.
    /// Not a read of the blob: no link is touched.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.meta.blob_size(digest).await?)
    }

    /// Whether the blob is linked to `repo`. Not a read of the blob: the
    /// link's garbage-collection grace period does not start again.
    pub async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.meta.linked_blob_size(repo.as_str(), digest).await?.is_some())
    }

    /// Reaches the metadata store with a request that changes nothing.
    pub async fn check_database(&self) -> Result<()> {
        self.meta.list_repositories(None, 1).await?;
        Ok(())
    }

    /// Reaches the default blob store with a request that changes nothing.
    /// Other stores are left out: one team's unreachable bucket must not
    /// take every replica out of service for everyone.
    pub async fn check_blob_store(&self) -> Result<()> {
        // Any digest does: a missing blob is an answer, an unreachable store is not.
        self.stores
            .default_store()
            .store()
            .stat(&Digest::sha256_of(b"berth readiness probe"))
            .await?;
        Ok(())
    }

    /// The record of a blob linked to `repo`, read by a client: the link's
    /// garbage-collection grace period starts again (see [`super::touches`]).
    async fn linked_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobRecord> {
        let linked = self
            .meta
            .linked_blob(repo.as_str(), digest)
            .await?
            .ok_or(RegistryError::BlobUnknown)?;
        let now = self.now_ms();
        if self.touches.touch(repo.as_str(), digest, linked.linked_ms, now) == Touch::WriteNow
            && !self.meta.touch_link(repo.as_str(), digest, now).await?
        {
            // Collected since it was read: as if the read came after.
            return Err(RegistryError::BlobUnknown);
        }
        Ok(linked.record)
    }

    /// The configured stores holding a copy of the blob, best first for a
    /// read in `repo`, or why there is none.
    pub(super) fn readers(&self, repo: Option<&RepoName>, record: &BlobRecord) -> Result<Vec<&NamedStore>> {
        let readers = self.stores.readers(repo.map(|r| r.as_str()), &record.stores);
        if readers.is_empty() {
            return Err(RegistryError::StoreNotConfigured {
                stores: record.stores.to_string(),
            });
        }
        Ok(readers)
    }

    /// Where the client may download a blob linked to `repo` straight from
    /// the blob store, when the store it is read from redirects downloads
    /// and can say.
    pub async fn blob_download_url(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.stores.any_redirects() {
            return Ok(None);
        }
        let record = self.linked_blob(repo, digest).await?;
        let readers = self.readers(Some(repo), &record)?;
        match readers.first() {
            Some(store) if store.redirects() => Ok(store.store().download_url(digest).await?),
            _ => Ok(None),
        }
    }

    /// Whether a blob store may send clients elsewhere for a blob's bytes
    /// (then [`Registry::blob_download_url`] comes before [`Registry::open_blob`]).
    pub fn redirects_blobs(&self) -> bool {
        self.stores.any_redirects()
    }

    /// Opens a blob linked to `repo`, or the requested byte range of it.
    pub async fn open_blob(&self, repo: &RepoName, digest: &Digest, wanted: Option<ByteRange>) -> Result<BlobContent> {
        let record = self.linked_blob(repo, digest).await?;
        let size = record.size;
        let range = match wanted {
            None => None,
            Some(r) => Some(r.resolve(size).ok_or(RegistryError::RangeNotSatisfiable { size })?),
        };
        for store in self.readers(Some(repo), &record)? {
            match store.store().get(digest, range.clone()).await {
                Ok(body) => return Ok(BlobContent { size, range, body }),
                // Another store may still hold its copy.
                Err(StorageError::BlobNotFound) => tracing::error!(
                    %digest,
                    store = store.name(),
                    "blob is recorded in the database but missing from the blob store"
                ),
                Err(other) => return Err(other.into()),
            }
        }
        Err(RegistryError::BlobUnknown)
    }

    /// Leads the work named `job` among the replicas sharing the metadata
    /// store (one fetch of a blob from an upstream, say), or `None` while
    /// another replica leads it.
    pub async fn lead(&self, job: &str) -> Result<Option<berth_meta::JobLease>> {
        Ok(self.meta.lead_job(job).await?)
    }

    /// Removes the blob's link from `repo`; the bytes stay until garbage collection.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.meta.unlink_blob(repo.as_str(), digest).await? {
            self.publish(
                super::events::Action::Delete,
                super::events::Target {
                    repository: repo.to_string(),
                    digest: digest.clone(),
                    media_type: None,
                    size: None,
                    tag: None,
                },
            );
            self.events.settle().await;
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown)
        }
    }

    /// Repositories holding the blob (the first hundred by name), for a mount
    /// that names no source.
    pub async fn repositories_with_blob(&self, digest: &Digest) -> Result<Vec<RepoName>> {
        let names = self.meta.repositories_linking(digest, 100).await?;
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// Links a blob into `repo`: from `from` when it is linked there, or from
    /// anywhere in the registry when `from` is absent. When `repo`'s route
    /// store holds no copy, the bytes are copied into it first (once: the
    /// next mount finds the copy). Returns false when there is nothing to mount.
    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        if let Some(from) = from {
            if self.meta.linked_blob_size(from.as_str(), digest).await?.is_none() {
                return Ok(false);
            }
        }
        let Some(record) = self.meta.blob_record(digest).await? else {
            return Ok(false);
        };
        let target = self.stores.route(repo.as_str());
        if !record.stores.contains(target.name()) {
            return self.copy_blob(repo, digest, target).await;
        }
        Ok(self
            .meta
            .link_blob(repo.as_str(), digest, self.now_ms())
            .await?
            .is_some())
    }
}
