//! The filesystem blob store: `blobs/<alg>/<2 hex>/<hex>` under a root
//! directory, upload sessions as files in `uploads/`.
//!
//! Bytes are written to the session file, fsynced, and renamed into place only
//! on commit, so a reader never sees a partial blob. Blocking file I/O runs on
//! dedicated blocking threads fed through bounded channels, so hashing (in the
//! caller), socket I/O and disk I/O overlap.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::{Digest, UploadId};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{BlobStore, ByteStream, StorageError, StoredFile};

/// Size of the chunks read from disk when serving a blob.
const READ_CHUNK: usize = 256 << 10;
/// Chunks in flight between the disk and the socket when serving a blob.
const READ_DEPTH: usize = 4;
/// Request-body bytes are copied into buffers that a writer thread writes,
/// so each body chunk is released at once and the connection reuses its read
/// buffer instead of allocating another while chunks wait for the disk. The
/// buffers of all uploads in flight share this budget: a lone upload gets two
/// large ones (one filling while the other is written; each hand-over wakes
/// the writer thread, so large batches are what makes a push fast), many
/// uploads get one small one each (20 uploads: 32 KiB each, not 20 x 512 KiB).
const WRITE_BUDGET: usize = 512 << 10;
/// The largest and smallest write batch.
const WRITE_BATCH_MAX: usize = 256 << 10;
const WRITE_BATCH_MIN: usize = 32 << 10;
/// Dirty bytes after which writeback is started, so the final fsync is short.
const WRITEBACK_EVERY: u64 = 8 << 20;
/// Threads that share one `delete_many` call's unlinks. Many, because an
/// unlink can wait on the disk: on ext4 mounted with `discard` and no
/// journal, each one waits for its TRIM, whose latency the device sets, and
/// only unlinks in flight together hide it. More than the 16 blocking tasks
/// in flight of the per-file deletes this replaced.
const DELETE_THREADS: usize = 32;

/// A blob store in a local directory.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    /// Uploads appending now, which share [`WRITE_BUDGET`].
    appending: Arc<AtomicUsize>,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store under `root`, checking that it is writable.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs"))?;
        fs::create_dir_all(root.join("uploads"))?;
        // Fail at start, not at the first push, when the directory is read-only.
        let probe = root.join("uploads").join(".write-probe");
        File::create(&probe)?;
        fs::remove_file(&probe)?;
        Ok(FsBlobStore {
            root,
            appending: Arc::default(),
        })
    }

    /// The file holding the blob `digest` once it is committed (for
    /// `berth backup`, which copies the files themselves).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
}

