//! Delivery: the replica leading the `webhooks` job POSTs each endpoint's
//! queue in order, a batch at a time, and removes a batch only once the
//! endpoint answered 2xx. Any other answer (or none within the timeout)
//! leaves the batch at the head of the queue and backs the endpoint off
//! exponentially, with jitter, so events of one repository (of any, in
//! fact) reach an endpoint in the order they were queued.
//!
//! At least once: an endpoint that accepted a batch whose removal then
//! failed (the replica died in between) gets it again, with the same event
//! ids, which receivers use to drop duplicates.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_meta::JobLease;
use rand::Rng;
use reqwest::header::CONTENT_TYPE;

use super::envelope::{envelope, ENVELOPE_MEDIA_TYPE};
use super::signature::{header_value, SIGNATURE_HEADER};
use super::{Endpoint, Webhooks};

/// The job replicas lead to deliver.
pub const JOB: &str = "webhooks";
/// How long the leader delivers before it lets go of the lead and asks for
/// it again: bounds how long two replicas could both believe they lead
/// after the database lost the leader's session.
const LEAD_TERM: Duration = Duration::from_secs(30);
/// How often a replica that does not lead asks again.
const FOLLOWER_POLL: Duration = Duration::from_secs(2);
/// How often an idle leader looks at the queue without being woken (events
/// queued by other replicas, back-offs that ran out).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// An endpoint's failures in a row, and when it may be tried again.
#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    attempts: i64,
    next_attempt_ms: i64,
}

/// Runs delivery for as long as the process lives: leads the job when it
/// can (`lead` asks for it), delivers while it leads.
pub async fn run<F, Fut>(webhooks: Arc<Webhooks>, lead: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<JobLease>>>,
{
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; no events will be delivered");
            return;
        }
    };
    loop {
        match lead().await {
            Ok(Some(lease)) => {
                deliver_for(&webhooks, &client, LEAD_TERM).await;
                drop(lease);
            }
            Ok(None) => tokio::time::sleep(FOLLOWER_POLL).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether another replica delivers webhooks; will retry");
                tokio::time::sleep(FOLLOWER_POLL).await;
            }
        }
    }
}

