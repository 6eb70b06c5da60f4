//! The SQLite [`Dialect`] of the embedded store.

use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Pool, Sqlite, Transaction};

use super::{Dialect, Query};
use crate::postgres::LockKey;
use crate::{Result, SqliteMeta};

impl Dialect for SqliteMeta {
    type Db = Sqlite;

    fn reader(&self) -> &Pool<Sqlite> {
        &self.reader
    }

    fn writer(&self) -> &Pool<Sqlite> {
        &self.writer
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.begin().await
    }

    async fn lock_exclusive(_: &mut Transaction<'static, Sqlite>, _: LockKey) -> Result<()> {
        // BEGIN IMMEDIATE took the database's one write lock.
        Ok(())
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn text_pairs(first: usize) -> String {
        let second = first + 1;
        format!("(SELECT x.value AS a, y.value AS b FROM json_each(${first}) x JOIN json_each(${second}) y ON y.key = x.key)")
    }

    fn bind_texts<'q>(query: Query<'q, Sqlite>, items: Vec<String>) -> Query<'q, Sqlite> {
        query.bind(serde_json::Value::from(items).to_string())
    }

    fn texts_as_json(column: &str) -> String {
        column.to_string()
    }

    const SHARED: bool = false;
}
