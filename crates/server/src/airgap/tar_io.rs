//! The tar side of an archive: a blocking thread that runs the sync `tar`
//! reader or writer, fed through bounded channels, so that archive I/O and
//! the registry's work overlap and memory stays bounded by the channels'
//! depth whatever an entry's size.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{AirgapError, ArchivePath, Result};

/// Size of the buffers between the archive file and the tar code: large, so
/// that the file is read and written in few system calls.
const IO_BUFFER: usize = 1 << 20;
/// Size of the chunks an entry's bytes are handed over in.
const CHUNK: usize = 256 << 10;
/// Chunks of one entry in flight between the tar thread and the registry.
const ENTRY_DEPTH: usize = 8;
/// Pieces in flight between the registry and the tar writer.
const WRITE_DEPTH: usize = 16;

/// What the writer is handed: an entry's header, then exactly its size in chunks.
enum Piece {
    File { path: String, size: u64 },
    Chunk(Bytes),
}

/// Writes an archive in a thread of its own. Dropping it without
/// [`TarWriter::finish`] leaves no archive behind.
pub struct TarWriter {
    tx: Option<mpsc::Sender<Piece>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// The file being written and the name it gets once complete.
    file: Option<(PathBuf, PathBuf)>,
}

impl TarWriter {
    /// Starts writing to `out`: a file is written as `OUT.partial` and
    /// renamed to `OUT` once complete, so an export that fails leaves no
    /// archive that looks whole.
    pub fn create(out: &ArchivePath) -> Result<TarWriter> {
        let (sink, file): (Box<dyn Write + Send>, _) = match out {
            ArchivePath::Stdio => (Box::new(io::stdout()), None),
            ArchivePath::File(path) => {
                let mut partial = path.clone().into_os_string();
                partial.push(".partial");
                let partial = PathBuf::from(partial);
                let opened = File::create(&partial)
                    .map_err(|e| AirgapError::Write(format!("cannot create {}: {e}", partial.display())))?;
                (Box::new(opened), Some((partial, path.clone())))
            }
        };
        let (tx, rx) = mpsc::channel(WRITE_DEPTH);
        let thread = tokio::task::spawn_blocking(move || write_tar(sink, rx));
        Ok(TarWriter {
            tx: Some(tx),
            thread: Some(thread),
            file,
        })
    }

