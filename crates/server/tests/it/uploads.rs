//! Pushing blobs: monolithic, POST-then-PUT, chunked and streamed uploads,
//! session status, cancel, digest checks and stale-session purging.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Body, Response};

use crate::harness::{assert_error, header, random_bytes, sha256, sha512, with_query, TestApp};

/// The upload URL in a session response, resolved against the server.
fn location(app: &TestApp, resp: &Response) -> String {
    app.resolve(header(resp, "location"))
}

async fn patch(app: &TestApp, url: &str, range: Option<(u64, u64)>, bytes: &[u8]) -> Response {
    let mut req = app
        .client
        .patch(url)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec());
    if let Some((start, end)) = range {
        req = req.header("content-range", format!("{start}-{end}"));
    }
    req.send().await.expect("PATCH")
}

async fn finish(app: &TestApp, url: &str, digest: &str) -> Response {
    app.client
        .put(with_query(url, &format!("digest={digest}")))
        .send()
        .await
        .expect("PUT")
}

/// The final PUT carrying the whole blob.
async fn finish_with(app: &TestApp, url: &str, digest: &str, bytes: &[u8]) -> Response {
    app.client
        .put(with_query(url, &format!("digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("PUT")
}

/// The store holds no file for `digest`, not even one the database does not know.
async fn assert_no_blob_file(app: &TestApp, digest: &str) {
    assert_eq!(app.stored_blob(digest).await, None, "a blob file for {digest}");
}

async fn assert_blob(app: &TestApp, repo: &str, digest: &str, bytes: &[u8]) {
    let resp = app.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(resp.status(), 200, "GET {repo}@{digest}");
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap(), bytes, "bytes of {digest}");
}

#[tokio::test]
async fn monolithic_post_creates_the_blob() {
    let app = TestApp::start();
    let bytes = random_bytes(5000);
    let digest = sha256(&bytes);
    let resp = app
        .client
        .post(app.url(&format!("/v2/a/b/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    // The Location points at the blob.
    let blob = app.client.get(location(&app, &resp)).send().await.unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn post_then_put_with_the_body() {
    let app = TestApp::start();
    let bytes = random_bytes(3000);
    let digest = sha256(&bytes);
    let url = app.start_upload("a").await;
    let resp = app
        .client
        .put(with_query(&url, &format!("digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        app.resolve(header(&resp, "location")),
        app.url(&format!("/v2/a/blobs/{digest}"))
    );
    assert_blob(&app, "a", &digest, &bytes).await;
}

#[tokio::test]
async fn chunked_upload_then_put_without_body() {
    let app = TestApp::start();
    let bytes = random_bytes(250_000);
    let digest = sha256(&bytes);
    let post = app.client.post(app.url("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(post.status(), 202);
    let mut url = location(&app, &post);

    let mut offset = 0u64;
    for chunk in bytes.chunks(100_000) {
        let end = offset + chunk.len() as u64 - 1;
        let resp = patch(&app, &url, Some((offset, end)), chunk).await;
        assert_eq!(resp.status(), 202);
        assert_eq!(header(&resp, "range"), format!("0-{end}"));
        // Each response names where the next request goes.
        url = location(&app, &resp);
        offset = end + 1;
    }
    let resp = finish(&app, &url, &digest).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_blob(&app, "a", &digest, &bytes).await;
    // A finished session is gone.
    assert_error(app.client.get(&url).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(patch(&app, &url, None, b"more").await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

/// Removes the session's bytes behind the server's back: a file on the
/// filesystem, a folder of objects on S3.
async fn remove_session_bytes(app: &TestApp, id: &str) {
    let keys: Vec<String> = app
        .stored_keys("uploads")
        .await
        .into_iter()
        .filter(|key| key.strip_prefix("uploads/").and_then(|k| k.split('/').next()) == Some(id))
        .collect();
    assert!(!keys.is_empty(), "the session {id} has bytes in the store");
    for key in keys {
        app.remove_stored(&key).await;
    }
}

#[tokio::test]
async fn a_put_retried_after_a_crash_between_placing_and_recording_the_blob_succeeds() {
    let app = TestApp::start();
    let bytes = random_bytes(150_000);
    let digest = sha256(&bytes);
    let url = app.start_upload("a").await;
    assert_eq!(patch(&app, &url, Some((0, 149_999)), &bytes).await.status(), 202);
    let id = url.rsplit('/').next().unwrap().to_string();

    // What a process killed inside the final PUT leaves: the bytes moved to
    // the blob's place, the session record still there, nothing recorded.
    remove_session_bytes(&app, &id).await;
    app.put_stored_blob(&digest, &bytes).await;
    assert_eq!(app.head(&format!("/v2/a/blobs/{digest}")).await.status(), 404);

    let resp = finish(&app, &url, &digest).await;
    assert_eq!(resp.status(), 201, "the retried PUT records the blob in place");
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_blob(&app, "a", &digest, &bytes).await;

    // Without the blob in place the session's bytes are simply gone.
    let other = random_bytes(1000);
    let url = app.start_upload("a").await;
    assert_eq!(patch(&app, &url, Some((0, 999)), &other).await.status(), 202);
    let id = url.rsplit('/').next().unwrap().to_string();
    remove_session_bytes(&app, &id).await;
    assert_error(finish(&app, &url, &sha256(&other)).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    app.assert_blob_unknown("a", &sha256(&other)).await;
}

#[tokio::test]
async fn chunked_upload_with_a_last_chunk_in_the_put() {
    let app = TestApp::start();
    let bytes = random_bytes(30_000);
    let digest = sha256(&bytes);
    let url = app.start_upload("a").await;
    let resp = patch(&app, &url, Some((0, 19_999)), &bytes[..20_000]).await;
    assert_eq!(resp.status(), 202);
    let url = location(&app, &resp);
    let resp = app
        .client
        .put(with_query(&url, &format!("digest={digest}")))
        .header("content-type", "application/octet-stream")
        .header("content-range", "20000-29999")
        .body(bytes[20_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&app, "a", &digest, &bytes).await;
}

#[tokio::test]
async fn a_last_chunk_at_the_wrong_offset_is_416() {
    let app = TestApp::start();
    let bytes = random_bytes(200);
    let url = app.start_upload("a").await;
    assert_eq!(patch(&app, &url, Some((0, 99)), &bytes[..100]).await.status(), 202);
    let resp = app
        .client
        .put(with_query(&url, &format!("digest={}", sha256(&bytes))))
        .header("content-range", "150-199")
        .body(bytes[150..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "range"), "0-99");
    app.assert_blob_unknown("a", &sha256(&bytes)).await;
}

#[tokio::test]
async fn streamed_bodies_without_content_length() {
    let app = TestApp::start();
    let stream = |bytes: &[u8]| {
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
        Body::wrap_stream(futures::stream::iter(pieces))
    };
    // A monolithic POST.
    let bytes = random_bytes(50_000);
    let resp = app
        .client
        .post(app.url(&format!("/v2/a/blobs/uploads/?digest={}", sha256(&bytes))))
        .body(stream(&bytes))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&app, "a", &sha256(&bytes), &bytes).await;

    // A final PUT carrying the last chunk.
    let bytes = random_bytes(50_000);
    let url = app.start_upload("a").await;
    assert_eq!(
        patch(&app, &url, Some((0, 9_999)), &bytes[..10_000]).await.status(),
        202
    );
    let resp = app
        .client
        .put(with_query(&url, &format!("digest={}", sha256(&bytes))))
        .body(stream(&bytes[10_000..]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&app, "a", &sha256(&bytes), &bytes).await;
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    // docker pushes a layer as one PATCH with a chunked body and no Content-Range.
    let app = TestApp::start();
    let bytes = random_bytes(300_000);
    let digest = sha256(&bytes);
    let url = app.start_upload("a").await;
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(7_000).map(|c| Ok(c.to_vec())).collect();
    let resp = app
        .client
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .body(Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "range"), "0-299999");
    let url = location(&app, &resp);

    // A second streamed PATCH appends.
    let more = random_bytes(1000);
    let resp = app
        .client
        .patch(&url)
        .body(Body::wrap_stream(futures::stream::iter([Ok::<_, std::io::Error>(
            more.clone(),
        )])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "range"), "0-300999");
    let url = location(&app, &resp);

    let all = [bytes, more].concat();
    let resp = finish(&app, &url, &sha256(&all)).await;
    assert_eq!(resp.status(), 201);
    assert_ne!(sha256(&all), digest);
    assert_blob(&app, "a", &sha256(&all), &all).await;
}

#[tokio::test]
async fn out_of_order_and_overlapping_chunks_are_416_with_the_current_range() {
    let app = TestApp::start();
    let bytes = random_bytes(300);
    let url = app.start_upload("a").await;
    let resp = patch(&app, &url, Some((0, 99)), &bytes[..100]).await;
    assert_eq!(resp.status(), 202);
    let url = location(&app, &resp);

    // A gap after the received bytes.
    let resp = patch(&app, &url, Some((200, 299)), &bytes[200..]).await;
    assert_eq!(resp.status(), 416);
    // distribution-spec: the 416 carries the current Range so the client can resume.
    assert_eq!(header(&resp, "range"), "0-99");
    assert!(url.ends_with(header(&resp, "location")), "{url}");
    assert!(url.ends_with(header(&resp, "docker-upload-uuid")));

    // An overlap with the received bytes.
    let resp = patch(&app, &url, Some((50, 149)), &bytes[50..150]).await;
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "range"), "0-99");

    // The session is unharmed: continue in order and finish.
    let resp = patch(&app, &url, Some((100, 299)), &bytes[100..]).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "range"), "0-299");
    let resp = finish(&app, &location(&app, &resp), &sha256(&bytes)).await;
    assert_eq!(resp.status(), 201);
    assert_blob(&app, "a", &sha256(&bytes), &bytes).await;
}

#[tokio::test]
async fn a_first_chunk_not_at_zero_is_416() {
    let app = TestApp::start();
    let url = app.start_upload("a").await;
    let resp = patch(&app, &url, Some((10, 19)), &[0u8; 10]).await;
    assert_eq!(resp.status(), 416);
    let status = app.client.get(&url).send().await.unwrap();
    assert_eq!(status.status(), 204);
    assert_eq!(header(&status, "range"), "0-0");
}

#[tokio::test]
async fn a_content_range_that_disagrees_with_the_body_is_refused() {
    let app = TestApp::start();
    let url = app.start_upload("a").await;
    // Declares 20 bytes, sends 10.
    let resp = patch(&app, &url, Some((0, 19)), &[7u8; 10]).await;
    assert_eq!(resp.status(), 400, "{}", resp.text().await.unwrap());
    // Nothing was taken into the session.
    let status = app.client.get(&url).send().await.unwrap();
    assert_eq!(status.status(), 204);
    assert_eq!(header(&status, "range"), "0-0");
}

#[tokio::test]
async fn absurd_content_ranges_are_refused_without_a_server_error() {
    let app = TestApp::start();
    let url = app.start_upload("a").await;
    for range in ["0-18446744073709551615", "5-3", "abc", "0-"] {
        // Streamed, so no Content-Length to compare the range with.
        let resp = app
            .client
            .patch(&url)
            .header("content-range", range)
            .body(Body::wrap_stream(futures::stream::iter([Ok::<_, std::io::Error>(
                b"abc".to_vec(),
            )])))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(matches!(status, 400 | 416), "Content-Range {range}: {status}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["errors"][0]["code"].is_string(), "{body}");
    }
    // With a Content-Length, too.
    let resp = patch(&app, &url, Some((0, u64::MAX)), b"abc").await;
    assert!(matches!(resp.status().as_u16(), 400 | 416), "{}", resp.status());
    // Nothing was taken into the session.
    let status = app.client.get(&url).send().await.unwrap();
    assert_eq!(header(&status, "range"), "0-0");
    assert!(!app.log().contains("panicked"), "{}", app.log());
}

#[tokio::test]
async fn session_status_reports_progress() {
    let app = TestApp::start();
    let url = app.start_upload("team/app").await;
    let id = url.rsplit('/').next().unwrap().to_owned();

    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(header(&resp, "docker-upload-uuid"), id);
    assert_eq!(app.resolve(header(&resp, "location")), url);

    let resp = patch(&app, &url, Some((0, 1233)), &random_bytes(1234)).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "docker-upload-uuid"), id);

    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(header(&resp, "range"), "0-1233");
    assert_eq!(header(&resp, "docker-upload-uuid"), id);
    assert_eq!(app.resolve(header(&resp, "location")), url);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn delete_cancels_the_session() {
    let app = TestApp::start();
    let bytes = random_bytes(100);
    let url = app.start_upload("a").await;
    assert_eq!(patch(&app, &url, Some((0, 99)), &bytes).await.status(), 202);

    let resp = app.client.delete(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);

    assert_error(app.client.get(&url).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(patch(&app, &url, None, b"more").await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(finish(&app, &url, &sha256(&bytes)).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(
        app.client.delete(&url).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_eq!(
        app.stored_uploads().await,
        BTreeSet::new(),
        "a cancelled session leaves no bytes behind"
    );
}

#[tokio::test]
async fn a_wrong_digest_at_the_final_put_stores_nothing() {
    let app = TestApp::start();
    let bytes = random_bytes(2000);
    let claimed = sha256(b"something else");
    let url = app.start_upload("a").await;
    assert_eq!(patch(&app, &url, Some((0, 1999)), &bytes).await.status(), 202);

    assert_error(finish(&app, &url, &claimed).await, 400, "DIGEST_INVALID").await;

    app.assert_blob_unknown("a", &claimed).await;
    let actual = sha256(&bytes);
    app.assert_blob_unknown("a", &actual).await;
    assert_no_blob_file(&app, &claimed).await;
}

#[tokio::test]
async fn a_wrong_digest_in_a_monolithic_post_stores_nothing() {
    let app = TestApp::start();
    let bytes = random_bytes(100);
    let claimed = sha256(b"not these bytes");
    let resp = app
        .client
        .post(app.url(&format!("/v2/a/blobs/uploads/?digest={claimed}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "DIGEST_INVALID").await;
    app.assert_blob_unknown("a", &claimed).await;
    app.assert_blob_unknown("a", &sha256(&bytes)).await;
    assert_no_blob_file(&app, &claimed).await;
}

/// A blob pushed in one request may be written where it belongs while it
/// streams in (S3 stages it as a multipart upload of its own key once it is
/// larger than 24 MiB); a mismatch must still leave nothing visible.
#[tokio::test]
async fn a_wrong_digest_in_a_large_monolithic_put_stores_nothing() {
    let app = TestApp::start();
    let bytes = random_bytes(25 << 20);
    let claimed = sha256(b"not these many bytes");
    let url = app.start_upload("a").await;
    assert_error(finish_with(&app, &url, &claimed, &bytes).await, 400, "DIGEST_INVALID").await;
    app.assert_blob_unknown("a", &claimed).await;
    app.assert_blob_unknown("a", &sha256(&bytes)).await;
    assert_no_blob_file(&app, &claimed).await;
    assert_no_blob_file(&app, &sha256(&bytes)).await;
    assert_eq!(
        app.stored_uploads().await,
        BTreeSet::new(),
        "the session's bytes are gone"
    );

    // The same bytes with their own digest: stored whole, the session gone.
    let digest = sha256(&bytes);
    let url = app.start_upload("a").await;
    assert_eq!(finish_with(&app, &url, &digest, &bytes).await.status(), 201);
    assert!(
        app.stored_blob(&digest).await == Some(bytes.clone()),
        "the blob file holds the bytes"
    );
    assert_eq!(app.stored_uploads().await, BTreeSet::new());
    assert_blob(&app, "a", &digest, &bytes).await;
}

#[tokio::test]
async fn the_final_put_needs_a_digest() {
    let app = TestApp::start();
    let url = app.start_upload("a").await;
    let resp = app.client.put(&url).body("abc").send().await.unwrap();
    assert_error(resp, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn a_session_belongs_to_its_repository() {
    let app = TestApp::start();
    let bytes = random_bytes(100);
    let url = app.start_upload("a").await;
    let id = url.rsplit('/').next().unwrap();
    let foreign = app.url(&format!("/v2/b/blobs/uploads/{id}"));

    assert_error(
        app.client.get(&foreign).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_error(
        patch(&app, &foreign, Some((0, 99)), &bytes).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_error(
        finish(&app, &foreign, &sha256(&bytes)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_error(
        app.client.delete(&foreign).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;

    // The session still works in its own repository.
    assert_eq!(patch(&app, &url, Some((0, 99)), &bytes).await.status(), 202);
    assert_eq!(finish(&app, &url, &sha256(&bytes)).await.status(), 201);
    assert_blob(&app, "a", &sha256(&bytes), &bytes).await;
    app.assert_blob_unknown("b", &sha256(&bytes)).await;
}

#[tokio::test]
async fn an_unknown_session_is_404() {
    let app = TestApp::start();
    app.push_blob("a", b"x").await;
    let url = app.url("/v2/a/blobs/uploads/00000000-0000-0000-0000-000000000000");
    assert_error(app.client.get(&url).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(patch(&app, &url, None, b"x").await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    // The session's absence comes before what is wrong with the request.
    let bad_range = |url: &str| app.client.patch(url).header("content-range", "zz").body("x").send();
    assert_error(bad_range(&url).await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = app.client.put(&url).send().await.unwrap();
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = app.client.put(format!("{url}?digest=sha256:zz")).send().await.unwrap();
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN").await;
    // For a session that exists, they are the answer.
    let session = app.start_upload("a").await;
    assert_error(app.client.put(&session).send().await.unwrap(), 400, "DIGEST_INVALID").await;
    assert_error(bad_range(&session).await.unwrap(), 416, "RANGE_INVALID").await;
}

#[tokio::test]
async fn sha512_digests_work_for_uploads() {
    let app = TestApp::start();

    let bytes = random_bytes(4000);
    let digest = sha512(&bytes);
    let resp = app
        .client
        .post(app.url(&format!("/v2/a/blobs/uploads/?digest={digest}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_blob(&app, "a", &digest, &bytes).await;

    // Chunked, with a last chunk in the PUT.
    let bytes = random_bytes(9000);
    let digest = sha512(&bytes);
    let url = app.start_upload("a").await;
    let resp = patch(&app, &url, Some((0, 4999)), &bytes[..5000]).await;
    assert_eq!(resp.status(), 202);
    let resp = app
        .client
        .put(with_query(&location(&app, &resp), &format!("digest={digest}")))
        .header("content-range", "5000-8999")
        .body(bytes[5000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&app, "a", &digest, &bytes).await;

    // A wrong sha512 is refused like a wrong sha256.
    let url = app.start_upload("a").await;
    let resp = finish(&app, &url, &sha512(b"other")).await;
    assert_error(resp, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn relative_locations_continue_the_session() {
    let app = TestApp::start();
    let bytes = random_bytes(3000);
    let post = app.client.post(app.url("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(post.status(), 202);
    let raw = header(&post, "location").to_owned();
    // Whatever form the server chose, resolving it as RFC 3986 says must work.
    let url = app.resolve(&raw);
    assert!(url.starts_with(&app.base), "{raw} resolves into this server");
    let mut url = url;
    for (i, chunk) in bytes.chunks(1000).enumerate() {
        let start = i as u64 * 1000;
        let resp = patch(&app, &url, Some((start, start + 999)), chunk).await;
        assert_eq!(resp.status(), 202);
        url = app.resolve(header(&resp, "location"));
    }
    let resp = finish(&app, &url, &sha256(&bytes)).await;
    assert_eq!(resp.status(), 201);
    let blob = app
        .client
        .get(app.resolve(header(&resp, "location")))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_blob_both_succeed() {
    let app = TestApp::start();
    let bytes = random_bytes(50_000);
    let digest = sha256(&bytes);
    let pushes = (0..4).map(|_| {
        app.client
            .post(app.url(&format!("/v2/a/blobs/uploads/?digest={digest}")))
            .body(bytes.clone())
            .send()
    });
    for resp in futures::future::join_all(pushes).await {
        assert_eq!(resp.unwrap().status(), 201);
    }
    assert_blob(&app, "a", &digest, &bytes).await;
}

#[tokio::test]
async fn stale_sessions_are_purged() {
    let app = TestApp::start_with_clock("[uploads]\nstale_after_secs = 3600\npurge_interval_secs = 1\n");
    let url = app.start_upload("a").await;
    assert_eq!(patch(&app, &url, Some((0, 9)), &[1u8; 10]).await.status(), 202);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 204);

    // An hour later by the server's clock, the next purge (each second) takes it.
    app.advance_clock(3_601_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.client.get(&url).send().await.unwrap().status() == 204 {
        assert!(std::time::Instant::now() < deadline, "the session was never purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_error(app.client.get(&url).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    let id = url.rsplit('/').next().unwrap();
    assert!(!app.stored_uploads().await.contains(id), "the session's bytes are gone");
    assert!(app.logged("purged stale upload sessions").await, "{}", app.log());
}
