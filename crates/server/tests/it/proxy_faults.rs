//! Upstreams that misbehave: a fault-injecting front in front of a real
//! upstream (`berth`) answers chosen requests wrongly and passes the rest on.
//! Whatever the upstream sends, the client gets a clear error and nothing of
//! the bad answer is stored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reqwest::StatusCode as Status;
use serde_json::Value;

use crate::harness::*;

/// What the front does with a request whose path contains `needle`.
#[derive(Clone)]
enum Fault {
    /// Answers with these bytes as a manifest of this type.
    Body(&'static str, Vec<u8>),
    /// A 307 to itself, forever.
    RedirectLoop,
    /// A manifest body that never ends.
    Endless,
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
}

struct Front {
    upstream: String,
    faults: Mutex<Vec<(String, Fault)>>,
    /// Requests that reached the front, by path.
    seen: Mutex<Vec<String>>,
    addr: Mutex<Option<SocketAddr>>,
}

async fn front(State(front): State<Arc<Front>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    front.seen.lock().unwrap().push(format!("{} {path}", req.method()));
    let fault = front
        .faults
        .lock()
        .unwrap()
        .iter()
        .find(|(needle, _)| path.contains(needle.as_str()))
        .map(|(_, f)| f.clone());
    match fault {
        Some(Fault::Body(media_type, body)) => ([("content-type", media_type)], body).into_response(),
        Some(Fault::RedirectLoop) => {
            let addr = front.addr.lock().unwrap().unwrap();
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", format!("http://{addr}{path}?again"))],
            )
                .into_response()
        }
        Some(Fault::Endless) => {
            let chunks =
                futures::stream::repeat_with(|| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 65536])));
            ([("content-type", OCI_MANIFEST)], Body::from_stream(chunks)).into_response()
        }
        Some(Fault::TooMany(secs)) => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", secs.to_string())]).into_response()
        }
        None => forward(&front.upstream, req).await,
    }
}

async fn forward(upstream: &str, req: Request) -> Response {
    let url = format!("{upstream}{}", req.uri());
    let mut headers = HeaderMap::new();
    for (k, v) in req.headers() {
        if k != "host" {
            headers.insert(k.clone(), v.clone());
        }
    }
    let resp = reqwest::Client::new()
        .request(req.method().clone(), url)
        .headers(headers)
        .send()
        .await
        .unwrap();
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    out.body(Body::from(resp.bytes().await.unwrap())).unwrap()
}

async fn start_front(upstream: &TestApp) -> (Arc<Front>, String) {
    let state = Arc::new(Front {
        upstream: upstream.base.clone(),
        faults: Mutex::new(Vec::new()),
        seen: Mutex::new(Vec::new()),
        addr: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    *state.addr.lock().unwrap() = Some(addr);
    let app = axum::Router::new().fallback(front).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, format!("http://{addr}"))
}

fn cache_of(url: &str, proxy: &str) -> TestApp {
    TestApp::start_with_config(
        &format!("[proxy]\n{proxy}\n[[proxy.upstreams]]\nname = \"faulty\"\nurl = \"{url}\"\n"),
        &[],
    )
}

async fn bad_gateway(resp: reqwest::Response, says: &str) {
    assert_eq!(resp.status(), Status::BAD_GATEWAY);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNKNOWN", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("upstream faulty"), "names the upstream: {message}");
    assert!(message.contains(says), "{message}");
}

#[tokio::test]
async fn a_manifest_with_another_digest_an_html_page_and_an_endless_body_are_refused_and_not_stored() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let (front, url) = start_front(&upstream).await;
    let cache = cache_of(&url, "");
    let other = Image::random(1);
    front.faults.lock().unwrap().extend([
        (
            format!("manifests/{}", image.digest),
            Fault::Body(OCI_MANIFEST, other.manifest.clone()),
        ),
        (
            "team/html/manifests".to_string(),
            Fault::Body("text/html", b"<html>rate limited</html>".to_vec()),
        ),
        ("team/endless/manifests".to_string(), Fault::Endless),
    ]);
    bad_gateway(
        cache
            .get(&format!("/v2/faulty/team/app/manifests/{}", image.digest))
            .await,
        "not the",
    )
    .await;
    bad_gateway(cache.get("/v2/faulty/team/html/manifests/v1").await, "HTML").await;
    let started = Instant::now();
    bad_gateway(cache.get("/v2/faulty/team/endless/manifests/v1").await, "longer than").await;
    assert!(started.elapsed() < Duration::from_secs(20), "refused at the size limit");
    let catalog: Value = cache.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!([]),
        "nothing stored: {catalog}"
    );
    assert_eq!(cache.get("/v2/").await.status(), Status::OK, "still healthy");
}

