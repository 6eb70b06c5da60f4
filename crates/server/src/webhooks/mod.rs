//! Event notifications to webhook endpoints: events of the registry and the
//! lifecycle jobs, filtered per endpoint, queued durably in the metadata
//! store and POSTed in the envelope of CNCF distribution's notifications.
//!
//! Publishing never waits for the database: events gather in memory and a
//! background task writes them to the queue every `flush_interval_ms` in one
//! transaction (see [`Webhooks::flush`]); writes (pushes, deletions, the
//! lifecycle's removals) then `settle`, writing what is gathered before
//! they answer, so an answered write's event survives the process. Delivery ([`deliver`]) runs on the
//! one replica that leads the `webhooks` job, endpoint by endpoint, in queue
//! order, at least once. This module must not decide what happened (the
//! registry core and the lifecycle jobs do); it only says who hears of it.

pub mod config;
pub mod deliver;
mod envelope;
mod signature;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use berth_meta::webhooks::{EndpointRecord, NewEvent};
use berth_meta::WebhookStore;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::clock::Clock;
use crate::pattern::Pattern;
use crate::registry::events::{Action, Event, EventSink};
pub use config::{EndpointConfig, WebhooksConfig};
pub use envelope::Source;

/// What is wrong with the `[webhooks]` configuration.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("webhooks.endpoints: {0}")]
    Invalid(String),
    #[error("webhooks.endpoints {name:?}: cannot read secret_file {path}: {source}")]
    SecretFile {
        name: String,
        path: String,
        source: std::io::Error,
    },
}

/// A configured endpoint, checked.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: reqwest::Url,
    secret: Option<Vec<u8>>,
    repositories: Vec<Pattern>,
    /// Empty: every action.
    actions: Vec<Action>,
    pub timeout: std::time::Duration,
    pub max_attempts: u32,
    headers: HeaderMap,
}

