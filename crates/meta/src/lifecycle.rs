//! Facts and changes for the lifecycle jobs: the state of a repository as the
//! retention planner sees it, removals that re-check their preconditions in
//! the deleting transaction, retention policies, and the garbage collector's
//! queries.
//!
//! What the rules mean (which tag a policy keeps, how long the grace period
//! is) is the server's `lifecycle` module's business.

use async_trait::async_trait;
use berth_oci::Digest;

use crate::access::Audit;
use crate::{BoxError, MetaStore, Result, StoreSet};

/// A tag as the lifecycle rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TagState {
    pub name: String,
    pub digest: Digest,
    pub pushed_ms: i64,
    pub last_pulled_ms: Option<i64>,
    pub pull_count: u64,
}

/// A manifest as the lifecycle rules and the inventory see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestState {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// Child manifests (of an index).
    pub children: Vec<Digest>,
    pub provenance: String,
    pub pushed_by: Option<String>,
    pub pushed_ms: i64,
    /// When it was last pushed or lost a tag.
    pub touched_ms: i64,
    pub last_pulled_ms: Option<i64>,
    pub pull_count: u64,
    pub platforms: Vec<String>,
    pub total_size: Option<u64>,
}

/// Every tag and manifest of one repository, read in one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoState {
    pub name: String,
    pub tags: Vec<TagState>,
    pub manifests: Vec<ManifestState>,
}

/// Something a lifecycle job removes, with what it looked like when the job
/// decided: if it changed since (pushed, pulled, re-tagged), it stays.
#[derive(Debug, Clone, PartialEq)]
pub enum Removal {
    Tag {
        name: String,
        digest: Digest,
        pushed_ms: i64,
        last_pulled_ms: Option<i64>,
        /// For a tag that lives and dies with a subject (a signature's,
        /// an attestation's): removed only while the repository holds no
        /// manifest of this digest, so a subject that stays (pulled or
        /// pushed again after the decision) keeps its signatures.
        follows: Option<Digest>,
    },
    /// Removed only while no tag names it, no index in the repository lists it
    /// and its subject (if any) is gone.
    Manifest {
        digest: Digest,
        pushed_ms: i64,
        last_pulled_ms: Option<i64>,
        /// Also required: untagged and unreferenced since before this time.
        untouched_since: Option<i64>,
        /// Removed as garbage: what it references was garbage with it, so
        /// its blobs and dependents get no new grace period. Otherwise (a
        /// rule deleted it) they start one now.
        collected: bool,
    },
}

/// A removal and why: the rule that decided it and a sentence for people.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRemoval {
    pub removal: Removal,
    pub rule: String,
    pub reason: String,
}

/// A retention policy as stored: its rules are a JSON object the server parses.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PolicyRecord {
    pub pattern: String,
    #[sqlx(rename = "rules")]
    pub rules_json: String,
    /// `api` or `config`.
    pub source: String,
    pub updated_by: String,
    pub updated_ms: i64,
}

/// A blob's link to a repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkKey {
    pub repo_id: i64,
    pub digest: Digest,
}

/// A blob garbage collection may remove, with the links that go with it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnusedBlob {
    pub digest: Digest,
    pub size: u64,
    pub links: u64,
    /// The stores holding its bytes, each of which loses its file with it.
    pub stores: StoreSet,
}

/// What one step of the blob sweep did.
#[derive(Debug)]
pub struct BlobSweep {
    pub removed: Vec<UnusedBlob>,
    /// Unreferenced, but `removable` refused them.
    pub left_alone: Vec<UnusedBlob>,
    /// The last candidate looked at: the next step starts after it.
    pub last: Option<Digest>,
    /// Whether the step found as many candidates as it may handle, so more
    /// may follow.
    pub more: bool,
}

impl BlobSweep {
    /// A step that found `candidates` (at most `limit`): those whose stores
    /// `removable` accepts go to `removed` (to be removed, or counted by a dry
    /// run), the others to `left_alone`.
    pub fn split(candidates: Vec<UnusedBlob>, limit: u32, removable: &dyn Fn(&StoreSet) -> bool) -> BlobSweep {
        let last = candidates.last().map(|b| b.digest.clone());
        let more = candidates.len() >= limit as usize;
        let (removed, left_alone) = candidates.into_iter().partition(|b| removable(&b.stores));
        BlobSweep {
            removed,
            left_alone,
            last,
            more,
        }
    }
}

/// A recorded blob as the orphan scan and the consistency check see it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedBlob {
    pub digest: Digest,
    pub size: u64,
    pub stores: StoreSet,
}

/// Files of one blob in the stores named.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobFiles {
    pub digest: Digest,
    pub stores: StoreSet,
}

/// An untagged manifest that nothing in its repository references.
#[derive(Debug, Clone, PartialEq)]
pub struct UntaggedManifest {
    pub repo_id: i64,
    pub repo: String,
    pub digest: Digest,
    pub pushed_ms: i64,
    pub last_pulled_ms: Option<i64>,
    pub touched_ms: i64,
}

/// A tag that follows a subject which is not in its repository: a tag of the
/// signature schema (`sha256-<hex>[.sig|.att|.sbom]`) naming a manifest that
/// is not there, or any tag of a manifest whose declared `subject` is not
/// there. (Should the tag name one subject and its manifest declare another,
/// the tag is orphaned only when neither is there.)
#[derive(Debug, Clone, PartialEq)]
pub struct OrphanedReferrerTag {
    pub repo_id: i64,
    pub repo: String,
    pub tag: TagState,
    /// The subject it follows (the one its name says, if any).
    pub subject: Digest,
    /// The tagged manifest as it was found, for its removal's re-check.
    pub manifest_pushed_ms: i64,
    pub manifest_last_pulled_ms: Option<i64>,
    /// How many tags (orphaned or not) name the tagged manifest.
    pub manifest_tags: u64,
}

