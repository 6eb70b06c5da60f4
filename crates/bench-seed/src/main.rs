//! `berth-bench-seed`: fills an empty Berth data dir with a synthetic
//! registry for `scripts/bench-lifecycle.sh`, fast enough to make a million
//! tags in minutes instead of the hours pushing them would take.
//!
//! It writes the metadata database and the blob store layout directly, the
//! way the server would have after the pushes: the schema comes from
//! [`SqliteMeta::open`], every manifest is a valid OCI image manifest whose
//! digest is the SHA-256 of its stored bytes, and every blob file holds
//! exactly the bytes its name and its `blobs` row promise, so `berth fsck
//! --verify` finds nothing to report. It must never touch a data dir that
//! holds a registry: it refuses one that has any repository.
//!
//! Each repository gets one shared layer and, per tag, a unique image config
//! and a manifest referencing both. Tags are pushed at shuffled times spread
//! over the past `--days`, so "keep the newest N" is not "keep the last N names".
//! With `--unreferenced N`, the repositories also hold N blobs between them
//! that were uploaded and linked but that no manifest references, as left by
//! pushes that never finished: garbage for the collector to find.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use berth_meta::SqliteMeta;
use berth_oci::{media_type, Algorithm, Digest};
use clap::Parser;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

/// The media type of an uncompressed layer, so the config's `diff_ids` can
/// name the layer's own digest.
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "berth-bench-seed",
    about = "Fill an empty Berth data dir with synthetic repositories and tags"
)]
struct Args {
    /// The data dir to fill (created if missing; must hold no repository).
    #[arg(long)]
    data_dir: PathBuf,
    /// How many repositories, named `bench/r0000`, `bench/r0001`, …
    #[arg(long, default_value_t = 1000)]
    repos: u32,
    /// How many tags (each with its own manifest and config) per repository,
    /// named `t000000`, `t000001`, …
    #[arg(long, default_value_t = 1000)]
    tags: u32,
    /// Tags of the first repository, `bench/r0000`, when it should differ
    /// from `--tags` (the web UI's benchmark: one repository of 10,000 tags
    /// among many small ones).
    #[arg(long)]
    first_repo_tags: Option<u32>,
    /// The size of each repository's shared layer, in bytes.
    #[arg(long, default_value_t = 4096)]
    layer_size: usize,
    /// How many days back the oldest push lies; blobs are that old too.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Threads that write blob files while the database is filled.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Blobs no manifest references, spread over the repositories (each
    /// linked to its repository, as an upload links it), all as old as the
    /// oldest push.
    #[arg(long, default_value_t = 0)]
    unreferenced: u64,
    /// The size of each unreferenced blob, in bytes.
    #[arg(long, default_value_t = 1024)]
    unreferenced_size: usize,
}

impl Args {
    /// How many tags repository `index` gets.
    fn tags_of(&self, index: u32) -> u32 {
        match (index, self.first_repo_tags) {
            (0, Some(n)) => n,
            _ => self.tags,
        }
    }
}

/// One tag of a seeded repository: its image config and manifest.
struct TagImage {
    name: String,
    pushed_ms: i64,
    config: Vec<u8>,
    config_digest: Digest,
    manifest: String,
    manifest_digest: Digest,
}

/// One seeded repository, before it is written.
struct RepoImage {
    name: String,
    layer: Vec<u8>,
    layer_digest: Digest,
    tags: Vec<TagImage>,
    /// Blobs of this repository that no manifest references.
    unreferenced: Vec<(Digest, Vec<u8>)>,
}

/// An OCI content descriptor, in the field order clients write.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: usize,
}

/// An OCI image manifest, in the field order clients write.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: [Descriptor<'a>; 1],
}

/// A blob file to write: its final path and bytes.
type BlobFile = (PathBuf, Vec<u8>);

