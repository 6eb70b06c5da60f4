//! `berth backup DEST_DIR`: an online copy of an embedded installation (the
//! SQLite database and the blob files of a data directory) that `berth
//! serve --data-dir DEST_DIR` serves as it was when the copy began.
//!
//! Order, which is what makes the copy consistent while the server runs:
//!
//! 1. The database, with `VACUUM INTO`: one read transaction, so the copy
//!    is the registry as of one commit.
//! 2. The blob files the copy records. Garbage collection deletes only blobs
//!    that nothing references and that were not touched for its grace
//!    period, so every blob a manifest of the copy references is still
//!    there when its turn comes. A blob that nothing references may have been
//!    collected since step 1; it is dropped from the copy. Each file is
//!    re-hashed as it is copied; one that does not hold its digest fails
//!    the backup.
//! 3. Upload sessions are dropped from the copy (their bytes are not part
//!    of it; clients restart an unknown upload), `token.key` is copied when
//!    it is there, and `backup.json` records what the copy holds.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use berth_meta::backup::{Snapshot, SnapshotBlob, SnapshotCounts};
use berth_oci::digest::DigestHasher;
use berth_oci::Digest;
use berth_storage::FsBlobStore;
use futures::StreamExt;
use serde::Serialize;

use crate::cli::BackupArgs;
use crate::config::{Config, MetaBackend, Overrides, StorageBackend};
use crate::progress::{Phase, Unit};

/// Blobs read from the snapshot at a time.
const BLOB_PAGE: u32 = 1000;
/// Bytes read and written at a time when copying a blob.
const COPY_CHUNK: usize = 1 << 20;
/// The record of what a backup holds, in the backup's directory.
pub const MANIFEST_FILE: &str = "backup.json";

const SCALE_OUT: &str = "berth backup copies an embedded installation (meta.backend = \"sqlite\" and filesystem \
                         blob stores). With PostgreSQL or S3, back up the stores themselves: pg_dump the database \
                         first, then copy or snapshot the bucket (or keep bucket versioning or replication on); see \
                         \"Backup and restore\" in docs/operations.md";

/// Where one blob store's files are read from and written to.
struct StoreDirs {
    name: String,
    /// The store's root directory.
    source: PathBuf,
    from: FsBlobStore,
    to: FsBlobStore,
    /// Where the copy is, relative to the backup directory.
    relative: PathBuf,
}

/// The counts of blob files.
#[derive(Debug, Default, Serialize)]
struct BlobCounts {
    /// Blob files copied (a blob held by two stores counts twice).
    copied: u64,
    copied_bytes: u64,
    /// Blobs nothing referenced that were collected after the database was
    /// copied, and so left out of the copy.
    collected_meanwhile: u64,
    failed: u64,
}

/// A blob that could not be copied.
#[derive(Debug, Serialize)]
struct BlobFailure {
    digest: String,
    store: String,
    problem: String,
}

/// A copied blob store, for the one who restores.
#[derive(Debug, Serialize)]
struct StoreCopy {
    name: String,
    source: String,
    /// Relative to the backup directory.
    copy: String,
}

/// What `backup.json` holds; printed at the end (as JSON with `--json`).
#[derive(Debug, Serialize)]
struct Summary {
    berth_version: &'static str,
    /// When the copy began and ended (RFC 3339, UTC); the copy is the
    /// registry as of a moment just after `started`.
    started: String,
    finished: String,
    source: String,
    destination: String,
    /// False when a blob could not be copied: the copy lacks it.
    ok: bool,
    elapsed_ms: u64,
    /// What the copied database holds.
    database: SnapshotCounts,
    blobs: BlobCounts,
    /// Upload sessions in flight, left out.
    uploads_left_out: u64,
    token_key_copied: bool,
    stores: Vec<StoreCopy>,
    failed_blobs: Vec<BlobFailure>,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let overrides = Overrides {
        listen: None,
        data_dir: args.store.data_dir.clone(),
    };
    let config = Config::load(args.store.config.as_deref(), overrides)?;
    let scale_out = config.meta.backend == MetaBackend::Postgres
        || config.storage.backend == StorageBackend::S3
        || config.storage.stores.values().any(|s| s.backend == StorageBackend::S3);
    anyhow::ensure!(!scale_out, SCALE_OUT);
    let source_db = config.data_dir.join("berth.db");
    anyhow::ensure!(
        source_db.is_file(),
        "no metadata database at {}: not the data directory of an embedded installation (is --data-dir or \
         data_dir in --config the server's?)",
        source_db.display()
    );
    prepare_destination(&args.dest)?;
    let stores = store_dirs(&config, &args.dest)?;