fn not_found_as(err: io::Error, instead: StorageError) -> StorageError {
    if err.kind() == io::ErrorKind::NotFound {
        instead
    } else {
        StorageError::Io(err)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

/// Takes an exclusive advisory lock on an upload file for as long as `file`
/// is open. A request that was dropped mid-stream leaves its writer thread
/// running until it has drained; the lock keeps the next writer (or the
/// commit) of the same session from touching the file until then.
fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock only reads its integer arguments; the fd is open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Asks the kernel to start writing back `len` bytes at `offset` without waiting.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range only reads its integer arguments; the fd is open for the call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A blob opened for reading: its bytes read already, or the file to stream them from.
enum Opened {
    Read(Bytes),
    File { file: File, start: u64, len: u64 },
}

/// How much of a blob one memory map covers: a reader thread maps, faults in
/// and hands on one such chunk at a time, ahead of the socket.
const MAP_CHUNK: usize = 1 << 20;

/// Maps `len` bytes of `file` at `offset`, which the caller has clipped to
/// the file's size (a page past the end would fault).
fn map_chunk(file: &File, offset: u64, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: a blob file is immutable once it is in place: it is written
    // and fsynced as an upload session's file, renamed into place, and
    // afterwards only ever unlinked (garbage collection), never truncated
    // or written again, so a mapping never loses the pages under it. An
    // unlinked file stays mapped until its maps are dropped.
    let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map(file)? };
    // Fault the pages in here, on the reader thread, not in the socket write.
    let _ = map.advise(memmap2::Advice::WillNeed);
    let mut touched = 0u8;
    for i in (0..map.len()).step_by(4096) {
        touched ^= map[i];
    }
    std::hint::black_box(touched);
    Ok(map)
}

/// Streams `len` bytes of the blob `file` from `offset` out of memory maps
/// of it, one per [`MAP_CHUNK`]: the socket write copies straight from the
/// page cache, with no read into a buffer first (what a read loop pays on
/// top of sendfile). A chunk's map goes when the socket is done with it, so
/// the process maps only the chunks in flight. Falls back to reading when
/// the file cannot be mapped.
async fn map_file(file: File, offset: u64, len: u64) -> io::Result<ByteStream> {
    let first_len = len.min(MAP_CHUNK as u64) as usize;
    let (file, first) = blocking(move || {
        let first = map_chunk(&file, offset, first_len);
        Ok((file, first))
    })
    .await?;
    let first = match first {
        Ok(map) => map,
        Err(_) => return Ok(stream_file(file, offset, len)),
    };
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(READ_DEPTH);
    tokio::task::spawn_blocking(move || {
        let end = offset + len;
        let mut at = offset + first.len() as u64;
        if tx.blocking_send(Ok(Bytes::from_owner(first))).is_err() {
            return; // the client went away
        }
        while at < end {
            let n = (end - at).min(MAP_CHUNK as u64) as usize;
            let chunk = map_chunk(&file, at, n).map(Bytes::from_owner);
            let failed = chunk.is_err();
            at += n as u64;
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream_from(rx)))
}

/// Streams `len` bytes of `file` from `offset` through a reader thread.
fn stream_file(mut file: File, offset: u64, len: u64) -> ByteStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(READ_DEPTH);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(READ_CHUNK as u64) as usize;
            // Read into spare capacity: no pass zeroing every byte first.
            let mut buf = Vec::with_capacity(n);
            match (&mut file).take(n as u64).read_to_end(&mut buf) {
                Ok(got) if got == n => {
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Ok(got) => {
                    let _ = tx.blocking_send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the blob file ended {} bytes early", left - got as u64),
                    )));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream_from(rx))
}

fn tokio_stream_from(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The size and number of one upload's write buffers when `uploads` are
/// appending (this one included): its share of [`WRITE_BUDGET`], as two
/// buffers while the share allows two of [`WRITE_BATCH_MIN`] or more. An
/// upload takes its share when it starts and shrinks to it as others start.
fn write_buffers(uploads: usize) -> (usize, usize) {
    let share = WRITE_BUDGET / uploads.max(1);
    if share >= 2 * WRITE_BATCH_MIN {
        ((share / 2).min(WRITE_BATCH_MAX), 2)
    } else {
        (share.max(WRITE_BATCH_MIN), 1)
    }
}

/// Counts an upload as appending for as long as it lives.
struct Appending<'a> {
    counter: &'a AtomicUsize,
}