/// SplitMix64: a tiny deterministic generator, so a seed is reproducible.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RepoImage {
    /// Generates repository `index` with `tags` tags pushed between
    /// `oldest_ms` and `newest_ms`.
    fn generate(index: u32, args: &Args, oldest_ms: i64, newest_ms: i64) -> Result<RepoImage> {
        let name = format!("bench/r{index:04}");
        let mut rng = u64::from(index).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x0062_6572_7468;
        let layer: Vec<u8> = (0..args.layer_size.div_ceil(8))
            .flat_map(|_| splitmix64(&mut rng).to_le_bytes())
            .take(args.layer_size)
            .collect();
        let layer_digest = Digest::of(Algorithm::Sha256, &layer);

        let wanted = args.tags_of(index);
        // Push order is a shuffle of the tag order.
        let count = usize::try_from(wanted)?;
        let mut order: Vec<usize> = (0..count).collect();
        for i in (1..count).rev() {
            let j = usize::try_from(splitmix64(&mut rng) % (i as u64 + 1))?;
            order.swap(i, j);
        }
        let step = (newest_ms - oldest_ms) / i64::from(wanted.max(1));

        let mut tags = Vec::with_capacity(count);
        for (i, position) in order.into_iter().enumerate() {
            let tag = format!("t{i:06}");
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": { "Labels": { "org.example.berth.bench": format!("{name}:{tag}") } },
                "rootfs": { "type": "layers", "diff_ids": [layer_digest.to_string()] },
            }))?;
            let config_digest = Digest::of(Algorithm::Sha256, &config);
            let manifest = serde_json::to_string(&ImageManifest {
                schema_version: 2,
                media_type: media_type::OCI_MANIFEST,
                config: Descriptor {
                    media_type: media_type::OCI_IMAGE_CONFIG,
                    digest: config_digest.to_string(),
                    size: config.len(),
                },
                layers: [Descriptor {
                    media_type: OCI_LAYER_TAR,
                    digest: layer_digest.to_string(),
                    size: layer.len(),
                }],
            })?;
            let manifest_digest = Digest::of(Algorithm::Sha256, manifest.as_bytes());
            tags.push(TagImage {
                name: tag,
                pushed_ms: oldest_ms + step * i64::try_from(position)?,
                config,
                config_digest,
                manifest,
                manifest_digest,
            });
        }
        // The first `unreferenced % repos` repositories take one more.
        let share = args.unreferenced / u64::from(args.repos.max(1))
            + u64::from(u64::from(index) < args.unreferenced % u64::from(args.repos.max(1)));
        let unreferenced = (0..share)
            .map(|_| {
                let bytes: Vec<u8> = (0..args.unreferenced_size.div_ceil(8))
                    .flat_map(|_| splitmix64(&mut rng).to_le_bytes())
                    .take(args.unreferenced_size)
                    .collect();
                (Digest::of(Algorithm::Sha256, &bytes), bytes)
            })
            .collect();
        Ok(RepoImage {
            name,
            layer,
            layer_digest,
            tags,
            unreferenced,
        })
    }

    /// The blob files of the repository, consuming their bytes.
    fn take_files(&mut self, root: &Path) -> Vec<BlobFile> {
        let path = |d: &Digest| root.join("blobs/sha256").join(&d.hex()[..2]).join(d.hex());
        let mut files = Vec::with_capacity(self.tags.len() + 1);
        files.push((path(&self.layer_digest), std::mem::take(&mut self.layer)));
        for t in &mut self.tags {
            files.push((path(&t.config_digest), std::mem::take(&mut t.config)));
        }
        for (digest, bytes) in &mut self.unreferenced {
            files.push((path(digest), std::mem::take(bytes)));
        }
        files
    }
}

/// Writes the repository's rows in one transaction: a handful of statements
/// that each insert a whole table's share from one JSON array, because a
/// round trip per row through sqlx's worker thread would dominate.
async fn insert_repo(
    conn: &mut SqliteConnection,
    repo: &RepoImage,
    layer_size: usize,
    config_sizes: &[usize],
    unreferenced_size: usize,
    created_ms: i64,
) -> Result<()> {
    let blobs: Vec<(String, usize)> = std::iter::once((repo.layer_digest.to_string(), layer_size))
        .chain(
            repo.tags
                .iter()
                .zip(config_sizes)
                .map(|(t, size)| (t.config_digest.to_string(), *size)),
        )
        .chain(
            repo.unreferenced
                .iter()
                .map(|(digest, _)| (digest.to_string(), unreferenced_size)),
        )
        .collect();
    // [tag, manifest digest, manifest body, pushed_ms, config digest, total size]
    let images: Vec<(&str, String, &str, i64, String, usize)> = repo
        .tags
        .iter()
        .zip(config_sizes)
        .map(|(t, config_size)| {
            (
                t.name.as_str(),
                t.manifest_digest.to_string(),
                t.manifest.as_str(),
                t.pushed_ms,
                t.config_digest.to_string(),
                t.manifest.len() + config_size + layer_size,
            )
        })
        .collect();
    let blobs = serde_json::to_string(&blobs)?;
    let images = serde_json::to_string(&images)?;

    let mut tx = conn.begin().await?;
    let repo_id: i64 = sqlx::query_scalar("INSERT INTO repositories (name, created_ms) VALUES ($1, $2) RETURNING id")
        .bind(&repo.name)
        .bind(created_ms)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO blobs (digest, size, created_ms, touched_ms) \
         SELECT value ->> 0, value ->> 1, $2, $2 FROM json_each($1)",
    )
    .bind(&blobs)
    .bind(created_ms)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO repo_blobs (repo_id, digest, linked_ms) SELECT $1, value ->> 0, $3 FROM json_each($2)")
        .bind(repo_id)
        .bind(&blobs)
        .bind(created_ms)
        .execute(&mut *tx)
        .await?;
    // The body is stored as a BLOB of exactly the bytes that were hashed, as a push stores it.
    sqlx::query(
        "INSERT INTO manifests (repo_id, digest, media_type, artifact_type, size, body, provenance, pushed_ms, \
         touched_ms, platforms, total_size) \
         SELECT $1, value ->> 1, $3, $4, length(CAST(value ->> 2 AS BLOB)), CAST(value ->> 2 AS BLOB), 'pushed', \
         value ->> 3, value ->> 3, $5, value ->> 5 FROM json_each($2)",
    )
    .bind(repo_id)
    .bind(&images)
    .bind(media_type::OCI_MANIFEST)
    .bind(media_type::OCI_IMAGE_CONFIG)
    .bind(r#"["linux/amd64"]"#)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, child_kind) \
         SELECT $1, value ->> 1, value ->> 4, 'blob' FROM json_each($2) \
         UNION ALL SELECT $1, value ->> 1, $3, 'blob' FROM json_each($2)",
    )
    .bind(repo_id)
    .bind(&images)
    .bind(repo.layer_digest.to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO tags (repo_id, name, manifest_digest, pushed_ms) \
         SELECT $1, value ->> 0, value ->> 1, value ->> 3 FROM json_each($2)",
    )
    .bind(repo_id)
    .bind(&images)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Starts `count` threads that write the file batches `files` receives.
