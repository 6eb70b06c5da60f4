//! Event notifications against a real receiver on loopback: a receiver that
//! is down at first still gets every event exactly once and in order, across
//! a graceful restart and a SIGKILL of Berth; filters, signatures, the
//! request and actor of each event, the lifecycle's events, and the
//! delivery state in the admin API.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

const SECRET: &str = "hook-secret-for-tests";

/// One POST the receiver accepted.
struct Delivery {
    endpoint: String,
    content_type: String,
    signature: Option<String>,
    body: Bytes,
}

/// A webhook receiver: answers 503 while `down`, records what it accepts.
#[derive(Default)]
struct Receiver {
    down: AtomicBool,
    refused: AtomicUsize,
    accepted: Mutex<Vec<Delivery>>,
}

impl Receiver {
    /// Starts one on loopback; returns it and its base URL.
    async fn start(down: bool) -> (Arc<Receiver>, String) {
        let receiver = Arc::new(Receiver::default());
        receiver.down.store(down, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hooks/{endpoint}", axum::routing::post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, format!("http://{addr}"))
    }

    /// The events accepted for `endpoint`, in the order they arrived.
    fn events(&self, endpoint: &str) -> Vec<Value> {
        let accepted = self.accepted.lock().unwrap();
        accepted
            .iter()
            .filter(|d| d.endpoint == endpoint)
            .flat_map(|d| {
                let envelope: Value = serde_json::from_slice(&d.body).expect("the body is JSON");
                envelope["events"].as_array().expect("an events array").clone()
            })
            .collect()
    }

    /// Waits until `endpoint` has `count` events (failing after 30 s).
    async fn wait_for(&self, endpoint: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events(endpoint);
            if events.len() >= count {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint} got {} of {count} events: {events:#?}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> AxumStatus {
    if receiver.down.load(Ordering::SeqCst) {
        receiver.refused.fetch_add(1, Ordering::SeqCst);
        return AxumStatus::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    receiver.accepted.lock().unwrap().push(Delivery {
        endpoint,
        content_type: header("content-type").unwrap_or_default(),
        signature: header("x-berth-signature"),
        body,
    });
    AxumStatus::OK
}

/// A configuration with two endpoints on the receiver at `url`: `all`
/// (signed, every event) and `team` (pushes to `team/**` only), retrying
/// quickly.
fn config(url: &str, extra: &str) -> String {
    format!(
        r#"{extra}
[webhooks]
flush_interval_ms = 50
backoff_base_secs = 0.1
backoff_max_secs = 0.3

[[webhooks.endpoints]]
name = "all"
url = "{url}/hooks/all"
secret = "{SECRET}"

[[webhooks.endpoints]]
name = "team"
url = "{url}/hooks/team"
repositories = ["team/**"]
actions = ["push"]
"#
    )
}

/// `(action, repository, tag)` of each event.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("?").to_string(),
                e["target"]["repository"].as_str().unwrap_or("?").to_string(),
                e["target"]["tag"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn of_repository(events: &[(String, String, String)], repo: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|(_, r, _)| r == repo)
        .map(|(a, _, t)| (a.clone(), t.clone()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(a, t)| (a.to_string(), t.to_string())).collect()
}

async fn webhook_states(app: &TestApp) -> Vec<Value> {
    let resp = app.get("/api/v1/webhooks").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["endpoints"].as_array().cloned().unwrap_or_default()
}

fn state<'a>(states: &'a [Value], name: &str) -> &'a Value {
    states
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {states:#?}"))
}

#[tokio::test]
async fn a_receiver_down_at_first_gets_every_event_once_and_in_order_across_restarts() {
    let (receiver, url) = Receiver::start(true).await;
    let mut app = TestApp::start_with_config(&config(&url, ""), &[]);

    let first = app.push_image("team/app", "v1", 1).await;
    app.push_image("other/lib", "v1", 1).await;
    app.push_image("team/app", "v2", 1).await;
    let pulled = app.get("/v2/team/app/manifests/v1").await;
    assert_eq!(pulled.status(), StatusCode::OK);
    assert_eq!(
        app.delete("/v2/other/lib/manifests/v1").await.status(),
        StatusCode::ACCEPTED
    );

    // The receiver refuses a few attempts; the events wait in the queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.refused.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no delivery was attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let states = webhook_states(&app).await;
    let all = state(&states, "all");
    assert!(all["queued"].as_i64().unwrap() >= 5, "{all}");
    assert!(all["attempts"].as_i64().unwrap() >= 1, "{all}");
    assert!(all["last_error"].as_str().unwrap().contains("503"), "{all}");
    assert_eq!(all["configured"], true);
    assert_eq!(all["url"], format!("{url}/hooks/all"));

    // A graceful restart while the receiver is still down.
    app.restart();
    let image = Image::random(1);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        upload_blob(&app.client, &app.base, "team/app", blob, BlobUpload::PostThenPut).await;
    }
    let resp = app
        .client
        .put(app.url("/v2/team/app/manifests/v3"))
        .header("content-type", OCI_MANIFEST)
        .header("x-request-id", "hook-test-v3")
        .header("user-agent", "webhook-test/1")
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // A push answered just before the process dies is not lost either.
    app.push_image("team/app", "v4", 1).await;
    app.kill9();
    app.start_again();

    receiver.down.store(false, Ordering::SeqCst);
    let all_events = receiver.wait_for("all", 7).await;
    let team_events = receiver.wait_for("team", 4).await;
    // Anything late would be a duplicate: give it a moment to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_events_now = receiver.events("all");
    assert_eq!(all_events_now.len(), 7, "{:#?}", summary(&all_events_now));
    assert_eq!(receiver.events("team").len(), 4);

    let ids: std::collections::BTreeSet<&str> = all_events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 7, "every event has its own id, each delivered once");

    let all = summary(&all_events);
    assert_eq!(
        of_repository(&all, "team/app"),
        pairs(&[
            ("push", "v1"),
            ("push", "v2"),
            ("pull", "v1"),
            ("push", "v3"),
            ("push", "v4")
        ])
    );
    assert_eq!(
        of_repository(&all, "other/lib"),
        pairs(&[("push", "v1"), ("delete", "v1")])
    );
    assert_eq!(
        summary(&team_events),
        ["v1", "v2", "v3", "v4"]
            .iter()
            .map(|t| ("push".to_string(), "team/app".to_string(), t.to_string()))
            .collect::<Vec<_>>(),
        "the team endpoint's filters"
    );

    // The envelope: distribution's shape, with the request and the target.
    let pull = all_events.iter().find(|e| e["action"] == "pull").expect("the pull");
    assert_eq!(pull["target"]["digest"], first.digest.as_str());
    assert_eq!(pull["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(pull["target"]["size"], first.manifest.len());
    assert_eq!(pull["request"]["method"], "GET");
    assert!(pull["timestamp"].as_str().unwrap().ends_with('Z'), "{pull}");
    assert!(pull["source"]["instanceID"].as_str().is_some_and(|s| !s.is_empty()));
    let v3 = all_events
        .iter()
        .find(|e| e["target"]["tag"] == "v3")
        .expect("the v3 push");
    assert_eq!(v3["request"]["id"], "hook-test-v3");
    assert_eq!(v3["request"]["method"], "PUT");
    assert_eq!(v3["request"]["useragent"], "webhook-test/1");
    assert_eq!(v3["target"]["digest"], image.digest.as_str());

    // Signed where a secret is set, with the body exactly as sent.
    for delivery in receiver.accepted.lock().unwrap().iter() {
        assert_eq!(
            delivery.content_type,
            "application/vnd.docker.distribution.events.v1+json"
        );
        if delivery.endpoint == "all" {
            let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(&delivery.body);
            let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(delivery.signature.as_deref(), Some(expected.as_str()));
        } else {
            assert_eq!(delivery.signature, None, "no secret, no signature");
        }
    }

    let states = webhook_states(&app).await;
    let all = state(&states, "all");
    assert_eq!(all["queued"], 0, "{all}");
    assert_eq!(all["delivered"], 7, "{all}");
    assert_eq!(all["attempts"], 0, "{all}");
    assert!(all["last_success_at"].as_str().is_some(), "{all}");
    assert_eq!(state(&states, "team")["delivered"], 4);
    assert_eq!(state(&states, "team")["repositories"], json!(["team/**"]));
    assert_eq!(state(&states, "team")["actions"], json!(["push"]));
    // Every delivery happened after the last start: the counters are this process's.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for (series, value) in [
        ("berth_webhook_events_delivered_total{endpoint=\"all\"}", "7"),
        ("berth_webhook_events_delivered_total{endpoint=\"team\"}", "4"),
    ] {
        assert!(
            metrics.lines().any(|l| l == format!("{series} {value}")),
            "{series} {value} not in:\n{metrics}"
        );
    }
    assert!(
        !app.log().contains(SECRET),
        "the secret is never logged (it was in the config)"
    );
}

#[tokio::test]
async fn expiry_and_retention_removals_are_announced_with_the_job_as_actor() {
    let (receiver, url) = Receiver::start(false).await;
    let manual = "[gc]\ninterval_secs = 0\n[retention]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n";
    let app = TestApp::start_with_clock(&config(&url, manual));
    app.push_image("team/app", "pr-1--ttl-1h", 1).await;
    app.push_image("r", "a", 1).await;
    app.push_image("r", "b", 1).await;
    let resp = app
        .client
        .put(app.url("/api/v1/retention/policies"))
        .json(&json!({ "pattern": "r", "rules": {"keep_days": 1, "keep_min": 1} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    receiver.wait_for("all", 3).await;

    app.advance_clock(2 * DAY_MS);
    let (ok, out, err) = app.cli(&["retention", "run"], "");
    assert!(ok, "retention run: {out}{err}");

    // The command ran in a process of its own; the server delivers what it queued.
    let events = receiver.wait_for("all", 5).await;
    let removals: Vec<&Value> = events[3..].iter().collect();
    let expired = removals
        .iter()
        .find(|e| e["target"]["repository"] == "team/app")
        .expect("the expiry of the ttl tag");
    assert_eq!(expired["action"], "expire");
    assert_eq!(expired["target"]["tag"], "pr-1--ttl-1h");
    assert!(
        expired["actor"]["name"].as_str().is_some_and(|a| !a.is_empty()),
        "{expired}"
    );
    assert!(expired.get("request").is_none(), "no request caused it: {expired}");
    let retained = removals
        .iter()
        .find(|e| e["target"]["repository"] == "r")
        .expect("a retention removal in r");
    assert_eq!(retained["action"], "retention");
    assert!(
        ["a", "b"].contains(&retained["target"]["tag"].as_str().unwrap_or("")),
        "{retained}"
    );
    // The team endpoint takes pushes only.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.events("team").len(), 1);
}

#[tokio::test]
async fn a_bad_webhook_configuration_is_refused_with_the_reason() {
    for (toml, reason) in [
        (
            "[[webhooks.endpoints]]\nname = \"x\"\nurl = \"ftp://hooks.example/\"\n",
            "http:// or https://",
        ),
        (
            "[[webhooks.endpoints]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/\"\nactions = [\"push\", \"explode\"]\n",
            "unknown action",
        ),
        (
            "[[webhooks.endpoints]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/\"\n[[webhooks.endpoints]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/\"\n",
            "two endpoints are named",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, toml).unwrap();
        let out = berth_command()
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{toml} was accepted: {text}");
        assert!(text.contains(reason), "{toml}: {text}");
    }
}

/// Scale-out: three replicas queue into one PostgreSQL queue and exactly one
/// of them delivers at a time, so each event arrives once; when the one
/// delivering is killed, another takes over and nothing is lost.
#[tokio::test]
async fn replicas_deliver_each_event_once_and_survive_the_death_of_the_deliverer() {
    if !scaleout() {
        return;
    }
    let (receiver, url) = Receiver::start(false).await;
    let mut app = TestApp::start_with_config(&config(&url, ""), &[]);
    let second = app.replica();
    let third = app.replica();
    let client = client();
    for round in 0..4 {
        for base in [&app.base, &second.base(), &third.base()] {
            Image::random(1)
                .push(&client, base, "team/app", &format!("r{round}"))
                .await;
        }
    }
    receiver.wait_for("all", 12).await;
    // Whichever replica delivers, kill the first one; if it was the
    // deliverer, another takes over (its lead ends with its connection).
    // Killed between a POST and its record, a deliverer would send that
    // batch again (at least once): the kill waits for a quiet queue, so that
    // "each once" holds here.
    for round in 4..6 {
        for base in [&second.base(), &third.base()] {
            Image::random(1)
                .push(&client, base, "team/app", &format!("r{round}"))
                .await;
        }
    }
    receiver.wait_for("all", 16).await;
    app.kill9();
    for round in 6..8 {
        for base in [&second.base(), &third.base()] {
            Image::random(1)
                .push(&client, base, "team/app", &format!("r{round}"))
                .await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.events("all").len() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 events arrived",
            receiver.events("all").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = receiver.events("all");
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 20, "20 events, each once: {:#?}", summary(&events));
    assert_eq!(events.len(), 20, "no event twice: {:#?}", summary(&events));
}
