//! The scale-out metadata backend: PostgreSQL, shared by every replica.
//!
//! SQLite has one writer at a time, so its backend gets "re-check inside the
//! deleting transaction" and "place the blob file inside the write
//! transaction" for free. Here several replicas write at once, each statement
//! in READ COMMITTED, so those guarantees are rebuilt with locks:
//!
//! - **Advisory locks on what a push relies on.** A transaction that makes
//!   something a reason to keep a blob, manifest or tag takes a *shared*
//!   transaction-scoped advisory lock on its key first: `add_blob`,
//!   `link_blob` and `complete_upload` on the blob (the upload holds it
//!   while its bytes are placed), `put_manifest` on every blob and child
//!   manifest it references, on its own digest and on the tag it moves. A
//!   transaction that deletes one of them after re-checking that it is unused
//!   (garbage collection, retention, fsck, the delete API) takes the
//!   *exclusive* lock on it first, and holds it while the blob files go
//!   (`FileRemover`). Pushes of the same blob never wait for each other; a
//!   push and a removal of the same thing run one after the other.
//! - **Checks after the lock.** A READ COMMITTED statement sees everything
//!   committed before it started, and a lock is released only after its
//!   transaction's commit is visible. So the statements after the lock see the
//!   other side's outcome: the collector's re-check sees the push's reference
//!   or new `touched_ms` and keeps the blob, or the push finds the blob or link
//!   gone (`complete_upload` then records its own freshly placed bytes,
//!   `link_blob` answers `None`, `put_manifest` fails with
//!   `MissingReference`). The lock is never taken in the same statement as a
//!   check, because that statement's snapshot would predate the wait.
//! - **No deadlocks between locks.** Every transaction takes all its advisory
//!   locks in one statement, in sorted key order, before it changes any row.
//!   Row locks can still form a cycle (two pull flushes, a pull flush and a
//!   removal touching the same rows in other orders); PostgreSQL then aborts
//!   one transaction, and the transactions that only touch the database run
//!   again ([`retrying`]).
//! - **Row locks for counters.** Pull counts are added with `x = x + n`, which
//!   PostgreSQL serializes per row, and upload progress moves with
//!   `WHERE byte_offset = $from`, which a concurrent mover makes fail after
//!   it waits for the row. Removals re-check "not pulled since the plan" with
//!   `SELECT … FOR UPDATE`, so a pull flush either lands before the re-check
//!   (and the manifest stays) or waits and then finds it gone.
//!
//! Keys are 64-bit FNV-1a hashes of what is locked (a blob's digest; a
//! manifest's or tag's repository and name), passed as the two-`int4` form of
//! the advisory lock functions, whose key space is apart from the single
//! `bigint` one that sqlx's migrator and other tools use. A collision only
//! makes two unrelated operations wait for each other. The hash must not change
//! between releases: replicas of two versions run side by side in a rolling
//! upgrade.
//!
//! Migrations run on connect, under sqlx's own advisory lock
//! (`Migrator::locking`), so replicas starting together apply them once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::{Digest, UploadId};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use crate::sql::reads::{Reads, BLOB_SIZE, REPOSITORY_EXISTS};
use crate::sql::ui::pull_day;
pub(crate) use crate::sql::{parse_digest, to_i64, to_u64};
use crate::{
    BlobRecord, JobLease, LinkTouch, LinkedBlob, ManifestFacts, MetaError, MetaStore, NewManifest, PlacedBlob,
    Placement, PullRecord, Referrer, RepoUsage, Result, StoreSet, StoredManifest, TagFacts, UploadClaim, UploadRecord,
    DEFAULT_STORE,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connection pool settings of the PostgreSQL backend, as the server's
/// configuration file spells them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgOptions {
    /// Most connections this process keeps open.
    pub max_connections: u32,
    /// Connections kept open even when idle.
    pub min_connections: u32,
    /// How long a request waits for a free connection before it fails.
    pub acquire_timeout_secs: u64,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 16,
            min_connections: 1,
            acquire_timeout_secs: 10,
        }
    }
}

/// Metadata in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgMeta {
    pub(crate) pool: PgPool,
}

pub(crate) type PgTx = Transaction<'static, Postgres>;

pub(crate) fn digest_strings(digests: &[Digest]) -> Vec<String> {
    digests.iter().map(Digest::to_string).collect()
}

/// The 64-bit FNV-1a hash: simple enough to never change between releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

/// An advisory lock key (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LockKey(i32, i32);

impl LockKey {
    fn of(kind: &str, parts: &[&str]) -> LockKey {
        // A zero byte ends each part, so ("a/b", "c") and ("a", "b/c") differ.
        let mut bytes = Vec::with_capacity(64);
        for part in std::iter::once(kind).chain(parts.iter().copied()) {
            bytes.extend_from_slice(part.as_bytes());
            bytes.push(0);
        }
        let [a, b, c, d, e, f, g, h] = fnv1a(&bytes).to_be_bytes();
        LockKey(i32::from_be_bytes([a, b, c, d]), i32::from_be_bytes([e, f, g, h]))
    }

    /// A blob, in every repository: removing it also removes all its links.
    pub(crate) fn blob(digest: &str) -> LockKey {
        LockKey::of("blob", &[digest])
    }

    /// Putting a blob's bytes in place: one upload at a time per digest, so
    /// the second finds the first's object and writes nothing. Some object
    /// stores (s3s-fs) write a copy's destination in place, and two copies of
    /// the same object at once read each other's half-written bytes.
    pub(crate) fn placement(digest: &str) -> LockKey {
        LockKey::of("placement", &[digest])
    }

    pub(crate) fn manifest(repo: &str, digest: &str) -> LockKey {
        LockKey::of("manifest", &[repo, digest])
    }

    pub(crate) fn tag(repo: &str, tag: &str) -> LockKey {
        LockKey::of("tag", &[repo, tag])
    }

    /// A periodic job, held for the whole run by the replica that leads it
    /// (a session lock, unlike the others).
    pub(crate) fn job(name: &str) -> LockKey {
        LockKey::of("job", &[name])
    }

