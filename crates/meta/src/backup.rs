//! Online backup of the embedded metadata database: a consistent copy taken
//! with `VACUUM INTO` while `berth serve` keeps reading and writing it, and
//! what `berth backup` asks of the copy afterwards.
//!
//! `VACUUM INTO` reads the source inside one read transaction, so the copy
//! is the database as of one commit, whatever is written meanwhile; in WAL
//! mode that read blocks no writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::sql::to_u64;
use crate::{MetaError, StoreSet};

/// What can go wrong taking a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no metadata database at {0}: not the data directory of an embedded installation")]
    NoSource(PathBuf),
    #[error("{0} exists already; a snapshot is written into a new file")]
    TargetExists(PathBuf),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl From<sqlx::Error> for SnapshotError {
    fn from(e: sqlx::Error) -> Self {
        SnapshotError::Meta(MetaError::Db(e))
    }
}

/// One blob the snapshot records.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotBlob {
    pub digest: String,
    pub size: u64,
    pub stores: StoreSet,
}

/// What the snapshot holds, for the backup's manifest.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SnapshotCounts {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
}

/// The copy of a metadata database made by [`Snapshot::take`], open for the
/// few changes a backup makes to it.
#[derive(Debug)]
pub struct Snapshot {
    pool: SqlitePool,
}

impl Snapshot {
    /// Copies the database `source` (the `berth.db` of a data directory,
    /// which a server may be using) into the new file `target`.
    pub async fn take(source: &Path, target: &Path) -> Result<Snapshot, SnapshotError> {
        if !source.is_file() {
            return Err(SnapshotError::NoSource(source.to_path_buf()));
        }
        if target.exists() {
            return Err(SnapshotError::TargetExists(target.to_path_buf()));
        }
        // Read-only: a backup must not be able to change what it copies.
        // The server's busy timeout, for the moment a checkpoint holds a lock.
        let options = SqliteConnectOptions::new()
            .filename(source)
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let source_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let target_name = target
            .to_str()
            .ok_or_else(|| MetaError::Corrupt(format!("{} is not a UTF-8 path", target.display())))?;
        let copied = sqlx::query("VACUUM INTO $1")
            .bind(target_name)
            .execute(&source_pool)
            .await;
        source_pool.close().await;
        copied?;
        // The copy is nobody's live database: a rollback journal leaves one
        // file behind when it is closed, where WAL would leave three while open.
        let options = SqliteConnectOptions::new()
            .filename(target)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Delete)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Snapshot { pool })
    }

    /// Up to `limit` blobs whose digest sorts after `after`, in digest order.
    pub async fn blobs_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<SnapshotBlob>, MetaError> {
        let rows = sqlx::query(
            "SELECT digest, size, stores FROM blobs WHERE $1 IS NULL OR digest > $1 ORDER BY digest LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SnapshotBlob {
                    digest: row.try_get("digest")?,
                    size: to_u64(row.try_get("size")?),
                    stores: StoreSet::from_column(row.try_get("stores")?),
                })
            })
            .collect()
    }

    /// Whether a manifest of the snapshot names the blob as its config or a
    /// layer; garbage collection never deletes such a blob.
    pub async fn is_referenced(&self, digest: &str) -> Result<bool, MetaError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM manifest_refs WHERE child_digest = $1 AND child_kind = 'blob' LIMIT 1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Removes a blob that no manifest references (and the repositories'
    /// links to it) from the copy: garbage collection deleted its file after
    /// the snapshot was taken.
    pub async fn forget_blob(&self, digest: &str) -> Result<(), MetaError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM repo_blobs WHERE digest = $1")
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blobs WHERE digest = $1")
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the upload sessions from the copy, whose bytes are not part
    /// of a backup; clients restart an upload whose session is unknown.
    pub async fn forget_uploads(&self) -> Result<u64, MetaError> {
        let done = sqlx::query("DELETE FROM uploads").execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// How many repositories, manifests, tags and blobs the copy holds.
    pub async fn counts(&self) -> Result<SnapshotCounts, MetaError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM repositories) AS repositories, \
                    (SELECT COUNT(*) FROM manifests) AS manifests, \
                    (SELECT COUNT(*) FROM tags) AS tags, \
                    (SELECT COUNT(*) FROM blobs) AS blobs, \
                    (SELECT COALESCE(SUM(size), 0) FROM blobs) AS blob_bytes",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(SnapshotCounts {
            repositories: to_u64(row.try_get("repositories")?),
            manifests: to_u64(row.try_get("manifests")?),
            tags: to_u64(row.try_get("tags")?),
            blobs: to_u64(row.try_get("blobs")?),
            blob_bytes: to_u64(row.try_get("blob_bytes")?),
        })
    }

    /// Checks the copy's structure (`PRAGMA quick_check`: every page and
    /// record well-formed, without the full index cross-check) and closes it.
    pub async fn finish(self) -> Result<(), MetaError> {
        let verdict: String = sqlx::query_scalar("PRAGMA quick_check").fetch_one(&self.pool).await?;
        self.pool.close().await;
        if verdict != "ok" {
            return Err(MetaError::Corrupt(format!(
                "the copy fails its integrity check: {verdict}"
            )));
        }
        Ok(())
    }
}
