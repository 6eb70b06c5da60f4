//! Validation of names, tags and digests in URLs, unknown endpoints and wrong
//! methods, and the shape of error bodies (snapshotted, so a changed shape is
//! a visible diff).
//!
//! The rule for a path parameter that fits no grammar: a read or delete of a
//! manifest or blob, and any request to an upload session, is answered as for
//! one that does not exist (404); a push to such a reference, a referrers
//! request for such a digest and a digest a client claims for its upload are
//! 400s; an invalid repository name is always a 400.

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

/// Digests that fit no grammar: malformed, of an unsupported algorithm, or of
/// the wrong length.
fn invalid_digests() -> Vec<String> {
    let upper = DIGEST.to_uppercase().replace("SHA256", "sha256");
    let short = DIGEST[..DIGEST.len() - 1].to_owned();
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    [
        "sha256:abc",
        "sha256:",
        "sha256:zz",
        "SHA256:abc",
        "sha256:totallywrong",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([short, upper, sha384])
    .collect()
}

/// References that are neither a tag nor a digest (the conformance suite asks
/// for `.INVALID_MANIFEST_NAME`), and digests that fit no grammar.
fn invalid_references() -> Vec<String> {
    let long = "t".repeat(129);
    [
        ".INVALID_MANIFEST_NAME",
        "-leading-dash",
        "a+b",
        "caf%C3%A9",
        long.as_str(),
        "%00",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(invalid_digests())
    .collect()
}

#[tokio::test]
async fn a_reference_that_is_neither_tag_nor_digest_names_no_manifest() {
    // Nothing can be stored under such a reference, so reading or deleting
    // it is answered as for a manifest that does not exist: 404, and
    // NAME_UNKNOWN when the repository does not exist either.
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    for reference in invalid_references() {
        let path = format!("/v2/a/manifests/{reference}");
        assert_error(app.get(&path).await, 404, "MANIFEST_UNKNOWN").await;
        assert_eq!(app.head(&path).await.status(), 404, "HEAD {path}");
        assert_error(app.delete(&path).await, 404, "MANIFEST_UNKNOWN").await;
        let missing_repo = format!("/v2/nope/manifests/{reference}");
        assert_error(app.get(&missing_repo).await, 404, "NAME_UNKNOWN").await;
        assert_error(app.delete(&missing_repo).await, 404, "NAME_UNKNOWN").await;
    }
    // The repository is untouched.
    let resp = app.get("/v2/a/manifests/v1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(crate::harness::header(&resp, "docker-content-digest"), image.digest);

    let resp = app.get("/v2/a/manifests/.INVALID_MANIFEST_NAME").await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "MANIFEST_UNKNOWN",
          "detail": {
            "reason": "tag \".INVALID_MANIFEST_NAME\" does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
          },
          "message": "manifest unknown"
        }
      ]
    }
    "#);
}

#[tokio::test]
async fn a_push_to_an_invalid_reference_is_a_400() {
    // A push names what it creates, so a name that cannot be is the
    // request's error: MANIFEST_INVALID for a tag (TAG_INVALID is not in the
    // spec's closed set of codes), DIGEST_INVALID for a digest.
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    for reference in invalid_references() {
        let resp = app.put_manifest("a", &reference, OCI_MANIFEST, &image.manifest).await;
        let code = if reference.contains(':') {
            "DIGEST_INVALID"
        } else {
            "MANIFEST_INVALID"
        };
        assert_error(resp, 400, code).await;
    }
    let resp = app.get("/v2/a/tags/list").await;
    assert_eq!(json_body(resp).await["tags"], serde_json::json!([]));
}

#[tokio::test]
async fn a_digest_that_fits_no_grammar_names_no_blob() {
    let app = TestApp::start();
    app.push_image("a", "v1", 1).await;
    for digest in invalid_digests() {
        let path = format!("/v2/a/blobs/{digest}");
        assert_error(app.get(&path).await, 404, "BLOB_UNKNOWN").await;
        assert_eq!(app.head(&path).await.status(), 404, "HEAD {path}");
        assert_error(app.delete(&path).await, 404, "BLOB_UNKNOWN").await;
        // distribution-spec: a referrers request for a digest of invalid syntax is a 400.
        let referrers = app.get(&format!("/v2/a/referrers/{digest}")).await;
        assert_error(referrers, 400, "DIGEST_INVALID").await;
        // A digest the client claims for its upload is checked: 400.
        let resp = app
            .client
            .post(app.url(&format!("/v2/a/blobs/uploads/?digest={digest}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "DIGEST_INVALID").await;
        let url = app.start_upload("a").await;
        let resp = app.client.put(format!("{url}?digest={digest}")).send().await.unwrap();
        assert_error(resp, 400, "DIGEST_INVALID").await;
    }
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    let resp = app.get(&format!("/v2/a/blobs/{sha384}")).await;
    insta::assert_json_snapshot!(json_body(resp).await, @r#"
    {
      "errors": [
        {
          "code": "BLOB_UNKNOWN",
          "detail": {
            "reason": "digest algorithm \"sha384\" is not supported (sha256 and sha512 are)"
          },
          "message": "blob unknown to this repository"
        }
      ]
    }
    "#);
    let resp = app
        .client
        .post(app.url(&format!("/v2/a/blobs/uploads/?digest={sha384}")))
        .body("x")
        .send()
        .await
        .unwrap();
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
async fn an_invalid_session_id_names_no_upload() {
    let app = TestApp::start();
    let url = app.start_upload("a").await;
    // (Dot segments are in `hostile_paths`: an HTTP client resolves them before sending.)
    for id in ["not.an.id", "a%00", "a%2Fb", &"x".repeat(65)] {
        let path = format!("/v2/a/blobs/uploads/{id}");
        for method in ["GET", "PATCH", "PUT", "DELETE"] {
            assert_error(request(&app, method, &path).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        }
    }
    // The real session is untouched.
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 204);
}

#[tokio::test]
async fn the_longest_valid_tag_is_accepted() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
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
