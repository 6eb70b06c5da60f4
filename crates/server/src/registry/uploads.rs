//! Upload sessions: start, append chunks, finish with a digest, cancel, purge,
//! cross-repository mounts, and the copies a mount makes between stores.
//!
//! The digest is computed while the bytes stream through, and the hasher state
//! is saved with the session's offset after every chunk, so a session can be
//! continued by any request (or replica). When the saved state cannot be used,
//! the bytes received so far are hashed again from the store.
//!
//! A session lives in the blob store its repository's route named when it
//! started, and the session records that store: every later request uses it,
//! so a route changed meanwhile never breaks an upload in flight.
//!
//! A request that writes a session's bytes (a chunk, the final `PUT`) claims
//! the session first, on this replica and in a store that replicas share
//! (see [`super::claims`]); one that finds it claimed gets 416.

use std::sync::{Arc, Mutex};

use berth_meta::{PlacedBlob, UploadClaim, UploadRecord};
use berth_oci::headers::ChunkRange;
use berth_oci::{Algorithm, Digest, DigestHasher, RepoName, UploadId};
use berth_storage::{ByteStream, StorageError};
use futures::StreamExt;

use super::claims::{SessionClaim, LEASE_MS};
use super::stores::NamedStore;
use super::{Registry, RegistryError, Result};

/// Where an upload session stands.
#[derive(Debug, Clone)]
pub struct UploadProgress {
    pub id: UploadId,
    /// Bytes received so far.
    pub offset: u64,
}

/// A blob held whole in memory, its bytes checked against its digest.
#[derive(Debug, Clone)]
pub struct CheckedBlob {
    pub repo: RepoName,
    pub digest: Digest,
    pub bytes: bytes::Bytes,
}

/// The outcome of `POST /blobs/uploads/`.
#[derive(Debug)]
pub enum MountOrUpload {
    /// The blob was linked from another repository (or pushed in one request).
    Created(Digest),
    /// An upload session was opened.
    Session(UploadProgress),
}

fn upload_error(e: StorageError) -> RegistryError {
    match e {
        StorageError::UploadNotFound => RegistryError::UploadUnknown,
        other => other.into(),
    }
}

/// Whether a chunk's new offset and hash state are saved in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Record,
    Discard,
}

impl Registry {
    async fn session(&self, repo: &RepoName, id: &UploadId) -> Result<UploadRecord> {
        match self.meta.get_upload(id).await? {
            Some(rec) if rec.repo == repo.as_str() => Ok(rec),
            _ => Err(RegistryError::UploadUnknown),
        }
    }

    /// The session, claimed for a request that writes to it (see
    /// [`super::claims`]); a session another request holds is refused with
    /// its current offset.
    async fn claim_session(&self, repo: &RepoName, id: &UploadId) -> Result<(UploadRecord, SessionClaim)> {
        let Some(local) = self.sessions.try_lock(id) else {
            let current = self.session(repo, id).await?.offset;
            return Err(RegistryError::UploadBusy { current });
        };
        let token = uuid::Uuid::new_v4().to_string();
        let now = self.now_ms();
        let (record, claim) = match self.meta.claim_upload(id, &token, now, now + LEASE_MS).await? {
            UploadClaim::Unknown => return Err(RegistryError::UploadUnknown),
            UploadClaim::Busy(rec) if rec.repo == repo.as_str() => {
                return Err(RegistryError::UploadBusy { current: rec.offset })
            }
            UploadClaim::Busy(_) => return Err(RegistryError::UploadUnknown),
            UploadClaim::Claimed { record, leased: false } => (record, SessionClaim::local(local)),
            UploadClaim::Claimed { record, leased: true } => {
                let claim = SessionClaim::leased(
                    local,
                    id.clone(),
                    token,
                    now,
                    self.meta.clone(),
                    self.clock.clone(),
                    self.leases.clone(),
                );
                (record, claim)
            }
        };
        // A lease taken on another repository's session is released before
        // the answer: released on drop, it would be let go only after the
        // client had its 404, and its next request to the session in the
        // right repository could find it still held (416).
        if record.repo != repo.as_str() {
            claim.release().await;
            return Err(RegistryError::UploadUnknown);
        }
        Ok((record, claim))
    }

