//! Small fetched blobs are stored in batches.
//!
//! Storing a blob ends with a commit under the metadata store's write lock
//! (with SQLite, one writer at a time and an fsync per commit). A cache being
//! filled with many small blobs at once, an image's layers or a cluster's
//! first pulls, would make each wait for all the others' commits one after
//! another. Here blobs that arrive while a batch is being stored wait
//! together for the next one, which stages them side by side and records
//! them with one commit. Large blobs are not held in memory and go their own
//! way.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::registry::{CheckedBlob, Registry, RegistryError};

/// Blobs up to this size are fetched whole into memory and stored in batches.
pub const SMALL_BLOB_MAX: u64 = 1 << 20;
/// Most blobs in one batch.
const BATCH_BLOBS: usize = 64;
/// Most bytes in one batch: [`BATCH_BLOBS`] blobs of the largest small size.
const BATCH_BYTES: usize = 64 << 20;
/// Batches being stored at once: one staging its files while the one before
/// it commits.
const BATCHES_IN_FLIGHT: usize = 2;

type Stored = Result<(), Arc<RegistryError>>;

struct Job {
    blob: CheckedBlob,
    done: oneshot::Sender<Stored>,
}

/// Stores checked small blobs in batches; the task doing it starts with the
/// first blob.
pub struct Batcher {
    registry: Arc<Registry>,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

impl Batcher {
    pub fn new(registry: Arc<Registry>) -> Batcher {
        Batcher {
            registry,
            jobs: OnceLock::new(),
        }
    }

    /// Stores `blob` (its bytes checked against its digest by the caller)
    /// with whatever other blobs are waiting.
    pub async fn store(&self, blob: CheckedBlob) -> Stored {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel(BATCH_BLOBS * BATCHES_IN_FLIGHT);
            tokio::spawn(run(self.registry.clone(), rx));
            tx
        });
        let (done, stored) = oneshot::channel();
        let stopped = || {
            Arc::new(RegistryError::Storage(
                std::io::Error::other("the blob batcher stopped").into(),
            ))
        };
        jobs.send(Job { blob, done }).await.map_err(|_| stopped())?;
        stored.await.map_err(|_| stopped())?
    }
}

async fn run(registry: Arc<Registry>, mut jobs: mpsc::Receiver<Job>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    // A batch is gathered once there is room to store it: what arrives while
    // the batches before are busy waits, and goes together.
    while let Ok(permit) = in_flight.clone().acquire_owned().await {
        let Some(first) = jobs.recv().await else { break };
        let mut bytes = first.blob.bytes.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_BLOBS && bytes < BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.blob.bytes.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let registry = registry.clone();
        tokio::spawn(async move {
            store_batch(&registry, batch).await;
            drop(permit);
        });
    }
}

/// Stores a batch, and each of its blobs alone when the batch fails: one
/// blob whose store is unreachable must not fail the others with it.
async fn store_batch(registry: &Registry, batch: Vec<Job>) {
    let blobs: Vec<CheckedBlob> = batch.iter().map(|job| job.blob.clone()).collect();
    let stored = registry.store_checked_blobs(&blobs).await.map_err(Arc::new);
    if let Err(e) = &stored {
        tracing::warn!(blobs = blobs.len(), error = %e, "storing a batch of fetched blobs failed");
    }
    if stored.is_ok() || batch.len() == 1 {
        for job in batch {
            // A fetch that went away does not need the answer.
            let _ = job.done.send(stored.clone());
        }
        return;
    }
    for job in batch {
        let alone = registry
            .store_checked_blobs(std::slice::from_ref(&job.blob))
            .await
            .map_err(Arc::new);
        let _ = job.done.send(alone);
    }
}

#[cfg(test)]
mod tests {
    use berth_oci::{Digest, RepoName};
    use berth_storage::fs::FsBlobStore;
    use bytes::Bytes;

    use super::*;
    use crate::registry::{BlobStores, Limits, NamedStore};

    #[tokio::test]
    async fn a_failed_batch_stores_each_blob_alone() {
        let dir = tempfile::tempdir().unwrap();
        let meta = berth_meta::SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        let store = FsBlobStore::open(dir.path().join("blobs")).unwrap();
        let stores = BlobStores::new(NamedStore::new("default", Arc::new(store), false), vec![], &[]).unwrap();
        let limits = Limits {
            manifest_max_bytes: 4 << 20,
            namespaces: Default::default(),
            gc_grace_ms: 60_000,
        };
        let registry = Registry::new(
            Arc::new(meta),
            Arc::new(stores),
            Arc::new(crate::clock::SystemClock),
            limits,
        );
        let repo = "up/team/app".parse::<RepoName>().unwrap();
        let blobs: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 100])).collect();
        // The first blob's shard directory is unusable: it cannot be placed.
        let broken = Digest::sha256_of(&blobs[0]);
        let shard = dir.path().join("blobs/blobs/sha256").join(&broken.hex()[..2]);
        std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
        std::fs::write(&shard, b"not a directory").unwrap();
        let mut answers = Vec::new();
        let jobs = blobs
            .iter()
            .map(|bytes| {
                let (done, answer) = oneshot::channel();
                answers.push(answer);
                Job {
                    blob: CheckedBlob {
                        repo: repo.clone(),
                        digest: Digest::sha256_of(bytes),
                        bytes: bytes.clone(),
                    },
                    done,
                }
            })
            .collect();
        store_batch(&registry, jobs).await;
        let answers: Vec<Stored> = futures::future::join_all(answers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(answers[0].is_err(), "the broken blob fails");
        assert!(answers[1].is_ok() && answers[2].is_ok(), "{answers:?}");
        for (bytes, stored) in blobs.iter().zip([false, true, true]) {
            assert_eq!(
                registry.has_blob(&repo, &Digest::sha256_of(bytes)).await.unwrap(),
                stored
            );
        }
    }
}