    /// The set of retention policies, so two replicas syncing their
    /// configuration at start do not both write the same changes.
    pub(crate) fn policies() -> LockKey {
        LockKey::of("retention policies", &[])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// Keeps the thing: any number of holders.
    Shared,
    /// Removes the thing: waits for every holder.
    Exclusive,
}

/// Takes advisory locks on `keys` until the transaction ends, in sorted order
/// and in one statement, so two transactions never wait for each other's keys
/// in a cycle.
pub(crate) async fn lock(tx: &mut PgTx, mut keys: Vec<LockKey>, mode: LockMode) -> Result<()> {
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    let (high, low): (Vec<i32>, Vec<i32>) = keys.into_iter().map(|k| (k.0, k.1)).unzip();
    // unnest yields the arrays in order, and each row's call waits for its lock.
    let sql = match mode {
        LockMode::Shared => {
            "SELECT pg_advisory_xact_lock_shared(k.high, k.low) FROM unnest($1::int4[], $2::int4[]) AS k(high, low)"
        }
        LockMode::Exclusive => {
            "SELECT pg_advisory_xact_lock(k.high, k.low) FROM unnest($1::int4[], $2::int4[]) AS k(high, low)"
        }
    };
    sqlx::query(sql).bind(high).bind(low).execute(&mut **tx).await?;
    Ok(())
}

/// Times a transaction is tried when PostgreSQL aborts it to break a deadlock.
const ATTEMPTS: u32 = 5;

/// Whether PostgreSQL aborted the transaction to let another one through, so
/// that running it again may succeed: deadlock_detected, serialization_failure.
fn is_transient(e: &MetaError) -> bool {
    match e {
        MetaError::Db(sqlx::Error::Database(db)) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// Runs a transaction again when PostgreSQL aborted it to break a deadlock.
/// Only for transactions whose every effect is in the database (or, like
/// deleting files that are already gone, harmless to repeat).
pub(crate) async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(e) if tried < ATTEMPTS && is_transient(&e) => {
                tracing::debug!(what, tried, error = %e, "transaction aborted by PostgreSQL; running it again");
                tried += 1;
            }
            done => return done,
        }
    }
}

