//! Copies the metadata of an embedded installation (its SQLite file) into a
//! PostgreSQL database, for `berth migrate`.
//!
//! Every table is read in key order and written in batches of upserts in an
//! order that respects the foreign keys, so a run that was killed half-way is
//! finished by running it again, and a run over a finished copy writes
//! nothing. The source is opened with an exclusive lock for the whole run: a
//! server still using it makes [`SqliteSource::open`] fail, and a server
//! started during the run cannot open it.
//!
//! This module knows tables and columns. It must not know blob bytes or OCI
//! rules: which blobs could not be copied is the caller's finding, handed in
//! to [`SqliteSource::excluded`], which works out what depends on them.
//! [`TABLES`] names every table of the SQLite schema and what happens to it;
//! [`SqliteSource::open`] refuses a schema with a table or column it does
//! not name, and so does a test, so a new table cannot be forgotten.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode, SqliteRow};
use sqlx::{Connection, Row};

use crate::{MetaError, PgMeta};

/// How a column is typed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    OptInt,
    Text,
    OptText,
    Bool,
    Bytes,
    /// A JSON array of strings in SQLite, `TEXT[]` in PostgreSQL.
    Platforms,
}

/// A column of a copied table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

/// Rows left out because of blobs that could not be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// Nothing is left out.
    Never,
    /// Rows whose column of this name holds an excluded blob's digest.
    Blob(&'static str),
    /// Rows whose `repo_id` and column of this name name an excluded manifest.
    Manifest(&'static str),
}

/// What `berth migrate` does with a table.
#[derive(Debug, Clone, Copy)]
pub enum Handling {
    Copied {
        columns: &'static [Column],
        /// The primary key, also the order the rows are read in.
        key: &'static [&'static str],
        /// The key is an identity column of PostgreSQL: the source's values
        /// are kept and the sequence is moved past them at the end.
        identity: bool,
        /// Columns that tell this installation's row from another one's. A
        /// target row whose values are not in the source means the target is
        /// not a copy of this source. Empty: not checked.
        fingerprint: &'static [&'static str],
        exclusion: Exclusion,
    },
    NotCopied {
        why: &'static str,
    },
}

/// A table of the SQLite schema.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub handling: Handling,
}

use Kind::*;

