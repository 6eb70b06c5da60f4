//! The registry core: the rules of pushing, pulling, linking, tagging and
//! deleting, on top of the meta store and the blob store.
//!
//! Nothing here knows HTTP. Handlers call these services and map
//! [`RegistryError`] to OCI error JSON in one place (`api::error`).

mod blobs;
mod claims;
pub mod events;
mod locks;
mod manifests;
mod pulls;
pub mod stores;
mod touches;
mod uploads;

use std::sync::Arc;

use berth_meta::{MetaError, MetaStore};
use berth_oci::Digest;
use berth_storage::StorageError;

use crate::clock::Clock;

pub use manifests::{ManifestPage, Provenance};
pub use pulls::PullRecorder;
pub use stores::{BlobStores, NamedStore};
pub use touches::TouchRecorder;
pub use uploads::{CheckedBlob, MountOrUpload, UploadProgress};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to this repository")]
    BlobUnknown,
    #[error("upload session unknown")]
    UploadUnknown,
    #[error("{0}")]
    UploadInvalid(String),
    #[error("chunk does not start at the session's offset {current}")]
    ChunkOutOfOrder { current: u64 },
    /// Another request is writing to the session (on this replica or another).
    #[error("another request is writing to this upload session; resume from offset {current} once it is done")]
    UploadBusy { current: u64 },
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest exceeds the {limit}-byte limit")]
    ManifestTooLarge { limit: usize },
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("manifest is stored as {stored}, which the request's Accept header does not allow")]
    ManifestNotAcceptable { stored: String },
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    #[error("repository name not known to registry")]
    NameUnknown,
    /// The data is recorded in blob stores the configuration no longer names.
    #[error("the data is held by the blob store {stores}, which this registry's configuration does not name")]
    StoreNotConfigured { stores: String },
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Meta(MetaError),
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Body(io) => RegistryError::UploadInvalid(format!("request body ended early: {io}")),
            other => RegistryError::Storage(other),
        }
    }
}

impl From<MetaError> for RegistryError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::MissingReference(d) => RegistryError::ManifestBlobUnknown(d),
            other => RegistryError::Meta(other),
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Limits the registry enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub manifest_max_bytes: usize,
    /// Which tag suffixes a push may use.
    pub namespaces: crate::namespaces::NamespaceRules,
    /// The garbage collector's grace period, which decides when a read's
    /// touch of a blob link must be written before the answer.
    pub gc_grace_ms: i64,
}

/// The registry core, shared by the API handlers and background jobs.
pub struct Registry {
    meta: Arc<dyn MetaStore>,
    stores: Arc<BlobStores>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    sessions: locks::KeyedLocks<berth_oci::UploadId>,
    /// Copies of a blob into a store being made by a mount, one at a time.
    copies: locks::KeyedLocks<(Digest, String)>,
    pulls: Arc<PullRecorder>,
    touches: Arc<TouchRecorder>,
    /// Upload session leases held by requests of this process.
    leases: Arc<claims::LeaseBook>,
    events: Arc<dyn events::EventSink>,
}

impl Registry {
    /// A registry over the given stores.
    pub fn new(meta: Arc<dyn MetaStore>, stores: Arc<BlobStores>, clock: Arc<dyn Clock>, limits: Limits) -> Self {
        Registry {
            meta,
            stores,
            clock,
            touches: Arc::new(TouchRecorder::new(limits.gc_grace_ms)),
            limits,
            sessions: locks::KeyedLocks::default(),
            copies: locks::KeyedLocks::default(),
            pulls: Arc::new(PullRecorder::default()),
            leases: Arc::default(),
            events: Arc::new(events::NoEvents),
        }
    }

    /// This registry, publishing its events (pushes, pulls, deletions) to `sink`.
    pub fn notifying(mut self, sink: Arc<dyn events::EventSink>) -> Self {
        self.events = sink;
        self
    }

    /// Publishes an event of the request this task serves.
    fn publish(&self, action: events::Action, target: events::Target) {
        self.events
            .publish(events::Event::of_current_request(action, target, self.now_ms()));
    }

    /// At shutdown, after the grace period: stops the writes of the requests
    /// still in progress and frees their upload sessions in the store at
    /// once, so the clients' retries find them free. Returns how many.
    pub async fn end_leases(&self) -> usize {
        self.leases.end_all(self.meta.as_ref()).await
    }

    /// Writes the pulls gathered since the last call; returns how many
    /// (manifest, tag) records were written.
    pub async fn flush_pulls(&self) -> Result<usize> {
        Ok(self.pulls.flush(self.meta.as_ref()).await?)
    }

    /// The pulls gathered in memory, for jobs that must see them before deciding.
    pub fn pull_recorder(&self) -> Arc<PullRecorder> {
        self.pulls.clone()
    }

    /// Writes the touches of blob links gathered since the last call; returns
    /// how many links were touched.
    pub async fn flush_touches(&self) -> Result<usize> {
        Ok(self.touches.flush(self.meta.as_ref()).await?)
    }

    /// The touches gathered in memory, which the garbage collector writes
    /// before it decides.
    pub fn touch_recorder(&self) -> Arc<TouchRecorder> {
        self.touches.clone()
    }

    /// The manifest size limit in bytes.
    pub fn manifest_limit(&self) -> usize {
        self.limits.manifest_max_bytes
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
