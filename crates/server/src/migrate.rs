//! `berth migrate`: moves an embedded installation (the SQLite file and the
//! blob files of a data directory) into the stores a scale-out configuration
//! names (PostgreSQL, and S3 or another blob store).
//!
//! Order, so that an interrupted run is finished by running it again:
//!
//! 1. The source database is locked (nothing else may have it open) and the
//!    target database is checked to be empty or an earlier, unfinished copy
//!    of this source: it must hold no row the source does not have, or two
//!    registries would be merged.
//! 2. Blob bytes, in digest order. A blob the target holds at the recorded
//!    size is skipped (re-hashed first with `--verify-existing`); every
//!    other one is streamed from the file through a hasher into an upload
//!    session of the target and committed only when its digest and size
//!    match. A missing, short or damaged file is reported and its blob left
//!    out.
//! 3. Every table (the meta crate's `transfer` module), in an order that
//!    respects the foreign keys, as upserts. Rows of left-out blobs are not
//!    copied, nor are manifests that reference them (directly or through an
//!    index), with their tags: the target never serves a manifest whose
//!    blobs it lacks.
//!
//! The copying of rows is the meta crate's business; this module only
//! streams bytes, shows progress and reports.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_meta::transfer::{Handling, LeftOut, PgTarget, SqliteSource, TableCopy, TABLES};
use berth_oci::digest::DigestHasher;
use berth_oci::{Digest, UploadId};
use berth_storage::{BlobStore, ByteStream, FsBlobStore, StorageError};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::app::{open_blobs, open_postgres};
use crate::cli::MigrateArgs;
use crate::config::{Config, MetaBackend, Overrides, StorageBackend};
use crate::progress::{Phase, Unit};

/// Blobs listed from the source at a time.
const BLOB_PAGE: u32 = 1000;
/// Times a blob is tried when the target store fails.
const TARGET_ATTEMPTS: u32 = 3;
/// Rows of the target not in the source that are named in the refusal.
const FOREIGN_SHOWN: usize = 10;

/// What happened to the blobs.
#[derive(Debug, Default, Serialize)]
struct BlobCounts {
    /// Blobs the source database records.
    total: u64,
    total_bytes: u64,
    copied: u64,
    copied_bytes: u64,
    /// Already in the target at the recorded size, so not copied again.
    already_present: u64,
    /// Of those, re-hashed and found right (`--verify-existing`).
    verified_present: u64,
    /// In the target with the wrong size or content, and copied again.
    replaced: u64,
    failed: u64,
}

/// A blob that could not be copied.
#[derive(Debug, Serialize)]
struct BlobFailure {
    digest: String,
    problem: String,
}

/// A table the copy leaves alone.
#[derive(Debug, Serialize)]
struct NotCopied {
    table: &'static str,
    why: &'static str,
}

/// The report of a run, printed at the end (as JSON with `--json`).
#[derive(Debug, Serialize)]
struct Summary {
    source: String,
    target_database: String,
    target_blobs: String,
    /// False when anything could not be copied.
    ok: bool,
    elapsed_ms: u64,
    blobs: BlobCounts,
    tables: Vec<TableCopy>,
    not_copied: Vec<NotCopied>,
    failed_blobs: Vec<BlobFailure>,
    /// Manifests (and their tags) left out because blobs they need could not be copied.
    manifests_left_out: Vec<LeftOut>,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Config::load(Some(&args.to), Overrides::default())?;
    anyhow::ensure!(
        config.meta.backend == MetaBackend::Postgres,
        "{} must name the scale-out metadata database (meta.backend = \"postgres\" and meta.url): migrate moves \
         an embedded installation out of its SQLite file",
        args.to.display()
    );
    if config.storage.backend == StorageBackend::Filesystem && same_dir(&config.data_dir, &args.from) {
        anyhow::bail!(
            "the target's blob store is the source's own data directory {}; name another storage",
            args.from.display()
        );
    }
    // The lock first: nothing else may use the source from here on.
    let mut source = SqliteSource::open(&args.from)
        .await
        .with_context(|| format!("cannot use {} as the source", args.from.display()))?;
    // Blobs of other stores would be recorded in the target without their
    // files; migrate moves the data directory's own store only.
    let routed = source.blobs_in_routed_stores().await?;
    anyhow::ensure!(
        routed == 0,
        "{routed} blobs of {} live in stores other than the default one ([storage.stores]); migrate copies only \
         the data directory's own blob files, so it cannot move this installation",
        args.from.display()
    );
    let source_blobs = FsBlobStore::open(&args.from)
        .with_context(|| format!("cannot open the blob files under {}", args.from.display()))?;
    let target_blobs = open_blobs(&config).await?;
    let pg = open_postgres(&config).await?;
    let target = PgTarget::new(&pg);