/// Every table of the SQLite schema, copied ones in an order that respects
/// the foreign keys of the PostgreSQL schema.
pub const TABLES: &[Table] = &[
    Table {
        name: "repositories",
        handling: Handling::Copied {
            columns: &[col("id", Int), col("name", Text), col("created_ms", Int)],
            key: &["id"],
            identity: true,
            fingerprint: &["id", "name", "created_ms"],
            exclusion: Exclusion::Never,
        },
    },
    Table {
        name: "blobs",
        handling: Handling::Copied {
            columns: &[
                col("digest", Text),
                col("size", Int),
                col("created_ms", Int),
                col("touched_ms", Int),
                col("stores", OptText),
            ],
            key: &["digest"],
            identity: false,
            fingerprint: &["digest", "size", "created_ms"],
            exclusion: Exclusion::Blob("digest"),
        },
    },
    Table {
        name: "repo_blobs",
        handling: Handling::Copied {
            columns: &[col("repo_id", Int), col("digest", Text), col("linked_ms", Int)],
            key: &["repo_id", "digest"],
            identity: false,
            fingerprint: &["repo_id", "digest"],
            exclusion: Exclusion::Blob("digest"),
        },
    },
    Table {
        name: "manifests",
        handling: Handling::Copied {
            columns: &[
                col("repo_id", Int),
                col("digest", Text),
                col("media_type", Text),
                col("artifact_type", OptText),
                col("subject", OptText),
                col("annotations", OptText),
                col("size", Int),
                col("body", Bytes),
                col("provenance", Text),
                col("pushed_by", OptText),
                col("pushed_ms", Int),
                col("last_pulled_ms", OptInt),
                col("pull_count", Int),
                col("touched_ms", Int),
                col("platforms", Platforms),
                col("total_size", OptInt),
            ],
            key: &["repo_id", "digest"],
            identity: false,
            fingerprint: &["repo_id", "digest"],
            exclusion: Exclusion::Manifest("digest"),
        },
    },
    Table {
        name: "manifest_refs",
        handling: Handling::Copied {
            columns: &[
                col("repo_id", Int),
                col("manifest_digest", Text),
                col("child_digest", Text),
                col("child_kind", Text),
            ],
            key: &["repo_id", "manifest_digest", "child_digest"],
            identity: false,
            fingerprint: &["repo_id", "manifest_digest", "child_digest"],
            exclusion: Exclusion::Manifest("manifest_digest"),
        },
    },
    Table {
        name: "tags",
        handling: Handling::Copied {
            columns: &[
                col("repo_id", Int),
                col("name", Text),
                col("manifest_digest", Text),
                col("pushed_ms", Int),
                col("last_pulled_ms", OptInt),
                col("pull_count", Int),
            ],
            key: &["repo_id", "name"],
            identity: false,
            fingerprint: &["repo_id", "name"],
            exclusion: Exclusion::Manifest("manifest_digest"),
        },
    },
    Table {
        name: "stars",
        handling: Handling::Copied {
            columns: &[col("user_name", Text), col("repo_id", Int), col("created_ms", Int)],
            key: &["user_name", "repo_id"],
            identity: false,
            // Not checked: a star removed in the source after an earlier run
            // says nothing about whose registry the target is.
            fingerprint: &[],
            exclusion: Exclusion::Never,
        },
    },
    Table {
        name: "daily_pulls",
        handling: Handling::Copied {
            columns: &[col("repo_id", Int), col("day", Int), col("pulls", Int)],
            key: &["repo_id", "day"],
            identity: false,
            fingerprint: &[],
            exclusion: Exclusion::Never,
        },
    },
    Table {
        name: "ui_sessions",
        handling: Handling::NotCopied {
            why: "browser sessions are not moved: people sign in to the web UI again",
        },
    },
    Table {
        name: "webhook_queue",
        handling: Handling::NotCopied {
            why:
                "webhook events waiting for delivery are not moved (docs/webhooks.md): drain the queue before migrating",
        },
    },
    Table {
        name: "webhook_endpoints",
        handling: Handling::NotCopied {
            why: "webhook delivery counters start afresh in the new database",
        },
    },
    Table {
        name: "uploads",
        handling: Handling::NotCopied {
            why: "upload sessions in flight are not moved: their bytes stay in the old data directory, and \
                  clients restart an upload whose session is unknown",
        },
    },
    Table {
        name: "users",
        handling: Handling::Copied {
            columns: &[
                col("name", Text),
                col("password_hash", Text),
                col("admin", Bool),
                col("disabled", Bool),
                col("created_ms", Int),
            ],
            key: &["name"],
            identity: false,
            fingerprint: &["name", "created_ms"],
            exclusion: Exclusion::Never,
        },
    },
    Table {
        name: "robots",
        handling: Handling::Copied {
            columns: &[
                col("name", Text),
                col("token_hash", Text),
                col("created_by", Text),
                col("created_ms", Int),
                col("expires_ms", OptInt),
                col("revoked_ms", OptInt),
                col("last_used_ms", OptInt),
            ],
            key: &["name"],
            identity: false,
            fingerprint: &["name", "created_ms"],
            exclusion: Exclusion::Never,
        },
    },
    Table {
        name: "grants",
        handling: Handling::Copied {
            columns: &[
                col("id", Int),
                col("subject_kind", Text),
                col("subject", Text),
                col("pattern", Text),
                col("role", Text),
                col("created_by", Text),
                col("created_ms", Int),
            ],
            key: &["id"],
            identity: true,
            fingerprint: &["id", "subject_kind", "subject", "pattern", "role"],
            exclusion: Exclusion::Never,
        },
    },
    Table {
        name: "audit_log",
        handling: Handling::Copied {
            columns: &[
                col("id", Int),
                col("at_ms", Int),
                col("actor", Text),
                col("action", Text),
                col("target", Text),
                col("detail", OptText),
            ],
            key: &["id"],
            identity: true,
            fingerprint: &["id", "at_ms", "action", "target"],
            exclusion: Exclusion::Never,
        },
    },
    Table {
        name: "retention_policies",
        handling: Handling::Copied {
            columns: &[
                col("pattern", Text),
                col("rules", Text),
                col("source", Text),
                col("updated_by", Text),
                col("updated_ms", Int),
            ],
            key: &["pattern"],
            identity: false,
            // Not checked: every server start writes the policies of its
            // configuration file, so a target that a server was started on
            // once holds some of its own. The source's policy of a pattern
            // wins over the target's.
            fingerprint: &[],
            exclusion: Exclusion::Never,
        },
    },
];

/// Tables only the PostgreSQL schema has, and why none of them is filled from the source.
pub const POSTGRES_ONLY_TABLES: &[(&str, &str)] = &[(
    "secrets",
    "secrets shared by replicas (the token signing key); the embedded installation keeps its key in a file",
)];