impl Endpoint {
    pub fn from_config(config: &EndpointConfig) -> Result<Endpoint, WebhookConfigError> {
        let invalid = |what: String| WebhookConfigError::Invalid(format!("{:?}: {what}", config.name));
        let name_ok = !config.name.is_empty()
            && config.name.len() <= 64
            && config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            return Err(WebhookConfigError::Invalid(format!(
                "name {:?}: use 1 to 64 letters, digits, '.', '_' or '-'",
                config.name
            )));
        }
        let url = reqwest::Url::parse(&config.url).map_err(|e| invalid(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("url: use http:// or https://".into()));
        }
        let secret = match (&config.secret, &config.secret_file) {
            (Some(_), Some(_)) => return Err(invalid("set secret or secret_file, not both".into())),
            (Some(secret), None) => Some(secret.as_bytes().to_vec()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| WebhookConfigError::SecretFile {
                    name: config.name.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                Some(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec())
            }
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(invalid("the secret is empty".into()));
        }
        let repositories = config
            .repositories
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| invalid(format!("repositories: {e}"))))
            .collect::<Result<_, _>>()?;
        let actions = config
            .actions
            .iter()
            .map(|a| {
                Action::parse(a).ok_or_else(|| {
                    let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                    invalid(format!("actions: unknown action {a:?} (known: {})", known.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|e| invalid(format!("headers: {name:?}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|e| invalid(format!("headers: {name}: {e}")))?;
            headers.insert(name, value);
        }
        if config.timeout_secs == 0 {
            return Err(invalid("timeout_secs must be at least 1".into()));
        }
        Ok(Endpoint {
            name: config.name.clone(),
            url,
            secret,
            repositories,
            actions,
            timeout: std::time::Duration::from_secs(config.timeout_secs),
            max_attempts: config.max_attempts,
            headers,
        })
    }

    /// Whether the endpoint takes events of `action` on `repository`.
    pub fn wants(&self, action: Action, repository: &str) -> bool {
        (self.actions.is_empty() || self.actions.contains(&action))
            && (self.repositories.is_empty() || self.repositories.iter().any(|p| p.matches(repository)))
    }

    /// The URL as the admin API shows it: without credentials or query,
    /// which may hold secrets.
    pub fn shown_url(&self) -> String {
        config::shown_url(self.url.as_str())
    }

    pub fn repositories(&self) -> Vec<&str> {
        self.repositories.iter().map(Pattern::as_str).collect()
    }

    pub fn actions(&self) -> Vec<&'static str> {
        self.actions.iter().map(|a| a.as_str()).collect()
    }
}

/// The configured endpoints, checked, and the queue's settings checked too
/// (what `berth config check` and the start of `berth serve` refuse).
pub fn endpoints_of(config: &WebhooksConfig) -> Result<Vec<Endpoint>, WebhookConfigError> {
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(config.endpoints.len());
    for endpoint in &config.endpoints {
        let endpoint = Endpoint::from_config(endpoint)?;
        if endpoints.iter().any(|e| e.name == endpoint.name) {
            return Err(WebhookConfigError::Invalid(format!(
                "two endpoints are named {:?}",
                endpoint.name
            )));
        }
        endpoints.push(endpoint);
    }
    if config.batch_size == 0 || config.max_queued == 0 {
        return Err(WebhookConfigError::Invalid(
            "webhooks.batch_size and webhooks.max_queued must be at least 1".into(),
        ));
    }
    if !(config.backoff_base_secs > 0.0 && config.backoff_max_secs >= config.backoff_base_secs) {
        return Err(WebhookConfigError::Invalid(
            "webhooks.backoff_base_secs must be positive and at most webhooks.backoff_max_secs".into(),
        ));
    }
    Ok(endpoints)
}

/// What delivery did, per endpoint (configured names only, so the label's
/// values are bounded by the configuration).
pub struct WebhookCounters {
    /// Events the endpoint accepted.
    pub delivered: prometheus::IntCounterVec,
    /// POSTs that failed (an answer other than 2xx, or none).
    pub failures: prometheus::IntCounterVec,
    /// Events given up on after `max_attempts`.
    pub given_up: prometheus::IntCounterVec,
    /// Events waiting in the queue, as last counted.
    pub queued: prometheus::IntGaugeVec,
}

impl Default for WebhookCounters {
    fn default() -> Self {
        let counter = |name: &str, help: &str| {
            prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &["endpoint"]).expect("valid metric")
        };
        WebhookCounters {
            delivered: counter(
                "berth_webhook_events_delivered_total",
                "Webhook events an endpoint accepted.",
            ),
            failures: counter(
                "berth_webhook_delivery_failures_total",
                "Webhook POSTs that failed (not 2xx, or no answer).",
            ),
            given_up: counter(
                "berth_webhook_events_given_up_total",
                "Webhook events given up on after max_attempts.",
            ),
            queued: prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "berth_webhook_queued_events",
                    "Webhook events waiting, as last counted.",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
        }
    }
}

impl WebhookCounters {
    /// The metrics, for a metrics registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.delivered.clone()),
            Box::new(self.failures.clone()),
            Box::new(self.given_up.clone()),
            Box::new(self.queued.clone()),
        ]
    }
}

/// The webhooks of this process: the endpoints, the events gathered in
/// memory and what the delivery task needs.
pub struct Webhooks {
    pub endpoints: Vec<Endpoint>,
    pub config: WebhooksConfig,
    store: Arc<dyn WebhookStore>,
    clock: Arc<dyn Clock>,
    source: Source,
    /// Events not yet written to the queue, oldest first.
    pending: Mutex<VecDeque<NewEvent>>,
    /// Held while a flush writes, so that flushes keep the events' order.
    flushing: tokio::sync::Mutex<()>,
    /// Woken when events were queued, so delivery starts at once.
    pub(crate) queued: tokio::sync::Notify,
    pub counters: WebhookCounters,
}

impl Webhooks {
    pub fn new(
        config: &WebhooksConfig,
        store: Arc<dyn WebhookStore>,
        clock: Arc<dyn Clock>,
        source: Source,
    ) -> Result<Webhooks, WebhookConfigError> {
        let endpoints = endpoints_of(config)?;
        Ok(Webhooks {
            endpoints,
            config: config.clone(),
            store,
            clock,
            source,
            pending: Mutex::new(VecDeque::new()),
            flushing: tokio::sync::Mutex::new(()),
            queued: tokio::sync::Notify::new(),
            counters: WebhookCounters::default(),
        })
    }

    /// Whether any endpoint is configured (else nothing is gathered).
    pub fn active(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Writes the events gathered in memory to the queue; on failure they
    /// are kept, ahead of newer ones, for the next flush. Returns how many
    /// were written.
    pub async fn flush(&self) -> berth_meta::Result<usize> {
        let _writing = self.flushing.lock().await;
        let taken: Vec<NewEvent> = std::mem::take(&mut *self.lock_pending()).into();
        if taken.is_empty() {
            return Ok(0);
        }
        match self.store.enqueue_events(&taken, self.config.max_queued).await {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        max_queued = self.config.max_queued,
                        "webhook queue full: dropped its oldest events"
                    );
                }
                self.queued.notify_one();
                Ok(taken.len())
            }
            Err(e) => {
                let mut pending = self.lock_pending();
                for event in taken.into_iter().rev() {
                    pending.push_front(event);
                }
                self.bound_pending(&mut pending);
                Err(e)
            }
        }
    }

    /// The delivery state of every configured endpoint, and of endpoints
    /// that are no longer configured but still have a queue or a history.
    pub async fn states(&self) -> berth_meta::Result<Vec<(Option<&Endpoint>, EndpointRecord)>> {
        let mut records = self.store.webhook_endpoints().await?;
        let mut states = Vec::with_capacity(records.len().max(self.endpoints.len()));
        for endpoint in &self.endpoints {
            let record = match records.iter().position(|r| r.endpoint == endpoint.name) {
                Some(at) => records.swap_remove(at),
                None => EndpointRecord {
                    endpoint: endpoint.name.clone(),
                    ..EndpointRecord::default()
                },
            };
            states.push((Some(endpoint), record));
        }
        records.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        states.extend(records.into_iter().map(|r| (None, r)));
        Ok(states)
    }

    /// Sets the queue gauges from the store (a row per endpoint).
    pub async fn count_queued(&self) -> berth_meta::Result<()> {
        for (endpoint, record) in self.states().await? {
            if endpoint.is_some() {
                self.counters
                    .queued
                    .with_label_values(&[record.endpoint.as_str()])
                    .set(record.queued);
            }
        }
        Ok(())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, VecDeque<NewEvent>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps memory bounded while the database cannot take events: beyond
    /// `max_queued` the oldest go, as they would from the queue.
    fn bound_pending(&self, pending: &mut VecDeque<NewEvent>) {
        let max = usize::try_from(self.config.max_queued).unwrap_or(usize::MAX);
        if pending.len() > max {
            let excess = pending.len() - max;
            pending.drain(..excess);
            tracing::warn!(
                dropped = excess,
                "webhook events could not be queued for long: dropped the oldest"
            );
        }
    }
}

