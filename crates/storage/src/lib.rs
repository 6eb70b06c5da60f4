//! Blob bytes: the [`BlobStore`] trait and its backends.
//!
//! A blob store knows bytes, digests and upload sessions. It never knows
//! repositories, manifests or who may read what; the registry layer joins it
//! with the metadata store. Whether a blob is *visible* is decided by the
//! metadata store, so a file here without a row there is an orphan, not a blob.

pub mod conformance;
pub mod fs;
pub mod s3;

use std::io;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use berth_oci::{Digest, UploadId};
use bytes::Bytes;
use futures::Stream;

pub use fs::FsBlobStore;
pub use s3::{S3BlobStore, S3Config};

/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// What can go wrong in a blob store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob not found in the store")]
    BlobNotFound,
    #[error("upload session has no data in the store")]
    UploadNotFound,
    #[error("upload holds {actual} bytes, fewer than the expected {expected}")]
    UploadTooShort { expected: u64, actual: u64 },
    #[error("reading the request body failed: {0}")]
    Body(io::Error),
    #[error("storage I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The object store refused or failed a request; the message names the
    /// operation, the object, the bucket and the endpoint, never credentials.
    #[error("object store request failed: {0}")]
    Backend(String),
    /// The store's configuration cannot work (found when the store is opened).
    #[error("invalid blob store configuration: {0}")]
    Config(String),
}

/// A file the blob store holds, as a listing finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile<K> {
    pub key: K,
    pub size: u64,
    /// Last modification, Unix milliseconds.
    pub modified_ms: i64,
}

/// A content-addressed blob store with resumable upload sessions.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The blob's size, or `None` when the store does not hold it.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StorageError>;

    /// The blob's bytes, or the bytes in `range` of it; a range is clipped to
    /// the blob, so one that starts at or past its end yields no bytes.
    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream, StorageError>;

    /// Removes the blob; removing a missing blob is not an error.
    async fn delete(&self, digest: &Digest) -> Result<(), StorageError>;

    /// Removes every blob of `digests`, missing ones included without error,
    /// in as few calls as the backend allows: garbage collection deletes
    /// hundreds at a time. On an error some of them may be gone already.
    async fn delete_many(&self, digests: &[Digest]) -> Result<(), StorageError>;

    /// Creates an empty upload session.
    async fn start_upload(&self, id: &UploadId) -> Result<(), StorageError>;

    /// Writes `data` at `offset` of the upload, discarding anything the session
    /// holds past `offset` (bytes of an earlier, unacknowledged attempt), and
    /// makes the result durable. Returns the session's new length.
    async fn append_upload(&self, id: &UploadId, offset: u64, data: ByteStream) -> Result<u64, StorageError>;

    /// The first `len` bytes of the upload, to re-hash when no saved hash state can be used.
    async fn read_upload(&self, id: &UploadId, len: u64) -> Result<ByteStream, StorageError>;

    /// Receives the whole of the blob `digest` for the empty upload session
    /// `id` (a push in one request) without making it visible: the caller
    /// checks the bytes against the digest, then publishes or discards them.
    ///
    /// The default writes the session and publishes by committing it, as a
    /// chunked push does. A store that can write the blob's own key
    /// invisibly overrides this and saves writing every byte twice.
    async fn stage_blob<'a>(
        &'a self,
        id: &'a UploadId,
        digest: &'a Digest,
        data: ByteStream,
    ) -> Result<Box<dyn StagedBlob + 'a>, StorageError> {
        let len = self.append_upload(id, 0, data).await?;
        Ok(Box::new(StagedInSession {
            store: self,
            id,
            digest,
            len,
        }))
    }

    /// Turns the first `len` bytes of the upload into the blob `digest`, durably.
    /// The caller has verified the digest. If the blob already exists, the upload is dropped.
    async fn commit_upload(&self, id: &UploadId, len: u64, digest: &Digest) -> Result<(), StorageError>;

    /// Drops an upload session and its bytes; dropping a missing session is not an error.
    async fn cancel_upload(&self, id: &UploadId) -> Result<(), StorageError>;

    /// Blobs of `algorithm` whose hex digest starts with the two hex digits
    /// `shard`, in no particular order. Files that are not named like a blob
    /// are left out.
    async fn list_blobs(&self, algorithm: &str, shard: &str) -> Result<Vec<StoredFile<Digest>>, StorageError>;

    /// The digests of what `list_blobs` lists, without sizes and times: on a
    /// filesystem that saves a `stat` of every file, which the orphan scan of
    /// each collection would otherwise pay for every blob it already knows.
    async fn list_blob_names(&self, algorithm: &str, shard: &str) -> Result<Vec<Digest>, StorageError> {
        Ok(self
            .list_blobs(algorithm, shard)
            .await?
            .into_iter()
            .map(|f| f.key)
            .collect())
    }

    /// Every upload session's bytes, by session id.
    async fn list_uploads(&self) -> Result<Vec<StoredFile<UploadId>>, StorageError>;

    /// A URL from which a client can fetch the blob's bytes directly for a
    /// limited time, or `None` when the backend cannot hand one out (the
    /// caller then serves the bytes itself). The URL does not prove that the
    /// blob exists: the caller has checked that.
    async fn download_url(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let _ = digest;
        Ok(None)
    }
}

/// A blob's bytes received by [`BlobStore::stage_blob`], not yet visible.
/// Dropping it without publishing abandons them.
#[async_trait]
pub trait StagedBlob: Send {
    /// How many bytes were received.
    fn len(&self) -> u64;

    /// Whether no byte was received.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the bytes the blob, durably. The caller has verified the digest.
    /// If the blob already exists, it is left as it is or replaced by the same bytes.
    async fn publish(self: Box<Self>) -> Result<(), StorageError>;
}

/// The default staging: the bytes wait in the upload session, whose
/// cancellation drops them.
struct StagedInSession<'a, S: ?Sized> {
    store: &'a S,
    id: &'a UploadId,
    digest: &'a Digest,
    len: u64,
}

#[async_trait]
impl<S: BlobStore + ?Sized> StagedBlob for StagedInSession<'_, S> {
    fn len(&self) -> u64 {
        self.len
    }

    async fn publish(self: Box<Self>) -> Result<(), StorageError> {
        self.store.commit_upload(self.id, self.len, self.digest).await
    }
}