/// Rows read from the source before they are written as one batch.
const BATCH_ROWS: usize = 500;
/// Bytes of text and manifest bodies gathered before a batch is written.
const BATCH_BYTES: usize = 8 << 20;
/// Target rows whose fingerprints are looked up in the source at once.
const CHECK_BATCH: usize = 1000;

/// What can go wrong while copying metadata.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("no metadata database at {0}: not the data directory of an embedded installation")]
    NoSource(PathBuf),
    #[error(
        "{0} is in use by another process (is `berth serve` or another berth command still running on this data \
         directory?); stop it first"
    )]
    SourceInUse(PathBuf),
    #[error("the source database's schema is not the one this berth knows: {0}")]
    UnknownSchema(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl From<sqlx::Error> for TransferError {
    fn from(e: sqlx::Error) -> Self {
        TransferError::Meta(MetaError::Db(e))
    }
}

pub type TransferResult<T> = std::result::Result<T, TransferError>;

/// The metadata database of an embedded installation, locked for this process alone.
#[derive(Debug)]
pub struct SqliteSource {
    conn: SqliteConnection,
}

/// What is left out of the copy because blobs could not be copied: those
/// blobs, the manifests that reference them (directly or through a child
/// manifest) with their references and tags.
#[derive(Debug, Clone, Default)]
pub struct Excluded {
    blobs: HashSet<String>,
    manifests: HashSet<(i64, String)>,
    /// The manifests left out, for people.
    pub manifests_left_out: Vec<LeftOut>,
}

/// A manifest left out of the copy, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeftOut {
    pub repository: String,
    pub digest: String,
    pub reason: String,
    /// Its tags, which are left out with it.
    pub tags: Vec<String>,
}

/// A row of the target that the source does not have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForeignRow {
    pub table: &'static str,
    /// `column=value` of the row's fingerprint.
    pub row: String,
}

/// What copying one table did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableCopy {
    pub table: &'static str,
    /// Rows read from the source.
    pub rows: u64,
    /// Rows inserted or changed in the target; 0 when it held them all already.
    pub written: u64,
    /// Rows left out (see [`Excluded`]).
    pub excluded: u64,
}