    let foreign = target.foreign_rows(&mut source, FOREIGN_SHOWN).await?;
    if !foreign.is_empty() {
        let rows: Vec<String> = foreign.iter().map(|f| format!("  {}: {}", f.table, f.row)).collect();
        anyhow::bail!(
            "the target database {} holds data that {} does not have, such as:\n{}\nmigrate copies into an empty \
             database, or finishes an interrupted copy of the same source; it does not merge two registries",
            config.meta.redacted_url(),
            args.from.display(),
            rows.join("\n")
        );
    }

    let mut summary = Summary {
        source: args.from.display().to_string(),
        target_database: config.meta.redacted_url(),
        target_blobs: describe_blobs(&config),
        ok: false,
        elapsed_ms: 0,
        blobs: BlobCounts::default(),
        tables: Vec::new(),
        not_copied: TABLES
            .iter()
            .filter_map(|t| match t.handling {
                Handling::NotCopied { why } => Some(NotCopied { table: t.name, why }),
                Handling::Copied { .. } => None,
            })
            .collect(),
        failed_blobs: Vec::new(),
        manifests_left_out: Vec::new(),
    };

    copy_blobs(&mut source, &source_blobs, target_blobs.as_ref(), &args, &mut summary).await?;

    let failed: Vec<String> = summary.failed_blobs.iter().map(|f| f.digest.clone()).collect();
    let excluded = source.excluded(&failed).await?;
    let counts = source.row_counts().await?;
    let rows: u64 = counts.values().sum();
    let phase = Phase::start("migrate", "metadata", Some(rows), Unit::Items("rows"));
    for table in TABLES {
        if let Handling::NotCopied { .. } = table.handling {
            continue;
        }
        phase.bar.set_message(table.name);
        let bar = phase.bar.clone();
        let report = target
            .copy_table(&mut source, table, &excluded, &mut |n| bar.inc(n))
            .await
            .with_context(|| format!("copying the table {}", table.name))?;
        // Left-out rows count as done.
        phase.bar.inc(report.excluded);
        summary.tables.push(report);
    }
    let written: u64 = summary.tables.iter().map(|t| t.written).sum();
    phase.finish(format!("{rows} rows, {written} written"));
    source.close().await?;

    summary.manifests_left_out = excluded.manifests_left_out;
    summary.ok = summary.failed_blobs.is_empty() && summary.manifests_left_out.is_empty();
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    anyhow::ensure!(
        summary.ok,
        "{} blobs could not be copied and {} manifests were left out; fix or remove them in the source (berth \
         fsck) and run migrate again",
        summary.failed_blobs.len(),
        summary.manifests_left_out.len()
    );
    Ok(())
}

/// Whether two paths name the same directory (when both exist).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn describe_blobs(config: &Config) -> String {
    match (&config.storage.backend, &config.storage.s3) {
        (StorageBackend::S3, Some(s3)) => format!(
            "S3 bucket {} prefix {:?}{}",
            s3.bucket,
            s3.prefix.as_deref().unwrap_or(""),
            s3.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
        ),
        _ => format!("files under {}", config.data_dir.display()),
    }
}