/// Manifests (repository id, digest) a dry run of garbage collection counts
/// as removed: the queries treat them as gone.
pub type Pretend<'a> = &'a [(i64, Digest)];

/// Deletes blob files while the metadata store holds its write lock.
#[async_trait]
pub trait FileRemover: Send + Sync {
    /// Deletes each blob's file from every store named with it.
    async fn remove(&self, files: &[BlobFiles]) -> std::result::Result<(), BoxError>;
}

/// The lifecycle jobs' view of the metadata store: the registry's, plus the
/// whole-repository reads and re-checked removals they need.
#[async_trait]
pub trait LifecycleStore: MetaStore {
    /// Every tag and manifest of `repo`, or `None` when it does not exist.
    async fn repository_state(&self, repo: &str) -> Result<Option<RepoState>>;

    /// Applies removals in order in one transaction, each only if its
    /// preconditions still hold, writing an audit row for each one applied.
    /// Returns, per removal, whether it was applied.
    async fn remove(&self, repo: &str, removals: &[PlannedRemoval], audit: &Audit) -> Result<Vec<bool>>;

    async fn policies(&self) -> Result<Vec<PolicyRecord>>;

    /// Creates or replaces the policy of `policy.pattern`.
    async fn put_policy(&self, policy: &PolicyRecord, audit: &Audit) -> Result<()>;

    /// False when there was no policy for `pattern`.
    async fn delete_policy(&self, pattern: &str, audit: &Audit) -> Result<bool>;

    /// Makes the `config` policies exactly `policies`, leaving `api` ones alone
    /// unless a config policy has the same pattern.
    async fn sync_config_policies(&self, policies: &[PolicyRecord], audit: &Audit) -> Result<()>;

    /// Links that no manifest of their repository references, unchanged since
    /// before `cutoff_ms`, of blobs that manifests elsewhere still reference
    /// (the links of a blob nothing references go with the blob), after
    /// `after` in key order. References from `gone` manifests do not count
    /// (here and in the next two queries).
    async fn stale_links(
        &self,
        cutoff_ms: i64,
        after: Option<&LinkKey>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<LinkKey>>;

    /// Removes the links that are still stale; returns how many went.
    async fn remove_links(&self, links: &[LinkKey], cutoff_ms: i64) -> Result<u64>;

    /// Blobs no manifest references, untouched and not linked since before
    /// `cutoff_ms`, after `after` in digest order.
    async fn unreferenced_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&Digest>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<UnusedBlob>>;

    /// Removes those blobs that are still collectable, with their links and
    /// their files (through `files`), in one transaction. Returns what went.
    async fn remove_blobs(
        &self,
        digests: &[Digest],
        cutoff_ms: i64,
        files: &dyn FileRemover,
    ) -> Result<Vec<UnusedBlob>>;

    /// One step of the blob sweep: finds the next `limit` unreferenced blobs
    /// after `after` (as [`unreferenced_blobs`](Self::unreferenced_blobs)
    /// does) and removes, as [`remove_blobs`](Self::remove_blobs) does, those
    /// whose stores `removable` accepts. Backends that can find and remove
    /// them in one transaction do, which saves checking each blob twice.
    async fn sweep_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&Digest>,
        limit: u32,
        removable: &(dyn for<'s> Fn(&'s StoreSet) -> bool + Sync),
        files: &dyn FileRemover,
    ) -> Result<BlobSweep> {
        let found = self.unreferenced_blobs(cutoff_ms, after, limit, &[]).await?;
        let mut sweep = BlobSweep::split(found, limit, removable);
        let digests: Vec<Digest> = sweep.removed.iter().map(|b| b.digest.clone()).collect();
        sweep.removed = self.remove_blobs(&digests, cutoff_ms, files).await?;
        Ok(sweep)
    }

    /// Untagged manifests that nothing in their repository references (an
    /// index listing them, a living subject), untouched since before
    /// `cutoff_ms`, after `after` (repository id, digest) in key order.
    async fn untagged_manifests(
        &self,
        cutoff_ms: i64,
        after: Option<(i64, &Digest)>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<UntaggedManifest>>;

    /// Tags that follow a subject which is gone, where both the tag and its
    /// manifest are untouched since before `cutoff_ms`, after `after`
    /// (repository id, tag name) in key order.
    async fn orphaned_referrer_tags(
        &self,
        cutoff_ms: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<OrphanedReferrerTag>>;

    /// Recorded blobs whose hex digest starts with `hex_prefix`, in digest order.
    async fn blobs_with_prefix(&self, algorithm: &str, hex_prefix: &str) -> Result<Vec<RecordedBlob>>;

    /// Deletes the files in the blob store named `store` (through `files`)
    /// of those digests the database does not record as held by that store,
    /// in one transaction; returns which.
    async fn remove_orphan_files(
        &self,
        store: &str,
        digests: &[Digest],
        files: &dyn FileRemover,
    ) -> Result<Vec<Digest>>;

    /// Manifests referencing the blob, as (repository, manifest digest).
    async fn blob_users(&self, digest: &Digest) -> Result<Vec<(String, Digest)>>;

    /// Forgets a blob no manifest references (its links too); false when a
    /// manifest references it or it is unknown.
    async fn forget_unreferenced_blob(&self, digest: &Digest) -> Result<bool>;

    /// Every upload session's id.
    async fn upload_ids(&self) -> Result<Vec<String>>;
}
