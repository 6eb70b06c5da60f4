//! The PostgreSQL [`Dialect`] of the store that replicas share.

use sqlx::postgres::PgQueryResult;
use sqlx::{Pool, Postgres, Transaction};

use super::{Dialect, Query};
use crate::postgres::{lock, LockKey, LockMode};
use crate::{PgMeta, Result};

impl Dialect for PgMeta {
    type Db = Postgres;

    fn reader(&self) -> &Pool<Postgres> {
        &self.pool
    }

    fn writer(&self) -> &Pool<Postgres> {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn lock_exclusive(tx: &mut Transaction<'static, Postgres>, key: LockKey) -> Result<()> {
        lock(tx, vec![key], LockMode::Exclusive).await
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn text_pairs(first: usize) -> String {
        let second = first + 1;
        format!("unnest(${first}::text[], ${second}::text[]) AS p(a, b)")
    }

    fn bind_texts<'q>(query: Query<'q, Postgres>, items: Vec<String>) -> Query<'q, Postgres> {
        query.bind(items)
    }

    fn texts_as_json(column: &str) -> String {
        format!("array_to_json({column})::text")
    }

    const SHARED: bool = true;
}