    /// The store holding a session's bytes.
    fn session_store(&self, rec: &UploadRecord) -> Result<&NamedStore> {
        self.stores
            .get(&rec.store)
            .ok_or_else(|| RegistryError::StoreNotConfigured {
                stores: rec.store.clone(),
            })
    }

    /// Opens a new, empty upload session in `repo`, in its route's store,
    /// recording who opened it (see `MetaStore::open_uploads_of`).
    pub async fn start_upload(&self, repo: &RepoName, owner: Option<&str>) -> Result<UploadProgress> {
        self.start_upload_in(repo, self.stores.route(repo.as_str()), owner)
            .await
    }

    /// How many upload sessions `owner` has open, over every replica.
    pub async fn open_uploads_of(&self, owner: &str) -> Result<u64> {
        Ok(self.meta.open_uploads_of(owner).await?)
    }

    async fn start_upload_in(
        &self,
        repo: &RepoName,
        store: &NamedStore,
        owner: Option<&str>,
    ) -> Result<UploadProgress> {
        let id = UploadId::new(uuid::Uuid::new_v4().to_string());
        let now = self.now_ms();
        let record = UploadRecord {
            id: id.clone(),
            repo: repo.to_string(),
            store: store.name().to_string(),
            offset: 0,
            hash_state: None,
            started_ms: now,
            updated_ms: now,
            owner: owner.map(str::to_string),
        };
        // The session row first: a file without one is what the garbage
        // collector removes as left over from a crash.
        self.meta.create_upload(&record).await?;
        if let Err(e) = store.store().start_upload(&id).await {
            let _ = self.meta.delete_upload(&id).await;
            return Err(e.into());
        }
        Ok(UploadProgress { id, offset: 0 })
    }

    /// Copies a blob that stores other than `target` hold into `target`,
    /// through an upload session of `repo` (so the garbage collector knows
    /// the bytes in flight), verifying its digest on the way, then records
    /// the copy and links the blob to `repo` as completing an upload does.
    /// The bytes stream through; memory use does not grow with the blob.
    pub(super) async fn copy_blob(&self, repo: &RepoName, digest: &Digest, target: &NamedStore) -> Result<bool> {
        // One copy at a time per blob and store in this process, so that
        // concurrent mounts wait for the first copy instead of making their own.
        let _copying = self.copies.lock(&(digest.clone(), target.name().to_string())).await;
        let Some(record) = self.meta.blob_record(digest).await? else {
            return Ok(false);
        };
        if record.stores.contains(target.name()) {
            // Made by a mount this one waited for.
            return Ok(self
                .meta
                .link_blob(repo.as_str(), digest, self.now_ms())
                .await?
                .is_some());
        }
        let mut last_error = None;
        for source in self.readers(None, &record)? {
            let body = match source.store().get(digest, None).await {
                Ok(body) => body,
                Err(e) => {
                    tracing::warn!(%digest, store = source.name(), error = %e, "cannot read the blob to copy it");
                    last_error = Some(e);
                    continue;
                }
            };
            tracing::info!(%digest, from = source.name(), to = target.name(), size = record.size, "copying a mounted blob between stores");
            let session = self.start_upload_in(repo, target, None).await?;
            let range = record.size.checked_sub(1).map(|end| ChunkRange { start: 0, end });
            self.finish_new_upload(repo, &session.id, digest, range, body, DigestCheck::Store)
                .await?;
            return Ok(true);
        }
        match last_error {
            Some(StorageError::BlobNotFound) | None => Err(RegistryError::BlobUnknown),
            Some(other) => Err(other.into()),
        }
    }

    /// `POST` with `mount=`: links the blob when possible, else opens a session.
    pub async fn mount_or_start_upload(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        owner: Option<&str>,
    ) -> Result<MountOrUpload> {
        if self.mount_blob(repo, digest, from).await? {
            return Ok(MountOrUpload::Created(digest.clone()));
        }
        Ok(MountOrUpload::Session(self.start_upload(repo, owner).await?))
    }

    /// `POST` with `digest=`: the whole blob in one request.
    pub async fn push_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<Digest> {
        // Opened and finished in this request: no owner, it never stays open.
        let progress = self.start_upload(repo, None).await?;
        // An empty body declares no byte range (`Content-Length: 0` is not `0-(2^64-1)`).
        let range = expected_len
            .and_then(|len| len.checked_sub(1))
            .map(|end| ChunkRange { start: 0, end });
        self.finish_new_upload(repo, &progress.id, digest, range, body, DigestCheck::Store)
            .await
    }

