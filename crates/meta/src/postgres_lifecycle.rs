//! [`LifecycleStore`] on PostgreSQL.
//!
//! Every removal takes the exclusive advisory lock of what it removes before
//! it re-checks that the thing is still unused, and keeps it until commit;
//! pushes hold the shared lock of what they rely on (see the `postgres`
//! module). The re-checks also lock the rows they pass with `FOR UPDATE`, so a
//! pull flush lands either before the re-check or after the removal. The
//! scans that find candidates take no locks: whatever they return is checked
//! again under the lock.
//!
//! The garbage collector's removals go in chunks of at most [`LOCK_BATCH`]
//! keys per transaction: advisory locks live in the server's shared lock
//! table, sized for about `max_locks_per_transaction` (64) per connection.

use std::collections::HashMap;

use async_trait::async_trait;
use berth_oci::Digest;
use sqlx::Row;

use crate::access::Audit;
use crate::lifecycle::{
    BlobFiles, FileRemover, LifecycleStore, LinkKey, ManifestState, OrphanedReferrerTag, PlannedRemoval, PolicyRecord,
    Pretend, RecordedBlob, Removal, RepoState, TagState, UntaggedManifest, UnusedBlob,
};
use crate::postgres::{digest_strings, lock, parse_digest, retrying, to_u64, LockKey, LockMode, PgTx};
use crate::sql::access::write_audit;
use crate::sql::policies::Policies;
use crate::{MetaError, PgMeta, Result, StoreSet};

/// Most advisory locks one garbage-collection transaction takes.
const LOCK_BATCH: usize = 1000;

/// What a dry run pretends is gone, as `repo_id|digest` strings: `NOT IN` a
/// sub-select of them is hashed once per query.
fn pretend_list(gone: Pretend<'_>) -> Vec<String> {
    gone.iter().map(|(id, d)| format!("{id}|{d}")).collect()
}

fn unused_blob(row: &sqlx::postgres::PgRow) -> Result<UnusedBlob> {
    Ok(UnusedBlob {
        digest: parse_digest(row.try_get("digest")?)?,
        size: to_u64(row.try_get("size")?),
        links: to_u64(row.try_get("links")?),
        stores: StoreSet::from_column(row.try_get("stores")?),
    })
}

