//! The OpenAPI document of the admin API: served without credentials, an
//! OpenAPI 3 document, and every operation in it routed.

use reqwest::Method;
use serde_json::Value;

use crate::auth_harness::*;
use crate::harness::*;

#[tokio::test]
async fn the_document_is_served_to_anyone_and_every_operation_in_it_is_routed() {
    let app = token_app("");
    let response = client().get(app.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{paths:?}");
    for (path, item) in paths {
        // Any value routes to the handler, which then refuses a bad one.
        let concrete = path
            .replace("{image}", "cache/app@sha256:00")
            .replace("{id}", "1")
            .replace("{name}", "someone");
        for (method, operation) in item.as_object().unwrap() {
            // `security: [{}, …]`: callers without credentials are served too.
            let anonymous = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.as_object().is_some_and(|o| o.is_empty())));
            let method: Method = method.to_uppercase().parse().unwrap();
            let response = client()
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            // A route that does not exist is axum's 404 or 405 with no body;
            // the admin API answers 401 with an OCI error here.
            assert!(
                status != 405 && !(status == 404 && body.is_empty()),
                "{method} {path} is documented but not routed: {status} {body:?}"
            );
            if path.starts_with("/api/v1/") && !anonymous {
                assert_eq!(status, 401, "{method} {path}: {body}");
                assert_eq!(
                    serde_json::from_str::<Value>(&body).unwrap()["errors"][0]["code"],
                    "UNAUTHORIZED"
                );
            }
        }
    }
}