    /// Stores a whole blob whose bytes the caller checks against `digest`
    /// as it produces them: it must end `body` with an error when they do
    /// not match, so that nothing is stored; the store does not hash them a
    /// second time. A pull-through fetch, which hashes the bytes anyway to
    /// let its readers have the last one before the store is done.
    pub(crate) async fn push_checked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
        len: u64,
    ) -> Result<Digest> {
        let progress = self.start_upload(repo, None).await?;
        let range = len.checked_sub(1).map(|end| ChunkRange { start: 0, end });
        self.finish_new_upload(repo, &progress.id, digest, range, body, DigestCheck::Caller)
            .await
    }

    /// Stores blobs that the caller holds whole and has checked against
    /// their digests (a pull-through cache's small fetched blobs), together:
    /// each is staged in its repository's store under a session of its own
    /// that no row records (a crash leaves bytes that garbage collection
    /// removes), then all are published and recorded in one transaction.
    /// One by one, each blob would hold the metadata store's write lock for
    /// its own commit; a batch shares one.
    pub(crate) async fn store_checked_blobs(&self, blobs: &[CheckedBlob]) -> Result<()> {
        let sessions: Vec<(&NamedStore, UploadId)> = blobs
            .iter()
            .map(|b| {
                let store = self.stores.route(b.repo.as_str());
                (store, UploadId::new(uuid::Uuid::new_v4().to_string()))
            })
            .collect();
        let staging = blobs.iter().zip(&sessions).map(|(blob, (store, id))| async move {
            store.store().start_upload(id).await?;
            let body: ByteStream = Box::pin(futures::stream::iter([Ok(blob.bytes.clone())]));
            store.store().stage_blob(id, &blob.digest, body).await
        });
        let mut staged = Vec::with_capacity(blobs.len());
        let mut failed = None;
        for result in futures::future::join_all(staging).await {
            match result {
                Ok(blob) => staged.push(blob),
                Err(e) => failed = Some(e),
            }
        }
        // Dropping what was staged abandons it; the sessions' bytes go too.
        let cancel_all = || async {
            for (store, id) in &sessions {
                let _ = store.store().cancel_upload(id).await;
            }
        };
        if let Some(e) = failed {
            drop(staged);
            cancel_all().await;
            return Err(e.into());
        }
        let records: Vec<PlacedBlob> = blobs
            .iter()
            .zip(&sessions)
            .map(|(blob, (store, _))| PlacedBlob {
                repo: blob.repo.to_string(),
                digest: blob.digest.clone(),
                size: blob.bytes.len() as u64,
                store: store.name().to_string(),
            })
            .collect();
        let place = Box::pin(async move {
            for published in futures::future::join_all(staged.into_iter().map(|s| s.publish())).await {
                published.map_err(|e| Box::new(e) as berth_meta::BoxError)?;
            }
            Ok(())
        });
        let recorded = self.meta.place_blobs(&records, self.now_ms(), place).await;
        if recorded.is_err() {
            // Sessions not published yet still hold bytes; a published one is gone already.
            cancel_all().await;
        }
        Ok(recorded?)
    }

    /// Completes a session this request opened itself (no client knows its
    /// id, so nobody else can write it: it needs no claim in the store).
    /// A session that fails is dropped with its bytes: nobody could resume it.
    async fn finish_new_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<ChunkRange>,
        body: ByteStream,
        check: DigestCheck,
    ) -> Result<Digest> {
        let claim = SessionClaim::local(self.sessions.lock(id).await);
        let rec = self.session(repo, id).await?;
        let finished = self
            .finish_claimed(repo, rec.clone(), claim, digest, range, Some(body), check)
            .await;
        match &finished {
            // Dropped already, where the mismatch was found.
            Ok(_) | Err(RegistryError::DigestInvalid(_)) => {}
            Err(_) => {
                if let Ok(store) = self.session_store(&rec) {
                    let _guard = self.sessions.lock(id).await;
                    self.drop_session(store, id).await;
                }
            }
        }
        finished
    }

    /// How far a session has come.
    pub async fn upload_progress(&self, repo: &RepoName, id: &UploadId) -> Result<UploadProgress> {
        let rec = self.session(repo, id).await?;
        Ok(UploadProgress {
            id: rec.id,
            offset: rec.offset,
        })
    }

    /// Appends one chunk (`PATCH`). With a `range`, the chunk must start at the
    /// session's offset and be exactly as long as declared.
    pub async fn append_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        range: Option<ChunkRange>,
        body: ByteStream,
    ) -> Result<UploadProgress> {
        let (rec, claim) = self.claim_session(repo, id).await?;
        let written = self
            .write_chunk(&rec, &claim, range, body, Algorithm::Sha256, Progress::Record)
            .await;
        claim.release().await;
        let (offset, _) = written?;
        Ok(UploadProgress { id: rec.id, offset })
    }

    /// Completes a session (`PUT ?digest=`), with an optional last chunk, and
    /// makes the blob visible in `repo` only if its bytes match `digest`.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<ChunkRange>,
        last_chunk: Option<ByteStream>,
    ) -> Result<Digest> {
        let (rec, claim) = self.claim_session(repo, id).await?;
        self.finish_claimed(repo, rec, claim, digest, range, last_chunk, DigestCheck::Store)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_claimed(
        &self,
        repo: &RepoName,
        rec: UploadRecord,
        mut claim: SessionClaim,
        digest: &Digest,
        range: Option<ChunkRange>,
        last_chunk: Option<ByteStream>,
        check: DigestCheck,
    ) -> Result<Digest> {
        let finished = self
            .finish_session(repo, &rec, &mut claim, digest, range, last_chunk, check)
            .await;
        claim.release().await;
        finished
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_session(
        &self,
        repo: &RepoName,
        rec: &UploadRecord,
        claim: &mut SessionClaim,
        digest: &Digest,
        range: Option<ChunkRange>,
        last_chunk: Option<ByteStream>,
        check: DigestCheck,
    ) -> Result<Digest> {
        let id = &rec.id;
        let store = self.session_store(rec)?;
        let (len, hasher, staged) = match last_chunk {
            // Checked by the caller, which ends the body with an error
            // when the bytes do not match: staging fails, nothing is placed.
            Some(body) if rec.offset == 0 && check == DigestCheck::Caller => {
                let expected_len = chunk_length(rec, range)?;
                let staged = store
                    .store()
                    .stage_blob(id, digest, claim.fence(body))
                    .await
                    .map_err(|e| claim_lost_or(rec, claim, upload_error(e)))?;
                check_length(expected_len, staged.len())?;
                (staged.len(), None, Some(staged))
            }
            // The whole blob in this request: the store may write it where it
            // belongs straight away, to be published once the digest matches.
            Some(body) if rec.offset == 0 => {
                let expected_len = chunk_length(rec, range)?;
                let (hashed, hasher) = hashing(claim.fence(body), DigestHasher::new(digest.algorithm()));
                let staged = store
                    .store()
                    .stage_blob(id, digest, hashed)
                    .await
                    .map_err(|e| claim_lost_or(rec, claim, upload_error(e)))?;
                check_length(expected_len, staged.len())?;
                (staged.len(), Some(take_hasher(&hasher)?), Some(staged))
            }
            // The session ends here, so its progress needs no saving.
            Some(body) => {
                let (len, hasher) = self
                    .write_chunk(rec, claim, range, body, digest.algorithm(), Progress::Discard)
                    .await?;
                (len, Some(hasher), None)
            }
            None => (rec.offset, Some(self.hasher_for(rec, digest.algorithm()).await?), None),
        };
        let actual = match hasher {
            None => digest.clone(),
            Some(hasher) if hasher.algorithm() == digest.algorithm() => hasher.finish(),
            Some(_) => self.rehash(store, id, len, digest.algorithm()).await?.finish(),
        };
        if &actual != digest {
            // distribution-spec: a blob whose content does not match is never
            // stored. Dropping staged bytes abandons them.
            drop(staged);
            self.drop_session(store, id).await;
            claim.session_ended();
            return Err(RegistryError::DigestInvalid(format!(
                "provided digest {digest} does not match the uploaded content ({actual}, {len} bytes)"
            )));
        }
        // Placed under the metadata store's write lock, which garbage
        // collection holds while it deletes a blob: the file found (or put)
        // in place here is the one the new record points at.
        let place = Box::pin(async move {
            let placed = match staged {
                Some(staged) => staged.publish().await,
                None => match store.store().commit_upload(id, len, digest).await {
                    // A process that died after moving the bytes into place
                    // but before recording them left the session without
                    // bytes and the blob in place; the bytes hashed to
                    // `digest` above, and a blob file is only ever put in
                    // place after its digest matched, so the retried PUT
                    // records what is there.
                    Err(StorageError::UploadNotFound) if matches!(store.store().stat(digest).await, Ok(Some(size)) if size == len) =>
                    {
                        tracing::info!(upload = %id, %digest, "session bytes already in place; recording the blob");
                        Ok(())
                    }
                    placed => placed,
                },
            };
            placed.map_err(|e| Box::new(e) as berth_meta::BoxError)
        });
        if !claim.writable() {
            return Err(RegistryError::UploadBusy { current: rec.offset });
        }
        match self
            .meta
            .complete_upload(id, repo.as_str(), digest, len, store.name(), self.now_ms(), place)
            .await
        {
            Ok(()) => {
                claim.session_ended();
                Ok(actual)
            }
            Err(berth_meta::MetaError::Placement(e)) => match e.downcast::<StorageError>() {
                Ok(storage) => Err(upload_error(*storage)),
                Err(other) => Err(RegistryError::Meta(berth_meta::MetaError::Placement(other))),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels a session and drops its bytes (`DELETE`).
    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let _guard = self.sessions.lock(id).await;
        let rec = self.session(repo, id).await?;
        self.session_store(&rec)?.store().cancel_upload(id).await?;
        self.meta.delete_upload(id).await?;
        Ok(())
    }

    /// Drops sessions untouched for `max_age_ms`; returns how many went.
    pub async fn purge_stale_uploads(&self, max_age_ms: i64) -> Result<usize> {
        let before = self.now_ms().saturating_sub(max_age_ms);
        let mut purged = 0;
        loop {
            let stale = self.meta.stale_uploads(before, 100).await?;
            let full_batch = stale.len() == 100;
            let mut progressed = false;
            for rec in stale {
                // A session busy right now (a long PATCH only touches the row
                // when it ends) is not stale; nor is one that moved since the query.
                let Some(_guard) = self.sessions.try_lock(&rec.id) else {
                    continue;
                };
                let now = match self.meta.get_upload(&rec.id).await? {
                    Some(now) if now.updated_ms < before => now,
                    _ => continue,
                };
                match self.stores.get(&now.store) {
                    Some(store) => store.store().cancel_upload(&rec.id).await?,
                    // Its bytes cannot be reached; the session goes all the
                    // same, and the store's upload-file scan finds the bytes
                    // once the store is configured again.
                    None => tracing::warn!(
                        upload = %rec.id,
                        store = now.store,
                        "purging a stale session whose blob store is not configured; its bytes stay there"
                    ),
                }
                self.meta.delete_upload(&rec.id).await?;
                purged += 1;
                progressed = true;
            }
            if !full_batch || !progressed {
                return Ok(purged);
            }
        }
    }

    async fn drop_session(&self, store: &NamedStore, id: &UploadId) {
        if let Err(e) = store.store().cancel_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "could not drop the bytes of a failed upload");
        }
        if let Err(e) = self.meta.delete_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "could not drop a failed upload session");
        }
    }

    /// The hasher for the bytes received so far: the saved state when usable,
    /// else a re-hash of the stored bytes.
    async fn hasher_for(&self, rec: &UploadRecord, algorithm: Algorithm) -> Result<DigestHasher> {
        if rec.offset == 0 {
            return Ok(DigestHasher::new(algorithm));
        }
        if let Some(h) = rec.hash_state.as_deref().and_then(DigestHasher::restore) {
            return Ok(h);
        }
        tracing::info!(upload = %rec.id, "no usable saved hash state; hashing the received bytes again");
        self.rehash(self.session_store(rec)?, &rec.id, rec.offset, algorithm)
            .await
    }

    async fn rehash(&self, store: &NamedStore, id: &UploadId, len: u64, algorithm: Algorithm) -> Result<DigestHasher> {
        let mut hasher = DigestHasher::new(algorithm);
        let mut bytes = store.store().read_upload(id, len).await.map_err(upload_error)?;
        let mut seen = 0u64;
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(StorageError::Io)?;
            seen += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if seen != len {
            return Err(RegistryError::Storage(StorageError::UploadTooShort {
                expected: len,
                actual: seen,
            }));
        }
        Ok(hasher)
    }

    /// Streams one chunk into the session, hashing it on the way, and records
    /// the new offset. Returns the new offset and the hasher after it.
    async fn write_chunk(
        &self,
        rec: &UploadRecord,
        claim: &SessionClaim,
        range: Option<ChunkRange>,
        body: ByteStream,
        algorithm: Algorithm,
        progress: Progress,
    ) -> Result<(u64, DigestHasher)> {
        let expected_len = chunk_length(rec, range)?;
        let (hashed, hasher) = hashing(claim.fence(body), self.hasher_for(rec, algorithm).await?);
        let new_len = self
            .session_store(rec)?
            .store()
            .append_upload(&rec.id, rec.offset, hashed)
            .await
            .map_err(|e| claim_lost_or(rec, claim, upload_error(e)))?;
        check_length(expected_len, new_len - rec.offset)?;
        let hasher = take_hasher(&hasher)?;
        if progress == Progress::Discard {
            return Ok((new_len, hasher));
        }
        // Recorded only while the claim holds: once it may have run out,
        // another request may be writing these bytes again.
        if !claim.writable() {
            return Err(RegistryError::UploadBusy { current: rec.offset });
        }
        let advanced = self
            .meta
            .advance_upload(&rec.id, rec.offset, new_len, Some(&hasher.save()), self.now_ms())
            .await?;
        if !advanced {
            let current = self
                .meta
                .get_upload(&rec.id)
                .await?
                .ok_or(RegistryError::UploadUnknown)?;
            return Err(RegistryError::ChunkOutOfOrder {
                current: current.offset,
            });
        }
        Ok((new_len, hasher))
    }
}

