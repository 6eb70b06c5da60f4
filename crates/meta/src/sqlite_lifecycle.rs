//! [`LifecycleStore`] on the embedded SQLite database.
//!
//! Every removal runs in a write transaction (`BEGIN IMMEDIATE`), which is
//! also the lock uploads take to place a blob file, so a re-check made here
//! cannot be overtaken by a push before the transaction commits.

use async_trait::async_trait;
use berth_oci::Digest;
use sqlx::{Row, Sqlite, Transaction};

use crate::access::Audit;
use crate::lifecycle::{
    BlobFiles, BlobSweep, FileRemover, LifecycleStore, LinkKey, ManifestState, OrphanedReferrerTag, PlannedRemoval,
    PolicyRecord, Pretend, RecordedBlob, Removal, RepoState, TagState, UntaggedManifest, UnusedBlob,
};
use crate::sql::access::write_audit;
use crate::sql::policies::Policies;
use crate::sqlite::{digest_list, parse_digest, to_u64};
use crate::{MetaError, Result, SqliteMeta, StoreSet};

/// What a dry run pretends is gone, as `repo_id|digest` strings for `json_each`.
fn pretend_list(gone: Pretend<'_>) -> String {
    serde_json::Value::from(gone.iter().map(|(id, d)| format!("{id}|{d}")).collect::<Vec<_>>()).to_string()
}

fn unused_blobs(packed: &str) -> Result<Vec<UnusedBlob>> {
    typed_rows::<(String, i64, i64, Option<String>)>(packed)?
        .into_iter()
        .map(|(digest, size, links, stores)| {
            Ok(UnusedBlob {
                digest: parse_digest(&digest)?,
                size: to_u64(size),
                links: to_u64(links),
                stores: StoreSet::from_column(stores),
            })
        })
        .collect()
}

/// Blobs nothing references, untouched and not linked since before $2, after
/// $1 in digest order, at most $3, leaving out what the manifests of the
/// pretend list $4 reference.
const UNREFERENCED_BLOBS: &str =
    "SELECT json_group_array(json_array(digest, size, links, stores)) FROM (SELECT b.digest, b.size, \
     (SELECT COUNT(*) FROM repo_blobs l WHERE l.digest = b.digest) AS links, b.stores FROM blobs b \
     WHERE b.digest > $1 AND b.touched_ms < $2 \
     AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.linked_ms >= $2) \
     AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = b.digest \
                     AND r.repo_id || '|' || r.manifest_digest NOT IN (SELECT value FROM json_each($4))) \
     ORDER BY b.digest LIMIT $3)";

/// Deletes the records of `removed` blobs and their links in `tx`, and their
/// files through `files` meanwhile: the files go before the commit, so
/// should deleting one fail, the records stay and the next run tries again.
async fn delete_blobs(
    tx: &mut Transaction<'static, Sqlite>,
    removed: &[UnusedBlob],
    files: &dyn FileRemover,
) -> Result<()> {
    let gone: Vec<Digest> = removed.iter().map(|b| b.digest.clone()).collect();
    let gone_list = digest_list(&gone);
    let records = async {
        sqlx::query("DELETE FROM repo_blobs WHERE digest IN (SELECT value FROM json_each($1))")
            .bind(&gone_list)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM blobs WHERE digest IN (SELECT value FROM json_each($1))")
            .bind(&gone_list)
            .execute(&mut **tx)
            .await?;
        Ok::<_, MetaError>(())
    };
    let gone_files = files_of(removed);
    let files = async { files.remove(&gone_files).await.map_err(MetaError::Placement) };
    tokio::try_join!(records, files)?;
    Ok(())
}

/// The files of removed blobs, in every store holding them.
fn files_of(removed: &[UnusedBlob]) -> Vec<BlobFiles> {
    removed
        .iter()
        .map(|b| BlobFiles {
            digest: b.digest.clone(),
            stores: b.stores.clone(),
        })
        .collect()
}

/// An orphaned referrer tag as packed: repository id and name, tag name,
/// digest, push, pull, pull count, the manifest's push and pull, its tag
/// count, the subject followed.
type OrphanRow = (
    i64,
    String,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    i64,
    Option<i64>,
    i64,
    String,
);

