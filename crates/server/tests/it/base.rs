//! The API version check, health and readiness.

use crate::harness::{blob_key, header, raw_request, scaleout, sha256, TestApp};

#[tokio::test]
async fn version_check_answers_200_with_the_api_version_header() {
    let app = TestApp::start();
    for path in ["/v2/", "/v2"] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0");
    }
}

/// `/healthz` says the process runs; `/readyz` that both stores answer,
/// which in scale-out mode means PostgreSQL and the bucket.
#[tokio::test]
async fn health_and_readiness_answer_200_when_the_stores_do() {
    let app = TestApp::start();
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap_or_default(), body, "{path}");
    }
}

/// A blob store that fails (here its directory for the probe's shard is
/// unusable) makes the replica not ready, with the reason as JSON; it is
/// ready again once the store is.
#[tokio::test]
async fn readiness_says_which_store_fails() {
    if scaleout() {
        // The bucket cannot be broken from here without breaking the other tests' too.
        return;
    }
    let app = TestApp::start();
    let probe = sha256(b"berth readiness probe");
    let shard = app.data_dir().join(blob_key(&probe)).parent().unwrap().to_path_buf();
    std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&shard);
    std::fs::write(&shard, b"not a directory").unwrap();
    let resp = app.get("/readyz").await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["database"], "ok", "{body}");
    assert_ne!(body["blob_store"], "ok", "{body}");
    assert_eq!(app.get("/healthz").await.status(), 200, "the process still runs");
    std::fs::remove_file(&shard).unwrap();
    assert_eq!(app.get("/readyz").await.status(), 200);
}

/// Request heads up to 12 KiB (a long bearer token, many headers) are served;
/// a larger one is refused with a client error and the server keeps serving.
/// (The connection's read buffer is bounded: `connections::READ_BUFFER_MAX`.)
#[tokio::test]
async fn large_request_heads_are_served_and_oversized_ones_refused() {
    let app = TestApp::start();
    let head = |filler: usize| {
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        )
    };
    let (status, _) = raw_request(&app.base, &head(12 << 10), Vec::new());
    assert_eq!(status, 200, "a 12 KiB head is served");
    let (status, _) = raw_request(&app.base, &head(64 << 10), Vec::new());
    assert!(
        (400..500).contains(&status),
        "a 64 KiB head is a client error, not {status}"
    );
    assert_eq!(app.get("/v2/").await.status(), 200, "the server still serves");
}
