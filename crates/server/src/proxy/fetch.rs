//! One fetch of a blob from an upstream, shared by every client that asks
//! for it meanwhile (single-flight), each served bytes as they arrive.
//!
//! The fetch writes what arrives to an unnamed spool file and announces how
//! far it got; readers read the spool at their own pace, positionally, so
//! a hundred readers of a 1 GiB blob cost a hundred small buffers, not a
//! hundred copies. The last byte is held back until the bytes have been
//! checked against the digest (by the fetch as they are spooled, or by the
//! blob store): a client whose blob turns out corrupt has its connection cut
//! one byte short, never a complete body. Durability is the store's, and
//! does not hold the clients up.
//! A reader that goes away does not stop the fetch; the spool disappears
//! with the last handle on it.

use std::collections::HashMap;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use berth_oci::Digest;
use bytes::Bytes;
use tokio::sync::watch;

use super::upstream::UpstreamError;

/// How a fetch ended.
#[derive(Debug, Clone)]
pub enum FetchEnd {
    /// The blob is verified and stored; every byte may be read.
    Stored,
    /// Another replica, or another fetch for this upstream, stored it: it
    /// is in the repository now, read it from the blob store.
    StoredElsewhere,
    /// Nothing was stored; readers get an error in place of the rest.
    Failed(Arc<UpstreamError>),
}

/// How far a fetch has come.
#[derive(Debug, Clone, Default)]
pub struct FetchState {
    /// The blob's size, once the upstream said.
    pub size: Option<u64>,
    /// Bytes in the spool.
    pub written: u64,
    /// Whether the bytes spooled are the whole blob and match its digest:
    /// readers may have the last byte before the store has made it durable.
    pub verified: bool,
    /// A small blob, held whole and checked: readers take it from here and
    /// nothing is spooled.
    pub whole: Option<Bytes>,
    pub end: Option<FetchEnd>,
}

/// The file a fetch spools to, made when the first byte is spooled: a
/// small blob is held in memory instead (see [`FetchWriter::whole`]).
struct Spool {
    dir: PathBuf,
    file: OnceLock<std::io::Result<Arc<std::fs::File>>>,
}

