//! Pulling and deleting blobs: `HEAD`/`GET`/`DELETE /v2/<name>/blobs/<digest>`,
//! including single byte ranges.

use crate::harness::{assert_error, header, random_bytes, sha256, TestApp};

#[tokio::test]
async fn head_and_get_describe_the_blob() {
    let app = TestApp::start();
    let bytes = random_bytes(10_000);
    let digest = app.push_blob("team/app", &bytes).await;
    let path = format!("/v2/team/app/blobs/{digest}");

    let head = app.head(&path).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), "10000");
    assert_eq!(header(&head, "docker-content-digest"), digest);
    assert_eq!(header(&head, "etag"), format!("\"{digest}\""));
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");

    let get = app.get(&path).await;
    assert_eq!(get.status(), 200);
    assert_eq!(header(&get, "content-length"), "10000");
    assert_eq!(header(&get, "docker-content-digest"), digest);
    assert_eq!(header(&get, "etag"), format!("\"{digest}\""));
    assert_eq!(get.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn a_single_range_is_served_with_206() {
    let app = TestApp::start();
    let bytes = random_bytes(1000);
    let digest = app.push_blob("a", &bytes).await;
    let url = app.url(&format!("/v2/a/blobs/{digest}"));
    let get_range = |range: &'static str| app.client.get(&url).header("range", range).send();

    let resp = get_range("bytes=10-19").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), "bytes 10-19/1000");
    assert_eq!(header(&resp, "content-length"), "10");
    assert_eq!(resp.bytes().await.unwrap(), &bytes[10..20]);

    let resp = get_range("bytes=990-").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), "bytes 990-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), &bytes[990..]);

    // A last position past the end is cut to the end.
    let resp = get_range("bytes=995-5000").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), "bytes 995-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), &bytes[995..]);

    // The suffix form asks for the last N bytes.
    let resp = get_range("bytes=-7").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), "bytes 993-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), &bytes[993..]);

    let resp = get_range("bytes=-5000").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), "bytes 0-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn an_unsatisfiable_range_is_416_with_the_size() {
    let app = TestApp::start();
    let bytes = random_bytes(100);
    let digest = app.push_blob("a", &bytes).await;
    let url = app.url(&format!("/v2/a/blobs/{digest}"));
    for range in ["bytes=100-", "bytes=500-600", "bytes=-0"] {
        let resp = app.client.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(resp.status(), 416, "{range}");
        // RFC 9110: a 416 to a byte range request carries `bytes */<complete-length>`.
        assert_eq!(header(&resp, "content-range"), "bytes */100", "{range}");
    }
}

#[tokio::test]
async fn a_multi_range_request_gets_the_whole_blob() {
    // RFC 9110 lets a server ignore a Range it does not support.
    let app = TestApp::start();
    let bytes = random_bytes(100);
    let digest = app.push_blob("a", &bytes).await;
    let resp = app
        .client
        .get(app.url(&format!("/v2/a/blobs/{digest}")))
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn delete_unlinks_the_blob() {
    let app = TestApp::start();
    let digest = app.push_blob("a", b"to be deleted").await;
    let path = format!("/v2/a/blobs/{digest}");

    let resp = app.delete(&path).await;
    assert_eq!(resp.status(), 202);

    assert_error(app.get(&path).await, 404, "BLOB_UNKNOWN").await;
    assert_eq!(app.head(&path).await.status(), 404);
    // Deleting again finds nothing.
    assert_error(app.delete(&path).await, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn a_repository_serves_only_its_own_blobs() {
    let app = TestApp::start();
    let digest = app.push_blob("a", b"only in a").await;
    app.push_blob("b", b"something else in b").await;

    assert_eq!(app.get(&format!("/v2/a/blobs/{digest}")).await.status(), 200);
    app.assert_blob_unknown("b", &digest).await;
    assert_eq!(app.head(&format!("/v2/b/blobs/{digest}")).await.status(), 404);
    // A repository that does not exist has no blobs either.
    app.assert_blob_unknown("c", &digest).await;
    // Deleting through b must not unlink it from a.
    assert_error(app.delete(&format!("/v2/b/blobs/{digest}")).await, 404, "BLOB_UNKNOWN").await;
    assert_eq!(app.get(&format!("/v2/a/blobs/{digest}")).await.status(), 200);
}

#[tokio::test]
async fn an_unknown_blob_is_404() {
    let app = TestApp::start();
    app.push_blob("a", b"x").await;
    let missing = sha256(b"never pushed");
    app.assert_blob_unknown("a", &missing).await;
    let head = app.head(&format!("/v2/a/blobs/{missing}")).await;
    assert_eq!(head.status(), 404);
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn an_empty_blob_round_trips() {
    let app = TestApp::start();
    let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    // As clients send it: a monolithic POST with an explicit `Content-Length: 0`.
    let resp = app
        .client
        .post(app.url(&format!("/v2/a/blobs/uploads/?digest={empty}")))
        .header("content-type", "application/octet-stream")
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    assert_eq!(app.push_blob("b", b"").await, empty);
    for repo in ["a", "b"] {
        let resp = app.get(&format!("/v2/{repo}/blobs/{empty}")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-length"), "0");
        assert!(resp.bytes().await.unwrap().is_empty());
    }
}