#[async_trait::async_trait]
impl EventSink for Webhooks {
    async fn settle(&self) {
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "queueing webhook events failed; they stay in memory for the next try");
        }
    }

    fn publish(&self, event: Event) {
        let wanting: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.wants(event.action, &event.target.repository))
            .collect();
        if wanting.is_empty() {
            return;
        }
        let body = envelope::render(&event, &self.source);
        let created_ms = self.clock.now_ms();
        let mut pending = self.lock_pending();
        for endpoint in wanting {
            pending.push_back(NewEvent {
                endpoint: endpoint.name.clone(),
                body: body.clone(),
                created_ms,
            });
        }
        self.bound_pending(&mut pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(repositories: &[&str], actions: &[&str]) -> Result<Endpoint, WebhookConfigError> {
        Endpoint::from_config(&EndpointConfig {
            name: "ci".into(),
            url: "https://user:pw@hooks.example/in?token=x".into(),
            secret: None,
            secret_file: None,
            repositories: repositories.iter().map(|s| s.to_string()).collect(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            timeout_secs: 5,
            max_attempts: 0,
            headers: Default::default(),
        })
    }

    #[test]
    fn filters_take_matching_repositories_and_actions_and_default_to_all() {
        let all = endpoint(&[], &[]).unwrap();
        assert!(all.wants(Action::Gc, "any/thing"));
        let some = endpoint(&["team/*"], &["push", "delete"]).unwrap();
        assert!(some.wants(Action::Push, "team/app"));
        assert!(!some.wants(Action::Pull, "team/app"));
        assert!(!some.wants(Action::Push, "team/app/sub"));
        assert!(!some.wants(Action::Push, "other/app"));
        assert!(endpoint(&[], &["shove"]).is_err());
        assert!(endpoint(&["Team/*"], &[]).is_err());
    }

    #[test]
    fn the_shown_url_holds_no_credentials() {
        assert_eq!(endpoint(&[], &[]).unwrap().shown_url(), "https://hooks.example/in");
    }
}
