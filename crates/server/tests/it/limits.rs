//! Request limits: rates and concurrency per client and per identity,
//! open upload sessions per identity, and clients too slow to keep a worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::auth_harness::{add_user, bearer_client, token};
use crate::harness::*;

async fn assert_too_many(resp: reqwest::Response) {
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&resp, "retry-after").parse().expect("Retry-After in seconds");
    assert!(retry >= 1, "{retry}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let app = TestApp::start_with_config("[limits]\nrate_per_client = 0.5\nburst_per_client = 3\n", &[]);
    for _ in 0..3 {
        assert_eq!(app.get("/v2/").await.status(), StatusCode::OK);
    }
    assert_too_many(app.get("/v2/").await).await;
    let exempt = TestApp::start_with_config(
        "[limits]\nrate_per_client = 0.5\nburst_per_client = 1\nexempt_networks = [\"127.0.0.0/8\"]\n",
        &[],
    );
    for _ in 0..5 {
        assert_eq!(exempt.get("/v2/").await.status(), StatusCode::OK);
    }
    // /metrics is on the same listener and under the same limit: wait for
    // the bucket to refill one token.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(&text, r#"berth_rate_limited_total{limit="client_rate"}"#),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_holding_its_concurrent_slots_waits_for_them() {
    let app = TestApp::start_with_config("[limits]\nconcurrent_per_client = 1\n", &[]);
    let id = app.start_upload("team/app").await;
    // A chunk whose body stays open holds the only slot.
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let url = app.resolve(&id);
    let client = app.client.clone();
    let upload = tokio::spawn(async move {
        client
            .patch(url)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(rx))
            .send()
            .await
            .unwrap()
            .status()
    });
    let mut tx = tx;
    futures::SinkExt::send(&mut tx, Ok(vec![1u8; 1000])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_too_many(app.get("/v2/").await).await;
    drop(tx);
    assert_eq!(upload.await.unwrap(), StatusCode::ACCEPTED);
    assert_eq!(app.get("/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_identity_has_its_own_rate_and_its_own_upload_sessions() {
    let app = TestApp::start_with_config(
        "[auth]\nmode = \"token\"\n[limits]\nrate_per_identity = 0.2\nburst_per_identity = 3\nuploads_per_identity = 2\n",
        &[],
    );
    add_user(&app, "alice", "alices-password", true);
    add_user(&app, "bob", "bobs-password", true);
    let scope = ["repository:team/app:pull,push"];
    let alice = bearer_client(&token(&app, Some(("alice", "alices-password")), &scope).await);
    let bob = bearer_client(&token(&app, Some(("bob", "bobs-password")), &scope).await);

    // Two sessions open; the third is refused until one ends.
    let post = |c: &reqwest::Client| c.post(app.url("/v2/team/app/blobs/uploads/")).send();
    let first = post(&alice).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first_location = app.resolve(header(&first, "location"));
    assert_eq!(post(&alice).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_too_many(post(&alice).await.unwrap()).await;
    // Bob's sessions are his own.
    assert_eq!(post(&bob).await.unwrap().status(), StatusCode::ACCEPTED);
    // That was alice's fourth request, one over her burst of three: the rate refuses the next.
    assert_too_many(alice.delete(&first_location).send().await.unwrap()).await;

    let app2 = TestApp::start_with_config("[auth]\nmode = \"token\"\n[limits]\nuploads_per_identity = 1\n", &[]);
    add_user(&app2, "carol", "carols-password", true);
    let carol = bearer_client(&token(&app2, Some(("carol", "carols-password")), &scope).await);
    let post2 = || carol.post(app2.url("/v2/team/app/blobs/uploads/")).send();
    let open = post2().await.unwrap();
    assert_eq!(open.status(), StatusCode::ACCEPTED);
    let location = app2.resolve(header(&open, "location"));
    assert_too_many(post2().await.unwrap()).await;
    // A whole blob in one request opens no lasting session: not refused.
    let blob = random_bytes(100);
    let monolithic = carol
        .post(app2.url(&format!("/v2/team/app/blobs/uploads/?digest={}", sha256(&blob))))
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(monolithic.status(), StatusCode::CREATED);
    assert_eq!(
        carol.delete(&location).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(post2().await.unwrap().status(), StatusCode::ACCEPTED);
}

/// A client that stops sending a body, never finishes its headers, or stops
/// reading a download loses its connection instead of pinning a worker.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    let app = TestApp::start_with_config(
        "[limits]\nheader_read_timeout_secs = 1\nbody_idle_timeout_secs = 1\nwrite_stall_timeout_secs = 1\n",
        &[],
    );
    let addr = app.base.trim_start_matches("http://").to_string();

    // Half a request head, then silence.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = half.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the server waited for the headers"
    );

    // A chunk that stops halfway: the request fails, the session is intact.
    let id = app.start_upload("team/app").await;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let url = app.resolve(&id);
    let uploader = app.client.clone();
    let started = Instant::now();
    let stalled = tokio::spawn(async move {
        uploader
            .patch(url)
            .body(reqwest::Body::wrap_stream(rx))
            .send()
            .await
            .map(|r| r.status())
    });
    futures::SinkExt::send(&mut tx, Ok(vec![7u8; 1000])).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("the stalled upload was not cut")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    if let Ok(status) = outcome {
        assert!(status.is_client_error() || status.is_server_error(), "{status}");
    }
    drop(tx);
    let status = client().get(app.resolve(&id)).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT, "the session survives");

    // A download nobody reads.
    // Fresh connections from here on: with a 1 s idle timeout the pooled
    // ones of `app.client` may be closed by the server just as they are reused.
    let big = random_bytes(32 << 20);
    let digest = sha256(&big);
    let pushed = client()
        .post(app.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::CREATED);
    let mut reader = TcpStream::connect(&addr).unwrap();
    reader
        .write_all(
            format!("GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\nX-Request-Id: stalled-download\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let cut = app.log().lines().any(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["request_id"] == "stalled-download" && v["completed"] == false)
        });
        if cut {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled download was never cut:\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(reader);
    assert_eq!(
        client().get(app.url("/v2/")).send().await.unwrap().status(),
        StatusCode::OK
    );
}