impl<'a> Appending<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Appending { counter }
    }

    /// Uploads appending now, this one included.
    fn uploads(&self) -> usize {
        self.counter.load(Ordering::Relaxed)
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        let path = self.blob_path(digest);
        let opened = blocking(move || {
            let file = File::open(path)?;
            let size = file.metadata()?.len();
            let range = range.unwrap_or(0..size);
            let end = range.end.min(size);
            let start = range.start.min(end);
            let len = end - start;
            // Bytes that fit in one read are read here and now: a reader
            // thread and its channel would cost more hand-offs between
            // threads than the read itself.
            if len <= READ_CHUNK as u64 {
                let mut buf = BytesMut::zeroed(len as usize);
                file.read_exact_at(&mut buf, start)?;
                return Ok(Opened::Read(buf.freeze()));
            }
            Ok(Opened::File { file, start, len })
        })
        .await
        .map_err(|e| not_found_as(e, StorageError::BlobNotFound))?;
        Ok(match opened {
            Opened::Read(bytes) if bytes.is_empty() => Box::pin(futures::stream::empty()),
            Opened::Read(bytes) => Box::pin(futures::stream::iter([Ok(bytes)])),
            Opened::File { file, start, len } => map_file(file, start, len).await?,
        })
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_many(&self, digests: &[Digest]) -> Result<(), StorageError> {
        // Threads each unlinking their share in a row: a blocking task per
        // file costs more in thread hand-offs than an unlink that does not wait.
        let per_thread = digests.len().div_ceil(DELETE_THREADS).max(1);
        let tasks = digests.chunks(per_thread).map(|chunk| {
            let paths: Vec<PathBuf> = chunk.iter().map(|d| self.blob_path(d)).collect();
            blocking(move || {
                for path in paths {
                    match fs::remove_file(&path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            })
        });
        futures::future::try_join_all(tasks).await?;
        Ok(())
    }

    async fn start_upload(&self, id: &UploadId) -> Result<(), StorageError> {
        let path = self.upload_path(id);
        blocking(move || OpenOptions::new().write(true).create_new(true).open(path).map(drop)).await?;
        Ok(())
    }

    async fn append_upload(&self, id: &UploadId, offset: u64, mut data: ByteStream) -> Result<u64, StorageError> {
        let path = self.upload_path(id);
        let appending = Appending::enter(&self.appending);
        let (mut batch, mut buffers) = write_buffers(appending.uploads());
        // Full buffers go to the writer, which sends each back once written.
        let (full_tx, mut full_rx) = mpsc::channel::<Vec<u8>>(2);
        // Room for both buffers, so returning one never waits.
        let (empty_tx, mut empty_rx) = mpsc::channel::<Vec<u8>>(2);
        if buffers == 2 {
            let _ = empty_tx.try_send(Vec::with_capacity(batch));
        }
        let writer = tokio::task::spawn_blocking(move || -> Result<u64, StorageError> {
            let mut file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| not_found_as(e, StorageError::UploadNotFound))?;
            lock_exclusive(&file)?;
            let have = file.metadata()?.len();
            if have < offset {
                return Err(StorageError::UploadTooShort {
                    expected: offset,
                    actual: have,
                });
            }
            // Bytes past `offset` belong to an attempt that was never acknowledged.
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            let (mut pos, mut flushed) = (offset, offset);
            while let Some(mut buffer) = full_rx.blocking_recv() {
                file.write_all(&buffer)?;
                pos += buffer.len() as u64;
                if pos - flushed >= WRITEBACK_EVERY {
                    start_writeback(&file, flushed, pos - flushed);
                    flushed = pos;
                }
                buffer.clear();
                // Fails once the body has ended: then nothing more comes.
                let _ = empty_tx.blocking_send(buffer);
            }
            Ok(pos)
        });
        let mut body_error = None;
        let mut filling = Vec::with_capacity(batch);
        'body: while let Some(chunk) = data.next().await {
            let mut chunk = match chunk {
                Ok(bytes) => bytes,
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            };
            while !chunk.is_empty() {
                let take = chunk.len().min(batch - filling.len());
                filling.extend_from_slice(&chunk.split_to(take));
                if filling.len() < batch {
                    continue;
                }
                if full_tx.send(std::mem::take(&mut filling)).await.is_err() {
                    break 'body; // the writer failed; its error is reported below
                }
                // Uploads that started since take their share: shrink to ours.
                let (share, fewer) = write_buffers(appending.uploads());
                batch = batch.min(share);
                filling = loop {
                    let Some(buffer) = empty_rx.recv().await else {
                        break 'body;
                    };
                    if buffers > fewer {
                        buffers -= 1; // dropped; the other is being written
                        continue;
                    }
                    break if buffer.capacity() > batch {
                        Vec::with_capacity(batch)
                    } else {
                        buffer
                    };
                };
            }
        }
        if body_error.is_none() && !filling.is_empty() {
            let _ = full_tx.send(filling).await;
        }
        drop((full_tx, empty_rx));
        let written = writer
            .await
            .map_err(|e| io::Error::other(format!("upload writer failed: {e}")))??;
        if let Some(e) = body_error {
            return Err(StorageError::Body(e));
        }
        let path = self.upload_path(id);
        blocking(move || OpenOptions::new().write(true).open(path)?.sync_data()).await?;
        Ok(written)
    }

    async fn read_upload(&self, id: &UploadId, len: u64) -> Result<ByteStream, StorageError> {
        let path = self.upload_path(id);
        let file = blocking(move || File::open(path))
            .await
            .map_err(|e| not_found_as(e, StorageError::UploadNotFound))?;
        Ok(stream_file(file, 0, len))
    }

    async fn commit_upload(&self, id: &UploadId, len: u64, digest: &Digest) -> Result<(), StorageError> {
        let from = self.upload_path(id);
        let to = self.blob_path(digest);
        let store_root = self.root.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let file = OpenOptions::new()
                .write(true)
                .open(&from)
                .map_err(|e| not_found_as(e, StorageError::UploadNotFound))?;
            lock_exclusive(&file)?;
            let have = file.metadata()?.len();
            if have < len {
                return Err(StorageError::UploadTooShort {
                    expected: len,
                    actual: have,
                });
            }
            let dir = to.parent().ok_or_else(|| io::Error::other("blob path has no parent"))?;
            if to.exists() {
                drop(file);
                fs::remove_file(&from)?;
                // An earlier process may have died between its rename and its
                // directory fsync: make the existing entry durable before a 201.
                fsync_dir(dir)?;
                return Ok(());
            }
            // Every append ends with an fdatasync, so the first `len` bytes
            // are durable already: only bytes past them (of an attempt never
            // acknowledged) need cutting off durably. This runs under the
            // metadata store's write lock, where each flush holds up every
            // other writer.
            if have > len {
                file.set_len(len)?;
                file.sync_data()?;
            }
            drop(file);
            if !dir.exists() {
                fs::create_dir_all(dir)?;
                // New directories (`sha256/`, `sha256/ab/`) must survive a power loss too.
                let mut up = dir.parent();
                while let Some(parent) = up {
                    fsync_dir(parent)?;
                    if parent == store_root.as_path() {
                        break;
                    }
                    up = parent.parent();
                }
            }
            fs::rename(&from, &to)?;
            fsync_dir(dir)?;
            Ok(())
        })
        .await
        .map_err(|e| io::Error::other(format!("commit task failed: {e}")))?
    }

    async fn cancel_upload(&self, id: &UploadId) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.upload_path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_blobs(&self, algorithm: &str, shard: &str) -> Result<Vec<StoredFile<Digest>>, StorageError> {
        let dir = self.root.join("blobs").join(algorithm).join(shard);
        let named = blob_named(algorithm, shard);
        Ok(blocking(move || list_dir(&dir, named)).await?)
    }

    async fn list_blob_names(&self, algorithm: &str, shard: &str) -> Result<Vec<Digest>, StorageError> {
        let dir = self.root.join("blobs").join(algorithm).join(shard);
        let named = blob_named(algorithm, shard);
        Ok(
            blocking(move || named_files(&dir, named).map(|files| files.into_iter().map(|(key, _)| key).collect()))
                .await?,
        )
    }

    async fn list_uploads(&self) -> Result<Vec<StoredFile<UploadId>>, StorageError> {
        let dir = self.root.join("uploads");
        Ok(blocking(move || list_dir(&dir, UploadId::parse)).await?)
    }
}