fn upload_record(row: &PgRow) -> Result<UploadRecord> {
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

// The statements of the registry's hot paths, named so that the test of their
// plans runs exactly these (the reads both backends share are in `sql::reads`).
pub(crate) const TOUCH_LINK: &str = "UPDATE repo_blobs SET linked_ms = GREATEST(linked_ms, $3) \
     WHERE repo_id = (SELECT id FROM repositories WHERE name = $1) AND digest = $2";
// Links already as recent are left unwritten (no new row version).
pub(crate) const RECORD_TOUCHES: &str = "UPDATE repo_blobs l SET linked_ms = t.at_ms \
     FROM unnest($1::int8[], $2::text[], $3::int8[]) AS t(repo_id, digest, at_ms) \
     WHERE l.repo_id = t.repo_id AND l.digest = t.digest AND l.linked_ms < t.at_ms";
pub(crate) const LINKED_AMONG: &str = "SELECT digest FROM repo_blobs WHERE repo_id = $1 AND digest = ANY($2)";
pub(crate) const MANIFESTS_AMONG: &str = "SELECT digest FROM manifests WHERE repo_id = $1 AND digest = ANY($2)";
pub(crate) const LIST_TAGS: &str = "SELECT name FROM tags \
     WHERE repo_id = (SELECT id FROM repositories WHERE name = $1) AND name > $2 ORDER BY name LIMIT $3";
pub(crate) const REFERRERS: &str = "SELECT digest, media_type, size, artifact_type, annotations FROM manifests \
     WHERE repo_id = (SELECT id FROM repositories WHERE name = $1) AND subject = $2 AND digest > $4 \
     AND ($3::text IS NULL OR artifact_type = $3) ORDER BY digest LIMIT $5";
pub(crate) const GET_UPLOAD: &str =
    "SELECT id, repo, store, byte_offset, hash_state, started_ms, updated_ms, owner FROM uploads WHERE id = $1";
pub(crate) const ADVANCE_UPLOAD: &str = "UPDATE uploads SET byte_offset = $1, hash_state = $2, updated_ms = $3 \
     WHERE id = $4 AND byte_offset = $5";
// A claim that ran out (its holder died or lost the database) is taken over.
// The claim marks the session active, so a purge that re-reads it leaves it.
pub(crate) const CLAIM_UPLOAD: &str = "UPDATE uploads SET lease_token = $2, lease_until_ms = $4, \
     updated_ms = GREATEST(updated_ms, $3) \
     WHERE id = $1 AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
     RETURNING id, repo, store, byte_offset, hash_state, started_ms, updated_ms, owner";
pub(crate) const REPOSITORY_IDS: &str = "SELECT id, name FROM repositories WHERE name = ANY($1)";
pub(crate) const RECORD_MANIFEST_PULLS: &str = "UPDATE manifests m SET pull_count = m.pull_count + p.count, \
     last_pulled_ms = GREATEST(m.last_pulled_ms, p.last_ms) \
     FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[]) AS p(repo_id, digest, count, last_ms) \
     WHERE m.repo_id = p.repo_id AND m.digest = p.digest";
pub(crate) const RECORD_DAILY_PULLS: &str = "INSERT INTO daily_pulls (repo_id, day, pulls) \
     SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[]) \
     ON CONFLICT (repo_id, day) DO UPDATE SET pulls = daily_pulls.pulls + EXCLUDED.pulls";
// Only while the tag still names the pulled manifest.
pub(crate) const RECORD_TAG_PULLS: &str = "UPDATE tags t SET pull_count = t.pull_count + p.count, \
     last_pulled_ms = GREATEST(t.last_pulled_ms, p.last_ms) \
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[]) AS p(repo_id, name, digest, count, last_ms) \
     WHERE t.repo_id = p.repo_id AND t.name = p.name AND t.manifest_digest = p.digest";

impl PgMeta {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`)
    /// and applies migrations.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?, options).await
    }

    /// Connects with explicit connection options and applies migrations.
    pub async fn connect_with(connect: PgConnectOptions, options: PgOptions) -> Result<Self> {
        // On a connection of its own, closed afterwards: sqlx holds a session
        // lock while migrating and does not release it when a migration fails,
        // and a connection of the serving pool would carry that lock on.
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone())
            .await?;
        let migrated = MIGRATOR.run(&migrating).await;
        migrating.close().await;
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(options.min_connections.min(options.max_connections))
            .acquire_timeout(Duration::from_secs(options.acquire_timeout_secs))
            .connect_with(connect)
            .await?;
        Ok(PgMeta { pool })
    }

    pub(crate) async fn repo_id(tx: &mut PgTx, repo: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(REPOSITORY_EXISTS)
            .bind(repo)
            .fetch_optional(&mut **tx)
            .await?)
    }

    async fn ensure_repo(tx: &mut PgTx, repo: &str, now_ms: i64) -> Result<i64> {
        if let Some(id) = Self::repo_id(tx, repo).await? {
            return Ok(id);
        }
        // Read first and insert only when missing: every conflicting insert
        // would use up an id. A first push elsewhere may insert it in between;
        // DO NOTHING waits for that one and the next statement sees its row.
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO repositories (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(repo)
        .bind(now_ms)
        .fetch_optional(&mut **tx)
        .await?;
        match inserted {
            Some(id) => Ok(id),
            None => Self::repo_id(tx, repo)
                .await?
                .ok_or_else(|| MetaError::Corrupt(format!("repository {repo:?} vanished while being created"))),
        }
    }

    /// Records the blob and its link to `repo`; the caller holds the blob's lock.
    /// Records the blob (held by `stored_in` when it was just placed there,
    /// or already recorded when `None`: a link) and links it to `repo`.
    async fn record_blob(
        tx: &mut PgTx,
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
             ON CONFLICT (digest) DO UPDATE SET touched_ms = GREATEST(blobs.touched_ms, excluded.touched_ms), \
             stores = CASE WHEN $5::text IS NULL \
                 OR strpos(',' || COALESCE(blobs.stores, 'default') || ',', ',' || $5::text || ',') > 0 \
                 THEN blobs.stores ELSE COALESCE(blobs.stores, 'default') || ',' || $5::text END",
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
             ON CONFLICT (repo_id, digest) DO UPDATE SET linked_ms = GREATEST(repo_blobs.linked_ms, excluded.linked_ms)",
        )
        .bind(repo_id)
        .bind(digest.to_string())
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Deletes a tag; the manifest it named counts as untagged from `now_ms`.
    pub(crate) async fn remove_tag_row(tx: &mut PgTx, repo_id: i64, tag: &str, now_ms: i64) -> Result<bool> {
        let digest: Option<String> =
            sqlx::query_scalar("DELETE FROM tags WHERE repo_id = $1 AND name = $2 RETURNING manifest_digest")
                .bind(repo_id)
                .bind(tag)
                .fetch_optional(&mut **tx)
                .await?;
        let Some(digest) = digest else {
            return Ok(false);
        };
        sqlx::query("UPDATE manifests SET touched_ms = GREATEST(touched_ms, $3) WHERE repo_id = $1 AND digest = $2")
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
        tx: &mut PgTx,
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

    async fn release(tx: &mut PgTx, repo_id: i64, digest: &str, now_ms: i64) -> Result<()> {
        // One statement per kind of dependent, each answered from an index.
        let signature_tags = format!("sha256-{}", digest.strip_prefix("sha256:").unwrap_or(digest));
        let statements: [(&str, &str); 5] = [
            (
                "UPDATE manifests SET touched_ms = GREATEST(touched_ms, $3) WHERE repo_id = $1 AND subject = $2",
                digest,
            ),
            (
                "UPDATE manifests SET touched_ms = GREATEST(touched_ms, $3) WHERE repo_id = $1 AND digest IN \
                 (SELECT child_digest FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2 \
                  AND child_kind = 'manifest')",
                digest,
            ),
            // `sha256-<hex>` and `sha256-<hex>.sig|.att|.sbom`, as a range of the tag index.
            (
                "UPDATE manifests SET touched_ms = GREATEST(touched_ms, $3) WHERE repo_id = $1 AND digest IN \
                 (SELECT manifest_digest FROM tags WHERE repo_id = $1 AND name >= $2 AND name < ($2 || '/'))",
                &signature_tags,
            ),
            (
                "UPDATE blobs SET touched_ms = GREATEST(touched_ms, $3) WHERE digest IN \
                 (SELECT child_digest FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2 \
                  AND child_kind = 'blob')",
                digest,
            ),
            (
                "UPDATE repo_blobs SET linked_ms = GREATEST(linked_ms, $3) WHERE repo_id = $1 AND digest IN \
                 (SELECT child_digest FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2 \
                  AND child_kind = 'blob')",
                digest,
            ),
        ];
        for (sql, key) in statements {
            sqlx::query(sql)
                .bind(repo_id)
                .bind(key)
                .bind(now_ms)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn link_blob_once(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        lock(&mut tx, vec![LockKey::blob(&digest.to_string())], LockMode::Shared).await?;
        let size: Option<i64> = sqlx::query_scalar(BLOB_SIZE)
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

    async fn touch_link_once(&self, repo: &str, digest: &Digest, at_ms: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The lock a push that links the blob takes: a removal holding it
        // exclusively re-checks the link after this commit, or this update
        // runs after the removal's and finds the link gone.
        lock(&mut tx, vec![LockKey::blob(&digest.to_string())], LockMode::Shared).await?;
        let done = sqlx::query(TOUCH_LINK)
            .bind(repo)
            .bind(digest.to_string())
            .bind(at_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_manifest_once(&self, repo: &str, m: &NewManifest, tag: Option<&str>, now_ms: i64) -> Result<()> {
        let digest = m.digest.to_string();
        let blobs = digest_strings(&m.blobs);
        let children = digest_strings(&m.children);
        let mut tx = self.pool.begin().await?;
        // What this push relies on (its blobs and children) and what it
        // changes that a removal re-checks (its own row and the tag).
        let mut keys: Vec<LockKey> = blobs.iter().map(|b| LockKey::blob(b)).collect();
        keys.extend(children.iter().map(|c| LockKey::manifest(repo, c)));
        keys.push(LockKey::manifest(repo, &digest));
        keys.extend(tag.map(|t| LockKey::tag(repo, t)));
        lock(&mut tx, keys, LockMode::Shared).await?;

        let repo_id = Self::ensure_repo(&mut tx, repo, now_ms).await?;
        let linked: HashSet<String> = sqlx::query_scalar(LINKED_AMONG)
            .bind(repo_id)
            .bind(&blobs)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let checked = !m.fetched_on_demand;
        if let Some(missing) = m
            .blobs
            .iter()
            .zip(&blobs)
            .find(|(_, s)| checked && !linked.contains(*s))
        {
            return Err(MetaError::MissingReference(missing.0.clone()));
        }
        let present: HashSet<String> = sqlx::query_scalar(MANIFESTS_AMONG)
            .bind(repo_id)
            .bind(&children)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        if let Some(missing) = m
            .children
            .iter()
            .zip(&children)
            .find(|(_, s)| checked && !present.contains(*s))
        {
            return Err(MetaError::MissingReference(missing.0.clone()));
        }
        // What the inventory shows as the image's size: the manifest, its blobs
        // and, for an index, what its children add up to.
        let children_total: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(total_size), 0)::BIGINT FROM manifests WHERE repo_id = $1 AND digest = ANY($2)",
        )
        .bind(repo_id)
        .bind(&children)
        .fetch_one(&mut *tx)
        .await?;
        let total = to_i64(m.body.len() as u64)
            .saturating_add(to_i64(m.blob_bytes))
            .saturating_add(children_total);
        let platforms = (!m.platforms.is_empty()).then_some(&m.platforms);
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
            let kinds: Vec<&str> = std::iter::repeat_n("blob", blobs.len())
                .chain(std::iter::repeat_n("manifest", children.len()))
                .collect();
            let refs: Vec<&str> = blobs.iter().chain(&children).map(String::as_str).collect();
            sqlx::query(
                "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, child_kind) \
                 SELECT $1, $2, r.child, r.kind FROM unnest($3::text[], $4::text[]) AS r(child, kind) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(repo_id)
            .bind(&digest)
            .bind(refs)
            .bind(kinds)
            .execute(&mut *tx)
            .await?;
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

    async fn delete_manifest_once(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(repo_id) = Self::repo_id(&mut tx, repo).await? else {
            return Ok(false);
        };
        // An index pushed at the same time either sees it gone or is committed first.
        lock(
            &mut tx,
            vec![LockKey::manifest(repo, &digest.to_string())],
            LockMode::Exclusive,
        )
        .await?;
        let deleted = Self::remove_manifest_row(&mut tx, repo_id, digest, now_ms, true).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn record_pulls_once(&self, manifests: &PullSums, tags: &PullSums, days: &DaySums) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(RECORD_MANIFEST_PULLS)
            .bind(&manifests.repo_ids)
            .bind(&manifests.digests)
            .bind(&manifests.counts)
            .bind(&manifests.last_ms)
            .execute(&mut *tx)
            .await?;
        if !tags.repo_ids.is_empty() {
            sqlx::query(RECORD_TAG_PULLS)
                .bind(&tags.repo_ids)
                .bind(&tags.tags)
                .bind(&tags.digests)
                .bind(&tags.counts)
                .bind(&tags.last_ms)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(RECORD_DAILY_PULLS)
            .bind(&days.repo_ids)
            .bind(&days.days)
            .bind(&days.counts)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Pulls summed per manifest (or per tag), in key order, as columns for `unnest`.
#[derive(Debug, Default)]
struct PullSums {
    repo_ids: Vec<i64>,
    tags: Vec<String>,
    digests: Vec<String>,
    counts: Vec<i64>,
    last_ms: Vec<i64>,
}

/// Pulls summed per repository and day, in key order, as columns for `unnest`.
#[derive(Debug, Default)]
struct DaySums {
    repo_ids: Vec<i64>,
    days: Vec<i64>,
    counts: Vec<i64>,
}

impl DaySums {
    /// One row per key: `INSERT … ON CONFLICT` may not change a row twice.
    fn of<'a>(known: impl Iterator<Item = (i64, &'a PullRecord)>) -> DaySums {
        let mut sums: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for (repo_id, p) in known {
            let sum = sums.entry((repo_id, pull_day(p.last_ms))).or_insert(0);
            *sum = sum.saturating_add(to_i64(p.count));
        }
        let mut out = DaySums::default();
        // A day without pulls has no row.
        for ((repo_id, day), count) in sums.into_iter().filter(|&(_, count)| count > 0) {
            out.repo_ids.push(repo_id);
            out.days.push(day);
            out.counts.push(count);
        }
        out
    }
}

impl PullSums {
    /// One row per key: `UPDATE … FROM` applies only one of several rows that
    /// match the same target row.
    fn of<'a>(keyed: impl Iterator<Item = ((i64, &'a str, String), &'a PullRecord)>) -> PullSums {
        let mut sums: BTreeMap<(i64, &str, String), (i64, i64)> = BTreeMap::new();
        for (key, p) in keyed {
            let sum = sums.entry(key).or_insert((0, p.last_ms));
            sum.0 = sum.0.saturating_add(to_i64(p.count));
            sum.1 = sum.1.max(p.last_ms);
        }
        let mut out = PullSums::default();
        for ((repo_id, tag, digest), (count, last_ms)) in sums {
            out.repo_ids.push(repo_id);
            out.tags.push(tag.to_string());
            out.digests.push(digest);
            out.counts.push(count);
            out.last_ms.push(last_ms);
        }
        out
    }
}

#[async_trait]
impl MetaStore for PgMeta {
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
        retrying("touch_link", move || self.touch_link_once(repo, digest, at_ms)).await
    }

    async fn record_touches(&self, touches: &[LinkTouch]) -> Result<()> {
        if touches.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = touches.iter().map(|t| t.repo.as_str()).collect();
        let ids: HashMap<String, i64> = sqlx::query_as::<_, (i64, String)>(REPOSITORY_IDS)
            .bind(names)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect();
        // One row per link (UPDATE … FROM applies one of several matching
        // rows), the latest touch, in key order: concurrent flushes from
        // several replicas lock the rows they share in the same order.
        let mut latest: BTreeMap<(i64, String), i64> = BTreeMap::new();
        for t in touches {
            if let Some(id) = ids.get(&t.repo) {
                let at = latest.entry((*id, t.digest.to_string())).or_insert(t.at_ms);
                *at = (*at).max(t.at_ms);
            }
        }
        let mut repo_ids = Vec::with_capacity(latest.len());
        let mut digests = Vec::with_capacity(latest.len());
        let mut at_ms = Vec::with_capacity(latest.len());
        for ((id, digest), at) in latest {
            repo_ids.push(id);
            digests.push(digest);
            at_ms.push(at);
        }
        if repo_ids.is_empty() {
            return Ok(());
        }
        let (repo_ids, digests, at_ms) = (&repo_ids, &digests, &at_ms);
        retrying("record_touches", move || async move {
            sqlx::query(RECORD_TOUCHES)
                .bind(repo_ids)
                .bind(digests)
                .bind(at_ms)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Reads(self).blob_size(digest).await
    }

    async fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        Reads(self).blob_record(digest).await
    }

    async fn add_blob(&self, repo: &str, digest: &Digest, size: u64, now_ms: i64) -> Result<()> {
        retrying("add_blob", move || async move {
            let mut tx = self.pool.begin().await?;
            lock(&mut tx, vec![LockKey::blob(&digest.to_string())], LockMode::Shared).await?;
            Self::record_blob(&mut tx, repo, digest, size, Some(DEFAULT_STORE), now_ms).await?;
            tx.commit().await?;
            Ok::<_, MetaError>(())
        })
        .await
    }

    async fn link_blob(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<Option<u64>> {
        retrying("link_blob", move || self.link_blob_once(repo, digest, now_ms)).await
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // A manifest pushed at the same time either sees the link gone or is committed first.
        lock(&mut tx, vec![LockKey::blob(&digest.to_string())], LockMode::Exclusive).await?;
        let done = sqlx::query(
            "DELETE FROM repo_blobs WHERE repo_id = (SELECT id FROM repositories WHERE name = $1) AND digest = $2",
        )
        .bind(repo)
        .bind(digest.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_manifest(&self, repo: &str, m: &NewManifest, tag: Option<&str>, now_ms: i64) -> Result<()> {
        retrying("put_manifest", move || self.put_manifest_once(repo, m, tag, now_ms)).await
    }

    async fn manifest_by_digest(&self, repo: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        Reads(self).manifest_by_digest(repo, digest).await
    }

    async fn manifest_by_tag(&self, repo: &str, tag: &str) -> Result<Option<StoredManifest>> {
        Reads(self).manifest_by_tag(repo, tag).await
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<bool> {
        retrying("delete_manifest", move || {
            self.delete_manifest_once(repo, digest, now_ms)
        })
        .await
    }

    async fn delete_tag(&self, repo: &str, tag: &str, now_ms: i64) -> Result<bool> {
        retrying("delete_tag", move || async move {
            let mut tx = self.pool.begin().await?;
            let Some(repo_id) = Self::repo_id(&mut tx, repo).await? else {
                return Ok(false);
            };
            let deleted = Self::remove_tag_row(&mut tx, repo_id, tag, now_ms).await?;
            tx.commit().await?;
            Ok::<_, MetaError>(deleted)
        })
        .await
    }

    async fn list_tags(&self, repo: &str, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(LIST_TAGS)
            .bind(repo)
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
                .bind(last.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn repository_usage(&self) -> Result<Vec<RepoUsage>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT r.name, COUNT(*), CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM repo_blobs l \
             JOIN repositories r ON r.id = l.repo_id JOIN blobs b ON b.digest = l.digest \
             GROUP BY r.name ORDER BY r.name",
        )
        .fetch_all(&self.pool)
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
        Ok(sqlx::query_scalar(
            "SELECT r.name FROM repo_blobs l JOIN repositories r ON r.id = l.repo_id \
             WHERE l.digest = $1 ORDER BY r.name LIMIT $2",
        )
        .bind(digest.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(REFERRERS)
            .bind(repo)
            .bind(subject.to_string())
            .bind(artifact_type)
            .bind(after.map(Digest::to_string).unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
        // Repository ids first (they never change), so that the updates join
        // nothing but their own table: with a join, the plan a prepared
        // statement settles on hashes the whole repositories table.
        let names: Vec<&str> = pulls.iter().map(|p| p.repo.as_str()).collect();
        let ids: HashMap<String, i64> = sqlx::query_as::<_, (i64, String)>(REPOSITORY_IDS)
            .bind(names)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect();
        // Pulls of repositories that are gone are skipped. Summed and sorted,
        // so that concurrent flushes from several replicas mostly lock the
        // same rows in the same order.
        let known = pulls.iter().filter_map(|p| Some((*ids.get(&p.repo)?, p)));
        let manifests = PullSums::of(known.clone().map(|(id, p)| ((id, "", p.digest.to_string()), p)));
        let days = DaySums::of(known.clone());
        let tags = PullSums::of(known.filter_map(|(id, p)| Some(((id, p.tag.as_deref()?, p.digest.to_string()), p))));
        if manifests.repo_ids.is_empty() {
            return Ok(());
        }
        let (manifests, tags, days) = (&manifests, &tags, &days);
        retrying("record_pulls", move || self.record_pulls_once(manifests, tags, days)).await
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
            .fetch_one(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>> {
        let row = sqlx::query(GET_UPLOAD)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
        // A concurrent mover holds the row until it commits; this statement
        // then re-reads the row, finds another offset, and changes nothing.
        let done = sqlx::query(ADVANCE_UPLOAD)
            .bind(to_i64(to_offset))
            .bind(hash_state)
            .bind(now_ms)
            .bind(id.as_str())
            .bind(to_i64(from_offset))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim_upload(&self, id: &UploadId, token: &str, now_ms: i64, until_ms: i64) -> Result<UploadClaim> {
        // A lease rather than a row lock held for the request: a chunk may
        // stream for minutes, and a transaction open that long would keep a
        // pool connection from every other request.
        let claimed = sqlx::query(CLAIM_UPLOAD)
            .bind(id.as_str())
            .bind(token)
            .bind(now_ms)
            .bind(until_ms)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = claimed {
            return Ok(UploadClaim::Claimed {
                record: upload_record(&row)?,
                leased: true,
            });
        }
        Ok(match self.get_upload(id).await? {
            Some(record) => UploadClaim::Busy(record),
            None => UploadClaim::Unknown,
        })
    }

    async fn renew_upload_claim(&self, id: &UploadId, token: &str, now_ms: i64, until_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET lease_until_ms = $4, updated_ms = GREATEST(updated_ms, $3) \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(id.as_str())
        .bind(token)
        .bind(now_ms)
        .bind(until_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn release_upload_claim(&self, id: &UploadId, token: &str) -> Result<()> {
        sqlx::query("UPDATE uploads SET lease_token = NULL, lease_until_ms = NULL WHERE id = $1 AND lease_token = $2")
            .bind(id.as_str())
            .bind(token)
            .execute(&self.pool)
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
        // The blob's lock is held from before the bytes are placed until the
        // record is committed, so garbage collection never deletes the file
        // found or put in place here (it takes the same lock exclusively).
        // Not retried: the placement runs once. No one takes the placement
        // lock after another key, so taking it first makes no cycle.
        let mut tx = self.pool.begin().await?;
        lock(
            &mut tx,
            vec![LockKey::placement(&digest.to_string())],
            LockMode::Exclusive,
        )
        .await?;
        lock(&mut tx, vec![LockKey::blob(&digest.to_string())], LockMode::Shared).await?;
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
        // As complete_upload, for every blob of the batch: each key kind is
        // taken in one sorted call, placements first, so batches on other
        // replicas wait in the same order and make no cycle.
        let digests: Vec<String> = blobs.iter().map(|b| b.digest.to_string()).collect();
        let mut tx = self.pool.begin().await?;
        lock(
            &mut tx,
            digests.iter().map(|d| LockKey::placement(d)).collect(),
            LockMode::Exclusive,
        )
        .await?;
        lock(
            &mut tx,
            digests.iter().map(|d| LockKey::blob(d)).collect(),
            LockMode::Shared,
        )
        .await?;
        place.await.map_err(MetaError::Placement)?;
        for blob in blobs {
            Self::record_blob(&mut tx, &blob.repo, &blob.digest, blob.size, Some(&blob.store), now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stale_uploads(&self, before_ms: i64, limit: u32) -> Result<Vec<UploadRecord>> {
        let rows = sqlx::query(
            "SELECT id, repo, store, byte_offset, hash_state, started_ms, updated_ms, owner FROM uploads \
             WHERE updated_ms < $1 ORDER BY updated_ms LIMIT $2",
        )
        .bind(before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(upload_record).collect()
    }

    async fn lead_job(&self, job: &str) -> Result<Option<JobLease>> {
        // A session lock on a connection of its own, out of the pool: it is
        // released when the lease drops that connection, and by the server
        // when the connection dies with its process. Keepalives bound how
        // long a replica that vanished without closing its socket (a lost
        // host) keeps the lead: about 30 + 3 × 10 seconds.
        let mut conn = self.pool.acquire().await?.detach();
        for setting in [
            "SET tcp_keepalives_idle = 30",
            "SET tcp_keepalives_interval = 10",
            "SET tcp_keepalives_count = 3",
        ] {
            sqlx::query(setting).execute(&mut conn).await?;
        }
        let key = LockKey::job(job);
        let led: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(key.0)
            .bind(key.1)
            .fetch_one(&mut conn)
            .await?;
        if led {
            Ok(Some(JobLease::holding(conn)))
        } else {
            // Only this process's resources are at stake; the answer is known.
            let _ = sqlx::Connection::close(conn).await;
            Ok(None)
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Fresh databases on the PostgreSQL server the tests are pointed at.

    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::{Connection, PgConnection};

    use super::{PgMeta, PgOptions};

    /// The server URL from `BERTH_TEST_POSTGRES_URL`; `None` (after saying so)
    /// when unset, unless `BERTH_TEST_REQUIRE_SERVICES=1` makes that a failure.
    pub(crate) fn server_url() -> Option<String> {
        match std::env::var("BERTH_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("BERTH_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
                "BERTH_TEST_REQUIRE_SERVICES=1 but BERTH_TEST_POSTGRES_URL is not set: start a server \
                 (pg_test_start in scripts/lib/postgres.sh) and export its URL"
            ),
            _ => {
                eprintln!(
                    "skipped: set BERTH_TEST_POSTGRES_URL (postgres://USER@HOST:PORT/DB) to run the PostgreSQL tests"
                );
                None
            }
        }
    }

    /// `url` with its database name replaced by `name`.
    pub(crate) fn with_database(url: &str, name: &str) -> String {
        let (main, query) = match url.split_once('?') {
            Some((main, query)) => (main, Some(query)),
            None => (url, None),
        };
        let authority = main.find("://").map_or(0, |i| i + 3);
        let base = match main[authority..].find('/') {
            Some(i) => &main[..authority + i],
            None => main,
        };
        match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        }
    }

    /// A database of its own for one test, dropped when this is.
    pub(crate) struct TestDb {
        server: String,
        name: String,
        pub(crate) url: String,
    }

    impl TestDb {
        pub(crate) async fn create() -> Option<TestDb> {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let server = server_url()?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                "berth_t_{}_{}_{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed),
                nanos
            );
            let mut admin = PgConnection::connect(&server)
                .await
                .expect("connect to BERTH_TEST_POSTGRES_URL");
            // A natural-language collation where the server has ICU, so the
            // tests notice an ordering that depends on the database's locale.
            let icu = format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            );
            if sqlx::query(&icu).execute(&mut admin).await.is_err() {
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create a test database");
            }
            admin.close().await.ok();
            let url = with_database(&server, &name);
            Some(TestDb { server, name, url })
        }

        pub(crate) async fn meta(&self) -> PgMeta {
            PgMeta::connect(&self.url, PgOptions::default())
                .await
                .expect("connect to the test database")
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            // Drop runs outside async code (and also when the test panicked):
            // a thread with a runtime of its own does the dropping.
            let server = self.server.clone();
            let name = self.name.clone();
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async {
                    let mut admin = PgConnection::connect(&server).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await?;
                    admin.close().await
                })?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop test database {}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{with_database, TestDb};
    use super::*;
    use crate::sql::reads::{
        LINKED_BLOB, LINKED_BLOB_SIZE, MANIFEST_BY_DIGEST, MANIFEST_BY_TAG, MANIFEST_FACTS, TAG_FACTS,
    };
    use crate::sql::ui::{repository_summary_sql, tag_page_sql};
    use crate::AccessStore;

    #[tokio::test]
    async fn conformance() {
        let Some(db) = TestDb::create().await else { return };
        crate::conformance::run_all(&db.meta().await).await;
    }

    #[tokio::test]
    async fn lifecycle_conformance() {
        let Some(db) = TestDb::create().await else { return };
        crate::conformance::run_lifecycle(&db.meta().await).await;
    }

    #[tokio::test]
    async fn access_conformance() {
        let Some(db) = TestDb::create().await else { return };
        crate::conformance::run_access(&db.meta().await).await;
    }

    #[tokio::test]
    async fn ui_conformance() {
        let Some(db) = TestDb::create().await else { return };
        crate::conformance::run_ui(&db.meta().await).await;
    }

    #[tokio::test]
    async fn webhook_conformance() {
        let Some(db) = TestDb::create().await else { return };
        crate::conformance::run_webhooks(&db.meta().await).await;
    }

    #[tokio::test]
    async fn pushes_racing_removals_keep_what_was_acknowledged() {
        let Some(db) = TestDb::create().await else { return };
        crate::conformance::run_races(&db.meta().await, 40).await;
    }

    /// One replica at a time leads a periodic job; the lead passes on when the
    /// leader lets go, and leading one job does not block another.
    #[tokio::test]
    async fn one_replica_at_a_time_leads_a_job() {
        let Some(db) = TestDb::create().await else { return };
        let a = db.meta().await;
        let b = PgMeta::connect(&db.url, PgOptions::default())
            .await
            .expect("second replica");
        let lease = a.lead_job("gc").await.unwrap().expect("the first asker leads");
        assert!(
            b.lead_job("gc").await.unwrap().is_none(),
            "a second replica must not lead gc"
        );
        assert!(
            a.lead_job("gc").await.unwrap().is_none(),
            "nor another task of the leader"
        );
        let other = b.lead_job("retention").await.unwrap().expect("another job is free");
        drop(lease);
        // The lock goes with the lease's connection, which closes in the background.
        let mut led = None;
        for _ in 0..100 {
            led = b.lead_job("gc").await.unwrap();
            if led.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(led.is_some(), "the lead passes on once the leader lets go");
        drop(other);
    }

    /// Replicas agree on a shared secret: the first one stored wins.
    #[tokio::test]
    async fn the_first_stored_secret_is_everyones() {
        let Some(db) = TestDb::create().await else { return };
        let a = db.meta().await;
        let b = PgMeta::connect(&db.url, PgOptions::default())
            .await
            .expect("second replica");
        let first = AccessStore::shared_secret(&a, "token-key", "from-a").await.unwrap();
        let second = AccessStore::shared_secret(&b, "token-key", "from-b").await.unwrap();
        assert_eq!(first.as_deref(), Some("from-a"));
        assert_eq!(second.as_deref(), Some("from-a"));
    }

    /// Replicas starting together against a fresh database all come up, and
    /// the schema is migrated once.
    #[tokio::test]
    async fn replicas_starting_together_migrate_once() {
        let Some(db) = TestDb::create().await else { return };
        let mut starting = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = db.url.clone();
            starting.spawn(async move { PgMeta::connect(&url, PgOptions::default()).await });
        }
        let mut replicas = Vec::new();
        while let Some(started) = starting.join_next().await {
            replicas.push(started.expect("the task ran").expect("every replica connects"));
        }
        let history: Vec<(i64, bool)> =
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&replicas[0].pool)
                .await
                .unwrap();
        let expected: Vec<(i64, bool)> = MIGRATOR.iter().map(|m| (m.version, true)).collect();
        assert_eq!(history, expected);
        // The replicas share one database.
        let d = Digest::sha256_of(b"shared");
        replicas[1].add_blob("r/shared", &d, 6, 1).await.unwrap();
        assert_eq!(replicas[3].linked_blob_size("r/shared", &d).await.unwrap(), Some(6));
        // A restart finds nothing to do.
        let again = PgMeta::connect(&db.url, PgOptions::default()).await.unwrap();
        assert_eq!(again.blob_size(&d).await.unwrap(), Some(6));
    }

    /// Two transactions that lock the same rows in opposite orders: PostgreSQL
    /// aborts one, which runs again once the other is through.
    #[tokio::test]
    async fn deadlocked_transactions_run_again() {
        let Some(db) = TestDb::create().await else { return };
        let meta = db.meta().await;
        for id in ["dl-a", "dl-b"] {
            meta.create_upload(&crate::conformance::new_upload(id, "r/dl", crate::DEFAULT_STORE, 1))
                .await
                .unwrap();
        }
        let attempts = std::sync::atomic::AtomicU32::new(0);
        // Both first attempts hold their first row before either asks for its
        // second, so they deadlock however slowly each one starts; the one
        // PostgreSQL aborts runs again alone.
        let both_hold_one = tokio::sync::Barrier::new(2);
        let bump = |first: &'static str, second: &'static str| {
            let (meta, attempts, both_hold_one) = (&meta, &attempts, &both_hold_one);
            let mut own_attempts = 0;
            retrying("test", move || {
                let own_attempt = own_attempts;
                own_attempts += 1;
                async move {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut tx = meta.pool.begin().await?;
                    for (i, id) in [first, second].into_iter().enumerate() {
                        sqlx::query("UPDATE uploads SET byte_offset = byte_offset + 1 WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        if i == 0 && own_attempt == 0 {
                            both_hold_one.wait().await;
                        }
                    }
                    tx.commit().await?;
                    Ok::<_, MetaError>(())
                }
            })
        };
        let (a, b) = tokio::join!(bump("dl-a", "dl-b"), bump("dl-b", "dl-a"));
        a.unwrap();
        b.unwrap();
        // At least the aborted one's second run; more when PostgreSQL's
        // deadlock check (or a busy machine) lets the runs meet again, which
        // is what the retries are for.
        let attempts = attempts.into_inner();
        assert!(
            (3..=2 * ATTEMPTS).contains(&attempts),
            "the aborted one ran again, within the bound: {attempts} attempts"
        );
        for id in ["dl-a", "dl-b"] {
            let upload = meta.get_upload(&UploadId::new(id.into())).await.unwrap().unwrap();
            assert_eq!(upload.offset, 2, "both transactions counted once");
        }
    }

    #[test]
    fn options_have_defaults_and_reject_unknown_keys() {
        let options: PgOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(options, PgOptions::default());
        let options: PgOptions = serde_json::from_str(r#"{"max_connections": 40}"#).unwrap();
        assert_eq!((options.max_connections, options.min_connections), (40, 1));
        assert!(serde_json::from_str::<PgOptions>(r#"{"max_conections": 40}"#).is_err());
    }

    #[test]
    fn test_databases_replace_the_database_of_the_url() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/postgres", "t1"),
            "postgres://u@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "t1"), "postgres://h:1/t1");
    }

    #[test]
    fn lock_keys_are_stable_and_kinds_apart() {
        // Replicas of different releases must agree on keys: FNV-1a's own test vectors.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        let hash = fnv1a(b"blob\0sha256:0000\0");
        assert_eq!(
            LockKey::blob("sha256:0000"),
            LockKey((hash >> 32) as u32 as i32, hash as u32 as i32)
        );
        let d = "sha256:0000";
        assert_ne!(LockKey::blob(d), LockKey::manifest("r", d));
        assert_ne!(LockKey::blob(d), LockKey::placement(d));
        assert_ne!(LockKey::manifest("a/b", "c"), LockKey::manifest("a", "b/c"));
        assert_ne!(LockKey::tag("r", "t"), LockKey::manifest("r", "t"));
    }

    /// The statements of the registry's hot paths find their rows through
    /// indexes, with the planner's own choice (parameters known) and with the
    /// generic plan a prepared statement falls back to after a few runs.
    #[tokio::test]
    async fn hot_paths_use_indexes() {
        let Some(db) = TestDb::create().await else { return };
        let meta = db.meta().await;
        seed_thousands(&meta).await;
        let mut conn = meta.pool.acquire().await.unwrap();
        let repo = "'team/app-7'";
        let manifest = format!("'{}'", Digest::sha256_of(b"m7"));
        let subject = format!("'{}'", Digest::sha256_of(b"m7"));
        let blob = format!("'{}'", Digest::sha256_of(b"b7"));
        let blobs = format!("ARRAY[{blob}, '{}']", Digest::sha256_of(b"b507"));
        // EXECUTE takes no sub-selects among its parameters.
        let repo_id: i64 = sqlx::query_scalar(REPOSITORY_EXISTS)
            .bind("team/app-7")
            .fetch_one(&meta.pool)
            .await
            .unwrap();
        let repo_id = repo_id.to_string();
        let (first_tags, next_tags) = (tag_page_sql::<PgMeta>(false), tag_page_sql::<PgMeta>(true));
        let summary = repository_summary_sql();
        let cases: Vec<(&str, &str, Vec<String>)> = vec![
            ("repository exists", REPOSITORY_EXISTS, vec![repo.into()]),
            ("repository summary", &summary, vec![repo.into()]),
            ("first tag page", &first_tags, vec![repo.into(), "50".into()]),
            (
                "next tag page",
                &next_tags,
                vec![repo.into(), "0".into(), "'v7'".into(), "50".into()],
            ),
            ("manifest by tag", MANIFEST_BY_TAG, vec![repo.into(), "'v7'".into()]),
            (
                "manifest by digest",
                MANIFEST_BY_DIGEST,
                vec![repo.into(), manifest.clone()],
            ),
            ("tags list", LIST_TAGS, vec![repo.into(), "''".into(), "100".into()]),
            (
                "tags list, next page",
                LIST_TAGS,
                vec![repo.into(), "'v5'".into(), "100".into()],
            ),
            ("linked blob size", LINKED_BLOB_SIZE, vec![repo.into(), blob.clone()]),
            ("linked blob", LINKED_BLOB, vec![repo.into(), blob.clone()]),
            ("touch a link", TOUCH_LINK, vec![repo.into(), blob.clone(), "5".into()]),
            (
                "touches",
                RECORD_TOUCHES,
                vec![format!("ARRAY[{repo_id}]"), format!("ARRAY[{blob}]"), "ARRAY[5]".into()],
            ),
            ("blob size", BLOB_SIZE, vec![blob.clone()]),
            ("links of a push", LINKED_AMONG, vec![repo_id.clone(), blobs.clone()]),
            (
                "children of a push",
                MANIFESTS_AMONG,
                vec![repo_id.clone(), format!("ARRAY[{manifest}]")],
            ),
            (
                "referrers",
                REFERRERS,
                vec![repo.into(), subject.clone(), "NULL".into(), "''".into(), "1000".into()],
            ),
            (
                "referrers, next page",
                REFERRERS,
                vec![
                    repo.into(),
                    subject.clone(),
                    "NULL".into(),
                    manifest.clone(),
                    "1000".into(),
                ],
            ),
            (
                "referrers by type",
                REFERRERS,
                vec![
                    repo.into(),
                    subject,
                    "'application/example'".into(),
                    "''".into(),
                    "1000".into(),
                ],
            ),
            ("manifest facts", MANIFEST_FACTS, vec![repo.into(), manifest.clone()]),
            ("tag facts", TAG_FACTS, vec![repo.into(), "'v7'".into()]),
            ("upload", GET_UPLOAD, vec!["'upload-7'".into()]),
            (
                "upload claim",
                CLAIM_UPLOAD,
                vec!["'upload-7'".into(), "'token'".into(), "20".into(), "80".into()],
            ),
            (
                "upload advance",
                ADVANCE_UPLOAD,
                vec!["20".into(), "NULL".into(), "5".into(), "'upload-7'".into(), "10".into()],
            ),
            (
                "repository ids",
                REPOSITORY_IDS,
                vec!["ARRAY['team/app-7', 'team/app-8']".into()],
            ),
            (
                "manifest pulls",
                RECORD_MANIFEST_PULLS,
                vec![
                    format!("ARRAY[{repo_id}]"),
                    format!("ARRAY[{manifest}]"),
                    "ARRAY[1]".into(),
                    "ARRAY[5]".into(),
                ],
            ),
            (
                "daily pulls",
                RECORD_DAILY_PULLS,
                vec![format!("ARRAY[{repo_id}]"), "ARRAY[20000]".into(), "ARRAY[1]".into()],
            ),
            (
                "tag pulls",
                RECORD_TAG_PULLS,
                vec![
                    format!("ARRAY[{repo_id}]"),
                    "ARRAY['v7']".into(),
                    format!("ARRAY[{manifest}]"),
                    "ARRAY[1]".into(),
                    "ARRAY[5]".into(),
                ],
            ),
        ];
        let mut failures = Vec::new();
        for (i, (name, sql, args)) in cases.iter().enumerate() {
            sqlx::raw_sql(&format!("PREPARE hot{i} AS {sql}"))
                .execute(&mut *conn)
                .await
                .unwrap();
            for mode in ["force_custom_plan", "force_generic_plan"] {
                sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}"))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE hot{i}({})", args.join(", ")))
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
                let plan = lines.join("\n");
                eprintln!("-- {name} ({mode}):\n{plan}\n");
                if plan.contains("Seq Scan") {
                    failures.push(format!("{name} ({mode}) scans a whole table:\n{plan}"));
                }
                // A repository's rows picked out of a scan of every repository's,
                // or a join that reads all of them for each row it joins.
                if lines
                    .iter()
                    .any(|l| l.contains("Filter:") && l.contains("repo_id") || l.contains("Join Filter:"))
                {
                    failures.push(format!(
                        "{name} ({mode}) filters by repository after the index:\n{plan}"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    /// 5,000 repositories, 500 of them with 20,000 tags, manifests, blobs,
    /// links and references between them, a referrer for every tenth
    /// manifest, and 5,000 uploads.
    async fn seed_thousands(meta: &PgMeta) {
        sqlx::raw_sql(
            "INSERT INTO repositories (name, created_ms) SELECT 'team/app-' || i, 0 FROM generate_series(0, 4999) i;
             INSERT INTO blobs (digest, size, created_ms, touched_ms)
               SELECT 'sha256:' || encode(sha256(('b' || i)::bytea), 'hex'), i, 0, 0 FROM generate_series(0, 19999) i;
             INSERT INTO repo_blobs (repo_id, digest, linked_ms)
               SELECT r.id, 'sha256:' || encode(sha256(('b' || i)::bytea), 'hex'), 0
               FROM generate_series(0, 19999) i JOIN repositories r ON r.name = 'team/app-' || (i % 500);
             INSERT INTO manifests (repo_id, digest, media_type, artifact_type, subject, size, body, pushed_ms,
                                    touched_ms, total_size)
               SELECT r.id, 'sha256:' || encode(sha256(('m' || i)::bytea), 'hex'),
                      'application/vnd.oci.image.manifest.v1+json',
                      CASE WHEN i % 10 = 0 THEN 'application/example' END,
                      CASE WHEN i % 10 = 0 THEN 'sha256:' || encode(sha256(('m' || (i + 500))::bytea), 'hex') END,
                      2, '\\x7b7d'::bytea, 0, 0, 2
               FROM generate_series(0, 19999) i JOIN repositories r ON r.name = 'team/app-' || (i % 500);
             INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, child_kind)
               SELECT r.id, 'sha256:' || encode(sha256(('m' || i)::bytea), 'hex'),
                      'sha256:' || encode(sha256(('b' || i)::bytea), 'hex'), 'blob'
               FROM generate_series(0, 19999) i JOIN repositories r ON r.name = 'team/app-' || (i % 500);
             INSERT INTO tags (repo_id, name, manifest_digest, pushed_ms)
               SELECT r.id, 'v' || i, 'sha256:' || encode(sha256(('m' || i)::bytea), 'hex'), 0
               FROM generate_series(0, 19999) i JOIN repositories r ON r.name = 'team/app-' || (i % 500);
             INSERT INTO uploads (id, repo, byte_offset, started_ms, updated_ms)
               SELECT 'upload-' || i, 'team/app-' || (i % 500), 10, i, i FROM generate_series(0, 4999) i;
             ANALYZE;",
        )
        .execute(&meta.pool)
        .await
        .unwrap();
    }
}