impl Spool {
    fn file(&self) -> std::io::Result<Arc<std::fs::File>> {
        match self.file.get_or_init(|| {
            std::fs::create_dir_all(&self.dir)?;
            Ok(Arc::new(tempfile::tempfile_in(&self.dir)?))
        }) {
            Ok(file) => Ok(file.clone()),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// A fetch in flight (or just finished), as readers see it.
pub struct Fetch {
    state: watch::Receiver<FetchState>,
    spool: Arc<Spool>,
}

/// The writing side of a fetch, held by the task that runs it.
pub struct FetchWriter {
    state: watch::Sender<FetchState>,
    spool: Arc<Spool>,
}

impl FetchWriter {
    pub fn set_size(&self, size: u64) {
        self.state.send_modify(|s| s.size = Some(size));
    }

    /// Appends a chunk to the spool and lets readers have it.
    pub fn append(&self, chunk: &Bytes) -> std::io::Result<()> {
        let at = self.state.borrow().written;
        // A write into the page cache: short enough to run on the async
        // thread, and it keeps the chunks in order without a hand-off.
        self.spool.file()?.write_all_at(chunk, at)?;
        self.state.send_modify(|s| s.written += chunk.len() as u64);
        Ok(())
    }

    /// The whole blob, checked against its digest: readers take it from
    /// memory (for a small blob, which is not spooled).
    pub fn whole(&self, blob: Bytes) {
        self.state.send_modify(|s| {
            s.written = blob.len() as u64;
            s.whole = Some(blob);
            s.verified = true;
        });
    }

    /// The spooled bytes are the whole blob, checked against its digest.
    pub fn verified(&self) {
        self.state.send_modify(|s| s.verified = true);
    }

    pub fn finish(&self, end: FetchEnd) {
        self.state.send_modify(|s| s.end = Some(end));
    }
}

/// What a fetch is of: a blob, from one upstream. Requests through another
/// upstream do not share it: each upstream must show that it has the bytes
/// (a client could otherwise read, through an upstream of its own making, a
/// blob it only knows the digest of).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FetchKey {
    /// The cache repositories' prefix for the upstream (`hub/`, `ghcr.io/`).
    pub scope: String,
    pub digest: Digest,
}

/// The fetches in flight in this process.
pub struct Fetches {
    inflight: Mutex<HashMap<FetchKey, Arc<Fetch>>>,
    spool_dir: PathBuf,
}

impl Fetches {
    pub fn new(spool_dir: PathBuf) -> Fetches {
        Fetches {
            inflight: Mutex::new(HashMap::new()),
            spool_dir,
        }
    }

    /// The fetch of `key` in flight, or a new one whose writer is
    /// returned too (the caller starts the task that feeds it).
    pub fn join_or_start(&self, key: &FetchKey) -> (Arc<Fetch>, Option<FetchWriter>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fetch) = inflight.get(key) {
            return (fetch.clone(), None);
        }
        let spool = Arc::new(Spool {
            dir: self.spool_dir.clone(),
            file: OnceLock::new(),
        });
        let (tx, rx) = watch::channel(FetchState::default());
        let fetch = Arc::new(Fetch {
            state: rx,
            spool: spool.clone(),
        });
        inflight.insert(key.clone(), fetch.clone());
        (fetch, Some(FetchWriter { state: tx, spool }))
    }

    /// Forgets a finished fetch: later requests find the blob in the store.
    pub fn forget(&self, key: &FetchKey) {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// How many fetches are in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// How much a reader reads from the spool at once.
const READ_CHUNK: u64 = 64 << 10;

impl Fetch {
    /// Waits until the size is known or the fetch ended.
    pub async fn started(&self) -> FetchState {
        let mut rx = self.state.clone();
        loop {
            let state = rx.borrow_and_update().clone();
            if state.size.is_some() || state.end.is_some() {
                return state;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }

    /// Waits until the fetch ended: whether the blob was stored (here or by
    /// another replica).
    pub async fn stored(&self) -> bool {
        let mut rx = self.state.clone();
        loop {
            match rx.borrow_and_update().end.clone() {
                Some(FetchEnd::Stored | FetchEnd::StoredElsewhere) => return true,
                Some(FetchEnd::Failed(_)) => return false,
                None => {}
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// The bytes `start..end` of the blob as they arrive.
    pub fn read(self: &Arc<Self>, start: u64, end: u64) -> berth_storage::ByteStream {
        let reader = Reader {
            fetch: self.clone(),
            rx: self.state.clone(),
            pos: start,
            end,
        };
        Box::pin(futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }
}

struct Reader {
    fetch: Arc<Fetch>,
    rx: watch::Receiver<FetchState>,
    pos: u64,
    end: u64,
}

impl Reader {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.pos >= self.end {
                return Ok(None);
            }
            let state = self.rx.borrow_and_update().clone();
            let readable = match &state.end {
                Some(FetchEnd::Failed(e)) => return Err(std::io::Error::other(e.to_string())),
                Some(FetchEnd::StoredElsewhere) => {
                    return Err(std::io::Error::other("the blob was stored by another replica"))
                }
                Some(FetchEnd::Stored) => state.written,
                None if state.verified => state.written,
                // The last byte waits for the digest check.
                None => state.written.saturating_sub(1),
            };
            let until = readable.min(self.end);
            if let (Some(whole), true) = (&state.whole, self.pos < until) {
                let chunk = whole.slice(self.pos as usize..until as usize);
                self.pos = until;
                return Ok(Some(chunk));
            }
            if self.pos < until {
                let len = (until - self.pos).min(READ_CHUNK);
                let spool = self.fetch.spool.file()?;
                let at = self.pos;
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; len as usize];
                    spool.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)??;
                self.pos += chunk.len() as u64;
                return Ok(Some(chunk));
            }
            if self.rx.changed().await.is_err() && self.rx.borrow().end.is_none() {
                return Err(std::io::Error::other("the fetch stopped"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn key(scope: &str, bytes: &[u8]) -> FetchKey {
        FetchKey {
            scope: scope.into(),
            digest: Digest::sha256_of(bytes),
        }
    }

    async fn collect(mut s: berth_storage::ByteStream) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn readers_get_bytes_as_they_arrive_and_the_last_one_after_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let fetches = Fetches::new(dir.path().join("spool"));
        let key = key("up/", b"abcdef");
        let (fetch, writer) = fetches.join_or_start(&key);
        let writer = writer.unwrap();
        let (again, none) = fetches.join_or_start(&key);
        assert!(
            none.is_none() && Arc::ptr_eq(&fetch, &again),
            "one fetch per digest and upstream"
        );
        let (other, own) = fetches.join_or_start(&self::key("elsewhere/", b"abcdef"));
        assert!(
            own.is_some() && !Arc::ptr_eq(&fetch, &other),
            "another upstream fetches its own"
        );
        writer.set_size(6);
        writer.append(&Bytes::from_static(b"abc")).unwrap();
        let mut early = fetch.read(0, 6);
        assert_eq!(early.next().await.unwrap().unwrap(), Bytes::from_static(b"ab"));
        writer.append(&Bytes::from_static(b"def")).unwrap();
        assert_eq!(early.next().await.unwrap().unwrap(), Bytes::from_static(b"cde"));
        let last = tokio::spawn(async move { early.next().await });
        tokio::task::yield_now().await;
        assert!(!last.is_finished(), "the last byte waits for the check");
        let ranged = fetch.read(1, 3);
        writer.verified();
        assert_eq!(last.await.unwrap().unwrap().unwrap(), Bytes::from_static(b"f"));
        assert_eq!(collect(ranged).await.unwrap(), b"bc");
        assert_eq!(collect(fetch.read(0, 6)).await.unwrap(), b"abcdef");
        writer.finish(FetchEnd::Stored);
        assert_eq!(collect(fetch.read(0, 6)).await.unwrap(), b"abcdef");
        fetches.forget(&key);
        assert_eq!(fetches.len(), 1);
    }

    #[tokio::test]
    async fn a_small_blob_held_whole_is_read_from_memory_and_never_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let fetches = Fetches::new(dir.path().join("spool"));
        let (fetch, writer) = fetches.join_or_start(&key("up/", b"small"));
        let writer = writer.unwrap();
        writer.set_size(5);
        let waiting = fetch.read(0, 5);
        writer.whole(Bytes::from_static(b"small"));
        assert_eq!(collect(waiting).await.unwrap(), b"small");
        assert_eq!(collect(fetch.read(1, 4)).await.unwrap(), b"mal");
        writer.finish(FetchEnd::Stored);
        assert_eq!(collect(fetch.read(0, 5)).await.unwrap(), b"small");
        assert!(!dir.path().join("spool").exists(), "nothing was spooled");
    }

    #[tokio::test]
    async fn a_failed_fetch_cuts_readers_short() {
        let dir = tempfile::tempdir().unwrap();
        let fetches = Fetches::new(dir.path().to_path_buf());
        let (fetch, writer) = fetches.join_or_start(&key("up/", b"xyz"));
        let writer = writer.unwrap();
        writer.set_size(3);
        writer.append(&Bytes::from_static(b"xyq")).unwrap();
        writer.finish(FetchEnd::Failed(Arc::new(UpstreamError::Invalid {
            upstream: "u".into(),
            reason: "digest mismatch".into(),
        })));
        let err = collect(fetch.read(0, 3)).await.unwrap_err();
        assert!(err.contains("digest mismatch"), "{err}");
    }
}