    let phase = Phase::start("backup", "database", None, Unit::Items("files"));
    let snapshot = Snapshot::take(&source_db, &args.dest.join("berth.db"))
        .await
        .context("copying the metadata database")?;
    let uploads_left_out = snapshot.forget_uploads().await?;
    phase.finish("copied".into());

    let mut summary = Summary {
        berth_version: env!("CARGO_PKG_VERSION"),
        started: humantime::format_rfc3339_seconds(started_at).to_string(),
        finished: String::new(),
        source: config.data_dir.display().to_string(),
        destination: args.dest.display().to_string(),
        ok: false,
        elapsed_ms: 0,
        database: SnapshotCounts::default(),
        blobs: BlobCounts::default(),
        uploads_left_out,
        token_key_copied: false,
        stores: stores
            .iter()
            .map(|s| StoreCopy {
                name: s.name.clone(),
                source: s.source.display().to_string(),
                copy: s.relative.display().to_string(),
            })
            .collect(),
        failed_blobs: Vec::new(),
    };

    let (_, total_bytes) = totals(&snapshot).await?;
    copy_blobs(&snapshot, &stores, &args, total_bytes, &mut summary).await?;

    summary.token_key_copied = copy_token_key(&config, &args.dest)?;
    summary.database = snapshot.counts().await?;
    snapshot.finish().await.context("checking the copied database")?;
    File::open(args.dest.join("berth.db"))
        .and_then(|f| f.sync_all())
        .context("flushing the copied database to disk")?;

    summary.ok = summary.failed_blobs.is_empty();
    summary.finished = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    write_manifest(&args.dest, &summary)?;
    sync_filesystem(&args.dest)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    anyhow::ensure!(
        summary.ok,
        "{} blob files could not be copied: the copy in {} is incomplete (berth fsck --verify on the source tells \
         more)",
        summary.failed_blobs.len(),
        args.dest.display()
    );
    Ok(())
}

/// Creates `dest`, or accepts it when it is an empty directory: a backup
/// never mixes with other files, an earlier backup's least of all.
fn prepare_destination(dest: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            anyhow::ensure!(
                entries.next().is_none(),
                "{} is not empty; back up into a new or empty directory",
                dest.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            anyhow::bail!("{} exists and is not a directory", dest.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dest.display())),
    }
}

/// The default store (the data directory's `blobs/`) and every named
/// filesystem store, each with where its copy goes: the layout of a data
/// directory, so `berth serve --data-dir DEST` finds them.
fn store_dirs(config: &Config, dest: &Path) -> anyhow::Result<Vec<StoreDirs>> {
    let open =
        |dir: &Path| FsBlobStore::open(dir).with_context(|| format!("cannot open the blob store {}", dir.display()));
    let mut stores = vec![StoreDirs {
        name: berth_meta::DEFAULT_STORE.to_string(),
        source: config.data_dir.clone(),
        from: open(&config.data_dir)?,
        to: open(dest)?,
        relative: PathBuf::from("."),
    }];
    for (name, store) in &config.storage.stores {
        let from = store
            .path
            .clone()
            .unwrap_or_else(|| config.data_dir.join("stores").join(name));
        let relative = Path::new("stores").join(name);
        stores.push(StoreDirs {
            name: name.clone(),
            from: open(&from)?,
            source: from,
            to: open(&dest.join(&relative))?,
            relative,
        });
    }
    Ok(stores)
}

async fn totals(snapshot: &Snapshot) -> anyhow::Result<(u64, u64)> {
    let counts = snapshot.counts().await?;
    Ok((counts.blobs, counts.blob_bytes))
}

/// What became of one blob file.
enum Copied {
    Done(u64),
    Missing,
    Failed(String),
}

