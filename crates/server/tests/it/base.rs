//! The API version check.

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