/// Delivers every endpoint's queue for `term`.
async fn deliver_for(webhooks: &Webhooks, client: &reqwest::Client, term: Duration) {
    let until = Instant::now() + term;
    // What another leader recorded carries over: a back-off stays one.
    let mut backoffs: HashMap<String, Backoff> = HashMap::new();
    for endpoint in &webhooks.endpoints {
        match webhooks.store.webhook_endpoint(&endpoint.name).await {
            Ok(record) => {
                backoffs.insert(
                    endpoint.name.clone(),
                    Backoff {
                        attempts: record.attempts,
                        next_attempt_ms: record.next_attempt_ms,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook delivery state; will retry");
                tokio::time::sleep(FOLLOWER_POLL).await;
                return;
            }
        }
    }
    while Instant::now() < until {
        let rounds = webhooks.endpoints.iter().map(|endpoint| {
            let backoff = backoffs.get(&endpoint.name).copied().unwrap_or_default();
            async move {
                let (backoff, progressed) = drain(webhooks, client, endpoint, backoff, until).await;
                (endpoint.name.clone(), backoff, progressed)
            }
        });
        let mut progressed_any = false;
        for (name, backoff, progressed) in futures::future::join_all(rounds).await {
            backoffs.insert(name, backoff);
            progressed_any |= progressed;
        }
        if !progressed_any {
            let _ = tokio::time::timeout(IDLE_POLL, webhooks.queued.notified()).await;
        }
    }
}

/// Delivers `endpoint`'s queue until it is empty, a delivery fails, or
/// `until`. Returns the back-off after, and whether anything was delivered.
async fn drain(
    webhooks: &Webhooks,
    client: &reqwest::Client,
    endpoint: &Endpoint,
    mut backoff: Backoff,
    until: Instant,
) -> (Backoff, bool) {
    let store = webhooks.store.as_ref();
    let mut progressed = false;
    while Instant::now() < until && webhooks.clock.now_ms() >= backoff.next_attempt_ms {
        let batch = match store.queued_events(&endpoint.name, webhooks.config.batch_size).await {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(endpoint = %endpoint.name, error = %e, "cannot read the webhook queue; will retry");
                break;
            }
        };
        let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
        let body = envelope(batch.iter().map(|e| e.body.as_str()));
        match post(client, endpoint, body).await {
            Ok(()) => {
                if let Err(e) = store
                    .events_delivered(&endpoint.name, &ids, webhooks.clock.now_ms())
                    .await
                {
                    // They will be sent again: at least once.
                    tracing::warn!(endpoint = %endpoint.name, error = %e, "cannot record a webhook delivery");
                    break;
                }
                webhooks
                    .counters
                    .delivered
                    .with_label_values(&[endpoint.name.as_str()])
                    .inc_by(ids.len() as u64);
                backoff = Backoff::default();
                progressed = true;
            }
            Err(error) => {
                backoff = failed(webhooks, endpoint, backoff, &error, &ids).await;
                break;
            }
        }
    }
    (backoff, progressed)
}

/// Records a failed delivery and backs off; gives the batch up after the
/// endpoint's `max_attempts`.
async fn failed(webhooks: &Webhooks, endpoint: &Endpoint, backoff: Backoff, error: &str, ids: &[i64]) -> Backoff {
    let store = webhooks.store.as_ref();
    let now = webhooks.clock.now_ms();
    let attempts = backoff.attempts + 1;
    let delay = backoff_delay(&webhooks.config, attempts, rand::rng().random_range(0.5..=1.0));
    let next_attempt_ms = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
    tracing::warn!(endpoint = %endpoint.name, attempts, retry_in = ?delay, error, "webhook delivery failed");
    webhooks
        .counters
        .failures
        .with_label_values(&[endpoint.name.as_str()])
        .inc();
    if let Err(e) = store.delivery_failed(&endpoint.name, error, now, next_attempt_ms).await {
        tracing::warn!(endpoint = %endpoint.name, error = %e, "cannot record a failed webhook delivery");
    }
    if endpoint.max_attempts > 0 && attempts >= i64::from(endpoint.max_attempts) {
        tracing::warn!(endpoint = %endpoint.name, events = ids.len(), attempts,
            "giving up on webhook events after max_attempts");
        match store.events_failed(&endpoint.name, ids).await {
            Ok(()) => {
                webhooks
                    .counters
                    .given_up
                    .with_label_values(&[endpoint.name.as_str()])
                    .inc_by(ids.len() as u64);
                return Backoff::default();
            }
            Err(e) => tracing::warn!(endpoint = %endpoint.name, error = %e, "cannot give up on webhook events"),
        }
    }
    Backoff {
        attempts,
        next_attempt_ms,
    }
}

/// The delay before attempt `attempts + 1`: the base doubled per failure,
/// at most the maximum, times `jitter` (0.5..=1) so that endpoints failing
/// together do not retry together.
fn backoff_delay(config: &super::WebhooksConfig, attempts: i64, jitter: f64) -> Duration {
    let exponent = i32::try_from(attempts.saturating_sub(1).clamp(0, 62)).unwrap_or(62);
    let secs = (config.backoff_base_secs * 2f64.powi(exponent)).min(config.backoff_max_secs);
    Duration::from_secs_f64((secs * jitter).max(0.001))
}

/// POSTs one envelope; `Err` says why it did not count as delivered.
async fn post(client: &reqwest::Client, endpoint: &Endpoint, body: String) -> Result<(), String> {
    let mut request = client
        .post(endpoint.url.clone())
        .timeout(endpoint.timeout)
        .headers(endpoint.headers.clone())
        .header(CONTENT_TYPE, ENVELOPE_MEDIA_TYPE);
    if let Some(secret) = &endpoint.secret {
        request = request.header(SIGNATURE_HEADER, header_value(secret, body.as_bytes()));
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the endpoint answered {}", response.status())),
        Err(e) => Err(format!("no answer: {}", crate::telemetry::error_chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        let config = super::super::WebhooksConfig {
            backoff_base_secs: 1.0,
            backoff_max_secs: 10.0,
            ..Default::default()
        };
        let secs = |n| backoff_delay(&config, n, 1.0).as_secs_f64();
        assert_eq!(
            [secs(1), secs(2), secs(3), secs(4), secs(5), secs(60)],
            [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
        );
        assert_eq!(backoff_delay(&config, 2, 0.5).as_secs_f64(), 1.0);
    }
}