/// Copies the file of every blob the snapshot records, from each store
/// that holds it, `args.jobs` at a time.
async fn copy_blobs(
    snapshot: &Snapshot,
    stores: &[StoreDirs],
    args: &BackupArgs,
    total_bytes: u64,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let phase = Phase::start("backup", "blobs", Some(total_bytes), Unit::Bytes);
    let mut after: Option<String> = None;
    loop {
        let page = snapshot.blobs_after(after.as_deref(), BLOB_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.digest.clone());
        let mut copies = futures::stream::iter(page)
            .map(|blob| {
                let bar = phase.bar.clone();
                async move {
                    let outcomes = copy_one(stores, &blob).await;
                    bar.inc(blob.size);
                    (blob, outcomes)
                }
            })
            .buffer_unordered(usize::from(args.jobs));
        while let Some((blob, outcomes)) = copies.next().await {
            let mut missing = false;
            for (store, outcome) in outcomes {
                match outcome {
                    Copied::Done(bytes) => {
                        summary.blobs.copied += 1;
                        summary.blobs.copied_bytes += bytes;
                    }
                    Copied::Missing => missing = true,
                    Copied::Failed(problem) => {
                        summary.blobs.failed += 1;
                        phase.note(&format!("blob {} in store {store}: {problem}", blob.digest));
                        summary.failed_blobs.push(BlobFailure {
                            digest: blob.digest.clone(),
                            store,
                            problem,
                        });
                    }
                }
            }
            if !missing {
                continue;
            }
            if snapshot.is_referenced(&blob.digest).await? {
                let problem = "its file is missing, yet a manifest references it".to_string();
                phase.note(&format!("blob {}: {problem}", blob.digest));
                summary.blobs.failed += 1;
                summary.failed_blobs.push(BlobFailure {
                    digest: blob.digest.clone(),
                    store: blob.stores.to_string(),
                    problem,
                });
            } else {
                snapshot.forget_blob(&blob.digest).await?;
                summary.blobs.collected_meanwhile += 1;
            }
        }
    }
    let b = &summary.blobs;
    phase.finish(format!(
        "{} files copied ({} bytes), {} collected meanwhile and left out, {} failed",
        b.copied, b.copied_bytes, b.collected_meanwhile, b.failed
    ));
    Ok(())
}

/// Copies one blob from each store the snapshot says holds it.
async fn copy_one(stores: &[StoreDirs], blob: &SnapshotBlob) -> Vec<(String, Copied)> {
    let digest = match Digest::from_str(&blob.digest) {
        Ok(d) => d,
        Err(e) => {
            let problem = format!("the database records an invalid digest: {e}");
            return vec![(blob.stores.to_string(), Copied::Failed(problem))];
        }
    };
    let mut outcomes = Vec::new();
    for name in blob.stores.names() {
        let Some(store) = stores.iter().find(|s| s.name == name) else {
            let problem = "the configuration names no such blob store".to_string();
            outcomes.push((name.to_string(), Copied::Failed(problem)));
            continue;
        };
        let from = store.from.blob_path(&digest);
        let to = store.to.blob_path(&digest);
        let expected = digest.clone();
        let size = blob.size;
        let outcome = tokio::task::spawn_blocking(move || copy_file(&from, &to, &expected, size))
            .await
            .unwrap_or_else(|e| Copied::Failed(format!("the copying task failed: {e}")));
        outcomes.push((name.to_string(), outcome));
    }
    outcomes
}

/// Copies the blob file `from` to `to` through a hasher; the copy is kept
/// only when it holds `size` bytes with the digest `expected`.
fn copy_file(from: &Path, to: &Path, expected: &Digest, size: u64) -> Copied {
    let mut source = match File::open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Copied::Missing,
        Err(e) => return Copied::Failed(format!("cannot open {}: {e}", from.display())),
    };
    let partial = to.with_extension("partial");
    let result = copy_verified(&mut source, from, &partial, to, expected, size);
    match result {
        Ok(Copied::Done(n)) => Copied::Done(n),
        Ok(other) => {
            let _ = fs::remove_file(&partial);
            other
        }
        Err(problem) => {
            let _ = fs::remove_file(&partial);
            Copied::Failed(problem)
        }
    }
}

/// The body of [`copy_file`]: writes `partial` and renames it to `to` when
/// its bytes are the blob's. An error is a problem of the copy (reading,
/// writing); a bad blob is a [`Copied::Failed`].
fn copy_verified(
    source: &mut File,
    from: &Path,
    partial: &Path,
    to: &Path,
    expected: &Digest,
    size: u64,
) -> Result<Copied, String> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut target = File::create(partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let mut hasher = DigestHasher::new(expected.algorithm());
    let mut buffer = vec![0u8; COPY_CHUNK];
    let mut seen = 0u64;
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading {} failed: {e}", from.display())),
        };
        let chunk = buffer.get(..n).unwrap_or_default();
        hasher.update(chunk);
        target
            .write_all(chunk)
            .map_err(|e| format!("writing {} failed: {e}", partial.display()))?;
        seen += n as u64;
    }
    if seen != size {
        return Ok(Copied::Failed(format!(
            "its file holds {seen} bytes, the database records {size}"
        )));
    }
    let actual = hasher.finish();
    if &actual != expected {
        return Ok(Copied::Failed(format!(
            "its file has the digest {actual}: it is damaged"
        )));
    }
    target
        .sync_all()
        .map_err(|e| format!("flushing {} failed: {e}", partial.display()))?;
    fs::rename(partial, to).map_err(|e| format!("cannot rename {}: {e}", partial.display()))?;
    Ok(Copied::Done(seen))
}