    async fn send(&mut self, piece: Piece) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(piece).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread stopped taking pieces: it failed, and says why.
        Err(self
            .stop()
            .await
            .err()
            .unwrap_or_else(|| AirgapError::Write("the archive writer stopped early".into())))
    }

    /// Starts an entry of `size` bytes, which [`TarWriter::chunk`] must then
    /// hand over exactly.
    pub async fn begin(&mut self, path: String, size: u64) -> Result<()> {
        self.send(Piece::File { path, size }).await
    }

    pub async fn chunk(&mut self, bytes: Bytes) -> Result<()> {
        self.send(Piece::Chunk(bytes)).await
    }

    /// A whole entry.
    pub async fn file(&mut self, path: String, bytes: Bytes) -> Result<()> {
        self.begin(path, bytes.len() as u64).await?;
        self.chunk(bytes).await
    }

    /// Ends the archive and waits for its last byte to be written.
    async fn stop(&mut self) -> Result<()> {
        self.tx = None;
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match thread.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AirgapError::Write(e.to_string())),
            Err(e) => Err(AirgapError::Write(format!("the archive writer failed: {e}"))),
        }
    }

    /// Ends the archive and gives it its name.
    pub async fn finish(mut self) -> Result<()> {
        self.stop().await?;
        if let Some((partial, path)) = self.file.take() {
            std::fs::rename(&partial, &path).map_err(|e| {
                AirgapError::Write(format!(
                    "cannot rename {} to {}: {e}",
                    partial.display(),
                    path.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Gives up on the archive and removes what was written of it.
    pub async fn abandon(mut self) {
        let _ = self.stop().await;
        if let Some((partial, _)) = self.file.take() {
            let _ = std::fs::remove_file(partial);
        }
    }
}

impl Drop for TarWriter {
    fn drop(&mut self) {
        // Without `finish`: the archive is incomplete. (The thread ends once
        // the channel closes; the file it still holds goes with it.)
        if let Some((partial, _)) = self.file.take() {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// The writer thread: headers as pieces say, bytes as they come.
fn write_tar(sink: Box<dyn Write + Send>, mut rx: mpsc::Receiver<Piece>) -> io::Result<()> {
    let mut builder = tar::Builder::new(BufWriter::with_capacity(IO_BUFFER, sink));
    while let Some(piece) = rx.blocking_recv() {
        let Piece::File { path, size } = piece else {
            return Err(io::Error::other("archive writer: bytes without an entry"));
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o644);
        // Reproducible: the same content makes the same archive.
        header.set_mtime(0);
        let data = Chunks {
            rx: &mut rx,
            left: size,
            current: Bytes::new(),
        };
        // Long paths (sha512 blobs) get a GNU long-name entry.
        builder.append_data(&mut header, &path, data)?;
    }
    let mut out = builder.into_inner()?;
    out.flush()
}

/// The bytes of one entry, read from the pieces that follow its header:
/// exactly `left` of them, or an error.
struct Chunks<'a> {
    rx: &'a mut mpsc::Receiver<Piece>,
    left: u64,
    current: Bytes,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            if self.left == 0 {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Chunk(bytes)) if bytes.len() as u64 <= self.left => {
                    self.left -= bytes.len() as u64;
                    self.current = bytes;
                }
                Some(Piece::Chunk(_)) => {
                    return Err(io::Error::other(
                        "archive writer: an entry got more bytes than its size",
                    ))
                }
                Some(Piece::File { .. }) | None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "archive writer: an entry ended before its size",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// An entry of an archive being read.
pub enum Entry {
    /// A regular file and its bytes, in chunks; the chunks end early with an
    /// error when the archive does. Dropping `data` skips the rest.
    File {
        path: String,
        size: u64,
        data: mpsc::Receiver<io::Result<Bytes>>,
    },
    /// Anything but a file or directory (a link, a device), which no
    /// export holds.
    Special { path: String, kind: String },
}

/// Reads an archive in a thread of its own, an entry at a time.
pub struct TarReader {
    rx: mpsc::Receiver<io::Result<Entry>>,
    thread: JoinHandle<()>,
}

/// An opened archive and its length, when known.
pub struct Source {
    reader: Box<dyn Read + Send>,
    pub len: Option<u64>,
}

impl Source {
    pub fn open(input: &ArchivePath) -> Result<Source> {
        match input {
            ArchivePath::Stdio => Ok(Source {
                reader: Box::new(io::stdin()),
                len: None,
            }),
            ArchivePath::File(path) => {
                let file =
                    File::open(path).map_err(|e| AirgapError::Read(format!("cannot open {}: {e}", path.display())))?;
                let len = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
                Ok(Source {
                    reader: Box::new(file),
                    len,
                })
            }
        }
    }
}

impl TarReader {
    /// Starts reading `source`, showing the bytes read on `bar`.
    pub fn start(source: Source, bar: ProgressBar) -> TarReader {
        let (tx, rx) = mpsc::channel(1);
        let counted = Counted {
            inner: source.reader,
            bar,
            ended: Arc::new(AtomicBool::new(false)),
        };
        let thread = tokio::task::spawn_blocking(move || read_tar(counted, tx));
        TarReader { rx, thread }
    }

    /// The next entry; `None` at the end of the archive. An error ends it.
    pub async fn next(&mut self) -> Option<io::Result<Entry>> {
        self.rx.recv().await
    }

    /// Waits for the reader thread to end (it does once the archive has
    /// ended, or once nobody takes its entries).
    pub async fn close(self) {
        drop(self.rx);
        let _ = self.thread.await;
    }
}

/// The reader thread: each entry's header, then its bytes through a channel
/// of its own.
fn read_tar(source: Counted, tx: mpsc::Sender<io::Result<Entry>>) {
    let ended = source.ended.clone();
    // An error where the input ended is a truncated archive, told as such.
    let failed = |e: io::Error| {
        if ended.load(Ordering::Relaxed) {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive ends inside the header of an entry ({e})"),
            )
        } else {
            e
        }
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(IO_BUFFER, source));
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            let _ = tx.blocking_send(Err(failed(e)));
            return;
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let _ = tx.blocking_send(Err(failed(e)));
                return;
            }
        };
        let path = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = entry.header().entry_type();
        // Directories, and a pax archive's global header (as other tools
        // write them), hold nothing of the layout.
        if kind.is_dir() || kind.is_pax_global_extensions() {
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            let sent = tx.blocking_send(Ok(Entry::Special {
                path,
                kind: format!("{kind:?}"),
            }));
            if sent.is_err() {
                return;
            }
            continue;
        }
        let size = entry.size();
        let (data_tx, data) = mpsc::channel(ENTRY_DEPTH);
        if tx
            .blocking_send(Ok(Entry::File {
                path: path.clone(),
                size,
                data,
            }))
            .is_err()
        {
            return;
        }
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let mut buf = BytesMut::zeroed(n);
            if let Err(e) = entry.read_exact(&mut buf) {
                let ended = if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(
                        e.kind(),
                        format!("{path}: the archive ends inside this entry of {size} bytes"),
                    )
                } else {
                    io::Error::new(e.kind(), format!("{path}: {e}"))
                };
                let _ = data_tx.blocking_send(Err(ended));
                return;
            }
            left -= n as u64;
            if data_tx.blocking_send(Ok(buf.freeze())).is_err() {
                // Skipped: the archive's next entry starts after the rest.
                break;
            }
        }
    }
}

/// The archive's bytes, counted on a progress bar as they are read.
struct Counted {
    inner: Box<dyn Read + Send>,
    bar: ProgressBar,
    /// Whether the input has ended.
    ended: Arc<AtomicBool>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.store(true, Ordering::Relaxed);
        }
        self.bar.inc(n as u64);
        Ok(n)
    }
}
