//! [`WebhookStore`] on SQLite and PostgreSQL alike.
//!
//! Replicas queue events concurrently; only the one leading the delivery job
//! reads and removes them (see the server's `webhooks` module), so removal
//! needs no claim of its own. Events are removed by id, never by range: on
//! PostgreSQL a lower id can commit after a higher one was read, and it must
//! stay queued.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Transaction, Type};

use super::{to_i64, Dialect};
use crate::webhooks::{EndpointRecord, NewEvent, QueuedEvent, WebhookStore};
use crate::Result;

const STATE_COLUMNS: &str = "e.endpoint, \
    (SELECT COUNT(*) FROM webhook_queue q WHERE q.endpoint = e.endpoint) AS queued, \
    e.delivered, e.failed, e.dropped, e.attempts, e.next_attempt_ms, e.last_error, e.last_error_ms, \
    e.last_success_ms";

/// Makes sure `endpoint` has a state row to update.
async fn ensure_state<D>(tx: &mut Transaction<'static, D::Db>, endpoint: &str) -> Result<()>
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
{
    sqlx::query("INSERT INTO webhook_endpoints (endpoint) VALUES ($1) ON CONFLICT (endpoint) DO NOTHING")
        .bind(endpoint)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes the events `ids` of `endpoint`; returns how many were there.
async fn remove_events<D>(tx: &mut Transaction<'static, D::Db>, endpoint: &str, ids: &[i64]) -> Result<u64>
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
{
    // The ids are bound as text (each as both halves of a pair) and cast back.
    let sql = format!(
        "DELETE FROM webhook_queue WHERE endpoint = $1 AND id IN (SELECT CAST(a AS BIGINT) FROM {})",
        D::text_pairs(2)
    );
    let id_texts: Vec<String> = ids.iter().map(i64::to_string).collect();
    let query = sqlx::query(&sql).bind(endpoint);
    let query = D::bind_texts(query, id_texts.clone());
    let query = D::bind_texts(query, id_texts);
    let done = query.execute(&mut **tx).await?;
    Ok(D::rows_affected(&done))
}

// The bounds say that the dialect's database runs statements on its
// connections and knows the types bound and read here.
#[async_trait]
impl<D> WebhookStore for D
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'r> String: Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
    for<'r> QueuedEvent: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> EndpointRecord: FromRow<'r, <D::Db as Database>::Row>,
{
    async fn enqueue_events(&self, events: &[NewEvent], max_queued: u64) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        for event in events {
            sqlx::query("INSERT INTO webhook_queue (endpoint, body, created_ms) VALUES ($1, $2, $3)")
                .bind(event.endpoint.as_str())
                .bind(event.body.as_str())
                .bind(event.created_ms)
                .execute(&mut *tx)
                .await?;
        }
        let mut endpoints: Vec<&str> = events.iter().map(|e| e.endpoint.as_str()).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        let mut dropped = 0;
        for endpoint in endpoints {
            let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_queue WHERE endpoint = $1")
                .bind(endpoint)
                .fetch_one(&mut *tx)
                .await?;
            let excess = queued - to_i64(max_queued);
            if excess <= 0 {
                continue;
            }
            let done = sqlx::query(
                "DELETE FROM webhook_queue WHERE id IN \
                 (SELECT id FROM webhook_queue WHERE endpoint = $1 ORDER BY id LIMIT $2)",
            )
            .bind(endpoint)
            .bind(excess)
            .execute(&mut *tx)
            .await?;
            let gone = D::rows_affected(&done);
            ensure_state::<D>(&mut tx, endpoint).await?;
            sqlx::query("UPDATE webhook_endpoints SET dropped = dropped + $2 WHERE endpoint = $1")
                .bind(endpoint)
                .bind(to_i64(gone))
                .execute(&mut *tx)
                .await?;
            dropped += gone;
        }
        tx.commit().await?;
        Ok(dropped)
    }

    async fn queued_events(&self, endpoint: &str, limit: u32) -> Result<Vec<QueuedEvent>> {
        Ok(
            sqlx::query_as("SELECT id, body, created_ms FROM webhook_queue WHERE endpoint = $1 ORDER BY id LIMIT $2")
                .bind(endpoint)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?,
        )
    }

    async fn events_delivered(&self, endpoint: &str, ids: &[i64], now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let removed = remove_events::<D>(&mut tx, endpoint, ids).await?;
        ensure_state::<D>(&mut tx, endpoint).await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET delivered = delivered + $2, attempts = 0, next_attempt_ms = 0, \
             last_success_ms = $3 WHERE endpoint = $1",
        )
        .bind(endpoint)
        .bind(to_i64(removed))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delivery_failed(&self, endpoint: &str, error: &str, now_ms: i64, next_attempt_ms: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        ensure_state::<D>(&mut tx, endpoint).await?;
        let attempts: i64 = sqlx::query_scalar(
            "UPDATE webhook_endpoints SET attempts = attempts + 1, next_attempt_ms = $3, last_error = $2, \
             last_error_ms = $4 WHERE endpoint = $1 RETURNING attempts",
        )
        .bind(endpoint)
        .bind(error)
        .bind(next_attempt_ms)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(attempts)
    }

    async fn events_failed(&self, endpoint: &str, ids: &[i64]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let removed = remove_events::<D>(&mut tx, endpoint, ids).await?;
        ensure_state::<D>(&mut tx, endpoint).await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET failed = failed + $2, attempts = 0, next_attempt_ms = 0 \
             WHERE endpoint = $1",
        )
        .bind(endpoint)
        .bind(to_i64(removed))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn webhook_endpoints(&self) -> Result<Vec<EndpointRecord>> {
        let mut tx = self.begin_write().await?;
        // Endpoints with a queue but no state row yet get one, so one query
        // answers for all.
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT endpoint FROM webhook_queue q WHERE NOT EXISTS \
             (SELECT 1 FROM webhook_endpoints e WHERE e.endpoint = q.endpoint)",
        )
        .fetch_all(&mut *tx)
        .await?;
        for name in &names {
            ensure_state::<D>(&mut tx, name).await?;
        }
        let records = sqlx::query_as(&format!(
            "SELECT {STATE_COLUMNS} FROM webhook_endpoints e ORDER BY e.endpoint"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(records)
    }

    async fn webhook_endpoint(&self, endpoint: &str) -> Result<EndpointRecord> {
        let record: Option<EndpointRecord> = sqlx::query_as(&format!(
            "SELECT {STATE_COLUMNS} FROM webhook_endpoints e WHERE e.endpoint = $1"
        ))
        .bind(endpoint)
        .fetch_optional(self.reader())
        .await?;
        match record {
            Some(record) => Ok(record),
            None => {
                let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_queue WHERE endpoint = $1")
                    .bind(endpoint)
                    .fetch_one(self.reader())
                    .await?;
                Ok(EndpointRecord {
                    endpoint: endpoint.to_string(),
                    queued,
                    ..EndpointRecord::default()
                })
            }
        }
    }
}