/// Copies every blob the source records, in digest order, `args.jobs` at a time.
async fn copy_blobs(
    source: &mut SqliteSource,
    from: &FsBlobStore,
    to: &dyn BlobStore,
    args: &MigrateArgs,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let (total, total_bytes) = source.blob_totals().await?;
    summary.blobs.total = total;
    summary.blobs.total_bytes = total_bytes;
    let phase = Phase::start("migrate", "blobs", Some(total_bytes), Unit::Bytes);
    let mut done = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = source.blobs_after(after.as_deref(), BLOB_PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let mut moves = futures::stream::iter(page)
            .map(|(digest, size)| {
                let bar = phase.bar.clone();
                async move {
                    let outcome = move_blob_retrying(from, to, &digest, size, args.verify_existing, &bar).await;
                    (digest, size, outcome)
                }
            })
            .buffer_unordered(usize::from(args.jobs));
        while let Some((digest, size, outcome)) = moves.next().await {
            let blobs = &mut summary.blobs;
            match outcome? {
                Outcome::Copied { replaced } => {
                    blobs.copied += 1;
                    blobs.copied_bytes += size;
                    blobs.replaced += u64::from(replaced);
                }
                Outcome::Present { verified } => {
                    blobs.already_present += 1;
                    blobs.verified_present += u64::from(verified);
                }
                Outcome::Failed(problem) => {
                    blobs.failed += 1;
                    phase.bar.suspend(|| eprintln!("migrate: blob {digest}: {problem}"));
                    summary.failed_blobs.push(BlobFailure { digest, problem });
                }
            }
            done += 1;
            phase.bar.set_message(format!("{done}/{total} blobs"));
        }
    }
    let b = &summary.blobs;
    phase.finish(format!(
        "{} in all: {} copied ({} bytes), {} already there, {} failed",
        b.total, b.copied, b.copied_bytes, b.already_present, b.failed
    ));
    Ok(())
}

/// What became of one blob.
#[derive(Debug)]
enum Outcome {
    Copied {
        replaced: bool,
    },
    Present {
        verified: bool,
    },
    /// The source's file is missing or does not hold the blob.
    Failed(String),
}

