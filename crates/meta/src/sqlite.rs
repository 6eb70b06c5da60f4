//! The embedded metadata backend: one SQLite file in WAL mode.
//!
//! All writes go through a single-connection pool, because SQLite has one
//! writer at a time anyway and this avoids lock-upgrade failures; reads use a
//! separate pool of read-only connections and never wait for writers.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::{Digest, UploadId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::sql::reads::Reads;
use crate::sql::ui::pull_day;
pub(crate) use crate::sql::{parse_digest, to_i64, to_u64};
use crate::{
    BlobRecord, LinkTouch, LinkedBlob, ManifestFacts, MetaError, MetaStore, NewManifest, PlacedBlob, Placement,
    PullRecord, Referrer, RepoUsage, Result, StoreSet, StoredManifest, TagFacts, UploadRecord, DEFAULT_STORE,
};

/// Metadata in a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteMeta {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
}

/// A JSON array of digests, for `json_each` in a query.
pub(crate) fn digest_list(digests: &[Digest]) -> String {
    serde_json::Value::from(digests.iter().map(|d| d.to_string()).collect::<Vec<_>>()).to_string()
}

fn parse_names(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|e| MetaError::Corrupt(format!("name list from the database: {e}")))
}

fn upload_record(row: &SqliteRow) -> Result<UploadRecord> {
    let id: String = row.try_get("id")?;
    Ok(UploadRecord {
        id: UploadId::parse(&id).ok_or_else(|| MetaError::Corrupt(format!("upload id {id:?}")))?,
        repo: row.try_get("repo")?,
        store: row.try_get("store")?,
        offset: to_u64(row.try_get("byte_offset")?),
        hash_state: row.try_get("hash_state")?,
        started_ms: row.try_get("started_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        owner: row.try_get("owner")?,
    })
}

const REPO_ID: &str = "(SELECT id FROM repositories WHERE name = $1)";

/// Most bytes of the database file SQLite maps into memory: 64 GiB. The
/// bundled SQLite accepts more than its default cap of 2 GiB because
/// .cargo/config.toml raises it at build time.
const MMAP_SIZE: i64 = 64 << 30;

impl SqliteMeta {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A 201 is sent only after the commit is on disk.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // 8 MiB of page cache per connection.
            .pragma("cache_size", "-8000")
            // Pages read through a memory map instead of a copy per read: scans
            // of a large registry (garbage collection, retention) read a lot.
            // The map covers the whole file of any registry (SQLite maps only
            // what the file holds). With 1 GiB of a 2.4 GB database mapped, a
            // GC sweep spent 7% of its time copying pages in with pread.
            .pragma("mmap_size", MMAP_SIZE.to_string())
            // A checkpoint every 10,000 WAL pages (about 40 MiB) rather than
            // SQLite's 1,000: a page that many commits change is written back
            // once per checkpoint, at a random place in the file. A GC sweep
            // of 500,000 blobs made the kernel write 21 GB at 1,000 pages
            // (for 3.4 GB that SQLite wrote) and 8 GB at 10,000, 20% faster.
            // The commit that crosses the mark runs the checkpoint; for
            // pushes, whose transactions are a few pages, that is about one
            // commit in a thousand.
            .pragma("wal_autocheckpoint", "10000");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteMeta { writer, reader })
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Records the blob (held by `stored_in` when it was just placed there,
    /// or already recorded when `None`: a link) and links it to `repo`.
    async fn record_blob(
        tx: &mut Transaction<'static, Sqlite>,
        repo: &str,
        digest: &Digest,
        size: u64,
        stored_in: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        let repo_id = Self::ensure_repo(tx, repo, now_ms).await?;
        // Storing or linking a blob again restarts its garbage-collection
        // grace period; a copy placed in another store joins its stores.
        sqlx::query(
            "INSERT INTO blobs (digest, size, created_ms, touched_ms, stores) VALUES ($1, $2, $3, $3, $4) \
             ON CONFLICT (digest) DO UPDATE SET touched_ms = MAX(touched_ms, excluded.touched_ms), \
             stores = CASE WHEN $5 IS NULL \
                 OR instr(',' || COALESCE(stores, 'default') || ',', ',' || $5 || ',') > 0 THEN stores \
                 ELSE COALESCE(stores, 'default') || ',' || $5 END",
        )
        .bind(digest.to_string())
        .bind(to_i64(size))
        .bind(now_ms)
        .bind(StoreSet::only(stored_in.unwrap_or(DEFAULT_STORE)).to_column())
        .bind(stored_in)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, linked_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (repo_id, digest) DO UPDATE SET linked_ms = MAX(linked_ms, excluded.linked_ms)",
        )
        .bind(repo_id)
        .bind(digest.to_string())
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub(crate) async fn repo_id(tx: &mut Transaction<'static, Sqlite>, repo: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_optional(&mut **tx)
            .await?)
    }

    /// Deletes a tag; the manifest it named counts as untagged from `now_ms`.
    pub(crate) async fn remove_tag_row(
        tx: &mut Transaction<'static, Sqlite>,
        repo_id: i64,
        tag: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let digest: Option<String> =
            sqlx::query_scalar("DELETE FROM tags WHERE repo_id = $1 AND name = $2 RETURNING manifest_digest")
                .bind(repo_id)
                .bind(tag)
                .fetch_optional(&mut **tx)
                .await?;
        let Some(digest) = digest else {
            return Ok(false);
        };
        sqlx::query("UPDATE manifests SET touched_ms = MAX(touched_ms, $3) WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
        Ok(true)
    }

    /// Deletes a manifest with its tags and references. With `release`, what
    /// it kept alive (its blobs and their links, its child manifests, its
    /// referrers and signature-schema tags' manifests) starts its
    /// garbage-collection grace period at `now_ms`.
    pub(crate) async fn remove_manifest_row(
        tx: &mut Transaction<'static, Sqlite>,
        repo_id: i64,
        digest: &Digest,
        now_ms: i64,
        release: bool,
    ) -> Result<bool> {
        let digest = digest.to_string();
        if release {
            Self::release(tx, repo_id, &digest, now_ms).await?;
        }
        // Tags and references go with it through ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM manifests WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(&digest)
            .execute(&mut **tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn release(tx: &mut Transaction<'static, Sqlite>, repo_id: i64, digest: &str, now_ms: i64) -> Result<()> {
        // One statement per kind of dependent, each answered from an index.
        let signature_tags = format!("sha256-{}", digest.strip_prefix("sha256:").unwrap_or(digest));
        sqlx::query("UPDATE manifests SET touched_ms = MAX(touched_ms, $3) WHERE repo_id = $1 AND subject = $2")
            .bind(repo_id)
            .bind(digest)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE manifests SET touched_ms = MAX(touched_ms, $3) WHERE repo_id = $1 AND digest IN \
             (SELECT child_digest FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2 \
              AND child_kind = 'manifest')",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        // `sha256-<hex>` and `sha256-<hex>.sig|.att|.sbom`, as a range of the tag index.
        sqlx::query(
            "UPDATE manifests SET touched_ms = MAX(touched_ms, $3) WHERE repo_id = $1 AND digest IN \
             (SELECT manifest_digest FROM tags WHERE repo_id = $1 AND name >= $2 AND name < $2 || '/')",
        )
        .bind(repo_id)
        .bind(&signature_tags)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE blobs SET touched_ms = MAX(touched_ms, $3) WHERE digest IN \
             (SELECT child_digest FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2 AND child_kind = 'blob')",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE repo_blobs SET linked_ms = MAX(linked_ms, $3) WHERE repo_id = $1 AND digest IN \
             (SELECT child_digest FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2 AND child_kind = 'blob')",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn ensure_repo(tx: &mut Transaction<'static, Sqlite>, repo: &str, now_ms: i64) -> Result<i64> {
        sqlx::query("INSERT INTO repositories (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(repo)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
        Ok(sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_one(&mut **tx)
            .await?)
    }
}

#[async_trait]
impl MetaStore for SqliteMeta {
    async fn repository_exists(&self, repo: &str) -> Result<bool> {
        Reads(self).repository_exists(repo).await
    }

    async fn linked_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        Reads(self).linked_blob_size(repo, digest).await
    }

    async fn linked_blob(&self, repo: &str, digest: &Digest) -> Result<Option<LinkedBlob>> {
        Reads(self).linked_blob(repo, digest).await
    }

    async fn touch_link(&self, repo: &str, digest: &Digest, at_ms: i64) -> Result<bool> {
        // The single writer orders it with the collector's deleting
        // transaction: one of them sees the other's outcome.
        let done = sqlx::query(&format!(
            "UPDATE repo_blobs SET linked_ms = MAX(linked_ms, $3) WHERE repo_id = {REPO_ID} AND digest = $2"
        ))
        .bind(repo)
        .bind(digest.to_string())
        .bind(at_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn record_touches(&self, touches: &[LinkTouch]) -> Result<()> {
        if touches.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for t in touches {
            // Links already as recent are left unwritten.
            sqlx::query(&format!(
                "UPDATE repo_blobs SET linked_ms = $3 WHERE repo_id = {REPO_ID} AND digest = $2 AND linked_ms < $3"
            ))
            .bind(&t.repo)
            .bind(t.digest.to_string())
            .bind(t.at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Reads(self).blob_size(digest).await
    }

    async fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        Reads(self).blob_record(digest).await
    }

    async fn add_blob(&self, repo: &str, digest: &Digest, size: u64, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        Self::record_blob(&mut tx, repo, digest, size, Some(DEFAULT_STORE), now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn link_blob(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<Option<u64>> {
        let mut tx = self.begin().await?;
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(size) = size else {
            return Ok(None);
        };
        Self::record_blob(&mut tx, repo, digest, to_u64(size), None, now_ms).await?;
        tx.commit().await?;
        Ok(Some(to_u64(size)))
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let done = sqlx::query(&format!(
            "DELETE FROM repo_blobs WHERE repo_id = {REPO_ID} AND digest = $2"
        ))
        .bind(repo)
        .bind(digest.to_string())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_manifest(&self, repo: &str, m: &NewManifest, tag: Option<&str>, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let repo_id = Self::ensure_repo(&mut tx, repo, now_ms).await?;
        let (must_have_blobs, must_have_children): (&[Digest], &[Digest]) = if m.fetched_on_demand {
            (&[], &[])
        } else {
            (&m.blobs, &m.children)
        };
        for blob in must_have_blobs {
            let linked: Option<i64> = sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo_id = $1 AND digest = $2")
                .bind(repo_id)
                .bind(blob.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            if linked.is_none() {
                return Err(MetaError::MissingReference(blob.clone()));
            }
        }
        for child in must_have_children {
            let present: Option<i64> = sqlx::query_scalar("SELECT 1 FROM manifests WHERE repo_id = $1 AND digest = $2")
                .bind(repo_id)
                .bind(child.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            if present.is_none() {
                return Err(MetaError::MissingReference(child.clone()));
            }
        }
        let digest = m.digest.to_string();
        // What the inventory shows as the image's size: the manifest, its blobs
        // and, for an index, what its children add up to.
        let children_total: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(total_size), 0) FROM manifests WHERE repo_id = $1 AND digest IN \
             (SELECT value FROM json_each($2))",
        )
        .bind(repo_id)
        .bind(digest_list(&m.children))
        .fetch_one(&mut *tx)
        .await?;
        let total = to_i64(m.body.len() as u64)
            .saturating_add(to_i64(m.blob_bytes))
            .saturating_add(children_total);
        let platforms = (!m.platforms.is_empty()).then(|| serde_json::Value::from(m.platforms.clone()).to_string());
        let inserted = sqlx::query(
            "INSERT INTO manifests \
             (repo_id, digest, media_type, artifact_type, subject, annotations, size, body, pushed_ms, pushed_by, \
              touched_ms, platforms, total_size, provenance) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9, $11, $12, $13) ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(&digest)
        .bind(&m.media_type)
        .bind(&m.artifact_type)
        .bind(m.subject.as_ref().map(|s| s.to_string()))
        .bind(&m.annotations_json)
        .bind(to_i64(m.body.len() as u64))
        .bind(&m.body)
        .bind(now_ms)
        .bind(&m.pushed_by)
        .bind(platforms)
        .bind(total)
        .bind(&m.provenance)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() > 0 {
            let refs = m
                .blobs
                .iter()
                .map(|d| (d, "blob"))
                .chain(m.children.iter().map(|d| (d, "manifest")));
            for (child, kind) in refs {
                sqlx::query(
                    "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, child_kind) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(repo_id)
                .bind(&digest)
                .bind(child.to_string())
                .bind(kind)
                .execute(&mut *tx)
                .await?;
            }
        } else {
            // A push of the same manifest again is a push: lifecycle rules and
            // a retention run in progress see it as new.
            sqlx::query(
                "UPDATE manifests SET pushed_ms = $3, touched_ms = $3, pushed_by = COALESCE($4, pushed_by) \
                 WHERE repo_id = $1 AND digest = $2",
            )
            .bind(repo_id)
            .bind(&digest)
            .bind(now_ms)
            .bind(&m.pushed_by)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(tag) = tag {
            // The manifest the tag leaves is untagged from now on, as far as
            // the garbage collector's grace period is concerned.
            sqlx::query(
                "UPDATE manifests SET touched_ms = $3 WHERE repo_id = $1 AND digest = \
                 (SELECT manifest_digest FROM tags WHERE repo_id = $1 AND name = $2 AND manifest_digest <> $4)",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(now_ms)
            .bind(&digest)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO tags (repo_id, name, manifest_digest, pushed_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo_id, name) DO UPDATE SET manifest_digest = excluded.manifest_digest, \
                 pushed_ms = excluded.pushed_ms",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(&digest)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn manifest_by_digest(&self, repo: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        Reads(self).manifest_by_digest(repo, digest).await
    }

    async fn manifest_by_tag(&self, repo: &str, tag: &str) -> Result<Option<StoredManifest>> {
        Reads(self).manifest_by_tag(repo, tag).await
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let Some(repo_id) = Self::repo_id(&mut tx, repo).await? else {
            return Ok(false);
        };
        let deleted = Self::remove_manifest_row(&mut tx, repo_id, digest, now_ms, true).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn delete_tag(&self, repo: &str, tag: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let Some(repo_id) = Self::repo_id(&mut tx, repo).await? else {
            return Ok(false);
        };
        let deleted = Self::remove_tag_row(&mut tx, repo_id, tag, now_ms).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn list_tags(&self, repo: &str, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        // One row holding a JSON array: sqlx moves rows one at a time between
        // threads, which dominated listings of thousands of tags.
        let names: String = sqlx::query_scalar(&format!(
            "SELECT json_group_array(name) FROM \
             (SELECT name FROM tags WHERE repo_id = {REPO_ID} AND name > $2 ORDER BY name LIMIT $3)"
        ))
        .bind(repo)
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_one(&self.reader)
        .await?;
        parse_names(&names)
    }

    async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        let names: String = sqlx::query_scalar(
            "SELECT json_group_array(name) FROM \
             (SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2)",
        )
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_one(&self.reader)
        .await?;
        parse_names(&names)
    }

    async fn repository_usage(&self) -> Result<Vec<RepoUsage>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT r.name, COUNT(*), CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM repo_blobs l \
             JOIN repositories r ON r.id = l.repo_id JOIN blobs b ON b.digest = l.digest \
             GROUP BY r.name ORDER BY r.name",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(repo, blobs, bytes)| RepoUsage {
                repo,
                blobs: u64::try_from(blobs).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
            })
            .collect())
    }

    async fn repositories_linking(&self, digest: &Digest, limit: u32) -> Result<Vec<String>> {
        let names: String = sqlx::query_scalar(
            "SELECT json_group_array(name) FROM (SELECT r.name FROM repo_blobs l \
             JOIN repositories r ON r.id = l.repo_id WHERE l.digest = $1 ORDER BY r.name LIMIT $2)",
        )
        .bind(digest.to_string())
        .bind(i64::from(limit))
        .fetch_one(&self.reader)
        .await?;
        parse_names(&names)
    }

    async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<Referrer>> {
        // `digest > ''` without a cursor: always a range on the index
        // (repo_id, subject, digest), so each page starts where the last ended.
        let rows = sqlx::query(&format!(
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests \
             WHERE repo_id = {REPO_ID} AND subject = $2 AND digest > $4 AND ($3 IS NULL OR artifact_type = $3) \
             ORDER BY digest LIMIT $5"
        ))
        .bind(repo)
        .bind(subject.to_string())
        .bind(artifact_type)
        .bind(after.map(Digest::to_string).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Referrer {
                    digest: parse_digest(row.try_get("digest")?)?,
                    media_type: row.try_get("media_type")?,
                    size: to_u64(row.try_get("size")?),
                    artifact_type: row.try_get("artifact_type")?,
                    annotations_json: row.try_get("annotations")?,
                })
            })
            .collect()
    }

    async fn record_pulls(&self, pulls: &[PullRecord]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for p in pulls {
            sqlx::query(&format!(
                "UPDATE manifests SET pull_count = pull_count + $3, \
                 last_pulled_ms = MAX(COALESCE(last_pulled_ms, $4), $4) \
                 WHERE repo_id = {REPO_ID} AND digest = $2"
            ))
            .bind(&p.repo)
            .bind(p.digest.to_string())
            .bind(to_i64(p.count))
            .bind(p.last_ms)
            .execute(&mut *tx)
            .await?;
            if let Some(tag) = &p.tag {
                // Only while the tag still names the pulled manifest.
                sqlx::query(&format!(
                    "UPDATE tags SET pull_count = pull_count + $4, \
                     last_pulled_ms = MAX(COALESCE(last_pulled_ms, $5), $5) \
                     WHERE repo_id = {REPO_ID} AND name = $2 AND manifest_digest = $3"
                ))
                .bind(&p.repo)
                .bind(tag)
                .bind(p.digest.to_string())
                .bind(to_i64(p.count))
                .bind(p.last_ms)
                .execute(&mut *tx)
                .await?;
            }
            if p.count == 0 {
                continue;
            }
            sqlx::query(
                "INSERT INTO daily_pulls (repo_id, day, pulls) SELECT id, $2, $3 FROM repositories WHERE name = $1 \
                 ON CONFLICT (repo_id, day) DO UPDATE SET pulls = daily_pulls.pulls + excluded.pulls",
            )
            .bind(&p.repo)
            .bind(pull_day(p.last_ms))
            .bind(to_i64(p.count))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn manifest_facts(&self, repo: &str, digest: &Digest) -> Result<Option<ManifestFacts>> {
        Reads(self).manifest_facts(repo, digest).await
    }

    async fn tag_facts(&self, repo: &str, tag: &str) -> Result<Option<TagFacts>> {
        Reads(self).tag_facts(repo, tag).await
    }

    async fn open_uploads_of(&self, owner: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE owner = $1")
            .bind(owner)
            .fetch_one(&self.reader)
            .await?;
        Ok(to_u64(n))
    }

    async fn create_upload(&self, u: &UploadRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads (id, repo, store, byte_offset, hash_state, started_ms, updated_ms, owner) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(u.id.as_str())
        .bind(&u.repo)
        .bind(&u.store)
        .bind(to_i64(u.offset))
        .bind(&u.hash_state)
        .bind(u.started_ms)
        .bind(u.updated_ms)
        .bind(&u.owner)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>> {
        let row = sqlx::query("SELECT * FROM uploads WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(upload_record).transpose()
    }

    async fn advance_upload(
        &self,
        id: &UploadId,
        from_offset: u64,
        to_offset: u64,
        hash_state: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET byte_offset = $1, hash_state = $2, updated_ms = $3 WHERE id = $4 AND byte_offset = $5",
        )
        .bind(to_i64(to_offset))
        .bind(hash_state)
        .bind(now_ms)
        .bind(id.as_str())
        .bind(to_i64(from_offset))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn complete_upload(
        &self,
        id: &UploadId,
        repo: &str,
        digest: &Digest,
        size: u64,
        store: &str,
        now_ms: i64,
        place: Placement<'_>,
    ) -> Result<()> {
        // The write transaction is also the lock the garbage collector takes to
        // delete a blob, so a blob file is never placed (or found in place)
        // while it is being deleted.
        let mut tx = self.begin().await?;
        place.await.map_err(MetaError::Placement)?;
        Self::record_blob(&mut tx, repo, digest, size, Some(store), now_ms).await?;
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn place_blobs(&self, blobs: &[PlacedBlob], now_ms: i64, place: Placement<'_>) -> Result<()> {
        // The write lock, as for one upload: the garbage collector deletes
        // no blob while these are put in place.
        let mut tx = self.begin().await?;
        place.await.map_err(MetaError::Placement)?;
        for blob in blobs {
            Self::record_blob(&mut tx, &blob.repo, &blob.digest, blob.size, Some(&blob.store), now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stale_uploads(&self, before_ms: i64, limit: u32) -> Result<Vec<UploadRecord>> {
        let rows = sqlx::query("SELECT * FROM uploads WHERE updated_ms < $1 ORDER BY updated_ms LIMIT $2")
            .bind(before_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(upload_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        crate::conformance::run_all(&meta).await;
    }

    #[tokio::test]
    async fn lifecycle_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        crate::conformance::run_lifecycle(&meta).await;
    }

    #[tokio::test]
    async fn access_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        crate::conformance::run_access(&meta).await;
    }

    #[tokio::test]
    async fn ui_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        crate::conformance::run_ui(&meta).await;
    }

    #[tokio::test]
    async fn webhook_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        crate::conformance::run_webhooks(&meta).await;
    }

    /// A database written by an earlier release keeps its blobs and links when
    /// 0005 rebuilds those tables, and its foreign keys still hold.
    #[tokio::test]
    async fn upgrading_from_0004_keeps_blobs_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let all = sqlx::migrate!("./migrations/sqlite");
        let up_to_0004 = sqlx::migrate::Migrator {
            migrations: all.migrations.iter().filter(|m| m.version <= 4).cloned().collect(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        let d = Digest::sha256_of(b"kept");
        {
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            up_to_0004.run(&pool).await.unwrap();
            sqlx::query("INSERT INTO repositories (id, name, created_ms) VALUES (7, 'a/b', 1)")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO blobs (digest, size, created_ms, touched_ms) VALUES ($1, 5, 2, 3)")
                .bind(d.to_string())
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO repo_blobs (repo_id, digest, linked_ms) VALUES (7, $1, 4)")
                .bind(d.to_string())
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let meta = SqliteMeta::open(&path).await.unwrap();
        assert_eq!(meta.linked_blob_size("a/b", &d).await.unwrap(), Some(5));
        let (touched, linked): (i64, i64) =
            sqlx::query_as("SELECT b.touched_ms, l.linked_ms FROM blobs b JOIN repo_blobs l USING (digest)")
                .fetch_one(&meta.reader)
                .await
                .unwrap();
        assert_eq!((touched, linked), (3, 4));
        let rebuilt: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%WITHOUT ROWID' \
             AND name IN ('blobs', 'repo_blobs', 'manifests', 'tags') ORDER BY name",
        )
        .fetch_all(&meta.reader)
        .await
        .unwrap();
        assert_eq!(rebuilt, ["blobs", "repo_blobs"]);
        let violations = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&meta.reader)
            .await
            .unwrap();
        assert!(violations.is_empty());
        // The link's foreign key still points at the rebuilt blobs table.
        let orphan = sqlx::query("INSERT INTO repo_blobs (repo_id, digest, linked_ms) VALUES (7, 'sha256:none', 1)")
            .execute(&meta.writer)
            .await;
        assert!(orphan.is_err());
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let d = Digest::sha256_of(b"x");
        {
            let meta = SqliteMeta::open(&path).await.unwrap();
            meta.add_blob("a/b", &d, 1, 1).await.unwrap();
        }
        let meta = SqliteMeta::open(&path).await.unwrap();
        assert_eq!(meta.linked_blob_size("a/b", &d).await.unwrap(), Some(1));
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&meta.reader)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// SQLite silently lowers `mmap_size` to the cap it was built with; the
    /// cap comes from .cargo/config.toml, which a build could miss.
    #[tokio::test]
    async fn the_whole_database_can_be_memory_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        for pool in [&meta.reader, &meta.writer] {
            let mapped: i64 = sqlx::query_scalar("PRAGMA mmap_size").fetch_one(pool).await.unwrap();
            assert_eq!(mapped, MMAP_SIZE, "the bundled SQLite's cap on mmap_size is too low");
        }
    }
}