fn is_locked(e: &sqlx::Error) -> bool {
    match e {
        // SQLITE_BUSY and SQLITE_LOCKED, with or without an extended code.
        sqlx::Error::Database(db) => {
            let code = db.code();
            matches!(code.as_deref(), Some("5" | "6" | "261" | "262" | "517"))
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

impl SqliteSource {
    /// Opens `berth.db` in the data directory `dir` with an exclusive lock,
    /// brings its schema up to date (as `berth serve` would) and checks that
    /// every table is one [`TABLES`] names.
    pub async fn open(dir: &Path) -> TransferResult<SqliteSource> {
        let path = dir.join("berth.db");
        if !path.is_file() {
            return Err(TransferError::NoSource(path));
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(false)
            // Exclusive from the first read on: no other connection can read
            // or write until this one closes, and none may be open now.
            .locking_mode(SqliteLockingMode::Exclusive)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_millis(500))
            .foreign_keys(true);
        let locked = |e: sqlx::Error| {
            if is_locked(&e) {
                TransferError::SourceInUse(path.clone())
            } else {
                e.into()
            }
        };
        let mut conn = SqliteConnection::connect_with(&options).await.map_err(locked)?;
        // Takes the write lock now, which locking_mode keeps until the end.
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .map_err(locked)?;
        sqlx::query("COMMIT").execute(&mut conn).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut conn)
            .await
            .map_err(MetaError::from)?;
        let mut source = SqliteSource { conn };
        let differences = source.schema_differences().await?;
        if !differences.is_empty() {
            return Err(TransferError::UnknownSchema(differences.join("; ")));
        }
        Ok(source)
    }

    /// How the database's tables and columns differ from [`TABLES`].
    pub async fn schema_differences(&mut self) -> TransferResult<Vec<String>> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(&mut self.conn)
        .await?;
        let mut differences = Vec::new();
        for table in &tables {
            let Some(known) = TABLES.iter().find(|t| t.name == table) else {
                differences.push(format!("table {table} is not known to migrate"));
                continue;
            };
            let Handling::Copied { columns, .. } = known.handling else {
                continue;
            };
            let actual: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(&mut self.conn)
                .await?;
            for name in &actual {
                if !columns.iter().any(|c| c.name == name) {
                    differences.push(format!("column {table}.{name} is not known to migrate"));
                }
            }
            for c in columns {
                if !actual.iter().any(|name| name == c.name) {
                    differences.push(format!("column {table}.{} is missing", c.name));
                }
            }
        }
        for known in TABLES {
            if !tables.iter().any(|t| t == known.name) {
                differences.push(format!("table {} is missing", known.name));
            }
        }
        Ok(differences)
    }

    /// Number of blobs and their total size.
    pub async fn blob_totals(&mut self) -> TransferResult<(u64, u64)> {
        let (count, bytes): (i64, i64) = sqlx::query_as("SELECT count(*), COALESCE(sum(size), 0) FROM blobs")
            .fetch_one(&mut self.conn)
            .await?;
        Ok((to_u64(count), to_u64(bytes)))
    }

    /// Number of blobs with a copy in a store other than the default one
    /// (the data directory): migrate copies only the data directory's files.
    pub async fn blobs_in_routed_stores(&mut self) -> TransferResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs WHERE stores IS NOT NULL")
            .fetch_one(&mut self.conn)
            .await?;
        Ok(to_u64(count))
    }

    /// Blobs (digest as stored, size) after `after` in digest order, at most `limit`.
    pub async fn blobs_after(&mut self, after: Option<&str>, limit: u32) -> TransferResult<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT digest, size FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2")
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&mut self.conn)
                .await?;
        Ok(rows.into_iter().map(|(d, s)| (d, to_u64(s))).collect())
    }

    /// Rows of each copied table.
    pub async fn row_counts(&mut self) -> TransferResult<BTreeMap<&'static str, u64>> {
        let mut counts = BTreeMap::new();
        for table in TABLES {
            if let Handling::Copied { .. } = table.handling {
                let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
                    .fetch_one(&mut self.conn)
                    .await?;
                counts.insert(table.name, to_u64(n));
            }
        }
        Ok(counts)
    }

    /// What must be left out when the blobs `failed` are: every manifest
    /// that references one, every manifest that lists a left-out manifest
    /// as a child (an index), and their tags and references. A referrer of
    /// a left-out manifest stays: a subject may be missing.
    pub async fn excluded(&mut self, failed: &[String]) -> TransferResult<Excluded> {
        let mut excluded = Excluded {
            blobs: failed.iter().cloned().collect(),
            ..Excluded::default()
        };
        let mut todo: Vec<(i64, String, String)> = Vec::new();
        for blob in failed {
            let parents: Vec<(i64, String)> = sqlx::query_as(
                "SELECT repo_id, manifest_digest FROM manifest_refs WHERE child_digest = $1 AND child_kind = 'blob'",
            )
            .bind(blob)
            .fetch_all(&mut self.conn)
            .await?;
            for (repo_id, digest) in parents {
                todo.push((
                    repo_id,
                    digest,
                    format!("references blob {blob}, which could not be copied"),
                ));
            }
        }
        while let Some((repo_id, digest, reason)) = todo.pop() {
            if !excluded.manifests.insert((repo_id, digest.clone())) {
                continue;
            }
            let parents: Vec<String> = sqlx::query_scalar(
                "SELECT manifest_digest FROM manifest_refs WHERE repo_id = $1 AND child_digest = $2 \
                 AND child_kind = 'manifest'",
            )
            .bind(repo_id)
            .bind(&digest)
            .fetch_all(&mut self.conn)
            .await?;
            for parent in parents {
                todo.push((repo_id, parent, format!("lists manifest {digest}, which is left out")));
            }
            let repository: String = sqlx::query_scalar("SELECT name FROM repositories WHERE id = $1")
                .bind(repo_id)
                .fetch_one(&mut self.conn)
                .await?;
            let tags: Vec<String> =
                sqlx::query_scalar("SELECT name FROM tags WHERE repo_id = $1 AND manifest_digest = $2 ORDER BY name")
                    .bind(repo_id)
                    .bind(&digest)
                    .fetch_all(&mut self.conn)
                    .await?;
            excluded.manifests_left_out.push(LeftOut {
                repository,
                digest,
                reason,
                tags,
            });
        }
        excluded
            .manifests_left_out
            .sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
        Ok(excluded)
    }

    /// Closes the database, releasing the lock.
    pub async fn close(self) -> TransferResult<()> {
        self.conn.close().await?;
        Ok(())
    }
}

