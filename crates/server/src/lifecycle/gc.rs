//! Online garbage collection.
//!
//! Nothing is locked for the whole run. Each phase reads candidates from a
//! read snapshot, then removes them in small write transactions that check
//! again, inside the transaction, that the candidate is still unreferenced
//! and has been for the grace period. Uploads place blob files under the same
//! write lock, so a push that re-references a blob during the run either
//! commits first (and the blob stays) or finds the blob gone (and uploads it).
//! A client's read of a blob moves its link's `linked_ms` (see
//! `registry::touches`), which the candidate queries and the re-checks compare
//! with the cutoff like any link; a collection writes the reads this process
//! gathered in memory before it decides.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use async_trait::async_trait;
use berth_meta::access::Audit;
use berth_meta::lifecycle::{BlobFiles, BlobSweep, FileRemover, LinkKey, PlannedRemoval, Removal};
use berth_meta::{BoxError, StoreSet};
use berth_oci::{Algorithm, Digest, UploadId};
use futures::StreamExt;
use serde::Serialize;

use super::{Lifecycle, LifecycleError, Result};
use crate::registry::events::Action;
use crate::registry::{BlobStores, NamedStore};

/// What one collection found and removed (or, in a dry run, would remove).
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct GcReport {
    pub dry_run: bool,
    /// A dry run that counted too many manifests to keep simulating their
    /// removal: the blob and link counts leave out what those free.
    pub approximate: bool,
    /// Tags of signatures, attestations and SBOMs (of the tag schema, or of
    /// a manifest with a `subject`) whose subject is gone.
    pub signature_tags_removed: u64,
    pub manifests_removed: u64,
    pub links_removed: u64,
    pub blobs_removed: u64,
    pub bytes_reclaimed: u64,
    pub orphan_files_removed: u64,
    pub orphan_bytes_reclaimed: u64,
    pub upload_files_removed: u64,
    /// Unreferenced blobs left alone because a store holding a copy is not
    /// configured (its file could not be deleted).
    pub blobs_kept_store_not_configured: u64,
    pub elapsed_ms: u64,
}

/// How many candidates one transaction handles.
const BATCH: u32 = 500;
/// How many blob-store shards the orphan scan lists at once.
pub(super) const SHARD_LISTINGS: usize = 8;
/// Most manifests a dry run pretends are gone when it counts blobs and links.
const PRETEND_MAX: usize = 10_000;

/// Why a blob file could not be deleted.
#[derive(Debug, thiserror::Error)]
#[error("blob {digest} has a copy in the blob store {store}, which is not configured")]
struct StoreNotConfigured {
    digest: Digest,
    store: String,
}

/// Deletes blob files through the blob stores holding them.
pub(crate) struct StoreFiles<'a>(pub &'a BlobStores);

#[async_trait]
impl FileRemover for StoreFiles<'_> {
    async fn remove(&self, files: &[BlobFiles]) -> std::result::Result<(), BoxError> {
        let mut per_store: Vec<(&NamedStore, Vec<Digest>)> = Vec::new();
        for blob in files {
            for name in blob.stores.names() {
                // The caller leaves out blobs of stores not configured; one
                // found here fails the transaction, so no record outlives a
                // file it cannot delete.
                let store = self.0.get(name).ok_or_else(|| StoreNotConfigured {
                    digest: blob.digest.clone(),
                    store: name.to_string(),
                })?;
                match per_store.iter_mut().find(|(known, _)| known.name() == name) {
                    Some((_, digests)) => digests.push(blob.digest.clone()),
                    None => per_store.push((store, vec![blob.digest.clone()])),
                }
            }
        }
        let deletes = per_store
            .iter()
            .map(|(store, digests)| store.store().delete_many(digests));
        futures::future::try_join_all(deletes).await?;
        Ok(())
    }
}

/// Every two-hex-digit shard of the blob store's layout.
pub(crate) fn shards() -> impl Iterator<Item = String> {
    (0..=255u8).map(|n| format!("{n:02x}"))
}