/// Copies the token signing key (when the server keeps it in the data
/// directory) with its permissions, so tokens issued before stay valid.
fn copy_token_key(config: &Config, dest: &Path) -> anyhow::Result<bool> {
    let from = config.data_dir.join("token.key");
    if !from.is_file() {
        return Ok(false);
    }
    let to = dest.join("token.key");
    fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", to.display()))?;
    Ok(true)
}

/// Writes `backup.json`, last: a backup directory without it is unfinished.
fn write_manifest(dest: &Path, summary: &Summary) -> anyhow::Result<()> {
    let path = dest.join(MANIFEST_FILE);
    let partial = dest.join(format!("{MANIFEST_FILE}.partial"));
    let mut body = serde_json::to_vec_pretty(summary)?;
    body.push(b'\n');
    fs::write(&partial, body).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Flushes everything written to the destination's filesystem (the new
/// directories of the blob files included) before the backup reports success.
fn sync_filesystem(dest: &Path) -> anyhow::Result<()> {
    let dir = File::open(dest).with_context(|| format!("cannot open {}", dest.display()))?;
    // SAFETY: syncfs only reads its integer argument; the fd is open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("flushing {} to disk", dest.display()));
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let verdict = if s.ok { "done" } else { "INCOMPLETE" };
    println!(
        "backup {verdict} in {:.1} s: {} -> {}",
        s.elapsed_ms as f64 / 1000.0,
        s.source,
        s.destination
    );
    let d = &s.database;
    println!(
        "  database: {} repositories, {} manifests, {} tags, {} blobs ({} bytes); {} upload sessions left out",
        d.repositories, d.manifests, d.tags, d.blobs, d.blob_bytes, s.uploads_left_out
    );
    let b = &s.blobs;
    println!(
        "  blob files: {} copied and verified ({} bytes), {} collected meanwhile and left out, {} failed",
        b.copied, b.copied_bytes, b.collected_meanwhile, b.failed
    );
    for store in s.stores.iter().filter(|s| s.copy != ".") {
        println!(
            "  store {}: {} copied to {} (point [storage.stores.{}] path there to restore)",
            store.name, store.source, store.copy, store.name
        );
    }
    for f in &s.failed_blobs {
        println!("  FAILED blob {} in {}: {}", f.digest, f.store, f.problem);
    }
    println!(
        "  restore: stop berth, then serve with --data-dir {} (or move its content into the data directory)",
        s.destination
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::sha256_of(bytes)
    }

    #[test]
    fn only_a_file_holding_its_digest_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let to = dir.path().join("sub").join("to");
        fs::write(&from, b"hello blob").unwrap();
        let good = digest_of(b"hello blob");

        assert!(matches!(copy_file(&from, &to, &good, 10), Copied::Done(10)));
        assert_eq!(fs::read(&to).unwrap(), b"hello blob");

        let other = dir.path().join("other");
        let damaged = copy_file(&from, &other, &digest_of(b"hello BLOB"), 10);
        assert!(matches!(damaged, Copied::Failed(ref p) if p.contains("damaged")));
        assert!(
            !other.exists() && !other.with_extension("partial").exists(),
            "nothing is left behind"
        );
        let short = copy_file(&from, &other, &good, 11);
        assert!(matches!(short, Copied::Failed(ref p) if p.contains("holds 10 bytes")));
        assert!(matches!(
            copy_file(&dir.path().join("gone"), &other, &good, 10),
            Copied::Missing
        ));
    }

    #[test]
    fn a_backup_goes_only_into_a_new_or_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a").join("b");
        prepare_destination(&new).unwrap();
        assert!(new.is_dir());
        prepare_destination(&new).unwrap();
        fs::write(new.join("x"), b"").unwrap();
        let refused = prepare_destination(&new).unwrap_err().to_string();
        assert!(refused.contains("not empty"), "{refused}");
        let refused = prepare_destination(&new.join("x")).unwrap_err().to_string();
        assert!(refused.contains("not a directory"), "{refused}");
    }
}