/// `err`, unless the request's claim on the session ran out: then the chunk
/// was cut off on purpose, and the client may resume from the session's offset.
fn claim_lost_or(rec: &UploadRecord, claim: &SessionClaim, err: RegistryError) -> RegistryError {
    if claim.writable() {
        err
    } else {
        RegistryError::UploadBusy { current: rec.offset }
    }
}

/// The length a chunk declares with its range, which must start at the
/// session's offset.
fn chunk_length(rec: &UploadRecord, range: Option<ChunkRange>) -> Result<Option<u64>> {
    match range {
        // distribution-spec: an out-of-order chunk gets 416 with the current Range.
        Some(r) if r.start != rec.offset || r.end < r.start => {
            Err(RegistryError::ChunkOutOfOrder { current: rec.offset })
        }
        // A range of 2^64 bytes cannot be sent; saturating makes it a size mismatch, not an overflow.
        Some(r) => Ok(Some((r.end - r.start).saturating_add(1))),
        None => Ok(None),
    }
}

fn check_length(expected: Option<u64>, received: u64) -> Result<()> {
    match expected {
        Some(expected) if expected != received => Err(RegistryError::SizeInvalid(format!(
            "Content-Range declares {expected} bytes but the body had {received}"
        ))),
        _ => Ok(()),
    }
}

/// `body`, feeding `hasher` on the way through; the hasher is taken back
/// with [`take_hasher`] once the stream has been consumed.
/// Who checks a stored blob's bytes against its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DigestCheck {
    /// The store, as it writes them.
    Store,
    /// The caller, as it produces them (see [`Registry::push_checked_blob`]).
    Caller,
}

fn hashing(body: ByteStream, hasher: DigestHasher) -> (ByteStream, Arc<Mutex<Option<DigestHasher>>>) {
    let hasher = Arc::new(Mutex::new(Some(hasher)));
    let feed = hasher.clone();
    let hashed: ByteStream = Box::pin(body.map(move |chunk| {
        if let Ok(bytes) = &chunk {
            if let Some(h) = feed.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                h.update(bytes);
            }
        }
        chunk
    }));
    (hashed, hasher)
}

fn take_hasher(hasher: &Mutex<Option<DigestHasher>>) -> Result<DigestHasher> {
    hasher
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| RegistryError::UploadInvalid("hash state lost".into()))
}
