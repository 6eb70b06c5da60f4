//! Every fact that is not blob bytes: repositories, blob links, manifests,
//! tags, referrers, upload sessions and the queue of event notifications.
//!
//! The [`MetaStore`] trait is what the registry layer uses; [`SqliteMeta`] is
//! the embedded backend and [`PgMeta`] the one that replicas share. The store
//! enforces referential facts (a manifest's blobs must be linked to its
//! repository) inside its transactions, but knows no OCI parsing rules.
//!
//! SQL that is the same on both backends is written once in `sql`, over a
//! small dialect seam (the access store, retention policies, the hot-path
//! reads, the web UI's store); what needs each database's own means
//! (PostgreSQL's locks and arrays, SQLite's JSON aggregates) stays in the
//! backend's files.
//!
//! Text given to a store holds no NUL character: PostgreSQL text cannot hold
//! one and refuses the statement ([`MetaError::is_bad_input`]), while SQLite
//! would keep it. The server refuses such text before it gets here.

pub mod access;
pub mod backup;
pub mod conformance;
pub mod lifecycle;
mod postgres;
mod postgres_lifecycle;
mod sql;
mod sqlite;
mod sqlite_lifecycle;
pub mod transfer;
pub mod ui;
pub mod webhooks;

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use berth_oci::{Digest, UploadId};

pub use access::AccessStore;
pub use lifecycle::LifecycleStore;
pub use postgres::{PgMeta, PgOptions};
pub use sqlite::SqliteMeta;
pub use ui::UiStore;
pub use webhooks::WebhookStore;

/// The name of the blob store configured by the top-level `[storage]` section.
pub const DEFAULT_STORE: &str = "default";

/// The named blob stores that hold a copy of a blob, as its row records them.
///
/// A blob held only by the default store records nothing (NULL): that is
/// every blob of a registry without storage routes, and its rows stay as
/// small as before routes existed. Names are kept comma-separated in the
/// order the copies were made; the server allows no comma in a store name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreSet(Option<String>);

impl StoreSet {
    /// The set a `stores` column holds (NULL: the default store alone).
    pub fn from_column(column: Option<String>) -> StoreSet {
        match column {
            Some(names) if names != DEFAULT_STORE && !names.is_empty() => StoreSet(Some(names)),
            _ => StoreSet(None),
        }
    }

    /// The set holding one store.
    pub fn only(store: &str) -> StoreSet {
        StoreSet::from_column(Some(store.to_string()))
    }

    /// The value of the `stores` column for this set.
    pub fn to_column(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The stores' names, in the order their copies were made.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.as_deref().unwrap_or(DEFAULT_STORE).split(',')
    }

    pub fn contains(&self, store: &str) -> bool {
        self.names().any(|name| name == store)
    }

    /// This set with `store` added (unchanged when it holds it already).
    pub fn with(&self, store: &str) -> StoreSet {
        if self.contains(store) {
            return self.clone();
        }
        StoreSet(Some(format!("{self},{store}")))
    }
}

impl std::fmt::Display for StoreSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or(DEFAULT_STORE))
    }
}

/// A recorded blob: its size and the stores holding its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRecord {
    pub size: u64,
    pub stores: StoreSet,
}

/// A blob as a repository serves it: its record and when its link was made,
/// or last touched by a read (see [`MetaStore::touch_link`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkedBlob {
    pub record: BlobRecord,
    pub linked_ms: i64,
}

/// What one repository holds: the blobs linked into it and their bytes
/// (a blob several repositories link counts in each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUsage {
    pub repo: String,
    pub blobs: u64,
    pub bytes: u64,
}

/// A read of a blob through a repository (`HEAD`, `GET`) at `at_ms`: the
/// link's garbage-collection grace period starts again from then.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkTouch {
    pub repo: String,
    pub digest: Digest,
    pub at_ms: i64,
}

/// What can go wrong in the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("manifest references {0}, which the repository does not have")]
    MissingReference(Digest),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("metadata database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("metadata schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The blob-store step run inside a transaction failed; the transaction was rolled back.
    #[error("blob store: {0}")]
    Placement(BoxError),
}

