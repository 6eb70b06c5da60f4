//! Reads of a blob through a repository (`HEAD`, `GET`) restart the grace
//! period of its link, so that "HEAD says it exists, then the manifest PUT"
//! never fails because a garbage collection ran in between.
//!
//! The garbage collector removes a link (and a blob with no link left) only
//! when its `linked_ms` is older than the grace period, re-checked inside the
//! deleting transaction; a touch moves `linked_ms` forward. Two ways, so that
//! the hot path writes nothing in the common case:
//!
//! - A link that is **fresh** (linked or touched within the last half grace
//!   period, 12 h by default) cannot be collected for at least half a grace
//!   period more. Its touch is gathered in memory and written with the others
//!   about every second (as pulls are); the collector writes this process's
//!   gathered touches before it decides. Another replica's gathered touches
//!   are not in its memory, but they are written long before the link could
//!   be collected: a second against hours. A replica killed before it writes
//!   them loses them, and the link is then protected for what remains of the
//!   half grace period, not a whole one.
//! - A link that is **not fresh** could be collected any moment. Its touch is
//!   written before the answer, as a transaction the collector's re-check
//!   sees (SQLite's single writer; on PostgreSQL the lock a push takes): it
//!   lands first and the blob stays, or it finds the link gone and the read
//!   answers 404 as if it had come after the collection. That is at most one
//!   write per link per half grace period.
//!
//! A mount links the blob in a transaction of its own, which is a touch too.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_meta::{LinkTouch, MetaStore};
use berth_oci::Digest;

/// Touches gathered since the last flush: (repository, digest) to the latest time.
pub struct TouchRecorder {
    pending: Mutex<HashMap<(String, Digest), i64>>,
    /// Held while a flush writes, so a flush that finds nothing pending
    /// returns only after the touches another flush took are written.
    flushing: tokio::sync::Mutex<()>,
    /// How recent a link must be for its touch to wait in memory.
    fresh_ms: i64,
}

/// What a read must do about its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Touch {
    /// Gathered; written by the next flush.
    Gathered,
    /// Must be written before the answer.
    WriteNow,
}

impl TouchRecorder {
    /// A recorder for a garbage collection grace period of `grace_ms`.
    pub fn new(grace_ms: i64) -> TouchRecorder {
        TouchRecorder {
            pending: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            fresh_ms: grace_ms.max(0) / 2,
        }
    }

    /// Notes a read at `now_ms` of a link last made or touched at `linked_ms`.
    pub(super) fn touch(&self, repo: &str, digest: &Digest, linked_ms: i64, now_ms: i64) -> Touch {
        if linked_ms < now_ms.saturating_sub(self.fresh_ms) {
            return Touch::WriteNow;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let at = pending.entry((repo.to_string(), digest.clone())).or_insert(now_ms);
        *at = (*at).max(now_ms);
        Touch::Gathered
    }

    /// Writes what was gathered; on failure it is kept for the next flush.
    /// Returns how many links were touched.
    pub async fn flush(&self, meta: &dyn MetaStore) -> berth_meta::Result<usize> {
        let _writing = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.is_empty() {
            return Ok(0);
        }
        let touches: Vec<LinkTouch> = taken
            .iter()
            .map(|((repo, digest), at_ms)| LinkTouch {
                repo: repo.clone(),
                digest: digest.clone(),
                at_ms: *at_ms,
            })
            .collect();
        if let Err(e) = meta.record_touches(&touches).await {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (key, at_ms) in taken {
                let at = pending.entry(key).or_insert(at_ms);
                *at = (*at).max(at_ms);
            }
            return Err(e);
        }
        Ok(touches.len())
    }
}

#[cfg(test)]
mod tests {
    use berth_meta::SqliteMeta;

    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn only_touches_of_fresh_links_wait() {
        let touches = TouchRecorder::new(24 * HOUR);
        let d = Digest::sha256_of(b"t");
        let now = 100 * HOUR;
        assert_eq!(touches.touch("a", &d, now - 11 * HOUR, now), Touch::Gathered);
        assert_eq!(touches.touch("a", &d, now - 12 * HOUR, now), Touch::Gathered);
        assert_eq!(touches.touch("a", &d, now - 13 * HOUR, now), Touch::WriteNow);
        // Without a grace period every link may go any moment.
        let eager = TouchRecorder::new(0);
        assert_eq!(eager.touch("a", &d, now - 1, now), Touch::WriteNow);
        assert_eq!(eager.touch("a", &d, now, now), Touch::Gathered);
    }

    #[tokio::test]
    async fn gathered_touches_are_written_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("m.db")).await.unwrap();
        let d = Digest::sha256_of(b"blob");
        meta.add_blob("a/b", &d, 4, 10).await.unwrap();
        let touches = TouchRecorder::new(1000);
        assert_eq!(touches.touch("a/b", &d, 10, 300), Touch::Gathered);
        assert_eq!(touches.touch("a/b", &d, 10, 200), Touch::Gathered);
        assert_eq!(meta.linked_blob("a/b", &d).await.unwrap().unwrap().linked_ms, 10);
        assert_eq!(touches.flush(&meta).await.unwrap(), 1);
        assert_eq!(meta.linked_blob("a/b", &d).await.unwrap().unwrap().linked_ms, 300);
        assert_eq!(touches.flush(&meta).await.unwrap(), 0, "nothing is written twice");
    }
}