impl Excluded {
    fn leaves_out(&self, exclusion: Exclusion, row: &SqliteRow) -> TransferResult<bool> {
        Ok(match exclusion {
            Exclusion::Never => false,
            Exclusion::Blob(column) => !self.blobs.is_empty() && self.blobs.contains(row.try_get::<&str, _>(column)?),
            Exclusion::Manifest(column) => {
                !self.manifests.is_empty()
                    && self
                        .manifests
                        .contains(&(row.try_get("repo_id")?, row.try_get::<String, _>(column)?))
            }
        })
    }
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One column's values of a batch, as the PostgreSQL array parameter they are bound as.
enum Values {
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
    Text(Vec<String>),
    OptText(Vec<Option<String>>),
    Bool(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    fn new(kind: Kind) -> Values {
        match kind {
            Int => Values::Int(Vec::new()),
            OptInt => Values::OptInt(Vec::new()),
            Text => Values::Text(Vec::new()),
            OptText | Platforms => Values::OptText(Vec::new()),
            Bool => Values::Bool(Vec::new()),
            Bytes => Values::Bytes(Vec::new()),
        }
    }

    /// Appends the row's value of column `index`; returns the bytes it holds.
    fn push(&mut self, kind: Kind, row: &SqliteRow, index: usize) -> TransferResult<usize> {
        Ok(match self {
            Values::Int(v) => {
                v.push(row.try_get(index)?);
                8
            }
            Values::OptInt(v) => {
                v.push(row.try_get(index)?);
                8
            }
            Values::Text(v) => {
                let s: String = row.try_get(index)?;
                let len = s.len();
                v.push(s);
                len
            }
            Values::OptText(v) => {
                let mut s: Option<String> = row.try_get(index)?;
                if kind == Platforms {
                    s = s.and_then(|json| normalized_platforms(&json));
                }
                let len = s.as_ref().map_or(0, String::len);
                v.push(s);
                len
            }
            Values::Bool(v) => {
                v.push(row.try_get(index)?);
                1
            }
            Values::Bytes(v) => {
                let b: Vec<u8> = row.try_get(index)?;
                let len = b.len();
                v.push(b);
                len
            }
        })
    }

    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Values::Int(v) => query.bind(v),
            Values::OptInt(v) => query.bind(v),
            Values::Text(v) => query.bind(v),
            Values::OptText(v) => query.bind(v),
            Values::Bool(v) => query.bind(v),
            Values::Bytes(v) => query.bind(v),
        }
    }
}

/// A platform list as a JSON array of strings, or `None` for an empty or
/// unreadable one (which the server reads as "no platforms" too).
fn normalized_platforms(json: &str) -> Option<String> {
    let list: Vec<String> = serde_json::from_str(json).ok()?;
    (!list.is_empty()).then(|| serde_json::Value::from(list).to_string())
}

fn pg_array_type(kind: Kind) -> &'static str {
    match kind {
        Int | OptInt => "int8[]",
        Text | OptText | Platforms => "text[]",
        Bool => "bool[]",
        Bytes => "bytea[]",
    }
}