/// [`move_blob`], tried again when the target store fails; an error is the
/// target's, after the last attempt.
async fn move_blob_retrying(
    from: &FsBlobStore,
    to: &dyn BlobStore,
    digest: &str,
    size: u64,
    verify_existing: bool,
    bar: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let mut attempt = 1;
    loop {
        let progress = Counted::new(bar);
        match move_blob(from, to, digest, size, verify_existing, &progress).await {
            Ok(outcome) => {
                // Whatever happened, the blob's bytes are done with.
                progress.settle(size);
                return Ok(outcome);
            }
            Err(e) if attempt < TARGET_ATTEMPTS => {
                progress.settle(0);
                tracing::debug!(digest, attempt, error = %e, "copying a blob failed; trying again");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => {
                progress.settle(0);
                return Err(e.context(format!("copying blob {digest} into the target store")));
            }
        }
    }
}

/// Copies one blob unless the target has it; errors are the target store's.
async fn move_blob(
    from: &FsBlobStore,
    to: &dyn BlobStore,
    digest: &str,
    size: u64,
    verify_existing: bool,
    progress: &Counted,
) -> anyhow::Result<Outcome> {
    let digest = match Digest::from_str(digest) {
        Ok(d) => d,
        Err(e) => return Ok(Outcome::Failed(format!("the database records an invalid digest: {e}"))),
    };
    let mut replaced = false;
    match to.stat(&digest).await? {
        Some(have) if have == size && !verify_existing => return Ok(Outcome::Present { verified: false }),
        Some(have) if have == size => {
            let bytes = to.get(&digest, None).await?;
            let check = Arc::new(Mutex::new(Check::default()));
            let mut verifying = Verifying::new(bytes, &digest, size, check.clone(), progress.clone());
            while verifying.try_next().await.is_ok_and(|chunk| chunk.is_some()) {}
            let problem = lock(&check).problem.take();
            match problem {
                None => return Ok(Outcome::Present { verified: true }),
                Some(problem) => {
                    progress.note(&format!(
                        "blob {digest}: the target's copy is damaged ({problem}); copying it again"
                    ));
                    progress.settle(0);
                    to.delete(&digest).await?;
                    replaced = true;
                }
            }
        }
        Some(have) => {
            progress.note(&format!(
                "blob {digest}: the target's copy holds {have} bytes, not {size}; copying it again"
            ));
            to.delete(&digest).await?;
            replaced = true;
        }
        None => {}
    }
    let bytes = match from.get(&digest, None).await {
        Ok(bytes) => bytes,
        Err(StorageError::BlobNotFound) => {
            return Ok(Outcome::Failed("its file is missing from the data directory".into()))
        }
        Err(e) => return Ok(Outcome::Failed(format!("its file cannot be read: {e}"))),
    };
    let check = Arc::new(Mutex::new(Check::default()));
    let verifying = Verifying::new(bytes, &digest, size, check.clone(), progress.clone());
    let id = UploadId::new(format!("migrate-{}", uuid::Uuid::new_v4()));
    to.start_upload(&id).await?;
    // Staged, so that a store which can write the blob's key directly
    // writes the bytes once; they become the blob only once verified.
    let staged = to.stage_blob(&id, &digest, Box::pin(verifying)).await;
    let problem = lock(&check).problem.take();
    if let Some(problem) = problem {
        drop(staged);
        cancel(to, &id).await;
        return Ok(Outcome::Failed(problem));
    }
    let staged = match staged {
        Ok(staged) if staged.len() == size => staged,
        Ok(staged) => {
            let len = staged.len();
            drop(staged);
            cancel(to, &id).await;
            anyhow::bail!("the target store took {len} of {size} bytes");
        }
        Err(e) => {
            cancel(to, &id).await;
            return Err(e.into());
        }
    };
    staged.publish().await?;
    Ok(Outcome::Copied { replaced })
}

/// Drops an upload session that will not be committed; what is left of it
/// is garbage the target's collector removes.
async fn cancel(to: &dyn BlobStore, id: &UploadId) {
    if let Err(e) = to.cancel_upload(id).await {
        tracing::warn!(upload = %id, error = %e, "dropping a migration upload session failed");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a [`Verifying`] stream found.
#[derive(Debug, Default)]
struct Check {
    problem: Option<String>,
}

/// Bytes of one blob shown on the progress bar, so that an attempt that is
/// given up can be taken back off it.
#[derive(Clone)]
struct Counted {
    bar: ProgressBar,
    shown: Arc<Mutex<u64>>,
}

impl Counted {
    fn new(bar: &ProgressBar) -> Counted {
        Counted {
            bar: bar.clone(),
            shown: Arc::new(Mutex::new(0)),
        }
    }

    /// A line for people, above the progress bar.
    fn note(&self, line: &str) {
        self.bar.suspend(|| eprintln!("migrate: {line}"));
    }

    fn inc(&self, n: u64) {
        *lock(&self.shown) += n;
        self.bar.inc(n);
    }

    /// Makes what this blob shows on the bar exactly `n` bytes.
    fn settle(&self, n: u64) {
        let mut shown = lock(&self.shown);
        if *shown > n {
            self.bar.dec(*shown - n);
        } else {
            self.bar.inc(n - *shown);
        }
        *shown = n;
    }
}

/// Passes a blob's bytes through while hashing them; ends with an error
/// (and records the problem) when they are not the blob `expected` of
/// `size` bytes, so the target store discards them.
struct Verifying {
    inner: ByteStream,
    hasher: Option<DigestHasher>,
    expected: Digest,
    size: u64,
    seen: u64,
    check: Arc<Mutex<Check>>,
    progress: Counted,
}

impl Verifying {
    fn new(inner: ByteStream, expected: &Digest, size: u64, check: Arc<Mutex<Check>>, progress: Counted) -> Self {
        Verifying {
            inner,
            hasher: Some(DigestHasher::new(expected.algorithm())),
            expected: expected.clone(),
            size,
            seen: 0,
            check,
            progress,
        }
    }

    fn fail(&mut self, problem: String) -> Poll<Option<io::Result<Bytes>>> {
        self.hasher = None;
        lock(&self.check).problem = Some(problem.clone());
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, problem))))
    }
}

