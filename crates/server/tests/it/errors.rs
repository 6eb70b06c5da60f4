//! Validation of names, tags and digests in URLs, unknown endpoints and wrong
//! methods, and the shape of error bodies (snapshotted, so a changed shape is
//! a visible diff).

use serde_json::Value;

use crate::harness::{assert_error, sha256, Image, TestApp, OCI_MANIFEST};

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

async fn request(app: &TestApp, method: &str, path: &str) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    app.client.request(method, app.url(path)).send().await.unwrap()
}

async fn json_body(resp: reqwest::Response) -> Value {
    resp.json().await.expect("a JSON error body")
}

#[tokio::test]
async fn invalid_repository_names_are_name_invalid() {
    let app = TestApp::start();
    let long = "a".repeat(256);
    for name in ["Foo", "team/App", "-a", "a_", "a..b", "a___b", long.as_str()] {
        for (method, path) in [
            ("GET", format!("/v2/{name}/tags/list")),
            ("GET", format!("/v2/{name}/manifests/latest")),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("GET", format!("/v2/{name}/blobs/{DIGEST}")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
            ("GET", format!("/v2/{name}/referrers/{DIGEST}")),
        ] {
            assert_error(request(&app, method, &path).await, 400, "NAME_INVALID").await;
        }
    }
    let resp = app.get("/v2/Foo/tags/list").await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "NAME_INVALID",
          "message": "repository name \"Foo\" does not match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*"
        }
      ]
    }
    "#);
}

#[tokio::test]
async fn invalid_digests_are_digest_invalid() {
    let app = TestApp::start();
    app.push_image("a", "v1", 1).await;
    let upper = DIGEST.to_uppercase().replace("SHA256", "sha256");
    let short = &DIGEST[..DIGEST.len() - 1];
    for digest in [
        "sha256:abc",
        "sha256:",
        short,
        upper.as_str(),
        "sha256:zz",
        "SHA256:abc",
    ] {
        assert_error(app.get(&format!("/v2/a/blobs/{digest}")).await, 400, "DIGEST_INVALID").await;
        assert_error(
            app.delete(&format!("/v2/a/blobs/{digest}")).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
        assert_error(
            app.get(&format!("/v2/a/manifests/{digest}")).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
        let resp = app
            .client
            .post(app.url(&format!("/v2/a/blobs/uploads/?digest={digest}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "DIGEST_INVALID").await;
    }
}

#[tokio::test]
async fn an_unsupported_algorithm_is_digest_invalid() {
    let app = TestApp::start();
    app.push_image("a", "v1", 1).await;
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    assert_error(app.get(&format!("/v2/a/blobs/{sha384}")).await, 400, "DIGEST_INVALID").await;
    assert_error(
        app.get(&format!("/v2/a/manifests/{sha384}")).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    let resp = app
        .client
        .post(app.url(&format!("/v2/a/blobs/uploads/?digest={sha384}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "DIGEST_INVALID").await;
    let url = app.start_upload("a").await;
    let resp = app.client.put(format!("{url}?digest={sha384}")).send().await.unwrap();
    assert_error(resp, 400, "DIGEST_INVALID").await;

    let image = Image::random(1);
    let resp = app.put_manifest("a", &sha384, OCI_MANIFEST, &image.manifest).await;
    assert_error(resp, 400, "DIGEST_INVALID").await;

    let resp = app.get(&format!("/v2/a/blobs/{sha384}")).await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "DIGEST_INVALID",
          "message": "digest algorithm \"sha384\" is not supported (sha256 and sha512 are)"
        }
      ]
    }
    "#);
}

#[tokio::test]
async fn invalid_tags_are_refused_on_put() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    let long = "t".repeat(129);
    for tag in ["-leading-dash", ".leading-dot", long.as_str(), "a+b", "caf%C3%A9"] {
        let resp = app.put_manifest("a", tag, OCI_MANIFEST, &image.manifest).await;
        assert_error(resp, 400, "MANIFEST_INVALID").await;
    }
    // The longest valid tag is accepted.
    let longest = "t".repeat(128);
    app.push_manifest("a", &longest, OCI_MANIFEST, &image.manifest).await;
    let body: Value = app.get("/v2/a/tags/list").await.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!([longest]));
}

#[tokio::test]
async fn unknown_endpoints_are_404() {
    let app = TestApp::start();
    for path in [
        "/v2/a/foo/bar",
        "/v2/a",
        "/v2/tags/list",
        "/v2/a/manifests",
        "/v2/a/blobs/uploads/not.an.id",
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body = json_body(resp).await;
        assert!(body["errors"][0]["code"].is_string(), "{path}: {body}");
    }
    assert_eq!(app.get("/nope").await.status(), 404);
    assert_eq!(app.get("/v1/_ping").await.status(), 404);

    let resp = app.get("/v2/a/foo/bar").await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "UNSUPPORTED",
          "message": "no such endpoint"
        }
      ]
    }
    "#);
}

#[tokio::test]
async fn wrong_methods_are_405_unsupported() {
    let app = TestApp::start();
    for (method, path, allow) in [
        ("POST", "/v2/".to_owned(), "GET, HEAD"),
        ("DELETE", "/v2/_catalog".to_owned(), "GET, HEAD"),
        ("POST", "/v2/a/manifests/latest".to_owned(), "GET, HEAD, PUT, DELETE"),
        ("PATCH", "/v2/a/manifests/latest".to_owned(), "GET, HEAD, PUT, DELETE"),
        ("PUT", format!("/v2/a/blobs/{DIGEST}"), "GET, HEAD, DELETE"),
        ("POST", format!("/v2/a/blobs/{DIGEST}"), "GET, HEAD, DELETE"),
        ("DELETE", "/v2/a/tags/list".to_owned(), "GET, HEAD"),
        ("GET", "/v2/a/blobs/uploads/".to_owned(), "POST"),
        (
            "POST",
            "/v2/a/blobs/uploads/some-id".to_owned(),
            "GET, HEAD, PATCH, PUT, DELETE",
        ),
        ("PUT", format!("/v2/a/referrers/{DIGEST}"), "GET, HEAD"),
    ] {
        let resp = request(&app, method, &path).await;
        // RFC 9110: a 405 names the methods the resource allows.
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        assert_error(resp, 405, "UNSUPPORTED").await;
    }
    let resp = request(&app, "POST", "/v2/a/manifests/latest").await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "UNSUPPORTED",
          "message": "method not allowed on this endpoint"
        }
      ]
    }
    "#);
}

#[tokio::test]
async fn error_bodies_have_the_spec_shape() {
    let app = TestApp::start();
    app.push_image("a", "v1", 1).await;
    let resp = app.get("/v2/a/tags/list?n=abc").await;
    assert_eq!(
        resp.headers().get("docker-distribution-api-version").unwrap(),
        "registry/2.0"
    );
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "PAGINATION_NUMBER_INVALID",
          "message": "n=\"abc\" is not a non-negative integer"
        }
      ]
    }
    "#);
    let missing = sha256(b"missing");
    let resp = app.get(&format!("/v2/a/blobs/{missing}")).await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "BLOB_UNKNOWN",
          "message": "blob unknown to this repository"
        }
      ]
    }
    "#);
    let resp = app.get("/v2/nope/tags/list").await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "NAME_UNKNOWN",
          "message": "repository name not known to registry"
        }
      ]
    }
    "#);
}
