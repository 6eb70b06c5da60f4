//! The durable queue of event notifications: events waiting for each webhook
//! endpoint, and each endpoint's delivery state.
//!
//! What an event says and where it goes (filters, signatures, back-off) is
//! the server's `webhooks` module's business; the store only keeps the
//! queue in order and the counters true.

use async_trait::async_trait;

use crate::Result;

/// An event to queue for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub endpoint: String,
    /// The event as JSON, exactly as it will be sent.
    pub body: String,
    pub created_ms: i64,
}

/// An event waiting in an endpoint's queue; `id` orders the queue.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct QueuedEvent {
    pub id: i64,
    pub body: String,
    pub created_ms: i64,
}

/// An endpoint's delivery state as recorded.
#[derive(Debug, Clone, PartialEq, Default, sqlx::FromRow)]
pub struct EndpointRecord {
    pub endpoint: String,
    /// Events waiting.
    pub queued: i64,
    pub delivered: i64,
    /// Events given up on after too many failed attempts.
    pub failed: i64,
    /// Events dropped because the queue was full.
    pub dropped: i64,
    /// Failed attempts of the delivery now at the head of the queue.
    pub attempts: i64,
    /// No delivery is tried before this time (back-off).
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
}

/// The webhook queue in the metadata store.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Queues `events` in order in one transaction; an endpoint's queue then
    /// longer than `max_queued` loses its oldest events. Returns how many
    /// were dropped.
    async fn enqueue_events(&self, events: &[NewEvent], max_queued: u64) -> Result<u64>;

    /// The oldest `limit` events of `endpoint`'s queue, oldest first.
    async fn queued_events(&self, endpoint: &str, limit: u32) -> Result<Vec<QueuedEvent>>;

    /// Removes events the endpoint accepted, counts them delivered and ends
    /// the endpoint's back-off.
    async fn events_delivered(&self, endpoint: &str, ids: &[i64], now_ms: i64) -> Result<()>;

    /// Records a failed attempt at the head of `endpoint`'s queue and when to
    /// try again; returns how many attempts have failed in a row.
    async fn delivery_failed(&self, endpoint: &str, error: &str, now_ms: i64, next_attempt_ms: i64) -> Result<i64>;

    /// Removes events given up on, counts them failed and ends the back-off.
    async fn events_failed(&self, endpoint: &str, ids: &[i64]) -> Result<()>;

    /// Every endpoint that has a queue or a recorded state, by name.
    async fn webhook_endpoints(&self) -> Result<Vec<EndpointRecord>>;

    /// The state of one endpoint (all zero when nothing is recorded).
    async fn webhook_endpoint(&self, endpoint: &str) -> Result<EndpointRecord>;
}