/// A server that answers every request with `Content-Length: announced`
/// and then `sent` (which HTTP libraries refuse to send when they differ).
async fn lying_server(announced: usize, sent: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(&sent).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn blobs_shorter_or_longer_than_announced_are_cut_and_not_stored() {
    let layer = random_bytes(8192);
    let digest = sha256(&layer);
    for (announced, sent) in [(layer.len(), layer[..100].to_vec()), (10, layer.clone())] {
        let cache = cache_of(&lying_server(announced, sent).await, "");
        let url = cache.url(&format!("/v2/faulty/team/app/blobs/{digest}"));
        match cache.client.get(url).send().await {
            // Cut before the headers: a small blob arrives whole, and may be
            // found wrong before the answer starts.
            Err(_) => {}
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    // Cut short: the client never gets a complete body.
                    Err(_) => {}
                    // Or refused before the first byte, naming the upstream.
                    Ok(body) => {
                        assert_eq!(status, Status::BAD_GATEWAY, "{}", String::from_utf8_lossy(&body));
                        assert!(String::from_utf8_lossy(&body).contains("upstream faulty"));
                    }
                }
            }
        }
        assert_eq!(cache.stored_blob(&digest).await, None, "announced {announced}");
    }
}

#[tokio::test]
async fn a_redirect_loop_is_refused_with_a_clear_error() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let digest = sha256(&image.layers[0]);
    let (front, url) = start_front(&upstream).await;
    front
        .faults
        .lock()
        .unwrap()
        .push((format!("blobs/{digest}"), Fault::RedirectLoop));
    // The loop runs on loopback, which redirects may reach only when allowed.
    let cache = cache_of(&url, "allowed_networks = [\"127.0.0.0/8\"]");
    bad_gateway(
        cache.get(&format!("/v2/faulty/team/app/blobs/{digest}")).await,
        "redirects",
    )
    .await;
    assert_eq!(cache.stored_blob(&digest).await, None);
    // Without allowed_networks the first redirect to loopback is refused.
    let guarded = cache_of(&url, "");
    bad_gateway(
        guarded.get(&format!("/v2/faulty/team/app/blobs/{digest}")).await,
        "loopback",
    )
    .await;
}

#[tokio::test]
async fn an_upstream_answering_429_is_left_alone_while_the_cache_serves() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let (front, url) = start_front(&upstream).await;
    let cache = cache_of(&url, "freshness_secs = 0");
    let get = |path: &'static str| {
        let client = cache.client.clone();
        let url = cache.url(path);
        async move { client.get(url).header("accept", OCI_MANIFEST).send().await.unwrap() }
    };
    assert_eq!(get("/v2/faulty/team/app/manifests/v1").await.status(), Status::OK);
    front
        .faults
        .lock()
        .unwrap()
        .push(("manifests/".to_string(), Fault::TooMany(2)));
    let before = front.seen.lock().unwrap().len();
    for _ in 0..5 {
        let resp = get("/v2/faulty/team/app/manifests/v1").await;
        assert_eq!(resp.status(), Status::OK, "served from the cache");
        assert_eq!(header(&resp, "docker-content-digest"), image.digest);
    }
    assert_eq!(
        front.seen.lock().unwrap().len() - before,
        1,
        "one 429, then no request during the back-off"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    front.faults.lock().unwrap().clear();
    assert_eq!(get("/v2/faulty/team/app/manifests/v1").await.status(), Status::OK);
    assert_eq!(
        front.seen.lock().unwrap().len() - before,
        2,
        "asked again after Retry-After"
    );
}

/// (A cached tag is served when its upstream is unreachable: it/proxy.rs.)
#[tokio::test]
async fn an_upstream_that_never_answers_times_out_quickly() {
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let h = held.clone();
    tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            sockets.push(socket);
        }
    });
    let cache = TestApp::start_with_config(
        &format!(
            "[proxy]\nfreshness_secs = 0\n[[proxy.upstreams]]\nname = \"faulty\"\nurl = \"http://{silent_addr}\"\nread_timeout_secs = 1\n"
        ),
        &[],
    );
    let started = Instant::now();
    bad_gateway(cache.get("/v2/faulty/team/app/manifests/v1").await, "timed out").await;
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(held.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn any_host_upstreams_and_odd_names_never_reach_internal_addresses() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    let cache = TestApp::start_with_config("[proxy]\nallow_any_upstream = true\n", &[]);
    for path in [
        "/v2/localhost/x/manifests/v1",
        "/v2/x/manifests/v1?ns=localhost",
        "/v2/x/manifests/v1?ns=127.0.0.1",
        "/v2/127.0.0.1/x/manifests/v1",
        "/v2/metadata.google.internal.localhost/x/manifests/v1",
    ] {
        let resp = cache.get(path).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            status.is_client_error() || status == Status::BAD_GATEWAY,
            "{path}: {status} {text}"
        );
        assert_ne!(status, Status::INTERNAL_SERVER_ERROR);
    }
    for ns in [
        "%00",
        "..%2F..%2F",
        &"a".repeat(5000),
        "a%20b",
        "[::1]",
        "169.254.169.254",
    ] {
        let resp = cache.get(&format!("/v2/x/manifests/v1?ns={ns}")).await;
        assert_ne!(resp.status(), Status::INTERNAL_SERVER_ERROR, "ns={ns}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing reached loopback");
    let resp = cache.get("/v2/localhost/x/manifests/v1").await;
    let text = resp.text().await.unwrap();
    assert!(text.contains("loopback") || text.contains("may not reach"), "{text}");
}