/// Rows packed by the query as one JSON array of arrays, read straight into
/// tuples: sqlx hands rows over one at a time between threads, which dominates
/// reading a repository of thousands of tags.
fn typed_rows<T: serde::de::DeserializeOwned>(json: &str) -> Result<Vec<T>> {
    serde_json::from_str(json).map_err(|e| MetaError::Corrupt(format!("packed rows: {e}")))
}

impl SqliteMeta {
    /// Applies one removal if its preconditions hold.
    async fn apply_removal(
        tx: &mut Transaction<'static, Sqlite>,
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
                let unchanged: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM tags WHERE repo_id = $1 AND name = $2 AND manifest_digest = $3 \
                     AND pushed_ms = $4 AND last_pulled_ms IS $5 \
                     AND ($6 IS NULL OR NOT EXISTS (SELECT 1 FROM manifests s WHERE s.repo_id = $1 AND s.digest = $6))",
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
                let removable: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM manifests m WHERE m.repo_id = $1 AND m.digest = $2 \
                     AND m.pushed_ms = $3 AND m.last_pulled_ms IS $4 AND ($5 IS NULL OR m.touched_ms < $5) \
                     AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = $1 AND t.manifest_digest = $2) \
                     AND NOT EXISTS (SELECT 1 FROM manifest_refs p WHERE p.repo_id = $1 AND p.child_digest = $2 \
                                     AND p.child_kind = 'manifest') \
                     AND (m.subject IS NULL OR NOT EXISTS \
                          (SELECT 1 FROM manifests s WHERE s.repo_id = $1 AND s.digest = m.subject))",
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
}