impl Stream for Verifying {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                this.seen += len;
                if this.seen > this.size {
                    let size = this.size;
                    return this.fail(format!("it holds more than the {size} bytes the database records"));
                }
                if let Some(hasher) = this.hasher.as_mut() {
                    hasher.update(&chunk);
                }
                this.progress.inc(len);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(format!("reading it failed: {e}")),
            Poll::Ready(None) => {
                let Some(hasher) = this.hasher.take() else {
                    return Poll::Ready(None);
                };
                let actual = hasher.finish();
                if this.seen != this.size {
                    let (seen, size) = (this.seen, this.size);
                    this.fail(format!("it holds {seen} bytes, the database records {size}"))
                } else if actual != this.expected {
                    this.fail(format!("its bytes have the digest {actual}: it is damaged"))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }
}

fn print_summary(s: &Summary) {
    let verdict = if s.ok { "done" } else { "INCOMPLETE" };
    println!(
        "migrate {verdict} in {:.1} s: {} -> {} and {}",
        s.elapsed_ms as f64 / 1000.0,
        s.source,
        s.target_database,
        s.target_blobs
    );
    let b = &s.blobs;
    println!(
        "  blobs: {} ({} bytes): {} copied ({} bytes), {} already there ({} re-hashed), {} replaced, {} failed",
        b.total, b.total_bytes, b.copied, b.copied_bytes, b.already_present, b.verified_present, b.replaced, b.failed
    );
    for t in &s.tables {
        println!(
            "  {:<20} {:>9} rows {:>9} written {:>6} left out",
            t.table, t.rows, t.written, t.excluded
        );
    }
    for n in &s.not_copied {
        println!("  {:<20} not copied: {}", n.table, n.why);
    }
    for f in &s.failed_blobs {
        println!("  FAILED blob {}: {}", f.digest, f.problem);
    }
    for m in &s.manifests_left_out {
        let tags = if m.tags.is_empty() {
            String::new()
        } else {
            format!(" (tags {})", m.tags.join(", "))
        };
        println!("  LEFT OUT {}@{}{tags}: {}", m.repository, m.digest, m.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `chunks` through a [`Verifying`] for the blob `expected` of
    /// `size` bytes; returns the bytes passed on and the problem found.
    async fn verify(chunks: &[&[u8]], expected: &[u8], size: u64) -> (Vec<u8>, Option<String>) {
        let items: Vec<io::Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let check = Arc::new(Mutex::new(Check::default()));
        let bar = ProgressBar::hidden();
        let mut stream = Verifying::new(
            Box::pin(futures::stream::iter(items)),
            &Digest::sha256_of(expected),
            size,
            check.clone(),
            Counted::new(&bar),
        );
        let mut passed = Vec::new();
        let mut errors = 0;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => passed.extend_from_slice(&chunk),
                Err(_) => errors += 1,
            }
        }
        let problem = lock(&check).problem.take();
        assert_eq!(errors, usize::from(problem.is_some()), "one error ends a bad stream");
        (passed, problem)
    }

    #[tokio::test]
    async fn only_the_right_bytes_get_through_without_an_error() {
        let blob = b"hello blob";
        let (passed, problem) = verify(&[b"hello", b" blob"], blob, 10).await;
        assert_eq!((passed.as_slice(), problem), (&blob[..], None));

        let (_, problem) = verify(&[b"hello", b" BLOB"], blob, 10).await;
        assert!(problem.unwrap().contains("damaged"));
        let (_, problem) = verify(&[b"hello"], blob, 10).await;
        assert!(problem.unwrap().contains("holds 5 bytes"));
        // A longer file is cut off as soon as it passes the recorded size.
        let (passed, problem) = verify(&[b"hello blob", b"and more"], blob, 10).await;
        assert_eq!(passed, blob);
        assert!(problem.unwrap().contains("more than"));
    }

    #[test]
    fn a_settled_blob_shows_exactly_its_size() {
        let bar = ProgressBar::hidden();
        bar.set_length(100);
        let first = Counted::new(&bar);
        first.inc(30);
        first.settle(0);
        assert_eq!(bar.position(), 0, "an abandoned attempt is taken off");
        let second = Counted::new(&bar);
        second.inc(10);
        second.settle(40);
        assert_eq!(bar.position(), 40);
    }
}