impl PgMeta {
    /// Applies one removal if its preconditions hold; the caller holds its locks.
    async fn apply_removal(
        tx: &mut PgTx,
        repo: &str,
        repo_id: i64,
        planned: &PlannedRemoval,
        audit: &Audit,
    ) -> Result<bool> {
        let detail = |digest: &Digest| {
            serde_json::json!({"rule": planned.rule, "reason": planned.reason, "digest": digest.to_string()})
                .to_string()
        };
        match &planned.removal {
            Removal::Tag {
                name,
                digest,
                pushed_ms,
                last_pulled_ms,
                follows,
            } => {
                let unchanged: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM tags WHERE repo_id = $1 AND name = $2 AND manifest_digest = $3 \
                     AND pushed_ms = $4 AND last_pulled_ms IS NOT DISTINCT FROM $5::bigint \
                     AND ($6::text IS NULL OR NOT EXISTS \
                          (SELECT 1 FROM manifests s WHERE s.repo_id = $1 AND s.digest = $6::text)) \
                     FOR UPDATE",
                )
                .bind(repo_id)
                .bind(name)
                .bind(digest.to_string())
                .bind(pushed_ms)
                .bind(last_pulled_ms)
                .bind(follows.as_ref().map(Digest::to_string))
                .fetch_optional(&mut **tx)
                .await?;
                if unchanged.is_none() || !Self::remove_tag_row(tx, repo_id, name, audit.at_ms).await? {
                    return Ok(false);
                }
                write_audit(tx, audit, "tag.delete", &format!("{repo}:{name}"), Some(detail(digest))).await?;
                Ok(true)
            }
            Removal::Manifest {
                digest,
                pushed_ms,
                last_pulled_ms,
                untouched_since,
                collected,
            } => {
                let removable: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM manifests m WHERE m.repo_id = $1 AND m.digest = $2 \
                     AND m.pushed_ms = $3 AND m.last_pulled_ms IS NOT DISTINCT FROM $4::bigint \
                     AND ($5::bigint IS NULL OR m.touched_ms < $5) \
                     AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = $1 AND t.manifest_digest = $2) \
                     AND NOT EXISTS (SELECT 1 FROM manifest_refs p WHERE p.repo_id = $1 AND p.child_digest = $2 \
                                     AND p.child_kind = 'manifest') \
                     AND (m.subject IS NULL OR NOT EXISTS \
                          (SELECT 1 FROM manifests s WHERE s.repo_id = $1 AND s.digest = m.subject)) \
                     FOR UPDATE OF m",
                )
                .bind(repo_id)
                .bind(digest.to_string())
                .bind(pushed_ms)
                .bind(last_pulled_ms)
                .bind(untouched_since)
                .fetch_optional(&mut **tx)
                .await?;
                if removable.is_none()
                    || !Self::remove_manifest_row(tx, repo_id, digest, audit.at_ms, !collected).await?
                {
                    return Ok(false);
                }
                write_audit(
                    tx,
                    audit,
                    "manifest.delete",
                    &format!("{repo}@{digest}"),
                    Some(detail(digest)),
                )
                .await?;
                Ok(true)
            }
        }
    }

    async fn remove_once(&self, repo: &str, removals: &[PlannedRemoval], audit: &Audit) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let Some(repo_id) = Self::repo_id(&mut tx, repo).await? else {
            return Ok(vec![false; removals.len()]);
        };
        let mut keys = Vec::with_capacity(removals.len() * 2);
        let mut manifests = Vec::new();
        for planned in removals {
            match &planned.removal {
                Removal::Tag { name, follows, .. } => {
                    keys.push(LockKey::tag(repo, name));
                    // A push of the subject it follows waits, as for a referrer.
                    keys.extend(follows.iter().map(|s| LockKey::manifest(repo, &s.to_string())));
                }
                Removal::Manifest { digest, .. } => manifests.push(digest.to_string()),
            }
        }
        // A referrer goes only while its subject is absent, so a push of the
        // subject must wait too. A manifest's subject never changes, so it can
        // be read before the lock.
        let subjects: Vec<String> = sqlx::query_scalar(
            "SELECT subject FROM manifests WHERE repo_id = $1 AND digest = ANY($2) AND subject IS NOT NULL",
        )
        .bind(repo_id)
        .bind(&manifests)
        .fetch_all(&mut *tx)
        .await?;
        keys.extend(manifests.iter().chain(&subjects).map(|d| LockKey::manifest(repo, d)));
        lock(&mut tx, keys, LockMode::Exclusive).await?;
        let mut applied = Vec::with_capacity(removals.len());
        for planned in removals {
            applied.push(Self::apply_removal(&mut tx, repo, repo_id, planned, audit).await?);
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn remove_links_once(&self, links: &[LinkKey], cutoff_ms: i64) -> Result<u64> {
        let (repo_ids, digests): (Vec<i64>, Vec<String>) =
            links.iter().map(|l| (l.repo_id, l.digest.to_string())).unzip();
        let mut tx = self.pool.begin().await?;
        lock(
            &mut tx,
            digests.iter().map(|d| LockKey::blob(d)).collect(),
            LockMode::Exclusive,
        )
        .await?;
        let done = sqlx::query(
            "DELETE FROM repo_blobs l USING unnest($1::int8[], $2::text[]) AS k(repo_id, digest) \
             WHERE l.repo_id = k.repo_id AND l.digest = k.digest AND l.linked_ms < $3 \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = l.digest AND r.repo_id = l.repo_id)",
        )
        .bind(repo_ids)
        .bind(digests)
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn remove_blobs_once(
        &self,
        digests: &[Digest],
        cutoff_ms: i64,
        files: &dyn FileRemover,
    ) -> Result<Vec<UnusedBlob>> {
        let wanted = digest_strings(digests);
        let mut tx = self.pool.begin().await?;
        lock(
            &mut tx,
            wanted.iter().map(|d| LockKey::blob(d)).collect(),
            LockMode::Exclusive,
        )
        .await?;
        // Its links are all stale when nothing references it and none was
        // made within the grace period; they go with it.
        let rows = sqlx::query(
            "SELECT b.digest, b.size, (SELECT COUNT(*) FROM repo_blobs l WHERE l.digest = b.digest) AS links, \
             b.stores FROM blobs b WHERE b.digest = ANY($1) AND b.touched_ms < $2 \
             AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.linked_ms >= $2) \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = b.digest) \
             ORDER BY b.digest",
        )
        .bind(&wanted)
        .bind(cutoff_ms)
        .fetch_all(&mut *tx)
        .await?;
        let removed = rows.iter().map(unused_blob).collect::<Result<Vec<_>>>()?;
        let gone: Vec<Digest> = removed.iter().map(|b| b.digest.clone()).collect();
        let gone_strings = digest_strings(&gone);
        sqlx::query("DELETE FROM repo_blobs WHERE digest = ANY($1)")
            .bind(&gone_strings)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blobs WHERE digest = ANY($1)")
            .bind(&gone_strings)
            .execute(&mut *tx)
            .await?;
        // Files go before the commit, under the locks: should deleting them
        // fail, the records stay and the next run tries again.
        let gone_files: Vec<BlobFiles> = removed
            .iter()
            .map(|b| BlobFiles {
                digest: b.digest.clone(),
                stores: b.stores.clone(),
            })
            .collect();
        files.remove(&gone_files).await.map_err(MetaError::Placement)?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn remove_orphan_files_once(
        &self,
        store: &str,
        digests: &[Digest],
        files: &dyn FileRemover,
    ) -> Result<Vec<Digest>> {
        let wanted = digest_strings(digests);
        let mut tx = self.pool.begin().await?;
        // An upload placing one of these files holds its lock until its record is committed.
        lock(
            &mut tx,
            wanted.iter().map(|d| LockKey::blob(d)).collect(),
            LockMode::Exclusive,
        )
        .await?;
        // A file is this store's orphan unless the blob's row names the store.
        let held: std::collections::HashSet<String> =
            sqlx::query_as::<_, (String, Option<String>)>("SELECT digest, stores FROM blobs WHERE digest = ANY($1)")
                .bind(&wanted)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .filter(|(_, stores)| StoreSet::from_column(stores.clone()).contains(store))
                .map(|(digest, _)| digest)
                .collect();
        let orphans: Vec<Digest> = digests
            .iter()
            .zip(&wanted)
            .filter(|(_, s)| !held.contains(*s))
            .map(|(d, _)| d.clone())
            .collect();
        let orphan_files: Vec<BlobFiles> = orphans
            .iter()
            .map(|digest| BlobFiles {
                digest: digest.clone(),
                stores: StoreSet::only(store),
            })
            .collect();
        files.remove(&orphan_files).await.map_err(MetaError::Placement)?;
        tx.commit().await?;
        Ok(orphans)
    }

    async fn forget_unreferenced_blob_once(&self, digest: &Digest) -> Result<bool> {
        let digest = digest.to_string();
        let mut tx = self.pool.begin().await?;
        lock(&mut tx, vec![LockKey::blob(&digest)], LockMode::Exclusive).await?;
        let referenced: Option<i32> = sqlx::query_scalar("SELECT 1 FROM manifest_refs WHERE child_digest = $1 LIMIT 1")
            .bind(&digest)
            .fetch_optional(&mut *tx)
            .await?;
        if referenced.is_some() {
            return Ok(false);
        }
        sqlx::query("DELETE FROM repo_blobs WHERE digest = $1")
            .bind(&digest)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM blobs WHERE digest = $1")
            .bind(&digest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl LifecycleStore for PgMeta {
    async fn repository_state(&self, repo: &str) -> Result<Option<RepoState>> {
        // One snapshot for all three reads.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let Some(repo_id) = Self::repo_id(&mut tx, repo).await? else {
            return Ok(None);
        };
        let tag_rows = sqlx::query(
            "SELECT name, manifest_digest, pushed_ms, last_pulled_ms, pull_count FROM tags WHERE repo_id = $1",
        )
        .bind(repo_id)
        .fetch_all(&mut *tx)
        .await?;
        let manifest_rows = sqlx::query(
            "SELECT digest, media_type, artifact_type, subject, provenance, pushed_by, pushed_ms, touched_ms, \
             last_pulled_ms, pull_count, platforms, total_size FROM manifests WHERE repo_id = $1",
        )
        .bind(repo_id)
        .fetch_all(&mut *tx)
        .await?;
        let child_rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT manifest_digest, child_digest FROM manifest_refs WHERE repo_id = $1 AND child_kind = 'manifest'",
        )
        .bind(repo_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let tags = tag_rows
            .iter()
            .map(|r| {
                Ok(TagState {
                    name: r.try_get("name")?,
                    digest: parse_digest(r.try_get("manifest_digest")?)?,
                    pushed_ms: r.try_get("pushed_ms")?,
                    last_pulled_ms: r.try_get("last_pulled_ms")?,
                    pull_count: to_u64(r.try_get("pull_count")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut children: HashMap<String, Vec<Digest>> = HashMap::new();
        for (parent, child) in child_rows {
            children.entry(parent).or_default().push(parse_digest(&child)?);
        }
        let manifests = manifest_rows
            .iter()
            .map(|r| {
                let digest: String = r.try_get("digest")?;
                let subject: Option<String> = r.try_get("subject")?;
                let platforms: Option<Vec<String>> = r.try_get("platforms")?;
                let total_size: Option<i64> = r.try_get("total_size")?;
                Ok(ManifestState {
                    digest: parse_digest(&digest)?,
                    children: children.remove(&digest).unwrap_or_default(),
                    media_type: r.try_get("media_type")?,
                    artifact_type: r.try_get("artifact_type")?,
                    subject: subject.as_deref().map(parse_digest).transpose()?,
                    provenance: r.try_get("provenance")?,
                    pushed_by: r.try_get("pushed_by")?,
                    pushed_ms: r.try_get("pushed_ms")?,
                    touched_ms: r.try_get("touched_ms")?,
                    last_pulled_ms: r.try_get("last_pulled_ms")?,
                    pull_count: to_u64(r.try_get("pull_count")?),
                    platforms: platforms.unwrap_or_default(),
                    total_size: total_size.and_then(|n| u64::try_from(n).ok()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(RepoState {
            name: repo.to_string(),
            tags,
            manifests,
        }))
    }

    async fn remove(&self, repo: &str, removals: &[PlannedRemoval], audit: &Audit) -> Result<Vec<bool>> {
        retrying("remove", move || self.remove_once(repo, removals, audit)).await
    }

    async fn policies(&self) -> Result<Vec<PolicyRecord>> {
        Policies(self).all().await
    }

    async fn put_policy(&self, policy: &PolicyRecord, audit: &Audit) -> Result<()> {
        Policies(self).put(policy, audit).await
    }

    async fn delete_policy(&self, pattern: &str, audit: &Audit) -> Result<bool> {
        Policies(self).delete(pattern, audit).await
    }

    async fn sync_config_policies(&self, policies: &[PolicyRecord], audit: &Audit) -> Result<()> {
        Policies(self).sync_config(policies, audit).await
    }

    async fn stale_links(
        &self,
        cutoff_ms: i64,
        after: Option<&LinkKey>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<LinkKey>> {
        let (after_repo, after_digest) = match after {
            Some(k) => (k.repo_id, k.digest.to_string()),
            None => (i64::MIN, String::new()),
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT l.repo_id, l.digest FROM repo_blobs l \
             WHERE (l.repo_id, l.digest) > ($1, $2) AND l.linked_ms < $3 \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = l.digest AND r.repo_id = l.repo_id \
                             AND r.repo_id || '|' || r.manifest_digest NOT IN (SELECT unnest($5::text[]))) \
             AND EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = l.digest \
                         AND r.repo_id || '|' || r.manifest_digest NOT IN (SELECT unnest($5::text[]))) \
             ORDER BY l.repo_id, l.digest LIMIT $4",
        )
        .bind(after_repo)
        .bind(after_digest)
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(pretend_list(gone))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(repo_id, digest)| {
                Ok(LinkKey {
                    repo_id,
                    digest: parse_digest(&digest)?,
                })
            })
            .collect()
    }

    async fn remove_links(&self, links: &[LinkKey], cutoff_ms: i64) -> Result<u64> {
        let mut removed = 0;
        for chunk in links.chunks(LOCK_BATCH) {
            removed += retrying("remove_links", move || self.remove_links_once(chunk, cutoff_ms)).await?;
        }
        Ok(removed)
    }

    async fn unreferenced_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&Digest>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<UnusedBlob>> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size, (SELECT COUNT(*) FROM repo_blobs l WHERE l.digest = b.digest) AS links, \
             b.stores FROM blobs b WHERE b.digest > $1 AND b.touched_ms < $2 \
             AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.linked_ms >= $2) \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = b.digest \
                             AND r.repo_id || '|' || r.manifest_digest NOT IN (SELECT unnest($4::text[]))) \
             ORDER BY b.digest LIMIT $3",
        )
        .bind(after.map(|d| d.to_string()).unwrap_or_default())
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(pretend_list(gone))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(unused_blob).collect()
    }

    async fn remove_blobs(
        &self,
        digests: &[Digest],
        cutoff_ms: i64,
        files: &dyn FileRemover,
    ) -> Result<Vec<UnusedBlob>> {
        let mut removed = Vec::new();
        for chunk in digests.chunks(LOCK_BATCH) {
            // Run again only when aborted by a deadlock, which happens before
            // the files are touched.
            removed.extend(retrying("remove_blobs", move || self.remove_blobs_once(chunk, cutoff_ms, files)).await?);
        }
        Ok(removed)
    }

    async fn untagged_manifests(
        &self,
        cutoff_ms: i64,
        after: Option<(i64, &Digest)>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<UntaggedManifest>> {
        let (after_repo, after_digest) = match after {
            Some((id, d)) => (id, d.to_string()),
            None => (i64::MIN, String::new()),
        };
        let rows = sqlx::query(
            "SELECT m.repo_id, r.name, m.digest, m.pushed_ms, m.last_pulled_ms, m.touched_ms FROM manifests m \
             JOIN repositories r ON r.id = m.repo_id \
             WHERE (m.repo_id, m.digest) > ($1, $2) AND m.touched_ms < $3 \
             AND m.repo_id || '|' || m.digest NOT IN (SELECT unnest($5::text[])) \
             AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = m.repo_id AND t.manifest_digest = m.digest) \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs p WHERE p.repo_id = m.repo_id AND p.child_digest = m.digest \
                             AND p.child_kind = 'manifest' \
                             AND p.repo_id || '|' || p.manifest_digest NOT IN (SELECT unnest($5::text[]))) \
             AND (m.subject IS NULL OR NOT EXISTS \
                  (SELECT 1 FROM manifests s WHERE s.repo_id = m.repo_id AND s.digest = m.subject \
                   AND s.repo_id || '|' || s.digest NOT IN (SELECT unnest($5::text[])))) \
             ORDER BY m.repo_id, m.digest LIMIT $4",
        )
        .bind(after_repo)
        .bind(after_digest)
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(pretend_list(gone))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UntaggedManifest {
                    repo_id: r.try_get("repo_id")?,
                    repo: r.try_get("name")?,
                    digest: parse_digest(r.try_get("digest")?)?,
                    pushed_ms: r.try_get("pushed_ms")?,
                    last_pulled_ms: r.try_get("last_pulled_ms")?,
                    touched_ms: r.try_get("touched_ms")?,
                })
            })
            .collect()
    }

    async fn orphaned_referrer_tags(
        &self,
        cutoff_ms: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<OrphanedReferrerTag>> {
        let (after_id, after_name) = after.unwrap_or((i64::MIN, ""));
        // `named` is the subject a tag of the signature schema names (as the
        // planner reads it; `sha256-latest` is plain). `sha256-` holds no LIKE
        // wildcard, so that is a plain prefix.
        let rows = sqlx::query(
            "WITH f AS (SELECT t.repo_id, r.name AS repo, t.name, t.manifest_digest, t.pushed_ms, \
               t.last_pulled_ms, t.pull_count, m.pushed_ms AS m_pushed_ms, m.last_pulled_ms AS m_last_pulled_ms, \
               m.subject, \
               CASE WHEN t.name ~ '^sha256-[0-9a-f]{64}(\\.(sig|att|sbom))?$' \
                    THEN 'sha256:' || substr(t.name, 8, 64) END AS named \
               FROM tags t JOIN repositories r ON r.id = t.repo_id \
               JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest \
               WHERE (t.repo_id, t.name) > ($2, $3) AND t.pushed_ms < $1 AND m.touched_ms < $1 \
               AND (m.subject IS NOT NULL OR t.name LIKE 'sha256-%')) \
             SELECT f.*, (SELECT count(*) FROM tags o WHERE o.repo_id = f.repo_id \
                          AND o.manifest_digest = f.manifest_digest) AS manifest_tags, \
               coalesce(named, subject) AS followed \
             FROM f WHERE (named IS NOT NULL OR subject IS NOT NULL) \
               AND (named IS NULL OR NOT EXISTS \
                    (SELECT 1 FROM manifests s WHERE s.repo_id = f.repo_id AND s.digest = f.named)) \
               AND (subject IS NULL OR NOT EXISTS \
                    (SELECT 1 FROM manifests s WHERE s.repo_id = f.repo_id AND s.digest = f.subject)) \
             ORDER BY repo_id, name LIMIT $4",
        )
        .bind(cutoff_ms)
        .bind(after_id)
        .bind(after_name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OrphanedReferrerTag {
                    repo_id: r.try_get("repo_id")?,
                    repo: r.try_get("repo")?,
                    tag: TagState {
                        name: r.try_get("name")?,
                        digest: parse_digest(r.try_get("manifest_digest")?)?,
                        pushed_ms: r.try_get("pushed_ms")?,
                        last_pulled_ms: r.try_get("last_pulled_ms")?,
                        pull_count: to_u64(r.try_get("pull_count")?),
                    },
                    subject: parse_digest(r.try_get("followed")?)?,
                    manifest_pushed_ms: r.try_get("m_pushed_ms")?,
                    manifest_last_pulled_ms: r.try_get("m_last_pulled_ms")?,
                    manifest_tags: to_u64(r.try_get("manifest_tags")?),
                })
            })
            .collect()
    }

    async fn blobs_with_prefix(&self, algorithm: &str, hex_prefix: &str) -> Result<Vec<RecordedBlob>> {
        let low = format!("{algorithm}:{hex_prefix}");
        // Every hex digit sorts before `g` (the column is COLLATE "C"), so this bounds the prefix.
        let high = format!("{algorithm}:{hex_prefix}g");
        let rows: Vec<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT digest, size, stores FROM blobs WHERE digest >= $1 AND digest < $2 ORDER BY digest")
                .bind(low)
                .bind(high)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(digest, size, stores)| {
                Ok(RecordedBlob {
                    digest: parse_digest(&digest)?,
                    size: to_u64(size),
                    stores: StoreSet::from_column(stores),
                })
            })
            .collect()
    }

    async fn remove_orphan_files(
        &self,
        store: &str,
        digests: &[Digest],
        files: &dyn FileRemover,
    ) -> Result<Vec<Digest>> {
        let mut removed = Vec::new();
        for chunk in digests.chunks(LOCK_BATCH) {
            removed.extend(
                retrying("remove_orphan_files", move || {
                    self.remove_orphan_files_once(store, chunk, files)
                })
                .await?,
            );
        }
        Ok(removed)
    }

    async fn blob_users(&self, digest: &Digest) -> Result<Vec<(String, Digest)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT r.name, m.manifest_digest FROM manifest_refs m JOIN repositories r ON r.id = m.repo_id \
             WHERE m.child_digest = $1 ORDER BY r.name, m.manifest_digest",
        )
        .bind(digest.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(repo, manifest)| Ok((repo, parse_digest(&manifest)?)))
            .collect()
    }

    async fn forget_unreferenced_blob(&self, digest: &Digest) -> Result<bool> {
        retrying("forget_unreferenced_blob", move || {
            self.forget_unreferenced_blob_once(digest)
        })
        .await
    }

    async fn upload_ids(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM uploads")
            .fetch_all(&self.pool)
            .await?)
    }
}
