//! The API version check, health and readiness.

use crate::harness::{header, TestApp};

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
