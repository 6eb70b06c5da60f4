//! SQL written once for both backends, over a small [`Dialect`] seam.
//!
//! SQLite and PostgreSQL run the same statements where they can (`$1`
//! placeholders, integer times, `ON CONFLICT`, `RETURNING`, text keys that
//! PostgreSQL compares `COLLATE "C"`, as SQLite does). What differs is small
//! and named here: where reads and writes go (SQLite has one writer
//! connection and a pool of readers; PostgreSQL one pool), how a write
//! transaction begins and keeps others out, how a list is bound as one
//! parameter, and whether
//! other processes share the store. The shared code is generic over the
//! dialect; each backend implements the dialect in a few lines.

pub(crate) mod access;
pub(crate) mod policies;
mod postgres;
pub(crate) mod reads;
mod sqlite;
pub(crate) mod ui;
mod webhooks;

use std::future::Future;
use std::str::FromStr;

use berth_oci::Digest;
use sqlx::{Database, Pool, Transaction};

use crate::postgres::LockKey;
use crate::{MetaError, Result};

/// What differs between the SQL databases Berth keeps its metadata in, for
/// the SQL that is otherwise the same.
pub(crate) trait Dialect: Send + Sync + 'static {
    type Db: Database;

    /// Where reads go.
    fn reader(&self) -> &Pool<Self::Db>;

    /// Where single writing statements go.
    fn writer(&self) -> &Pool<Self::Db>;

    /// Begins a transaction that writes: on SQLite it takes the database's
    /// one write lock at once (`BEGIN IMMEDIATE`), so that it never fails
    /// half-way to upgrade a read lock; on PostgreSQL each statement takes
    /// the row locks it needs.
    fn begin_write(&self) -> impl Future<Output = Result<Transaction<'static, Self::Db>>> + Send;

    /// Makes the write transaction `tx` wait for, and then keep out, every
    /// other one that locks `key` until it ends: PostgreSQL takes an
    /// exclusive transaction-scoped advisory lock (see `postgres`), while
    /// SQLite's write transactions keep each other out anyway.
    fn lock_exclusive(tx: &mut Transaction<'static, Self::Db>, key: LockKey)
        -> impl Future<Output = Result<()>> + Send;

    /// How many rows a statement changed.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// A table of pairs `(a, b)` of text, the i-th pair from the i-th items
    /// of two lists bound as the parameters `$first` and `$first + 1` with
    /// [`Dialect::bind_texts`]: PostgreSQL unnests two arrays, SQLite joins
    /// two JSON arrays by index.
    fn text_pairs(first: usize) -> String;

    /// Binds a list of text as one parameter (an array, or a JSON array).
    fn bind_texts<'q>(query: Query<'q, Self::Db>, items: Vec<String>) -> Query<'q, Self::Db>;

    /// A list of text column (`manifests.platforms`) read as a JSON array's
    /// text, or NULL: SQLite keeps the JSON, PostgreSQL a `TEXT[]`.
    fn texts_as_json(column: &str) -> String;

    /// Whether several processes (replicas) share this store, so it keeps
    /// the secrets they must agree on: PostgreSQL yes, the embedded SQLite
    /// file no (its secrets are files next to it).
    const SHARED: bool;
}

/// A statement of a dialect's database, with its arguments.
pub(crate) type Query<'q, Db> = sqlx::query::Query<'q, Db, <Db as Database>::Arguments<'q>>;

/// A digest as stored.
pub(crate) fn parse_digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(|e| MetaError::Corrupt(format!("stored digest {s:?}: {e}")))
}

/// A size or count as stored: a signed integer, as both databases have.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A size or count read back (never negative).
pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
