//! The consistency check between the metadata database and the blob store:
//! what `berth fsck` reports and, with `--repair`, fixes where that is safe.

use std::collections::{HashMap, HashSet};

use berth_oci::{Algorithm, Digest, DigestHasher, UploadId};
use futures::StreamExt;
use serde::Serialize;

use super::gc::{shards, StoreFiles, SHARD_LISTINGS};
use super::{Lifecycle, LifecycleError, Result};

/// One inconsistency.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The database records a blob whose file is gone. `used_by` lists the
    /// manifests (`repository@digest`) that can no longer be pulled whole.
    MissingBlob {
        digest: String,
        used_by: Vec<String>,
        repaired: bool,
    },
    /// A file in the blob store the database does not know.
    OrphanFile { digest: String, size: u64, repaired: bool },
    /// The file's size differs from the recorded one.
    SizeMismatch { digest: String, recorded: u64, actual: u64 },
    /// The file's content does not hash to its name (only with `--verify`).
    CorruptBlob {
        digest: String,
        actual: String,
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
    /// Compares the database with the blob store; `verify` also re-hashes
    /// every blob; `repair` fixes what can be fixed without losing data.
    pub async fn fsck(&self, verify: bool, repair: bool, mut progress: impl FnMut(&str)) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let files = StoreFiles(self.blobs().as_ref());
        let alg = Algorithm::Sha256.as_str();
        // A few shards listed at once, as in garbage collection: on an object
        // store each listing is a round trip.
        let mut listings = futures::stream::iter(shards())
            .map(|shard| async move {
                let recorded: HashMap<Digest, u64> =
                    self.store().blobs_with_prefix(alg, &shard).await?.into_iter().collect();
                let present = self.blobs().list_blobs(alg, &shard).await?;
                Ok::<_, LifecycleError>((recorded, present))
            })
            .buffered(SHARD_LISTINGS);
        while let Some(listing) = listings.next().await {
            let (recorded, present) = listing?;
            report.blobs_checked += recorded.len() as u64;
            report.files_checked += present.len() as u64;
            let on_disk: HashSet<&Digest> = present.iter().map(|f| &f.key).collect();

            let mut orphans = Vec::new();
            for file in &present {
                match recorded.get(&file.key) {
                    None => orphans.push((file.key.clone(), file.size)),
                    Some(&size) if size != file.size => report.problems.push(Problem::SizeMismatch {
                        digest: file.key.to_string(),
                        recorded: size,
                        actual: file.size,
                    }),
                    Some(_) if verify => {
                        if let Some(actual) = self.rehash(&file.key).await? {
                            report.problems.push(Problem::CorruptBlob {
                                digest: file.key.to_string(),
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
                // Removed only if still unknown inside the write transaction,
                // so an upload committing right now keeps its file.
                let removed: HashSet<Digest> = if repair {
                    self.store()
                        .remove_orphan_files(&digests, &files)
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
                        size,
                    });
                }
            }

            let mut missing: Vec<&Digest> = recorded.keys().filter(|d| !on_disk.contains(d)).collect();
            missing.sort();
            for digest in missing {
                // Only the records of a blob no manifest uses can go; a used
                // one is reported so the image can be pushed again.
                let repaired = repair && self.store().forget_unreferenced_blob(digest).await?;
                report.problems.push(Problem::MissingBlob {
                    digest: digest.to_string(),
                    used_by: self.users(digest).await?,
                    repaired,
                });
            }
        }
        progress(&format!(
            "blobs: {} recorded, {} files",
            report.blobs_checked, report.files_checked
        ));

        let sessions: HashSet<String> = self.store().upload_ids().await?.into_iter().collect();
        let upload_files = self.blobs().list_uploads().await?;
        let with_files: HashSet<&str> = upload_files.iter().map(|f| f.key.as_str()).collect();
        let now = self.now_ms();
        for file in &upload_files {
            if sessions.contains(file.key.as_str()) || now - file.modified_ms < UPLOAD_SETTLE_MS {
                continue;
            }
            if repair {
                self.blobs().cancel_upload(&file.key).await?;
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
                Problem::SizeMismatch { .. } | Problem::CorruptBlob { .. } => true,
            })
            .count() as u64;
        Ok(report)
    }

    /// The blob's actual digest when it differs from its name.
    async fn rehash(&self, digest: &Digest) -> Result<Option<Digest>> {
        let mut hasher = DigestHasher::new(digest.algorithm());
        let mut body = self.blobs().get(digest, None).await?;
        while let Some(chunk) = body.next().await {
            hasher.update(&chunk.map_err(berth_storage::StorageError::Io)?);
        }
        let actual = hasher.finish();
        Ok((&actual != digest).then_some(actual))
    }

    async fn users(&self, digest: &Digest) -> Result<Vec<String>> {
        Ok(self
            .store()
            .blob_users(digest)
            .await?
            .into_iter()
            .map(|(repo, m)| format!("{repo}@{m}"))
            .collect())
    }
}
