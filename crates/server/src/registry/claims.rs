//! One writing request at a time per upload session, across replicas.
//!
//! Two `PATCH`es of one session that write at once would both write the
//! bytes after the same offset: on S3 both put the same segment object and
//! the last one wins, whatever the database then records, so a blob could be
//! stored under a digest its bytes do not have. Every request that writes a
//! session's bytes (a chunk, the final `PUT`) therefore claims it first; a
//! request that finds it claimed is refused with 416 and the session's offset.
//!
//! Within a process the session's lock is taken without waiting. In a store
//! that replicas share (PostgreSQL) the claim is also a lease in the session's
//! row, not a row lock: a chunk may stream for minutes, and a transaction
//! open that long would hold a pool connection away from every other request.
//! The request renews its lease while it runs and releases it at the end; a
//! replica that dies stops renewing, and the session is free again when the
//! lease runs out. A request whose lease could run out (the database did not
//! answer its renewals) stops writing [`MARGIN_MS`] before that, so that it has
//! stopped before another replica may take the session over, as long as the
//! replicas' clocks agree to within that margin.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_meta::MetaStore;
use berth_oci::UploadId;
use berth_storage::ByteStream;
use futures::StreamExt;
use tokio::sync::OwnedMutexGuard;

use crate::clock::Clock;

/// How long a lease lasts unless renewed: how long a session that a dead
/// replica was writing stays refused.
pub(super) const LEASE_MS: i64 = 30_000;
/// How often a request holding a lease renews it: three renewals in a row
/// must fail before it stops writing.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long before its lease could run out a request stops writing: more
/// than the replicas' clocks may differ by.
const MARGIN_MS: i64 = 10_000;

/// The leases this process holds, so that a shutdown can end the ones of
/// requests it abandons: their sessions are free at once for the client's
/// retry (to this process restarted, or another replica) instead of after
/// the lease runs out.
#[derive(Default)]
pub(crate) struct LeaseBook {
    held: Mutex<HashMap<String, HeldLease>>,
}

struct HeldLease {
    id: UploadId,
    writable_until: Arc<AtomicI64>,
}

impl LeaseBook {
    fn add(&self, token: &str, id: &UploadId, writable_until: &Arc<AtomicI64>) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(
            token.to_string(),
            HeldLease {
                id: id.clone(),
                writable_until: writable_until.clone(),
            },
        );
    }

    fn remove(&self, token: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    /// Stops every request still holding a lease from writing (its body is
    /// cut at its next chunk), then releases the leases in the store.
    pub(crate) async fn end_all(&self, meta: &dyn MetaStore) -> usize {
        let held: Vec<(String, HeldLease)> = self.held.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, lease) in &held {
            lease.writable_until.store(i64::MIN, Ordering::Release);
        }
        for (token, lease) in &held {
            if let Err(e) = meta.release_upload_claim(&lease.id, token).await {
                tracing::warn!(upload = %lease.id, error = %e, "could not release an upload session's lease; it runs out by itself");
            }
        }
        held.len()
    }
}

/// A writing request's hold on an upload session; dropping it releases it.
pub(super) struct SessionClaim {
    _local: OwnedMutexGuard<()>,
    lease: Option<Lease>,
}

impl SessionClaim {
    /// A claim of this process only: its lock, and in a store of one
    /// process (or for a session no client knows yet) nothing more.
    pub(super) fn local(lock: OwnedMutexGuard<()>) -> SessionClaim {
        SessionClaim {
            _local: lock,
            lease: None,
        }
    }

