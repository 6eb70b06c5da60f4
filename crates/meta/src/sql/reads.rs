//! The registry's hot-path reads, the same on SQLite and PostgreSQL: each
//! backend's [`MetaStore`](crate::MetaStore) hands these calls to [`Reads`].
//!
//! The statements are named so that PostgreSQL's test of their plans
//! (`postgres::tests::hot_paths_use_indexes`) runs exactly these.

use berth_oci::Digest;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::{parse_digest, to_u64, Dialect};
use crate::{BlobRecord, LinkedBlob, ManifestFacts, Result, StoreSet, StoredManifest, TagFacts};

pub(crate) const REPOSITORY_EXISTS: &str = "SELECT id FROM repositories WHERE name = $1";
pub(crate) const LINKED_BLOB_SIZE: &str = "SELECT b.size FROM repo_blobs l JOIN blobs b ON b.digest = l.digest \
     WHERE l.repo_id = (SELECT id FROM repositories WHERE name = $1) AND l.digest = $2";
pub(crate) const BLOB_SIZE: &str = "SELECT size FROM blobs WHERE digest = $1";
pub(crate) const LINKED_BLOB: &str = "SELECT b.size, b.stores, l.linked_ms FROM repo_blobs l \
     JOIN blobs b ON b.digest = l.digest \
     WHERE l.repo_id = (SELECT id FROM repositories WHERE name = $1) AND l.digest = $2";
pub(crate) const BLOB_RECORD: &str = "SELECT size, stores FROM blobs WHERE digest = $1";
pub(crate) const MANIFEST_BY_DIGEST: &str = "SELECT digest, media_type, body FROM manifests \
     WHERE repo_id = (SELECT id FROM repositories WHERE name = $1) AND digest = $2";
pub(crate) const MANIFEST_BY_TAG: &str = "SELECT m.digest, m.media_type, m.body FROM tags t \
     JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest \
     WHERE t.repo_id = (SELECT id FROM repositories WHERE name = $1) AND t.name = $2";
pub(crate) const MANIFEST_FACTS: &str = "SELECT provenance, pushed_by, pushed_ms, last_pulled_ms, pull_count \
     FROM manifests WHERE repo_id = (SELECT id FROM repositories WHERE name = $1) AND digest = $2";
pub(crate) const TAG_FACTS: &str = "SELECT manifest_digest, pushed_ms, last_pulled_ms, pull_count FROM tags \
     WHERE repo_id = (SELECT id FROM repositories WHERE name = $1) AND name = $2";

/// The columns of [`MANIFEST_FACTS`]: provenance, pushed_by, pushed_ms,
/// last_pulled_ms, pull_count.
type ManifestFactsRow = (String, Option<String>, i64, Option<i64>, i64);

/// The hot-path reads of the store `D`.
pub(crate) struct Reads<'a, D>(pub &'a D);

// The bounds say that the dialect's database runs statements and knows the
// types bound and read here (rows are read as tuples of them).
impl<D> Reads<'_, D>
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> String: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'r> i64: Decode<'r, D::Db> + Type<D::Db>,
    for<'r> Vec<u8>: Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
{
    pub(crate) async fn repository_exists(&self, repo: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(REPOSITORY_EXISTS)
            .bind(repo)
            .fetch_optional(self.0.reader())
            .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn linked_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(LINKED_BLOB_SIZE)
            .bind(repo)
            .bind(digest.to_string())
            .fetch_optional(self.0.reader())
            .await?;
        Ok(size.map(to_u64))
    }

    pub(crate) async fn linked_blob(&self, repo: &str, digest: &Digest) -> Result<Option<LinkedBlob>> {
        let row: Option<(i64, Option<String>, i64)> = sqlx::query_as(LINKED_BLOB)
            .bind(repo)
            .bind(digest.to_string())
            .fetch_optional(self.0.reader())
            .await?;
        Ok(row.map(|(size, stores, linked_ms)| LinkedBlob {
            record: blob_record((size, stores)),
            linked_ms,
        }))
    }

    pub(crate) async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(BLOB_SIZE)
            .bind(digest.to_string())
            .fetch_optional(self.0.reader())
            .await?;
        Ok(size.map(to_u64))
    }

    pub(crate) async fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as(BLOB_RECORD)
            .bind(digest.to_string())
            .fetch_optional(self.0.reader())
            .await?;
        Ok(row.map(blob_record))
    }

    pub(crate) async fn manifest_by_digest(&self, repo: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        let row: Option<(String, String, Vec<u8>)> = sqlx::query_as(MANIFEST_BY_DIGEST)
            .bind(repo)
            .bind(digest.to_string())
            .fetch_optional(self.0.reader())
            .await?;
        row.map(stored_manifest).transpose()
    }

    pub(crate) async fn manifest_by_tag(&self, repo: &str, tag: &str) -> Result<Option<StoredManifest>> {
        let row: Option<(String, String, Vec<u8>)> = sqlx::query_as(MANIFEST_BY_TAG)
            .bind(repo)
            .bind(tag)
            .fetch_optional(self.0.reader())
            .await?;
        row.map(stored_manifest).transpose()
    }

    pub(crate) async fn manifest_facts(&self, repo: &str, digest: &Digest) -> Result<Option<ManifestFacts>> {
        let row: Option<ManifestFactsRow> = sqlx::query_as(MANIFEST_FACTS)
            .bind(repo)
            .bind(digest.to_string())
            .fetch_optional(self.0.reader())
            .await?;
        Ok(row.map(
            |(provenance, pushed_by, pushed_ms, last_pulled_ms, pull_count)| ManifestFacts {
                provenance,
                pushed_by,
                pushed_ms,
                last_pulled_ms,
                pull_count: to_u64(pull_count),
            },
        ))
    }

    pub(crate) async fn tag_facts(&self, repo: &str, tag: &str) -> Result<Option<TagFacts>> {
        let row: Option<(String, i64, Option<i64>, i64)> = sqlx::query_as(TAG_FACTS)
            .bind(repo)
            .bind(tag)
            .fetch_optional(self.0.reader())
            .await?;
        row.map(|(digest, pushed_ms, last_pulled_ms, pull_count)| {
            Ok(TagFacts {
                digest: parse_digest(&digest)?,
                pushed_ms,
                last_pulled_ms,
                pull_count: to_u64(pull_count),
            })
        })
        .transpose()
    }
}

fn blob_record((size, stores): (i64, Option<String>)) -> BlobRecord {
    BlobRecord {
        size: to_u64(size),
        stores: StoreSet::from_column(stores),
    }
}

fn stored_manifest((digest, media_type, body): (String, String, Vec<u8>)) -> Result<StoredManifest> {
    Ok(StoredManifest {
        digest: parse_digest(&digest)?,
        media_type,
        body,
    })
}