/// Accepts the name of a file in the directory of `shard` as a blob of
/// `algorithm`: only a file where its name puts it is a blob.
fn blob_named(algorithm: &str, shard: &str) -> impl Fn(&str) -> Option<Digest> + Send + 'static {
    let prefix = format!("{algorithm}:");
    let shard = shard.to_string();
    move |name| {
        Digest::from_str(&format!("{prefix}{name}"))
            .ok()
            .filter(|d| d.hex().starts_with(&shard))
    }
}

/// The regular files of `dir` whose names `key` accepts, with their keys; a
/// missing directory is empty. The file type comes with the directory entry
/// on the usual filesystems, so this costs no `stat` per file.
fn named_files<K>(dir: &Path, key: impl Fn(&str) -> Option<K>) -> io::Result<Vec<(K, fs::DirEntry)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(key) = entry.file_name().to_str().and_then(&key) else {
            continue;
        };
        match entry.file_type() {
            Ok(t) if t.is_file() => out.push((key, entry)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The files of `dir` whose names `key` accepts, with their sizes and times.
fn list_dir<K>(dir: &Path, key: impl Fn(&str) -> Option<K>) -> io::Result<Vec<StoredFile<K>>> {
    let mut out = Vec::new();
    for (key, entry) in named_files(dir, key)? {
        // A file deleted since the directory was read is simply not listed.
        let meta = match entry.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        out.push(StoredFile {
            key,
            size: meta.len(),
            modified_ms,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_share_the_write_budget() {
        assert_eq!(
            write_buffers(1),
            (WRITE_BATCH_MAX, 2),
            "a lone upload gets two large buffers"
        );
        assert_eq!(write_buffers(4), (64 << 10, 2));
        for uploads in [1, 2, 3, 5, 8, 9, 20, 1000] {
            let (batch, buffers) = write_buffers(uploads);
            assert!(
                (WRITE_BATCH_MIN..=WRITE_BATCH_MAX).contains(&batch),
                "{uploads}: {batch}"
            );
            let total = uploads * batch * buffers;
            assert!(
                total <= WRITE_BUDGET.max(uploads * WRITE_BATCH_MIN),
                "{uploads}: {total}"
            );
        }
        assert_eq!(
            write_buffers(20),
            (WRITE_BATCH_MIN, 1),
            "many uploads get one small buffer"
        );
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn committed_blobs_are_laid_out_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let digest = crate::conformance::put(&store, b"hello").await;
        let path = dir
            .path()
            .join("blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex());
        assert_eq!(std::fs::read(path).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0);
    }

    async fn read_all(mut stream: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn large_blobs_and_their_ranges_are_served_whole_even_after_an_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        // Over both the one-read size and the mapped chunk, not a multiple of a page.
        let data: Vec<u8> = (0..(3 * MAP_CHUNK + 4099)).map(|i| (i * 31 % 251) as u8).collect();
        let digest = crate::conformance::put(&store, &data).await;
        assert_eq!(read_all(store.get(&digest, None).await.unwrap()).await, data);
        let ranges = [
            0..READ_CHUNK as u64 + 1,
            4097..(2 * MAP_CHUNK + 13) as u64,
            (data.len() - READ_CHUNK - 7) as u64..data.len() as u64,
        ];
        for range in ranges {
            let got = read_all(store.get(&digest, Some(range.clone())).await.unwrap()).await;
            assert!(got == data[range.start as usize..range.end as usize], "{range:?}");
        }
        // A reader keeps what it opened when garbage collection removes the file.
        let reading = store.get(&digest, None).await.unwrap();
        store.delete(&digest).await.unwrap();
        assert_eq!(read_all(reading).await, data);
        assert!(matches!(
            store.get(&digest, None).await,
            Err(StorageError::BlobNotFound)
        ));
    }

    #[tokio::test]
    async fn listings_leave_out_what_is_not_a_blob_where_its_name_puts_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let digest = crate::conformance::put(&store, b"hello").await;
        let shard_dir = dir.path().join("blobs/sha256").join(&digest.hex()[..2]);
        std::fs::write(shard_dir.join("not-a-digest"), b"x").unwrap();
        let elsewhere = format!(
            "{}{}",
            if digest.hex().starts_with('0') { "1" } else { "0" },
            &digest.hex()[1..]
        );
        std::fs::write(shard_dir.join(elsewhere), b"x").unwrap();
        let looks_like_a_blob = format!("{}{}", &digest.hex()[..2], "e".repeat(62));
        std::fs::create_dir(shard_dir.join(looks_like_a_blob)).unwrap();

        let shard = &digest.hex()[..2];
        assert_eq!(
            store.list_blob_names("sha256", shard).await.unwrap(),
            vec![digest.clone()]
        );
        let listed: Vec<Digest> = store
            .list_blobs("sha256", shard)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.key)
            .collect();
        assert_eq!(listed, vec![digest]);
    }

    #[test]
    fn a_read_only_root_is_reported() {
        let err = FsBlobStore::open("/proc/berth-cannot-exist");
        assert!(err.is_err());
    }
}
