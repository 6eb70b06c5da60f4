//! Events of the registry and the lifecycle jobs (a manifest pushed, pulled,
//! deleted, a tag expired), handed to an [`EventSink`] as they happen.
//!
//! The core publishes facts only after the store committed them; it knows
//! nothing of where events go (the `webhooks` module) nor of HTTP: what the
//! request was ([`RequestInfo`]) comes from a task-local value that the API
//! layer sets around each request.

use std::sync::{Arc, OnceLock};

use berth_oci::Digest;

/// What happened to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Push,
    Pull,
    /// Deleted through the API.
    Delete,
    /// Deleted by a tag-suffix (TTL, idle) or keep-latest rule.
    Expire,
    /// Deleted by a retention policy.
    Retention,
    /// Removed by garbage collection.
    Gc,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Push,
        Action::Pull,
        Action::Delete,
        Action::Expire,
        Action::Retention,
        Action::Gc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Pull => "pull",
            Action::Delete => "delete",
            Action::Expire => "expire",
            Action::Retention => "retention",
            Action::Gc => "gc",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub repository: String,
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub tag: Option<String>,
}

/// The HTTP request that caused an event, as the API layer saw it.
#[derive(Debug, Default)]
pub struct RequestInfo {
    pub id: String,
    /// The client's address.
    pub addr: String,
    pub host: String,
    pub method: String,
    pub user_agent: String,
    /// Who made it, once authorization knows.
    pub actor: OnceLock<String>,
}

tokio::task_local! {
    /// The request being served by this task, when it serves one.
    pub static CURRENT_REQUEST: Arc<RequestInfo>;
}

impl RequestInfo {
    /// The request this task serves, if any.
    pub fn current() -> Option<Arc<RequestInfo>> {
        CURRENT_REQUEST.try_with(Arc::clone).ok()
    }

    /// Records who made the current request (the first answer stands).
    pub fn set_current_actor(actor: &str) {
        if let Some(request) = RequestInfo::current() {
            let _ = request.actor.set(actor.to_string());
        }
    }
}

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    pub action: Action,
    pub target: Target,
    /// Who caused it: the request's user, or the job's name.
    pub actor: Option<String>,
    pub request: Option<Arc<RequestInfo>>,
    pub at_ms: i64,
}

impl Event {
    /// An event of the request this task serves (if any), by its actor.
    pub fn of_current_request(action: Action, target: Target, at_ms: i64) -> Event {
        let request = RequestInfo::current();
        let actor = request.as_ref().and_then(|r| r.actor.get().cloned());
        Event {
            action,
            target,
            actor,
            request,
            at_ms,
        }
    }
}

/// Where events go. Publishing must not block or fail the operation that
/// happened: a sink queues and returns.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync {
    fn publish(&self, event: Event);

    /// Makes the events published so far durable (written to the queue in
    /// the database) before the caller answers: a write's client, once
    /// answered, must not see its event lost with this process. Failure is
    /// the sink's to log; the events stay gathered for a later try.
    async fn settle(&self);
}

/// The sink of a registry that notifies no one.
pub struct NoEvents;

#[async_trait::async_trait]
impl EventSink for NoEvents {
    fn publish(&self, _event: Event) {}

    async fn settle(&self) {}
}
