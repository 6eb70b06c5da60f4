//! Reading, mounting and unlinking blobs of a repository.

use std::ops::Range;

use berth_oci::{Digest, RepoName};
use berth_storage::{ByteStream, StorageError};

use super::{Registry, RegistryError, Result};

/// A single byte range as asked for in a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-` or `bytes=first-last` (inclusive).
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The range within a blob of `size` bytes (end exclusive), or `None` when unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::From { first, last } => {
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                (first < size && first < end).then_some(first..end)
            }
            ByteRange::Suffix(n) => (n > 0 && size > 0).then(|| size.saturating_sub(n)..size),
        }
    }
}

/// A blob ready to be sent: its total size, the range served and the bytes.
pub struct BlobContent {
    pub size: u64,
    pub range: Option<Range<u64>>,
    pub body: ByteStream,
}

impl Registry {
    /// The size of a blob linked to `repo`.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.meta
            .linked_blob_size(repo.as_str(), digest)
            .await?
            .ok_or(RegistryError::BlobUnknown)
    }

    /// Reaches both stores with a request that changes nothing, so a load
    /// balancer can leave out a replica that cannot serve.
    pub async fn check_stores(&self) -> Result<()> {
        self.meta.list_repositories(None, 1).await?;
        // Any digest does: a missing blob is an answer, an unreachable store is not.
        self.blobs.stat(&Digest::sha256_of(b"berth readiness probe")).await?;
        Ok(())
    }

    /// Where the client may download a blob linked to `repo` straight from
    /// the blob store, when downloads are redirected and the store can say.
    pub async fn blob_download_url(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect_downloads {
            return Ok(None);
        }
        self.stat_blob(repo, digest).await?;
        Ok(self.blobs.download_url(digest).await?)
    }

    /// Opens a blob linked to `repo`, or the requested byte range of it.
    pub async fn open_blob(&self, repo: &RepoName, digest: &Digest, wanted: Option<ByteRange>) -> Result<BlobContent> {
        let size = self.stat_blob(repo, digest).await?;
        let range = match wanted {
            None => None,
            Some(r) => Some(r.resolve(size).ok_or(RegistryError::RangeNotSatisfiable { size })?),
        };
        let body = self.blobs.get(digest, range.clone()).await.map_err(|e| match e {
            StorageError::BlobNotFound => {
                tracing::error!(%digest, "blob is recorded in the database but missing from the blob store");
                RegistryError::BlobUnknown
            }
            other => other.into(),
        })?;
        Ok(BlobContent { size, range, body })
    }

    /// Removes the blob's link from `repo`; the bytes stay until garbage collection.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.meta.unlink_blob(repo.as_str(), digest).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown)
        }
    }

    /// Links a blob into `repo` without copying it: from `from` when it is
    /// linked there, or from anywhere in the registry when `from` is absent.
    /// Returns false when there is nothing to mount.
    /// Repositories holding the blob (the first hundred by name), for a mount
    /// that names no source.
    pub async fn repositories_with_blob(&self, digest: &Digest) -> Result<Vec<RepoName>> {
        let names = self.meta.repositories_linking(digest, 100).await?;
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }

    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        if let Some(from) = from {
            if self.meta.linked_blob_size(from.as_str(), digest).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(self
            .meta
            .link_blob(repo.as_str(), digest, self.now_ms())
            .await?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(
            ByteRange::From {
                first: 0,
                last: Some(9)
            }
            .resolve(100),
            Some(0..10)
        );
        assert_eq!(
            ByteRange::From {
                first: 90,
                last: Some(500)
            }
            .resolve(100),
            Some(90..100)
        );
        assert_eq!(ByteRange::From { first: 10, last: None }.resolve(100), Some(10..100));
        assert_eq!(ByteRange::From { first: 100, last: None }.resolve(100), None);
        assert_eq!(
            ByteRange::From {
                first: 5,
                last: Some(4)
            }
            .resolve(100),
            None
        );
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::Suffix(5).resolve(0), None);
    }
}