/// The upsert of a batch of `table`: the source's values win, and a row that
/// already holds them is not written (so it does not count as written).
fn upsert_sql(table: &str, columns: &[Column], key: &[&str], identity: bool) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, pg_array_type(c.kind)))
        .collect();
    let exprs: Vec<String> = columns
        .iter()
        .map(|c| match c.kind {
            Platforms => format!(
                "CASE WHEN u.{0} IS NULL THEN NULL ELSE ARRAY(SELECT json_array_elements_text(u.{0}::json)) END",
                c.name
            ),
            _ => format!("u.{}", c.name),
        })
        .collect();
    let rest: Vec<&str> = names.iter().copied().filter(|n| !key.contains(n)).collect();
    let conflict = if rest.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!(
            "DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
            rest.iter()
                .map(|n| format!("{n} = EXCLUDED.{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            rest.iter()
                .map(|n| format!("{table}.{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            rest.iter()
                .map(|n| format!("EXCLUDED.{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    format!(
        "INSERT INTO {table} ({cols}) {overriding}SELECT {exprs} FROM unnest({params}) AS u({cols}) \
         ON CONFLICT ({key}) {conflict}",
        cols = names.join(", "),
        overriding = if identity { "OVERRIDING SYSTEM VALUE " } else { "" },
        exprs = exprs.join(", "),
        params = params.join(", "),
        key = key.join(", "),
    )
}

/// A PostgreSQL database that receives the copy.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pool: PgPool,
}

impl PgTarget {
    /// The database of `meta` (connected, its schema migrated).
    pub fn new(meta: &PgMeta) -> PgTarget {
        PgTarget {
            pool: meta.pool.clone(),
        }
    }

    /// Rows of the target that the source does not have (at most `limit`):
    /// any means the target holds another installation's data, or data
    /// written since an earlier copy, and copying into it would merge two
    /// registries. An empty target, or one an interrupted run of this copy
    /// left, has none.
    pub async fn foreign_rows(&self, source: &mut SqliteSource, limit: usize) -> TransferResult<Vec<ForeignRow>> {
        let mut found = Vec::new();
        for table in TABLES {
            let Handling::Copied {
                columns,
                key,
                fingerprint,
                ..
            } = table.handling
            else {
                continue;
            };
            if fingerprint.is_empty() {
                continue;
            }
            let kinds: Vec<Kind> = fingerprint
                .iter()
                .map(|name| columns.iter().find(|c| c.name == *name).map_or(Text, |c| c.kind))
                .collect();
            let select = format!(
                "SELECT {} FROM {} ORDER BY {}",
                fingerprint.join(", "),
                table.name,
                key.join(", ")
            );
            let matches: Vec<String> = fingerprint
                .iter()
                .enumerate()
                .map(|(i, name)| format!("t.{name} = json_extract(j.value, '$[{i}]')"))
                .collect();
            let missing = format!(
                "SELECT j.value FROM json_each($1) j WHERE NOT EXISTS (SELECT 1 FROM {} t WHERE {}) ORDER BY j.key",
                table.name,
                matches.join(" AND ")
            );
            let mut rows = sqlx::query(&select).fetch(&self.pool);
            let mut batch: Vec<serde_json::Value> = Vec::with_capacity(CHECK_BATCH);
            loop {
                let row = rows.try_next().await?;
                if let Some(row) = &row {
                    let mut values = Vec::with_capacity(kinds.len());
                    for (i, kind) in kinds.iter().enumerate() {
                        values.push(match kind {
                            Int | OptInt => serde_json::Value::from(row.try_get::<Option<i64>, _>(i)?),
                            _ => serde_json::Value::from(row.try_get::<Option<String>, _>(i)?),
                        });
                    }
                    batch.push(serde_json::Value::Array(values));
                }
                if batch.len() >= CHECK_BATCH || (row.is_none() && !batch.is_empty()) {
                    let list = serde_json::Value::Array(std::mem::take(&mut batch)).to_string();
                    let absent: Vec<String> = sqlx::query_scalar(&missing)
                        .bind(list)
                        .fetch_all(&mut source.conn)
                        .await?;
                    for json in absent {
                        let values: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
                        let row = fingerprint
                            .iter()
                            .zip(values)
                            .map(|(name, value)| format!("{name}={value}"))
                            .collect::<Vec<_>>()
                            .join(" ");
                        found.push(ForeignRow { table: table.name, row });
                        if found.len() >= limit {
                            return Ok(found);
                        }
                    }
                }
                if row.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Copies one table, calling `progress` with the number of rows read
    /// after each batch.
    pub async fn copy_table(
        &self,
        source: &mut SqliteSource,
        table: &Table,
        excluded: &Excluded,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> TransferResult<TableCopy> {
        let mut report = TableCopy {
            table: table.name,
            ..TableCopy::default()
        };
        let Handling::Copied {
            columns,
            key,
            identity,
            exclusion,
            ..
        } = table.handling
        else {
            return Ok(report);
        };
        let select = format!(
            "SELECT {} FROM {} ORDER BY {}",
            columns.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
            table.name,
            key.join(", ")
        );
        let upsert = upsert_sql(table.name, columns, key, identity);
        let fresh = || columns.iter().map(|c| Values::new(c.kind)).collect::<Vec<_>>();
        let mut batch = fresh();
        let (mut batch_rows, mut batch_bytes) = (0usize, 0usize);
        let mut rows = sqlx::query(&select).fetch(&mut source.conn);
        loop {
            let row = rows.try_next().await?;
            if let Some(row) = &row {
                report.rows += 1;
                if excluded.leaves_out(exclusion, row)? {
                    report.excluded += 1;
                } else {
                    for (i, (values, column)) in batch.iter_mut().zip(columns).enumerate() {
                        batch_bytes += values.push(column.kind, row, i)?;
                    }
                    batch_rows += 1;
                }
            }
            let full = batch_rows >= BATCH_ROWS || batch_bytes >= BATCH_BYTES;
            if full || (row.is_none() && batch_rows > 0) {
                let mut query = sqlx::query(&upsert);
                for values in std::mem::replace(&mut batch, fresh()) {
                    query = values.bind(query);
                }
                report.written += query.execute(&self.pool).await?.rows_affected();
                progress(u64::try_from(batch_rows).unwrap_or(0));
                (batch_rows, batch_bytes) = (0, 0);
            }
            if row.is_none() {
                break;
            }
        }
        if identity {
            // New rows of the target get ids past the copied ones.
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'id'), m) FROM (SELECT max(id) AS m FROM {0}) s \
                 WHERE m IS NOT NULL",
                table.name
            ))
            .execute(&self.pool)
            .await?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::testing::TestDb;
    use crate::{MetaStore, NewManifest, SqliteMeta};

    #[tokio::test]
    async fn every_table_and_column_of_the_sqlite_schema_is_known() {
        let dir = tempfile::tempdir().unwrap();
        // The server's own open creates the schema, as a real installation has it.
        drop(SqliteMeta::open(&dir.path().join("berth.db")).await.unwrap());
        let mut source = SqliteSource::open(dir.path()).await.unwrap();
        let differences = source.schema_differences().await.unwrap();
        assert!(
            differences.is_empty(),
            "berth migrate must know what to do with every table and column (crates/meta/src/transfer.rs \
             TABLES): {differences:?}"
        );
    }

    #[test]
    fn descriptions_are_consistent() {
        for table in TABLES {
            let Handling::Copied {
                columns,
                key,
                fingerprint,
                exclusion,
                ..
            } = table.handling
            else {
                continue;
            };
            let has = |name: &str| columns.iter().any(|c| c.name == name);
            for name in key.iter().chain(fingerprint) {
                assert!(has(name), "{}.{name}", table.name);
            }
            for name in fingerprint {
                let kind = columns.iter().find(|c| c.name == *name).map(|c| c.kind);
                assert!(
                    matches!(kind, Some(Int | Text)),
                    "{}.{name}: fingerprints are numbers or text",
                    table.name
                );
            }
            match exclusion {
                Exclusion::Never => {}
                Exclusion::Blob(name) => assert!(has(name), "{}.{name}", table.name),
                Exclusion::Manifest(name) => assert!(has(name) && has("repo_id"), "{}.{name}", table.name),
            }
        }
    }

    #[tokio::test]
    async fn a_source_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("berth.db")).await.unwrap();
        assert!(meta.repository_exists("x").await.is_ok());
        match SqliteSource::open(dir.path()).await {
            Err(TransferError::SourceInUse(_)) => {}
            other => panic!("expected SourceInUse, got {other:?}"),
        }
        drop(meta);
        let missing = tempfile::tempdir().unwrap();
        assert!(matches!(
            SqliteSource::open(missing.path()).await,
            Err(TransferError::NoSource(_))
        ));
    }

    #[tokio::test]
    async fn the_postgres_schema_has_every_copied_column() {
        let Some(db) = TestDb::create().await else { return };
        let target = db.meta().await;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' \
             AND table_name <> '_sqlx_migrations' ORDER BY 1",
        )
        .fetch_all(&target.pool)
        .await
        .unwrap();
        for table in &tables {
            assert!(
                TABLES.iter().any(|t| t.name == table) || POSTGRES_ONLY_TABLES.iter().any(|(t, _)| t == table),
                "PostgreSQL table {table} is neither copied by berth migrate nor listed as PostgreSQL-only"
            );
        }
        for table in TABLES {
            let Handling::Copied { columns, .. } = table.handling else {
                continue;
            };
            let actual: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' \
                 AND table_name = $1",
            )
            .bind(table.name)
            .fetch_all(&target.pool)
            .await
            .unwrap();
            let mut expected: Vec<&str> = columns.iter().map(|c| c.name).collect();
            let mut actual: Vec<&str> = actual.iter().map(String::as_str).collect();
            expected.sort_unstable();
            actual.sort_unstable();
            assert_eq!(actual, expected, "columns of {}", table.name);
        }
    }

    fn digest(bytes: &[u8]) -> berth_oci::Digest {
        berth_oci::Digest::sha256_of(bytes)
    }

    async fn copy_all(source: &mut SqliteSource, target: &PgTarget, excluded: &Excluded) -> Vec<TableCopy> {
        let mut reports = Vec::new();
        for table in TABLES {
            let mut seen = 0;
            let report = target
                .copy_table(source, table, excluded, &mut |n| seen += n)
                .await
                .unwrap();
            assert_eq!(seen, report.rows - report.excluded, "{}", table.name);
            reports.push(report);
        }
        reports
    }

    #[tokio::test]
    async fn a_copy_keeps_every_fact_and_a_second_one_writes_nothing() {
        let Some(db) = TestDb::create().await else { return };
        let dir = tempfile::tempdir().unwrap();
        let (layer, bad) = (digest(b"layer"), digest(b"bad"));
        let m1 = br#"{"schemaVersion":2,"n":1}"#.to_vec();
        let m2 = br#"{"schemaVersion":2,"n":2}"#.to_vec();
        let index = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
        let manifest = |body: &[u8], blobs: Vec<berth_oci::Digest>, children: Vec<berth_oci::Digest>| NewManifest {
            digest: digest(body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: None,
            subject: None,
            annotations_json: Some(r#"{"a":"b"}"#.into()),
            body: body.to_vec(),
            blobs,
            children,
            pushed_by: Some("alice".into()),
            provenance: "pushed".into(),
            platforms: vec!["linux/amd64".into()],
            blob_bytes: 5,
            fetched_on_demand: false,
        };
        {
            let meta = SqliteMeta::open(&dir.path().join("berth.db")).await.unwrap();
            meta.add_blob("a/b", &layer, 5, 1_000).await.unwrap();
            meta.add_blob("a/b", &bad, 3, 1_000).await.unwrap();
            meta.put_manifest("a/b", &manifest(&m1, vec![layer.clone()], vec![]), Some("one"), 2_000)
                .await
                .unwrap();
            meta.put_manifest("a/b", &manifest(&m2, vec![bad.clone()], vec![]), None, 2_000)
                .await
                .unwrap();
            meta.put_manifest(
                "a/b",
                &manifest(&index, vec![], vec![digest(&m2)]),
                Some("multi"),
                3_000,
            )
            .await
            .unwrap();
            meta.record_pulls(&[crate::PullRecord {
                repo: "a/b".into(),
                digest: digest(&m1),
                tag: Some("one".into()),
                count: 7,
                last_ms: 4_000,
            }])
            .await
            .unwrap();
        }
        let mut source = SqliteSource::open(dir.path()).await.unwrap();
        let excluded = source.excluded(&[bad.to_string()]).await.unwrap();
        let left: Vec<&str> = excluded.manifests_left_out.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&digest(&m2).to_string().as_str()));
        assert!(excluded
            .manifests_left_out
            .iter()
            .any(|l| l.digest == digest(&index).to_string() && l.tags == ["multi"]));

        let pg = db.meta().await;
        let target = PgTarget::new(&pg);
        assert!(target.foreign_rows(&mut source, 10).await.unwrap().is_empty());
        let first = copy_all(&mut source, &target, &excluded).await;
        let written: u64 = first.iter().map(|r| r.written).sum();
        assert!(written > 0);

        let stored = pg.manifest_by_tag("a/b", "one").await.unwrap().unwrap();
        assert_eq!(stored.body, m1);
        let facts = pg.manifest_facts("a/b", &digest(&m1)).await.unwrap().unwrap();
        assert_eq!((facts.pull_count, facts.last_pulled_ms), (7, Some(4_000)));
        assert_eq!(facts.pushed_by.as_deref(), Some("alice"));
        let tag = pg.tag_facts("a/b", "one").await.unwrap().unwrap();
        assert_eq!((tag.pushed_ms, tag.pull_count), (2_000, 7));
        assert_eq!(pg.blob_size(&layer).await.unwrap(), Some(5));
        assert_eq!(pg.blob_size(&bad).await.unwrap(), None);
        assert!(pg.manifest_by_tag("a/b", "multi").await.unwrap().is_none());
        let platforms: Option<Vec<String>> = sqlx::query_scalar("SELECT platforms FROM manifests WHERE digest = $1")
            .bind(digest(&m1).to_string())
            .fetch_one(&pg.pool)
            .await
            .unwrap();
        assert_eq!(platforms, Some(vec!["linux/amd64".to_string()]));

        // Again: nothing to write, and the target is recognised as this source's copy.
        assert!(target.foreign_rows(&mut source, 10).await.unwrap().is_empty());
        let second = copy_all(&mut source, &target, &excluded).await;
        assert_eq!(second.iter().map(|r| r.written).sum::<u64>(), 0, "{second:?}");

        // A new repository in the target (pushed there) makes it foreign.
        pg.add_blob("other", &digest(b"x"), 1, 5_000).await.unwrap();
        let foreign = target.foreign_rows(&mut source, 10).await.unwrap();
        assert!(foreign.iter().any(|f| f.table == "repositories"), "{foreign:?}");
        assert!(foreign.iter().any(|f| f.table == "blobs"), "{foreign:?}");
        // New repositories get ids after the copied ones.
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM repositories ORDER BY id")
            .fetch_all(&pg.pool)
            .await
            .unwrap();
        assert_eq!(ids, [1, 2]);
    }
}