impl Lifecycle {
    /// Phase 1 of a collection: removes, a batch at a time, the tags that
    /// follow a subject which is gone (signatures, attestations, SBOMs), and
    /// their manifests once no tag names them. A dry run counts a manifest
    /// as removed when it has counted all of its tags, and adds it to `gone`.
    async fn collect_orphaned_referrer_tags(
        &self,
        cutoff: i64,
        dry_run: bool,
        report: &mut GcReport,
        gone: &mut Vec<(i64, Digest)>,
    ) -> Result<()> {
        // Dry run: how many of each manifest's tags were counted so far.
        let mut counted: HashMap<(i64, Digest), u64> = HashMap::new();
        let mut after: Option<(i64, String)> = None;
        loop {
            let batch = self
                .store
                .orphaned_referrer_tags(cutoff, after.as_ref().map(|(id, name)| (*id, name.as_str())), BATCH)
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some((last.repo_id, last.tag.name.clone()));
            let full = batch.len() == BATCH as usize;
            if dry_run {
                for o in &batch {
                    report.signature_tags_removed += 1;
                    let seen = counted.entry((o.repo_id, o.tag.digest.clone())).or_default();
                    *seen += 1;
                    if *seen == o.manifest_tags {
                        report.manifests_removed += 1;
                        gone.push((o.repo_id, o.tag.digest.clone()));
                    }
                }
            } else {
                // The batch is in repository order: one transaction per
                // repository, its tags first, then their manifests, each of
                // which the store removes only once no tag names it.
                for group in batch.chunk_by(|a, b| a.repo_id == b.repo_id) {
                    let mut removals: Vec<PlannedRemoval> = group
                        .iter()
                        .map(|o| PlannedRemoval {
                            removal: Removal::Tag {
                                name: o.tag.name.clone(),
                                digest: o.tag.digest.clone(),
                                pushed_ms: o.tag.pushed_ms,
                                last_pulled_ms: o.tag.last_pulled_ms,
                                follows: Some(o.subject.clone()),
                            },
                            rule: "follows_subject".into(),
                            reason: "tag of a signature or other referrer whose subject is gone".into(),
                        })
                        .collect();
                    let tags = removals.len();
                    let mut manifests: HashSet<&Digest> = HashSet::new();
                    for o in group {
                        if manifests.insert(&o.tag.digest) {
                            removals.push(PlannedRemoval {
                                removal: Removal::Manifest {
                                    digest: o.tag.digest.clone(),
                                    pushed_ms: o.manifest_pushed_ms,
                                    last_pulled_ms: o.manifest_last_pulled_ms,
                                    untouched_since: None,
                                    collected: true,
                                },
                                rule: "follows_subject".into(),
                                reason: "a signature or other referrer whose subject is gone".into(),
                            });
                        }
                    }
                    let audit = Audit {
                        actor: "gc".into(),
                        at_ms: self.now_ms(),
                    };
                    let applied = self.store.remove(&group[0].repo, &removals, &audit).await?;
                    super::publish_removals(
                        self.events.as_ref(),
                        &group[0].repo,
                        &removals,
                        &applied,
                        "gc",
                        audit.at_ms,
                        |_| Action::Gc,
                    )
                    .await;
                    let (tags_applied, manifests_applied) = applied.split_at(tags.min(applied.len()));
                    report.signature_tags_removed += tags_applied.iter().filter(|a| **a).count() as u64;
                    report.manifests_removed += manifests_applied.iter().filter(|a| **a).count() as u64;
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Runs one collection. `progress` hears one line per phase.
    pub async fn collect_garbage(&self, dry_run: bool, mut progress: impl FnMut(&str)) -> Result<GcReport> {
        let _turn = self.take_turn().await;
        let started = Instant::now();
        self.flush_pulls().await?;
        self.flush_touches().await?;
        let cutoff = self.now_ms().saturating_sub(self.grace_ms());
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        let audit = || Audit {
            actor: "gc".into(),
            at_ms: self.now_ms(),
        };

        // What a dry run counts as removed, so that later phases see what the
        // real run would leave.
        let mut gone: Vec<(i64, Digest)> = Vec::new();

        // 1. Tags that follow a subject which is gone, with their manifests.
        self.collect_orphaned_referrer_tags(cutoff, dry_run, &mut report, &mut gone)
            .await?;
        progress(&format!(
            "tags of signatures and other referrers whose subject is gone: {}",
            report.signature_tags_removed
        ));

        // 2. Untagged manifests nothing references, in passes: removing an
        // index frees its children and a subject its referrers.
        let policies = self.policies().await?;
        loop {
            let mut removed_this_pass = 0;
            let mut after: Option<(i64, Digest)> = None;
            loop {
                let batch = self
                    .store
                    .untagged_manifests(cutoff, after.as_ref().map(|(id, d)| (*id, d)), BATCH, &gone)
                    .await?;
                let Some(last) = batch.last() else { break };
                after = Some((last.repo_id, last.digest.clone()));
                let full = batch.len() == BATCH as usize;
                // Repositories whose policy sets `untagged` leave these to retention.
                let mine = batch.into_iter().filter(|m| {
                    policies
                        .for_repository(&m.repo)
                        .is_none_or(|p| p.rules.untagged.is_none())
                });
                if dry_run {
                    let before = gone.len();
                    gone.extend(mine.map(|m| (m.repo_id, m.digest)));
                    removed_this_pass += (gone.len() - before) as u64;
                } else {
                    let mut by_repo: Vec<(String, Vec<PlannedRemoval>)> = Vec::new();
                    for m in mine {
                        let removal = PlannedRemoval {
                            removal: Removal::Manifest {
                                digest: m.digest.clone(),
                                pushed_ms: m.pushed_ms,
                                last_pulled_ms: m.last_pulled_ms,
                                untouched_since: Some(cutoff),
                                collected: true,
                            },
                            rule: "gc".into(),
                            reason: "untagged and unreferenced for longer than the grace period".into(),
                        };
                        match by_repo.last_mut() {
                            Some((repo, list)) if *repo == m.repo => list.push(removal),
                            _ => by_repo.push((m.repo.clone(), vec![removal])),
                        }
                    }
                    for (repo, removals) in by_repo {
                        let audit = audit();
                        let applied = self.store.remove(&repo, &removals, &audit).await?;
                        super::publish_removals(
                            self.events.as_ref(),
                            &repo,
                            &removals,
                            &applied,
                            "gc",
                            audit.at_ms,
                            |_| Action::Gc,
                        )
                        .await;
                        removed_this_pass += applied.into_iter().filter(|a| *a).count() as u64;
                    }
                }
                if !full {
                    break;
                }
            }
            report.manifests_removed += removed_this_pass;
            if removed_this_pass == 0 {
                break;
            }
        }
        progress(&format!("untagged manifests: {}", report.manifests_removed));
        if gone.len() > PRETEND_MAX {
            report.approximate = true;
            gone.clear();
        }

        // 3. Links no manifest of their repository uses.
        let mut after: Option<LinkKey> = None;
        loop {
            let batch = self.store.stale_links(cutoff, after.as_ref(), BATCH, &gone).await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.clone());
            report.links_removed += if dry_run {
                batch.len() as u64
            } else {
                self.store.remove_links(&batch, cutoff).await?
            };
            if batch.len() < BATCH as usize {
                break;
            }
        }
        progress(&format!("unused links of blobs still in use: {}", report.links_removed));

        // 4. Blobs nothing links or references.
        // A blob with a copy in a store no longer configured keeps its
        // records: its file there cannot be deleted, and reads still need to
        // say where it is.
        let files = StoreFiles(self.stores());
        let removable = |stores: &StoreSet| self.stores().unconfigured(stores).is_empty();
        let mut after: Option<Digest> = None;
        loop {
            let sweep = if dry_run {
                let found = self
                    .store
                    .unreferenced_blobs(cutoff, after.as_ref(), BATCH, &gone)
                    .await?;
                BlobSweep::split(found, BATCH, &removable)
            } else {
                self.store
                    .sweep_blobs(cutoff, after.as_ref(), BATCH, &removable, &files)
                    .await?
            };
            for blob in &sweep.left_alone {
                tracing::warn!(
                    digest = %blob.digest,
                    stores = %blob.stores,
                    "unreferenced blob left alone: a blob store holding it is not configured"
                );
            }
            report.blobs_kept_store_not_configured += sweep.left_alone.len() as u64;
            report.blobs_removed += sweep.removed.len() as u64;
            report.bytes_reclaimed += sweep.removed.iter().map(|b| b.size).sum::<u64>();
            report.links_removed += sweep.removed.iter().map(|b| b.links).sum::<u64>();
            after = sweep.last;
            if !sweep.more {
                break;
            }
        }
        progress(&format!(
            "unreferenced blobs: {} ({} bytes), all links: {}",
            report.blobs_removed, report.bytes_reclaimed, report.links_removed
        ));

        // 5. Files the database does not know (left by a crash), past the
        // grace period, in every configured store: a file is an orphan of
        // its store unless the blob's record names that store.
        // The shards are listed a few at a time: on an object store each
        // listing is a round trip, and there are 256 of them.
        let mut listings = futures::stream::iter(shards())
            .map(|shard| async move {
                let recorded = self.store.blobs_with_prefix(Algorithm::Sha256.as_str(), &shard).await?;
                let mut per_store = Vec::with_capacity(self.stores().all().len());
                for store in self.stores().all() {
                    let known: HashSet<&Digest> = recorded
                        .iter()
                        .filter(|b| b.stores.contains(store.name()))
                        .map(|b| &b.digest)
                        .collect();
                    // Names first: only a shard holding a file the database
                    // does not know needs each file's age and size.
                    let names = store
                        .store()
                        .list_blob_names(Algorithm::Sha256.as_str(), &shard)
                        .await?;
                    if names.iter().all(|name| known.contains(name)) {
                        per_store.push((store.name(), Vec::new()));
                        continue;
                    }
                    let files = store.store().list_blobs(Algorithm::Sha256.as_str(), &shard).await?;
                    let orphans: Vec<(Digest, u64)> = files
                        .into_iter()
                        .filter(|f| f.modified_ms < cutoff && !known.contains(&f.key))
                        .map(|f| (f.key, f.size))
                        .collect();
                    per_store.push((store.name(), orphans));
                }
                Ok::<_, LifecycleError>(per_store)
            })
            .buffered(SHARD_LISTINGS);
        while let Some(listing) = listings.next().await {
            for (store, orphans) in listing? {
                if orphans.is_empty() {
                    continue;
                }
                let removed: Vec<Digest> = if dry_run {
                    orphans.iter().map(|(d, _)| d.clone()).collect()
                } else {
                    let digests: Vec<Digest> = orphans.iter().map(|(d, _)| d.clone()).collect();
                    self.store.remove_orphan_files(store, &digests, &files).await?
                };
                report.orphan_files_removed += removed.len() as u64;
                report.orphan_bytes_reclaimed += orphans
                    .iter()
                    .filter(|(d, _)| removed.contains(d))
                    .map(|(_, s)| s)
                    .sum::<u64>();
            }
        }
        progress(&format!(
            "orphaned blob files: {} ({} bytes)",
            report.orphan_files_removed, report.orphan_bytes_reclaimed
        ));

        // 6. Upload files without a session (the session row went, the file stayed).
        // Files first: a session created after its file was listed is then
        // among the sessions read next.
        let mut upload_files = Vec::with_capacity(self.stores().all().len());
        for store in self.stores().all() {
            upload_files.push((store, store.store().list_uploads().await?));
        }
        let sessions: HashSet<String> = self.store.upload_ids().await?.into_iter().collect();
        for (store, files) in upload_files {
            let stray: Vec<UploadId> = files
                .into_iter()
                .filter(|f| f.modified_ms < cutoff && !sessions.contains(f.key.as_str()))
                .map(|f| f.key)
                .collect();
            for id in &stray {
                if !dry_run {
                    store.store().cancel_upload(id).await?;
                }
                report.upload_files_removed += 1;
            }
        }
        progress(&format!(
            "upload files without a session: {}",
            report.upload_files_removed
        ));

        report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !dry_run {
            let mut last = self.last_gc.lock().unwrap_or_else(|p| p.into_inner());
            *last = Some((self.now_ms(), report.clone()));
        }
        Ok(report)
    }
}
