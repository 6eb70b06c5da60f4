//! A blob store that times every operation of the store it wraps.
//!
//! Reads are timed until their stream opens (the time to first byte the
//! store adds); writes until the bytes are durable, which includes the time
//! the client takes to send them.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use berth_oci::{Digest, UploadId};
use berth_storage::{BlobStore, ByteStream, StagedBlob, StorageError, StoredFile};
use prometheus::HistogramVec;

/// `inner`, timed into `berth_blobstore_operation_duration_seconds{store=name}`.
pub struct TimedBlobStore {
    inner: Arc<dyn BlobStore>,
    store: String,
    histogram: HistogramVec,
}

impl TimedBlobStore {
    pub fn wrap(inner: Arc<dyn BlobStore>, store: &str, histogram: HistogramVec) -> Arc<dyn BlobStore> {
        Arc::new(TimedBlobStore {
            inner,
            store: store.to_string(),
            histogram,
        })
    }

    fn observe<T>(&self, operation: &str, started: Instant, result: &Result<T, StorageError>) {
        observe(&self.histogram, &self.store, operation, started, result.is_ok());
    }
}

fn observe(histogram: &HistogramVec, store: &str, operation: &str, started: Instant, ok: bool) {
    histogram
        .with_label_values(&[store, operation, if ok { "ok" } else { "error" }])
        .observe(started.elapsed().as_secs_f64());
}

macro_rules! timed {
    ($self:ident, $operation:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self.observe($operation, started, &result);
        result
    }};
}

// Every method is forwarded, defaults included: a default left to the trait
// would bypass a store's own (faster) version of it.
#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl BlobStore for TimedBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        timed!(self, "stat", self.inner.stat(digest))
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        timed!(self, "get", self.inner.get(digest, range))
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StorageError> {
        timed!(self, "delete", self.inner.delete(digest))
    }

    async fn delete_many(&self, digests: &[Digest]) -> Result<(), StorageError> {
        timed!(self, "delete_many", self.inner.delete_many(digests))
    }

    async fn start_upload(&self, id: &UploadId) -> Result<(), StorageError> {
        timed!(self, "start_upload", self.inner.start_upload(id))
    }

    async fn append_upload(&self, id: &UploadId, offset: u64, data: ByteStream) -> Result<u64, StorageError> {
        timed!(self, "append_upload", self.inner.append_upload(id, offset, data))
    }

    async fn read_upload(&self, id: &UploadId, len: u64) -> Result<ByteStream, StorageError> {
        timed!(self, "read_upload", self.inner.read_upload(id, len))
    }

    async fn stage_blob<'a>(
        &'a self,
        id: &'a UploadId,
        digest: &'a Digest,
        data: ByteStream,
    ) -> Result<Box<dyn StagedBlob + 'a>, StorageError> {
        let staged = timed!(self, "stage_blob", self.inner.stage_blob(id, digest, data))?;
        Ok(Box::new(TimedStaged {
            inner: staged,
            store: self,
        }))
    }

    async fn commit_upload(&self, id: &UploadId, len: u64, digest: &Digest) -> Result<(), StorageError> {
        timed!(self, "commit_upload", self.inner.commit_upload(id, len, digest))
    }

    async fn cancel_upload(&self, id: &UploadId) -> Result<(), StorageError> {
        timed!(self, "cancel_upload", self.inner.cancel_upload(id))
    }

    async fn list_blobs(&self, algorithm: &str, shard: &str) -> Result<Vec<StoredFile<Digest>>, StorageError> {
        timed!(self, "list_blobs", self.inner.list_blobs(algorithm, shard))
    }

    async fn list_blob_names(&self, algorithm: &str, shard: &str) -> Result<Vec<Digest>, StorageError> {
        timed!(self, "list_blobs", self.inner.list_blob_names(algorithm, shard))
    }

    async fn list_uploads(&self) -> Result<Vec<StoredFile<UploadId>>, StorageError> {
        timed!(self, "list_uploads", self.inner.list_uploads())
    }

    async fn download_url(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        timed!(self, "download_url", self.inner.download_url(digest))
    }
}

/// Staged bytes whose publication is timed too.
struct TimedStaged<'a> {
    inner: Box<dyn StagedBlob + 'a>,
    store: &'a TimedBlobStore,
}

#[async_trait]
impl StagedBlob for TimedStaged<'_> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    async fn publish(self: Box<Self>) -> Result<(), StorageError> {
        let store = self.store;
        timed!(store, "publish", self.inner.publish())
    }
}