impl MetaError {
    /// Whether the database could not be reached or had no connection free,
    /// rather than refusing the request: worth retrying once it is back.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MetaError::Db(
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            )
        )
    }

    /// Whether the database refused a value it was given (PostgreSQL's data
    /// exceptions, SQLSTATE class 22: text holding a NUL character, which
    /// PostgreSQL text cannot store, or a number out of range), rather than
    /// failing: the request that brought the value is at fault, and retrying
    /// it cannot help. SQLite stores such text as it is.
    pub fn is_bad_input(&self) -> bool {
        match self {
            MetaError::Db(sqlx::Error::Database(db)) => db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|pg| pg.code().starts_with("22")),
            _ => false,
        }
    }
}

/// Any error of a blob-store step the metadata store runs inside its transaction.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A blob-store step that must happen while the metadata store holds its
/// write lock, such as moving an uploaded blob into place.
pub type Placement<'a> = Pin<Box<dyn Future<Output = std::result::Result<(), BoxError>> + Send + 'a>>;

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// A blob placed by [`MetaStore::place_blobs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedBlob {
    pub repo: String,
    pub digest: Digest,
    pub size: u64,
    /// The blob store it was placed in.
    pub store: String,
}

/// A manifest to record, with the facts the registry parsed from it.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: Digest,
    pub media_type: String,
    /// The artifact type shown in referrers lists.
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The manifest's annotations as a JSON object, for referrers lists.
    pub annotations_json: Option<String>,
    pub body: Vec<u8>,
    /// Blobs that must already be linked to the repository.
    pub blobs: Vec<Digest>,
    /// Manifests that must already exist in the repository.
    pub children: Vec<Digest>,
    /// Who pushed it (a token subject), when the registry knows.
    pub pushed_by: Option<String>,
    /// How it arrived: `pushed`, `mirrored` or `snapshot`.
    pub provenance: String,
    /// Platforms as `os/architecture[/variant]`, when known.
    pub platforms: Vec<String>,
    /// Total size of the distinct blobs it references.
    pub blob_bytes: u64,
    /// A pull-through copy, whose blobs and children are fetched from its
    /// upstream when a client asks for them: they need not be present yet.
    /// The references are recorded all the same, so that what arrives later
    /// is kept alive by the manifest.
    pub fetched_on_demand: bool,
}

/// Pulls of one manifest (and, when pulled by tag, of that tag) since the
/// last time pulls were recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRecord {
    pub repo: String,
    pub digest: Digest,
    pub tag: Option<String>,
    pub count: u64,
    pub last_ms: i64,
}

/// How a manifest arrived and how it has been used.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestFacts {
    /// `pushed`, `mirrored` or `snapshot`.
    pub provenance: String,
    pub pushed_by: Option<String>,
    pub pushed_ms: i64,
    pub last_pulled_ms: Option<i64>,
    pub pull_count: u64,
}

/// When a tag was pushed and pulled.
#[derive(Debug, Clone, PartialEq)]
pub struct TagFacts {
    pub digest: Digest,
    pub pushed_ms: i64,
    pub last_pulled_ms: Option<i64>,
    pub pull_count: u64,
}

/// A manifest as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Vec<u8>,
}

/// One entry of a referrers list.
#[derive(Debug, Clone, PartialEq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations_json: Option<String>,
}

/// An upload session's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRecord {
    pub id: UploadId,
    pub repo: String,
    /// The blob store holding the session's bytes, fixed when it starts: a
    /// route changed meanwhile does not move an upload in flight.
    pub store: String,
    /// Bytes received and acknowledged so far.
    pub offset: u64,
    /// Saved hasher state after `offset` bytes, if it could be saved.
    pub hash_state: Option<Vec<u8>>,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// Who started it (a token subject), when someone authenticated did.
    pub owner: Option<String>,
}

/// The outcome of claiming an upload session for a request that writes to it.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadClaim {
    /// The session is this request's until the claim is released. `leased`:
    /// the claim is a lease in the store, which the holder renews before it
    /// runs out and releases at the end; otherwise the store is one process's
    /// and claims nothing (that process serializes its own requests).
    Claimed { record: UploadRecord, leased: bool },
    /// Another request holds the session.
    Busy(UploadRecord),
    /// No such session.
    Unknown,
}