    /// A claim that also holds the store's lease of `token` on the session,
    /// renewed until the claim is dropped.
    pub(super) fn leased(
        lock: OwnedMutexGuard<()>,
        id: UploadId,
        token: String,
        claimed_ms: i64,
        meta: Arc<dyn MetaStore>,
        clock: Arc<dyn Clock>,
        book: Arc<LeaseBook>,
    ) -> SessionClaim {
        let writable_until = Arc::new(AtomicI64::new(claimed_ms + LEASE_MS - MARGIN_MS));
        book.add(&token, &id, &writable_until);
        let renewing = tokio::spawn(renew(
            id.clone(),
            token.clone(),
            meta.clone(),
            clock.clone(),
            writable_until.clone(),
        ));
        SessionClaim {
            _local: lock,
            lease: Some(Lease {
                id,
                token,
                meta,
                clock,
                writable_until,
                renewing,
                release: true,
                book,
            }),
        }
    }

    /// Whether this request may still write the session's bytes.
    pub(super) fn writable(&self) -> bool {
        self.lease.as_ref().is_none_or(Lease::writable)
    }

    /// `body`, cut off with an error as soon as the claim may no longer write.
    pub(super) fn fence(&self, body: ByteStream) -> ByteStream {
        let Some(lease) = &self.lease else {
            return body;
        };
        let (clock, writable_until) = (lease.clock.clone(), lease.writable_until.clone());
        Box::pin(body.map(move |chunk| {
            if clock.now_ms() >= writable_until.load(Ordering::Acquire) {
                return Err(io::Error::other(
                    "the upload session's lease could not be renewed; the chunk was not taken",
                ));
            }
            chunk
        }))
    }

    /// The session is gone (completed or dropped): nothing to release.
    pub(super) fn session_ended(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.release = false;
        }
    }

    /// Ends the claim before the answer goes out, so that the client's next
    /// request (to any replica) finds the session free.
    pub(super) async fn release(mut self) {
        let Some(lease) = &mut self.lease else {
            return;
        };
        lease.renewing.abort();
        lease.book.remove(&lease.token);
        if std::mem::replace(&mut lease.release, false) {
            if let Err(e) = lease.meta.release_upload_claim(&lease.id, &lease.token).await {
                tracing::warn!(upload = %lease.id, error = %e, "could not release an upload session's lease; it runs out by itself");
            }
        }
    }
}

struct Lease {
    id: UploadId,
    token: String,
    meta: Arc<dyn MetaStore>,
    clock: Arc<dyn Clock>,
    /// Local time in ms from which the request must not write.
    writable_until: Arc<AtomicI64>,
    renewing: tokio::task::JoinHandle<()>,
    /// Whether dropping the lease releases it in the store.
    release: bool,
    book: Arc<LeaseBook>,
}

impl Lease {
    fn writable(&self) -> bool {
        self.clock.now_ms() < self.writable_until.load(Ordering::Acquire)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
        self.book.remove(&self.token);
        if !self.release {
            return;
        }
        // A request dropped half-way (the client went away) ends here; the
        // release runs on its own. A lease left behind runs out by itself.
        let (id, token, meta) = (self.id.clone(), self.token.clone(), self.meta.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = meta.release_upload_claim(&id, &token).await {
                    tracing::warn!(upload = %id, error = %e, "could not release an upload session's lease; it runs out by itself");
                }
            });
        }
    }
}

/// Renews the lease every [`RENEW_EVERY`] until aborted or lost.
async fn renew(
    id: UploadId,
    token: String,
    meta: Arc<dyn MetaStore>,
    clock: Arc<dyn Clock>,
    writable_until: Arc<AtomicI64>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now_ms();
        match meta.renew_upload_claim(&id, &token, now, now + LEASE_MS).await {
            Ok(true) => writable_until.store(now + LEASE_MS - MARGIN_MS, Ordering::Release),
            Ok(false) => {
                tracing::warn!(upload = %id, "the upload session's lease was taken over or the session is gone; stopping the write");
                writable_until.store(i64::MIN, Ordering::Release);
                return;
            }
            // The lease runs out unless a later renewal gets through.
            Err(e) => tracing::warn!(upload = %id, error = %e, "could not renew an upload session's lease"),
        }
    }
}