#[async_trait]
impl LifecycleStore for SqliteMeta {
    async fn repository_state(&self, repo: &str) -> Result<Option<RepoState>> {
        let mut conn = self.reader.begin().await?;
        let repo_id: Option<i64> = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(repo_id) = repo_id else {
            return Ok(None);
        };
        let tag_rows: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(name, manifest_digest, pushed_ms, last_pulled_ms, pull_count)) \
             FROM tags WHERE repo_id = $1",
        )
        .bind(repo_id)
        .fetch_one(&mut *conn)
        .await?;
        let manifest_rows: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(digest, media_type, artifact_type, subject, provenance, pushed_by, \
             pushed_ms, touched_ms, last_pulled_ms, pull_count, platforms, total_size)) \
             FROM manifests WHERE repo_id = $1",
        )
        .bind(repo_id)
        .fetch_one(&mut *conn)
        .await?;
        let child_rows: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(manifest_digest, child_digest)) FROM manifest_refs \
             WHERE repo_id = $1 AND child_kind = 'manifest'",
        )
        .bind(repo_id)
        .fetch_one(&mut *conn)
        .await?;
        conn.commit().await?;

        // Typed rows straight from the packed JSON: a repository of thousands
        // of tags is read once per run, and generic JSON values cost more than the query.
        type TagRow = (String, String, i64, Option<i64>, i64);
        type ManifestRow = (
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
            i64,
            i64,
            Option<i64>,
            i64,
            Option<String>,
            Option<i64>,
        );
        let tags = typed_rows::<TagRow>(&tag_rows)?
            .into_iter()
            .map(|(name, digest, pushed_ms, last_pulled_ms, pull_count)| {
                Ok(TagState {
                    name,
                    digest: parse_digest(&digest)?,
                    pushed_ms,
                    last_pulled_ms,
                    pull_count: to_u64(pull_count),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut children: std::collections::HashMap<String, Vec<Digest>> = std::collections::HashMap::new();
        for (parent, child) in typed_rows::<(String, String)>(&child_rows)? {
            children.entry(parent).or_default().push(parse_digest(&child)?);
        }
        let manifests = typed_rows::<ManifestRow>(&manifest_rows)?
            .into_iter()
            .map(|r| {
                let platforms = match &r.10 {
                    Some(json) => serde_json::from_str(json).unwrap_or_default(),
                    None => Vec::new(),
                };
                Ok(ManifestState {
                    digest: parse_digest(&r.0)?,
                    children: children.remove(&r.0).unwrap_or_default(),
                    media_type: r.1,
                    artifact_type: r.2,
                    subject: r.3.as_deref().map(parse_digest).transpose()?,
                    provenance: r.4,
                    pushed_by: r.5,
                    pushed_ms: r.6,
                    touched_ms: r.7,
                    last_pulled_ms: r.8,
                    pull_count: to_u64(r.9),
                    platforms,
                    total_size: r.11.and_then(|n| u64::try_from(n).ok()),
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
        let mut tx = self.begin().await?;
        let Some(repo_id) = Self::repo_id(&mut tx, repo).await? else {
            return Ok(vec![false; removals.len()]);
        };
        let mut applied = Vec::with_capacity(removals.len());
        for planned in removals {
            applied.push(Self::apply_removal(&mut tx, repo, repo_id, planned, audit).await?);
        }
        tx.commit().await?;
        Ok(applied)
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
        let packed: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(repo_id, digest)) FROM (SELECT l.repo_id, l.digest FROM repo_blobs l \
             WHERE (l.repo_id, l.digest) > ($1, $2) AND l.linked_ms < $3 \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = l.digest AND r.repo_id = l.repo_id \
                             AND r.repo_id || '|' || r.manifest_digest NOT IN (SELECT value FROM json_each($5))) \
             AND EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = l.digest \
                         AND r.repo_id || '|' || r.manifest_digest NOT IN (SELECT value FROM json_each($5))) \
             ORDER BY l.repo_id, l.digest LIMIT $4)",
        )
        .bind(after_repo)
        .bind(after_digest)
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(pretend_list(gone))
        .fetch_one(&self.reader)
        .await?;
        typed_rows::<(i64, String)>(&packed)?
            .into_iter()
            .map(|(repo_id, digest)| {
                Ok(LinkKey {
                    repo_id,
                    digest: parse_digest(&digest)?,
                })
            })
            .collect()
    }

    async fn remove_links(&self, links: &[LinkKey], cutoff_ms: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut removed = 0;
        for link in links {
            let done = sqlx::query(
                "DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2 AND linked_ms < $3 \
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = $2 AND r.repo_id = $1)",
            )
            .bind(link.repo_id)
            .bind(link.digest.to_string())
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
            removed += done.rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn unreferenced_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&Digest>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<UnusedBlob>> {
        let packed: String = sqlx::query_scalar(UNREFERENCED_BLOBS)
            .bind(after.map(|d| d.to_string()).unwrap_or_default())
            .bind(cutoff_ms)
            .bind(i64::from(limit))
            .bind(pretend_list(gone))
            .fetch_one(&self.reader)
            .await?;
        unused_blobs(&packed)
    }

    async fn remove_blobs(
        &self,
        digests: &[Digest],
        cutoff_ms: i64,
        files: &dyn FileRemover,
    ) -> Result<Vec<UnusedBlob>> {
        let mut tx = self.begin().await?;
        // Its links are all stale when nothing references it and none was
        // made within the grace period; they go with it.
        let collectable: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(digest, size, \
             (SELECT COUNT(*) FROM repo_blobs l WHERE l.digest = b.digest), stores)) FROM blobs b \
             WHERE digest IN (SELECT value FROM json_each($1)) AND touched_ms < $2 \
             AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.linked_ms >= $2) \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = b.digest)",
        )
        .bind(digest_list(digests))
        .bind(cutoff_ms)
        .fetch_one(&mut *tx)
        .await?;
        let removed = unused_blobs(&collectable)?;
        delete_blobs(&mut tx, &removed, files).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn sweep_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&Digest>,
        limit: u32,
        removable: &(dyn for<'s> Fn(&'s StoreSet) -> bool + Sync),
        files: &dyn FileRemover,
    ) -> Result<BlobSweep> {
        // Found under the write lock, so what is found is what is removed:
        // no second check of each blob, as `remove_blobs` needs.
        let mut tx = self.begin().await?;
        let packed: String = sqlx::query_scalar(UNREFERENCED_BLOBS)
            .bind(after.map(|d| d.to_string()).unwrap_or_default())
            .bind(cutoff_ms)
            .bind(i64::from(limit))
            .bind(pretend_list(&[]))
            .fetch_one(&mut *tx)
            .await?;
        let sweep = BlobSweep::split(unused_blobs(&packed)?, limit, removable);
        delete_blobs(&mut tx, &sweep.removed, files).await?;
        tx.commit().await?;
        Ok(sweep)
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
        let packed: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(repo_id, name, digest, pushed_ms, last_pulled_ms, touched_ms)) FROM \
             (SELECT m.repo_id, r.name, m.digest, m.pushed_ms, m.last_pulled_ms, m.touched_ms FROM manifests m \
              JOIN repositories r ON r.id = m.repo_id \
              WHERE (m.repo_id, m.digest) > ($1, $2) AND m.touched_ms < $3 \
              AND m.repo_id || '|' || m.digest NOT IN (SELECT value FROM json_each($5)) \
              AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = m.repo_id AND t.manifest_digest = m.digest) \
              AND NOT EXISTS (SELECT 1 FROM manifest_refs p WHERE p.repo_id = m.repo_id AND p.child_digest = m.digest \
                              AND p.child_kind = 'manifest' \
                              AND p.repo_id || '|' || p.manifest_digest NOT IN (SELECT value FROM json_each($5))) \
              AND (m.subject IS NULL OR NOT EXISTS \
                   (SELECT 1 FROM manifests s WHERE s.repo_id = m.repo_id AND s.digest = m.subject \
                    AND s.repo_id || '|' || s.digest NOT IN (SELECT value FROM json_each($5)))) \
              ORDER BY m.repo_id, m.digest LIMIT $4)",
        )
        .bind(after_repo)
        .bind(after_digest)
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(pretend_list(gone))
        .fetch_one(&self.reader)
        .await?;
        typed_rows::<(i64, String, String, i64, Option<i64>, i64)>(&packed)?
            .into_iter()
            .map(|(repo_id, repo, digest, pushed_ms, last_pulled_ms, touched_ms)| {
                Ok(UntaggedManifest {
                    repo_id,
                    repo,
                    digest: parse_digest(&digest)?,
                    pushed_ms,
                    last_pulled_ms,
                    touched_ms,
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
        // `named` is the subject a tag of the signature schema names: exactly
        // `sha256-` and 64 lowercase hex digits, then `.sig`, `.att`, `.sbom`
        // or nothing (as the planner reads it; `sha256-latest` is plain).
        let packed: String = sqlx::query_scalar(
            "WITH f AS (SELECT t.repo_id, r.name AS repo, t.name, t.manifest_digest, t.pushed_ms, \
               t.last_pulled_ms, t.pull_count, m.pushed_ms AS m_pushed_ms, m.last_pulled_ms AS m_last_pulled_ms, \
               m.subject, \
               CASE WHEN t.name GLOB 'sha256-*' AND length(t.name) >= 71 \
                         AND substr(t.name, 8, 64) NOT GLOB '*[^0-9a-f]*' \
                         AND (length(t.name) = 71 OR substr(t.name, 72) IN ('.sig', '.att', '.sbom')) \
                    THEN 'sha256:' || substr(t.name, 8, 64) END AS named \
               FROM tags t JOIN repositories r ON r.id = t.repo_id \
               JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest \
               WHERE (t.repo_id, t.name) > ($2, $3) AND t.pushed_ms < $1 AND m.touched_ms < $1 \
               AND (m.subject IS NOT NULL OR t.name GLOB 'sha256-*')) \
             SELECT json_group_array(json_array(repo_id, repo, name, manifest_digest, pushed_ms, last_pulled_ms, \
               pull_count, m_pushed_ms, m_last_pulled_ms, \
               (SELECT count(*) FROM tags o WHERE o.repo_id = f.repo_id AND o.manifest_digest = f.manifest_digest), \
               coalesce(named, subject))) \
             FROM (SELECT * FROM f WHERE (named IS NOT NULL OR subject IS NOT NULL) \
               AND (named IS NULL OR NOT EXISTS \
                    (SELECT 1 FROM manifests s WHERE s.repo_id = f.repo_id AND s.digest = f.named)) \
               AND (subject IS NULL OR NOT EXISTS \
                    (SELECT 1 FROM manifests s WHERE s.repo_id = f.repo_id AND s.digest = f.subject)) \
               ORDER BY repo_id, name LIMIT $4) f",
        )
        .bind(cutoff_ms)
        .bind(after_id)
        .bind(after_name)
        .bind(i64::from(limit))
        .fetch_one(&self.reader)
        .await?;
        typed_rows::<OrphanRow>(&packed)?
            .into_iter()
            .map(
                |(
                    repo_id,
                    repo,
                    name,
                    digest,
                    pushed_ms,
                    last_pulled_ms,
                    pull_count,
                    manifest_pushed_ms,
                    manifest_last_pulled_ms,
                    manifest_tags,
                    subject,
                )| {
                    Ok(OrphanedReferrerTag {
                        repo_id,
                        repo,
                        tag: TagState {
                            name,
                            digest: parse_digest(&digest)?,
                            pushed_ms,
                            last_pulled_ms,
                            pull_count: to_u64(pull_count),
                        },
                        subject: parse_digest(&subject)?,
                        manifest_pushed_ms,
                        manifest_last_pulled_ms,
                        manifest_tags: to_u64(manifest_tags),
                    })
                },
            )
            .collect()
    }

    async fn blobs_with_prefix(&self, algorithm: &str, hex_prefix: &str) -> Result<Vec<RecordedBlob>> {
        let low = format!("{algorithm}:{hex_prefix}");
        // Every hex digit sorts before `g`, so this bounds the prefix.
        let high = format!("{algorithm}:{hex_prefix}g");
        let packed: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(digest, size, stores)) FROM \
             (SELECT digest, size, stores FROM blobs WHERE digest >= $1 AND digest < $2 ORDER BY digest)",
        )
        .bind(low)
        .bind(high)
        .fetch_one(&self.reader)
        .await?;
        typed_rows::<(String, i64, Option<String>)>(&packed)?
            .into_iter()
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
        let mut tx = self.begin().await?;
        // A file is this store's orphan unless the blob's row names the store.
        let held: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(digest, stores)) FROM blobs \
             WHERE digest IN (SELECT value FROM json_each($1))",
        )
        .bind(digest_list(digests))
        .fetch_one(&mut *tx)
        .await?;
        let held: Vec<String> = typed_rows::<(String, Option<String>)>(&held)?
            .into_iter()
            .filter(|(_, stores)| StoreSet::from_column(stores.clone()).contains(store))
            .map(|(digest, _)| digest)
            .collect();
        let orphans: Vec<Digest> = digests
            .iter()
            .filter(|d| !held.contains(&d.to_string()))
            .cloned()
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

    async fn blob_users(&self, digest: &Digest) -> Result<Vec<(String, Digest)>> {
        let rows = sqlx::query(
            "SELECT r.name, m.manifest_digest FROM manifest_refs m JOIN repositories r ON r.id = m.repo_id \
             WHERE m.child_digest = $1 ORDER BY r.name, m.manifest_digest",
        )
        .bind(digest.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, parse_digest(r.try_get("manifest_digest")?)?)))
            .collect()
    }

    async fn forget_unreferenced_blob(&self, digest: &Digest) -> Result<bool> {
        let mut tx = self.begin().await?;
        let referenced: Option<i64> = sqlx::query_scalar("SELECT 1 FROM manifest_refs WHERE child_digest = $1 LIMIT 1")
            .bind(digest.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if referenced.is_some() {
            return Ok(false);
        }
        sqlx::query("DELETE FROM repo_blobs WHERE digest = $1")
            .bind(digest.to_string())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM blobs WHERE digest = $1")
            .bind(digest.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn upload_ids(&self) -> Result<Vec<String>> {
        let ids: String = sqlx::query_scalar("SELECT json_group_array(id) FROM uploads")
            .fetch_one(&self.reader)
            .await?;
        serde_json::from_str(&ids).map_err(|e| MetaError::Corrupt(format!("upload ids: {e}")))
    }
}
