//! The consistency check between the metadata database and every configured
//! blob store: what `berth fsck` reports and, with `--repair`, fixes where
//! that is safe.

use std::collections::{HashMap, HashSet};

use berth_meta::lifecycle::RecordedBlob;
use berth_oci::{Algorithm, Digest, DigestHasher, UploadId};
use berth_storage::StoredFile;
use futures::StreamExt;
use serde::Serialize;

use super::gc::{shards, StoreFiles, SHARD_LISTINGS};
use super::{Lifecycle, LifecycleError, Result};
use crate::registry::NamedStore;

/// One inconsistency. `store` names the blob store it was found in.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The database records a blob whose file is gone. `used_by` lists the
    /// manifests (`repository@digest`) that can no longer be pulled whole
    /// when no other store holds a copy.
    MissingBlob {
        digest: String,
        store: String,
        used_by: Vec<String>,
        repaired: bool,
    },
    /// A file in the blob store the database does not record there.
    OrphanFile {
        digest: String,
        store: String,
        size: u64,
        repaired: bool,
    },
    /// The file's size differs from the recorded one.
    SizeMismatch {
        digest: String,
        store: String,
        recorded: u64,
        actual: u64,
    },
    /// The file's content does not hash to its name (only with `--verify`).
    CorruptBlob {
        digest: String,
        store: String,
        actual: String,
        used_by: Vec<String>,
    },
    /// The database records a copy in a store the configuration does not
    /// name: it cannot be checked or read, and is never repaired here.
    StoreNotConfigured {
        digest: String,
        store: String,
        used_by: Vec<String>,
    },
    /// An upload session whose bytes are gone.
    SessionWithoutFile { upload: String, repaired: bool },
    /// Upload bytes without a session.
    UploadFileWithoutSession { upload: String, repaired: bool },
}

/// What the check found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FsckReport {
    pub blobs_checked: u64,
    pub files_checked: u64,
    pub problems: Vec<Problem>,
    /// Problems that remain after any repair.
    pub unrepaired: u64,
}

/// Upload files younger than this may belong to a session being created.
const UPLOAD_SETTLE_MS: i64 = 10 * 60 * 1000;

impl Lifecycle {
    /// Compares the database with every configured blob store; `verify`
    /// also re-hashes every blob; `repair` fixes what can be fixed without
    /// losing data.
    pub async fn fsck(&self, verify: bool, repair: bool, mut progress: impl FnMut(&str)) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let files = StoreFiles(self.stores());
        let alg = Algorithm::Sha256.as_str();
        // A few shards listed at once, as in garbage collection: on an object
        // store each listing is a round trip.
        let mut listings = futures::stream::iter(shards())
            .map(|shard| async move {
                let recorded: Vec<RecordedBlob> = self.store.blobs_with_prefix(alg, &shard).await?;
                let mut present = Vec::with_capacity(self.stores().all().len());
                for store in self.stores().all() {
                    present.push((store, store.store().list_blobs(alg, &shard).await?));
                }
                Ok::<_, LifecycleError>((recorded, present))
            })
            .buffered(SHARD_LISTINGS);
        while let Some(listing) = listings.next().await {
            let (recorded, present) = listing?;
            report.blobs_checked += recorded.len() as u64;
            for blob in &recorded {
                for store in self.stores().unconfigured(&blob.stores) {
                    report.problems.push(Problem::StoreNotConfigured {
                        digest: blob.digest.to_string(),
                        store: store.to_string(),
                        used_by: self.users(&blob.digest).await?,
                    });
                }
            }
            for (store, present) in present {
                report.files_checked += present.len() as u64;
                let held: HashMap<&Digest, &RecordedBlob> = recorded
                    .iter()
                    .filter(|b| b.stores.contains(store.name()))
                    .map(|b| (&b.digest, b))
                    .collect();
                self.check_store(store, &held, &present, verify, repair, &files, &mut report)
                    .await?;
            }
        }
        progress(&format!(
            "blobs: {} recorded, {} files in {} stores",
            report.blobs_checked,
            report.files_checked,
            self.stores().all().len()
        ));

        let sessions: HashSet<String> = self.store.upload_ids().await?.into_iter().collect();
        let mut upload_files = Vec::new();
        for store in self.stores().all() {
            for file in store.store().list_uploads().await? {
                upload_files.push((store, file));
            }
        }
        let with_files: HashSet<&str> = upload_files.iter().map(|(_, f)| f.key.as_str()).collect();
        let now = self.now_ms();
        for (store, file) in &upload_files {
            if sessions.contains(file.key.as_str()) || now - file.modified_ms < UPLOAD_SETTLE_MS {
                continue;
            }
            if repair {
                store.store().cancel_upload(&file.key).await?;
            }
            report.problems.push(Problem::UploadFileWithoutSession {
                upload: file.key.to_string(),
                repaired: repair,
            });
        }
        for id in sessions.iter().filter(|s| !with_files.contains(s.as_str())) {
            let Some(upload) = UploadId::parse(id) else { continue };
            if repair {
                self.store.delete_upload(&upload).await?;
            }
            report.problems.push(Problem::SessionWithoutFile {
                upload: id.clone(),
                repaired: repair,
            });
        }
        progress(&format!("upload sessions: {}", sessions.len()));

