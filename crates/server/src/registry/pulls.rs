//! Pull counts and last-pull times, gathered in memory and written in one
//! transaction every second or so: a write per manifest GET would cost the
//! hot path a database round trip (and SQLite's single writer) for a fact
//! that lifecycle rules need only to the minute.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_meta::{MetaStore, PullRecord};
use berth_oci::Digest;

/// What was pulled: repository, manifest digest, and the tag if pulled by tag.
type Pulled = (String, Digest, Option<String>);

#[derive(Default)]
pub struct PullRecorder {
    /// Pulls to their count and the latest pull time in ms.
    pending: Mutex<HashMap<Pulled, (u64, i64)>>,
    /// Held while a flush writes, so a flush that finds nothing pending
    /// returns only after the pulls another flush took are written.
    flushing: tokio::sync::Mutex<()>,
}

impl PullRecorder {
    pub fn record(&self, repo: &str, digest: &Digest, tag: Option<&str>, now_ms: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending
            .entry((repo.to_string(), digest.clone(), tag.map(str::to_string)))
            .or_insert((0, now_ms));
        entry.0 += 1;
        entry.1 = entry.1.max(now_ms);
    }

    /// Writes what was gathered; on failure it is kept for the next flush.
    pub async fn flush(&self, meta: &dyn MetaStore) -> berth_meta::Result<usize> {
        let _writing = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.is_empty() {
            return Ok(0);
        }
        let records: Vec<PullRecord> = taken
            .iter()
            .map(|((repo, digest, tag), (count, last_ms))| PullRecord {
                repo: repo.clone(),
                digest: digest.clone(),
                tag: tag.clone(),
                count: *count,
                last_ms: *last_ms,
            })
            .collect();
        if let Err(e) = meta.record_pulls(&records).await {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (key, (count, last_ms)) in taken {
                let entry = pending.entry(key).or_insert((0, last_ms));
                entry.0 += count;
                entry.1 = entry.1.max(last_ms);
            }
            return Err(e);
        }
        Ok(records.len())
    }
}

#[cfg(test)]
mod tests {
    use berth_meta::SqliteMeta;

    use super::*;

    #[tokio::test]
    async fn pulls_are_summed_and_written_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("m.db")).await.unwrap();
        let body = br#"{"schemaVersion":2}"#.to_vec();
        let digest = Digest::sha256_of(&body);
        let m = berth_meta::NewManifest {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            artifact_type: None,
            subject: None,
            annotations_json: None,
            body,
            blobs: vec![],
            children: vec![],
            pushed_by: None,
            provenance: "pushed".into(),
            platforms: vec![],
            blob_bytes: 0,
            fetched_on_demand: false,
        };
        meta.put_manifest("a/b", &m, Some("t"), 10).await.unwrap();
        let pulls = PullRecorder::default();
        pulls.record("a/b", &digest, Some("t"), 20);
        pulls.record("a/b", &digest, Some("t"), 30);
        pulls.record("a/b", &digest, None, 25);
        assert_eq!(
            meta.manifest_facts("a/b", &digest).await.unwrap().unwrap().pull_count,
            0
        );
        assert_eq!(pulls.flush(&meta).await.unwrap(), 2);
        let facts = meta.manifest_facts("a/b", &digest).await.unwrap().unwrap();
        assert_eq!((facts.pull_count, facts.last_pulled_ms), (3, Some(30)));
        let tag = meta.tag_facts("a/b", "t").await.unwrap().unwrap();
        assert_eq!((tag.pull_count, tag.last_pulled_ms), (2, Some(30)));
        assert_eq!(pulls.flush(&meta).await.unwrap(), 0, "nothing is written twice");
    }
}