fn start_writers(count: usize, files: Receiver<Vec<BlobFile>>) -> Vec<JoinHandle<std::io::Result<u64>>> {
    let files = Arc::new(Mutex::new(files));
    (0..count.max(1))
        .map(|_| {
            let files = Arc::clone(&files);
            std::thread::spawn(move || {
                let mut written = 0;
                loop {
                    // The lock is held only to take the next batch.
                    let batch = match files.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return Err(std::io::Error::other("a writer thread panicked")),
                    };
                    let Ok(batch) = batch else { return Ok(written) };
                    for (path, bytes) in batch {
                        std::fs::write(&path, &bytes)?;
                        written += 1;
                    }
                }
            })
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let root = args.data_dir.as_path();
    for shard in 0..=255u8 {
        let dir = root.join("blobs/sha256").join(format!("{shard:02x}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::create_dir_all(root.join("uploads"))?;

    // The schema exactly as the server creates it, then a connection of our
    // own that trades durability for speed: a crash here loses only a seed.
    let db = root.join("berth.db");
    drop(SqliteMeta::open(&db).await.context("creating the schema")?);
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .foreign_keys(false)
        // 1 GiB of page cache: the digest indexes are written in random order.
        .pragma("cache_size", "-1048576")
        .connect()
        .await?;
    let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM repositories")
        .fetch_one(&mut conn)
        .await?;
    ensure!(
        existing == 0,
        "{} already holds {existing} repositories; seed an empty data dir",
        db.display()
    );

    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let oldest_ms = now_ms - i64::from(args.days) * DAY_MS;
    // The newest push is an hour old, so nothing looks like it is being pushed right now.
    let newest_ms = now_ms - DAY_MS / 24;

    let (to_writers, files) = sync_channel::<Vec<BlobFile>>(8);
    let writers = start_writers(args.writers, files);
    let mut db_time = std::time::Duration::ZERO;
    for index in 0..args.repos {
        let mut repo = RepoImage::generate(index, &args, oldest_ms, newest_ms)?;
        let config_sizes: Vec<usize> = repo.tags.iter().map(|t| t.config.len()).collect();
        let files = repo.take_files(root);
        to_writers
            .send(files)
            .map_err(|_| anyhow::anyhow!("the blob file writers stopped"))?;
        let t = Instant::now();
        insert_repo(
            &mut conn,
            &repo,
            args.layer_size,
            &config_sizes,
            args.unreferenced_size,
            oldest_ms,
        )
        .await?;
        db_time += t.elapsed();
        if (index + 1) % 100 == 0 || index + 1 == args.repos {
            eprintln!(
                "seeded {} of {} repositories ({:.1} s, database {:.1} s)",
                index + 1,
                args.repos,
                started.elapsed().as_secs_f64(),
                db_time.as_secs_f64()
            );
        }
    }
    drop(to_writers);
    let mut files_written = 0;
    for writer in writers {
        files_written += writer
            .join()
            .map_err(|_| anyhow::anyhow!("a blob file writer panicked"))?
            .context("writing a blob file")?;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;

    let tags: u64 = (0..args.repos).map(|i| u64::from(args.tags_of(i))).sum();
    println!(
        "seeded {} repositories, {tags} tags, {tags} manifests, {} blobs ({} unreferenced; {files_written} files) \
         in {:.1} s (database {:.1} s)",
        args.repos,
        tags + u64::from(args.repos) + args.unreferenced,
        args.unreferenced,
        started.elapsed().as_secs_f64(),
        db_time.as_secs_f64()
    );
    Ok(())
}