        report.unrepaired = report
            .problems
            .iter()
            .filter(|p| match p {
                Problem::MissingBlob { repaired, .. }
                | Problem::OrphanFile { repaired, .. }
                | Problem::SessionWithoutFile { repaired, .. }
                | Problem::UploadFileWithoutSession { repaired, .. } => !repaired,
                Problem::SizeMismatch { .. } | Problem::CorruptBlob { .. } | Problem::StoreNotConfigured { .. } => true,
            })
            .count() as u64;
        Ok(report)
    }

    /// Compares one store's files of a shard with the blobs the database
    /// records in that store (`held`).
    #[expect(clippy::too_many_arguments, reason = "one shard's inputs and the report it adds to")]
    async fn check_store(
        &self,
        store: &NamedStore,
        held: &HashMap<&Digest, &RecordedBlob>,
        present: &[StoredFile<Digest>],
        verify: bool,
        repair: bool,
        files: &StoreFiles<'_>,
        report: &mut FsckReport,
    ) -> Result<()> {
        let on_disk: HashSet<&Digest> = present.iter().map(|f| &f.key).collect();
        let mut orphans = Vec::new();
        for file in present {
            match held.get(&file.key) {
                None => orphans.push((file.key.clone(), file.size)),
                Some(blob) if blob.size != file.size => report.problems.push(Problem::SizeMismatch {
                    digest: file.key.to_string(),
                    store: store.name().to_string(),
                    recorded: blob.size,
                    actual: file.size,
                }),
                Some(_) if verify => {
                    if let Some(actual) = self.rehash(store, &file.key).await? {
                        report.problems.push(Problem::CorruptBlob {
                            digest: file.key.to_string(),
                            store: store.name().to_string(),
                            actual: actual.to_string(),
                            used_by: self.users(&file.key).await?,
                        });
                    }
                }
                Some(_) => {}
            }
        }
        if !orphans.is_empty() {
            let digests: Vec<Digest> = orphans.iter().map(|(d, _)| d.clone()).collect();
            // Removed only if still not recorded there inside the write
            // transaction, so an upload committing right now keeps its file.
            let removed: HashSet<Digest> = if repair {
                self.store
                    .remove_orphan_files(store.name(), &digests, files)
                    .await?
                    .into_iter()
                    .collect()
            } else {
                HashSet::new()
            };
            for (digest, size) in orphans {
                report.problems.push(Problem::OrphanFile {
                    repaired: removed.contains(&digest),
                    digest: digest.to_string(),
                    store: store.name().to_string(),
                    size,
                });
            }
        }

        let mut missing: Vec<&RecordedBlob> = held
            .values()
            .filter(|b| !on_disk.contains(&b.digest))
            .copied()
            .collect();
        missing.sort_by(|a, b| a.digest.cmp(&b.digest));
        for blob in missing {
            // Only the records of a blob no manifest uses can go, and only
            // when this store held its one copy: forgetting it would lose
            // the others. A used one is reported so the image can be pushed again.
            let only_copy = blob.stores.names().eq([store.name()]);
            let repaired = repair && only_copy && self.store.forget_unreferenced_blob(&blob.digest).await?;
            report.problems.push(Problem::MissingBlob {
                digest: blob.digest.to_string(),
                store: store.name().to_string(),
                used_by: self.users(&blob.digest).await?,
                repaired,
            });
        }
        Ok(())
    }

    /// The blob's actual digest in `store` when it differs from its name.
    async fn rehash(&self, store: &NamedStore, digest: &Digest) -> Result<Option<Digest>> {
        let mut hasher = DigestHasher::new(digest.algorithm());
        let mut body = store.store().get(digest, None).await?;
        while let Some(chunk) = body.next().await {
            hasher.update(&chunk.map_err(berth_storage::StorageError::Io)?);
        }
        let actual = hasher.finish();
        Ok((&actual != digest).then_some(actual))
    }

    async fn users(&self, digest: &Digest) -> Result<Vec<String>> {
        Ok(self
            .store
            .blob_users(digest)
            .await?
            .into_iter()
            .map(|(repo, m)| format!("{repo}@{m}"))
            .collect())
    }
}