/// Held while this process runs a periodic job (garbage collection, retention,
/// expiry, upload purge); every other process sharing the store is refused
/// the same job until it is dropped, or until this process dies.
pub struct JobLease {
    _held: Box<dyn std::any::Any + Send>,
}

impl JobLease {
    /// A lease whose hold ends when `held` is dropped.
    pub fn holding(held: impl std::any::Any + Send) -> JobLease {
        JobLease { _held: Box::new(held) }
    }

    /// A lease of a store no other process shares.
    pub fn sole() -> JobLease {
        JobLease::holding(())
    }
}

/// The metadata store the registry core talks to.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Whether the repository has ever received a blob or manifest.
    async fn repository_exists(&self, repo: &str) -> Result<bool>;

    /// The blob's size if it is linked to `repo`.
    async fn linked_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>>;

    /// The blob's record and link if it is linked to `repo`.
    async fn linked_blob(&self, repo: &str, digest: &Digest) -> Result<Option<LinkedBlob>>;

    /// The blob's size if the registry holds it at all.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;

    /// The blob's size and stores if the registry holds it at all.
    async fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>>;

    /// Records a blob stored in the default store and links it to `repo`.
    async fn add_blob(&self, repo: &str, digest: &Digest, size: u64, now_ms: i64) -> Result<()>;

    /// Links an existing blob to `repo`; returns its size, or `None` when the registry lacks it.
    async fn link_blob(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<Option<u64>>;

    /// Moves the link's `linked_ms` forward to `at_ms` (never back), as a
    /// transaction that the garbage collector's re-check of the link and the
    /// blob sees (it takes what a push linking the blob takes). False when
    /// the link is gone. Never creates a link.
    async fn touch_link(&self, repo: &str, digest: &Digest, at_ms: i64) -> Result<bool>;

    /// Moves each link's `linked_ms` forward to its touch time in one
    /// transaction; links that are gone are skipped, none is created.
    async fn record_touches(&self, touches: &[LinkTouch]) -> Result<()>;

    /// Removes the blob's link from `repo`; false when there was none.
    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool>;

    /// Records a manifest (and moves `tag` to it) in one transaction, after
    /// checking that every blob and child it references is in the repository.
    async fn put_manifest(&self, repo: &str, manifest: &NewManifest, tag: Option<&str>, now_ms: i64) -> Result<()>;

    async fn manifest_by_digest(&self, repo: &str, digest: &Digest) -> Result<Option<StoredManifest>>;

    async fn manifest_by_tag(&self, repo: &str, tag: &str) -> Result<Option<StoredManifest>>;

    /// Deletes a manifest and every tag pointing at it; false when absent.
    async fn delete_manifest(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<bool>;

    /// Deletes one tag, leaving its manifest; false when absent.
    async fn delete_tag(&self, repo: &str, tag: &str, now_ms: i64) -> Result<bool>;

    /// Tags of `repo` after `last` in lexical order, at most `limit`.
    async fn list_tags(&self, repo: &str, last: Option<&str>, limit: u32) -> Result<Vec<String>>;

    /// Repository names after `last` in lexical order, at most `limit`.
    async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>>;

    /// Repositories that link the blob, in lexical order, at most `limit`.
    async fn repositories_linking(&self, digest: &Digest, limit: u32) -> Result<Vec<String>>;

    /// Every repository with at least one linked blob, with what it holds.
    /// One pass over the links: for periodic gauges, not for requests.
    async fn repository_usage(&self) -> Result<Vec<RepoUsage>>;

    /// Manifests of `repo` whose subject is `subject`, optionally of one
    /// artifact type, after `after` in digest order, at most `limit`.
    async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<Referrer>>;

    /// Adds pull counts and last-pull times in one transaction; records of
    /// manifests or tags that are gone are skipped.
    async fn record_pulls(&self, pulls: &[PullRecord]) -> Result<()>;

    async fn manifest_facts(&self, repo: &str, digest: &Digest) -> Result<Option<ManifestFacts>>;

    async fn tag_facts(&self, repo: &str, tag: &str) -> Result<Option<TagFacts>>;

    async fn create_upload(&self, upload: &UploadRecord) -> Result<()>;

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>>;

    /// Moves an upload from `from_offset` to `to_offset`; false when another
    /// request moved it first (or it is gone).
    async fn advance_upload(
        &self,
        id: &UploadId,
        from_offset: u64,
        to_offset: u64,
        hash_state: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<bool>;

    async fn delete_upload(&self, id: &UploadId) -> Result<()>;

    /// How many upload sessions `owner` started that are still open.
    async fn open_uploads_of(&self, owner: &str) -> Result<u64>;

    /// Claims the session for one writing request (a chunk, the final PUT)
    /// among the processes sharing this store: under `token` until
    /// `until_ms`, unless another claim that has not run out by `now_ms`
    /// holds it. A store only one process uses (the embedded SQLite file)
    /// claims nothing.
    async fn claim_upload(&self, id: &UploadId, _token: &str, _now_ms: i64, _until_ms: i64) -> Result<UploadClaim> {
        Ok(match self.get_upload(id).await? {
            Some(record) => UploadClaim::Claimed { record, leased: false },
            None => UploadClaim::Unknown,
        })
    }

    /// Extends the claim of `token` to `until_ms` (and marks the session
    /// active at `now_ms`); false when the claim is no longer `token`'s.
    async fn renew_upload_claim(&self, _id: &UploadId, _token: &str, _now_ms: i64, _until_ms: i64) -> Result<bool> {
        Ok(true)
    }

    /// Ends the claim of `token`, if it still holds the session.
    async fn release_upload_claim(&self, _id: &UploadId, _token: &str) -> Result<()> {
        Ok(())
    }

    /// Ends an upload session that became a blob: runs `place` (which moves
    /// the bytes into place in the blob store named `store`), records the
    /// blob with `store` among the stores holding it, links it to `repo` and
    /// drops the session, all under the store's write lock.
    #[expect(clippy::too_many_arguments, reason = "one transaction's inputs, each distinct")]
    async fn complete_upload(
        &self,
        id: &UploadId,
        repo: &str,
        digest: &Digest,
        size: u64,
        store: &str,
        now_ms: i64,
        place: Placement<'_>,
    ) -> Result<()>;

    /// Records blobs written without upload sessions (a pull-through cache's
    /// batch of fetched blobs): runs `place` (which moves them all into
    /// place), then records each blob with its store among the stores holding
    /// it and links it to its repository, in one transaction under the
    /// store's write lock, so that the batch pays for one commit.
    async fn place_blobs(&self, blobs: &[PlacedBlob], now_ms: i64, place: Placement<'_>) -> Result<()>;

    /// Sessions not touched since `before_ms`.
    async fn stale_uploads(&self, before_ms: i64, limit: u32) -> Result<Vec<UploadRecord>>;

    /// Leads the periodic job named `job` among the processes sharing this
    /// store, or `None` while another one leads it. A store only one process
    /// uses (the embedded SQLite file) always grants it.
    async fn lead_job(&self, _job: &str) -> Result<Option<JobLease>> {
        Ok(Some(JobLease::sole()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_or_exhausted_database_is_unavailable() {
        assert!(MetaError::Db(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(MetaError::Db(sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into())).is_unavailable());
        assert!(!MetaError::Db(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!MetaError::Corrupt("x".into()).is_unavailable());
    }

    #[test]
    fn a_store_set_of_the_default_store_alone_records_nothing() {
        assert_eq!(StoreSet::from_column(None).to_column(), None);
        assert_eq!(StoreSet::only(DEFAULT_STORE).to_column(), None);
        let routed = StoreSet::only("team-a");
        assert_eq!(routed.to_column(), Some("team-a"));
        assert!(!routed.contains(DEFAULT_STORE));
        let both = routed.with(DEFAULT_STORE).with("team-a");
        assert_eq!(both.to_column(), Some("team-a,default"));
        assert_eq!(both.names().collect::<Vec<_>>(), ["team-a", "default"]);
        assert_eq!(StoreSet::default().with("b").to_string(), "default,b");
    }
}
