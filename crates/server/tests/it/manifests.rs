//! Manifests: push by tag and digest, pull with content negotiation, delete,
//! Docker schema 2 and OCI image/index/artifact forms, and validation.

use serde_json::{json, Value};

use crate::harness::{
    assert_error, descriptor, header, random_bytes, raw_request, sha256, Image, TestApp, DOCKER_CONFIG, DOCKER_LAYER,
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON")
}

/// An OCI index over the given manifests.
fn index_of(children: &[Value]) -> Vec<u8> {
    to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children }))
}

async fn get_with_accept(app: &TestApp, path: &str, accept: &[&str]) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    for a in accept {
        req = req.header("accept", *a);
    }
    req.send().await.expect("GET manifest")
}

async fn tags(app: &TestApp, repo: &str) -> Vec<String> {
    let resp = app.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn push_by_tag_then_pull_by_tag_and_digest() {
    let app = TestApp::start();
    let image = Image::random(2);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        app.push_blob("team/app", blob).await;
    }
    let resp = app.put_manifest("team/app", "v1", OCI_MANIFEST, &image.manifest).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), image.digest);
    assert_eq!(
        app.resolve(header(&resp, "location")),
        app.url(&format!("/v2/team/app/manifests/{}", image.digest))
    );

    let len = image.manifest.len().to_string();
    for reference in ["v1", image.digest.as_str()] {
        let path = format!("/v2/team/app/manifests/{reference}");
        let resp = app.get(&path).await;
        assert_eq!(resp.status(), 200, "{reference}");
        assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&resp, "docker-content-digest"), image.digest);
        assert_eq!(header(&resp, "content-length"), len);
        assert_eq!(resp.bytes().await.unwrap(), image.manifest);

        let resp = app.head(&path).await;
        assert_eq!(resp.status(), 200, "HEAD {reference}");
        assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&resp, "docker-content-digest"), image.digest);
        assert_eq!(header(&resp, "content-length"), len);
        assert!(resp.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn push_by_digest_stores_an_untagged_manifest() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    let resp = app
        .put_manifest("a", &image.digest, OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), image.digest);
    let resp = app.get(&format!("/v2/a/manifests/{}", image.digest)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    assert!(tags(&app, "a").await.is_empty());
}

#[tokio::test]
async fn bytes_are_kept_exactly_as_pushed() {
    let app = TestApp::start();
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let layer = random_bytes(100);
    app.push_blob("a", config).await;
    app.push_blob("a", &layer).await;
    // Odd whitespace, key order, escapes and non-ASCII: the digest is of these bytes.
    let body = format!(
        "{{\n\t\"layers\" : [ {{\"size\":{ls},   \"digest\":\"{ld}\",\"mediaType\":\"{OCI_LAYER}\"}} ] ,\r\n  \
         \"config\":{{ \"mediaType\" : \"{OCI_CONFIG}\", \"digest\": \"{cd}\", \"size\": {cs} }},\n\
         \"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\n  \
         \"annotations\": {{ \"note\": \"caf\\u00e9 \u{263A} \\\"quoted\\\"\" }}\n}}\n\n  ",
        ls = layer.len(),
        ld = sha256(&layer),
        cd = sha256(config),
        cs = config.len(),
    );
    let digest = sha256(body.as_bytes());
    let resp = app.put_manifest("a", "odd", OCI_MANIFEST, body.as_bytes()).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    for reference in ["odd", digest.as_str()] {
        let resp = app.get(&format!("/v2/a/manifests/{reference}")).await;
        assert_eq!(header(&resp, "docker-content-digest"), digest);
        assert_eq!(resp.bytes().await.unwrap(), body.as_bytes());
    }
}

#[tokio::test]
async fn pushing_a_tag_again_moves_it() {
    let app = TestApp::start();
    let first = app.push_image("a", "latest", 1).await;
    let second = app.push_image("a", "latest", 1).await;
    let resp = app.get("/v2/a/manifests/latest").await;
    assert_eq!(header(&resp, "docker-content-digest"), second.digest);
    // The first manifest stays reachable by digest.
    let resp = app.get(&format!("/v2/a/manifests/{}", first.digest)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), first.manifest);
}

#[tokio::test]
async fn accept_negotiates_the_manifest_type() {
    let app = TestApp::start();
    let image = app.push_image("a", "img", 1).await;
    let index = index_of(&[image.descriptor()]);
    let digest = app.push_manifest("a", "idx", OCI_INDEX, &index).await;

    for reference in ["idx", digest.as_str()] {
        let path = format!("/v2/a/manifests/{reference}");
        // Only Docker image manifests are acceptable: the index is not served.
        let resp = get_with_accept(&app, &path, &[DOCKER_MANIFEST]).await;
        assert_error(resp, 404, "MANIFEST_UNKNOWN").await;
        let resp = get_with_accept(&app, &path, &[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}")]).await;
        assert_error(resp, 404, "MANIFEST_UNKNOWN").await;

        for accept in [
            vec![OCI_INDEX],
            vec!["*/*"],
            vec![DOCKER_MANIFEST, OCI_INDEX],
            vec![&*format!(
                "{DOCKER_MANIFEST_LIST}, {OCI_INDEX};q=0.9, {DOCKER_MANIFEST}"
            )],
            vec![DOCKER_MANIFEST, "*/*"],
            vec![],
        ] {
            let resp = get_with_accept(&app, &path, &accept).await;
            assert_eq!(resp.status(), 200, "Accept {accept:?}");
            assert_eq!(header(&resp, "content-type"), OCI_INDEX);
            assert_eq!(resp.bytes().await.unwrap(), index);
        }
    }
    // HEAD negotiates the same way.
    let resp = app
        .client
        .head(app.url("/v2/a/manifests/idx"))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn delete_by_digest_removes_the_manifest_and_its_tags() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    app.push_manifest("a", "v2", OCI_MANIFEST, &image.manifest).await;
    let keep = app.push_image("a", "other", 1).await;

    let resp = app.delete(&format!("/v2/a/manifests/{}", image.digest)).await;
    assert_eq!(resp.status(), 202);

    for reference in ["v1", "v2", image.digest.as_str()] {
        let resp = app.get(&format!("/v2/a/manifests/{reference}")).await;
        assert_error(resp, 404, "MANIFEST_UNKNOWN").await;
    }
    assert_eq!(tags(&app, "a").await, ["other"]);
    assert_eq!(app.get(&format!("/v2/a/manifests/{}", keep.digest)).await.status(), 200);
    // Deleting it again finds nothing.
    let resp = app.delete(&format!("/v2/a/manifests/{}", image.digest)).await;
    assert_error(resp, 404, "MANIFEST_UNKNOWN").await;
    // The layers are still the repository's until garbage collection.
    let layer = sha256(&image.layers[0]);
    assert_eq!(app.head(&format!("/v2/a/blobs/{layer}")).await.status(), 200);
}

#[tokio::test]
async fn delete_by_tag_removes_only_the_tag() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    app.push_manifest("a", "v2", OCI_MANIFEST, &image.manifest).await;

    let resp = app.delete("/v2/a/manifests/v1").await;
    assert_eq!(resp.status(), 202);

    assert_error(app.get("/v2/a/manifests/v1").await, 404, "MANIFEST_UNKNOWN").await;
    let resp = app.get(&format!("/v2/a/manifests/{}", image.digest)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    assert_eq!(app.get("/v2/a/manifests/v2").await.status(), 200);
    assert_eq!(tags(&app, "a").await, ["v2"]);
    assert_error(app.delete("/v2/a/manifests/v1").await, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn docker_schema2_manifest_and_manifest_list() {
    let app = TestApp::start();
    let config = to_vec(&json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers" } }));
    let layer = random_bytes(2048);
    app.push_blob("lib/app", &config).await;
    app.push_blob("lib/app", &layer).await;
    let manifest = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [descriptor(DOCKER_LAYER, &layer)],
    }));
    let digest = app.push_manifest("lib/app", "amd64", DOCKER_MANIFEST, &manifest).await;
    let resp = get_with_accept(&app, "/v2/lib/app/manifests/amd64", &[DOCKER_MANIFEST]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap(), manifest);

    let list = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    }));
    let list_digest = app
        .push_manifest("lib/app", "latest", DOCKER_MANIFEST_LIST, &list)
        .await;
    let resp = get_with_accept(
        &app,
        "/v2/lib/app/manifests/latest",
        &[DOCKER_MANIFEST_LIST, DOCKER_MANIFEST],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST_LIST);
    assert_eq!(header(&resp, "docker-content-digest"), list_digest);
    assert_eq!(resp.bytes().await.unwrap(), list);
    // Docker types are served whatever the client names, as the reference registry does.
    let resp = get_with_accept(&app, "/v2/lib/app/manifests/latest", &[OCI_INDEX, OCI_MANIFEST]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST_LIST);
}

#[tokio::test]
async fn foreign_layers_need_not_be_in_the_registry() {
    let app = TestApp::start();
    let config = to_vec(&json!({ "architecture": "amd64", "os": "windows" }));
    app.push_blob("win", &config).await;
    let manifest = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": sha256(b"a windows base layer"),
            "size": 20,
            "urls": ["https://example.invalid/layer"],
        }],
    }));
    app.push_manifest("win", "ltsc", DOCKER_MANIFEST, &manifest).await;
}

#[tokio::test]
async fn a_manifest_can_be_addressed_by_sha512() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    let digest = crate::harness::sha512(&image.manifest);
    let resp = app.put_manifest("a", &digest, OCI_MANIFEST, &image.manifest).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = app.get(&format!("/v2/a/manifests/{digest}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
}

#[tokio::test]
async fn repository_names_may_contain_endpoint_words() {
    let app = TestApp::start();
    for repo in [
        "manifests",
        "blobs/uploads",
        "a/tags/list",
        "x/referrers/y/blobs",
        "deep/er/and/deeper/still",
    ] {
        let image = app.push_image(repo, "manifests", 1).await;
        let resp = app.get(&format!("/v2/{repo}/manifests/manifests")).await;
        assert_eq!(resp.status(), 200, "{repo}");
        assert_eq!(resp.bytes().await.unwrap(), image.manifest, "{repo}");
        let body: Value = app.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap();
        assert_eq!(body, json!({ "name": repo, "tags": ["manifests"] }), "{repo}");
        let layer = sha256(&image.layers[0]);
        assert_eq!(
            app.get(&format!("/v2/{repo}/blobs/{layer}")).await.status(),
            200,
            "{repo}"
        );
    }
}

#[tokio::test]
async fn an_oci_index_needs_its_children() {
    let app = TestApp::start();
    let image = app.push_image("a", "img", 1).await;
    let missing = Image::random(1);

    let resp = app
        .put_manifest(
            "a",
            "bad",
            OCI_INDEX,
            &index_of(&[image.descriptor(), missing.descriptor()]),
        )
        .await;
    let body = assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(body["errors"][0]["detail"]["digest"], missing.digest, "{body}");
    assert_error(app.get("/v2/a/manifests/bad").await, 404, "MANIFEST_UNKNOWN").await;

    // A child that lives in another repository does not count either.
    let elsewhere = app.push_image("b", "img", 1).await;
    let resp = app
        .put_manifest("a", "bad", OCI_INDEX, &index_of(&[elsewhere.descriptor()]))
        .await;
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;

    let good = index_of(&[image.descriptor()]);
    let digest = app.push_manifest("a", "good", OCI_INDEX, &good).await;
    let resp = app.get("/v2/a/manifests/good").await;
    assert_eq!(header(&resp, "content-type"), OCI_INDEX);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap(), good);
}

#[tokio::test]
async fn an_oci_artifact_with_the_empty_config() {
    let app = TestApp::start();
    let empty = app.push_blob("a", b"{}").await;
    assert_eq!(
        empty,
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    let payload = br#"{"spdxVersion":"SPDX-2.3"}"#;
    app.push_blob("a", payload).await;
    let artifact = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": { "mediaType": OCI_EMPTY, "digest": empty, "size": 2, "data": "e30=" },
        "layers": [descriptor("application/spdx+json", payload)],
        "annotations": { "org.opencontainers.image.created": "2024-01-01T00:00:00Z" },
    }));
    let digest = app.push_manifest("a", "sbom", OCI_MANIFEST, &artifact).await;
    let resp = app.get(&format!("/v2/a/manifests/{digest}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap(), artifact);
    let blob = app.get(&format!("/v2/a/blobs/{empty}")).await;
    assert_eq!(blob.bytes().await.unwrap(), &b"{}"[..]);
}

#[tokio::test]
async fn invalid_json_is_manifest_invalid() {
    let app = TestApp::start();
    for body in [&b"not json"[..], b"{\"schemaVersion\": 2,", b"", b"[]"] {
        let resp = app.put_manifest("a", "v1", OCI_MANIFEST, body).await;
        assert_error(resp, 400, "MANIFEST_INVALID").await;
    }
    // An image manifest without layers or config is not one.
    let resp = app
        .put_manifest(
            "a",
            "v1",
            OCI_MANIFEST,
            &to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST })),
        )
        .await;
    assert_error(resp, 400, "MANIFEST_INVALID").await;
    // A refused push creates no repository.
    let catalog: Value = app.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!([]));
}

#[tokio::test]
async fn content_type_must_match_the_media_type() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    for content_type in [DOCKER_MANIFEST, OCI_INDEX] {
        let resp = app.put_manifest("a", "v1", content_type, &image.manifest).await;
        let body = assert_error(resp, 400, "MANIFEST_INVALID").await;
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("mediaType"), "{message}");
    }
    assert_error(app.get("/v2/a/manifests/v1").await, 404, "MANIFEST_UNKNOWN").await;
    // Parameters on the Content-Type are not part of the type.
    let resp = app
        .put_manifest("a", "v1", &format!("{OCI_MANIFEST}; charset=utf-8"), &image.manifest)
        .await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn a_missing_layer_or_config_is_manifest_blob_unknown() {
    let app = TestApp::start();
    let image = Image::random(2);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    let resp = app.put_manifest("a", "v1", OCI_MANIFEST, &image.manifest).await;
    let body = assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(
        body["errors"][0]["detail"]["digest"],
        sha256(&image.layers[1]),
        "{body}"
    );
    assert_error(app.get("/v2/a/manifests/v1").await, 404, "MANIFEST_UNKNOWN").await;

    let image = Image::random(1);
    app.push_blob("a", &image.layers[0]).await;
    let resp = app.put_manifest("a", "v2", OCI_MANIFEST, &image.manifest).await;
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;

    // A blob of the same registry but another repository does not count.
    let image = Image::random(1);
    app.push_blob("b", &image.config).await;
    app.push_blob("b", &image.layers[0]).await;
    let resp = app.put_manifest("a", "v3", OCI_MANIFEST, &image.manifest).await;
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn a_digest_in_the_url_must_match_the_body() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    let other = sha256(b"another manifest");
    let resp = app.put_manifest("a", &other, OCI_MANIFEST, &image.manifest).await;
    assert_error(resp, 400, "DIGEST_INVALID").await;
    assert_error(
        app.get(&format!("/v2/a/manifests/{other}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_error(
        app.get(&format!("/v2/a/manifests/{}", image.digest)).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_413() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    let mut manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["annotations"] = json!({ "padding": "x".repeat(4 << 20) });
    let big = to_vec(&manifest);
    assert!(big.len() > 4 << 20);

    // With a Content-Length, the request can be refused before its body is read.
    // (Sent by hand: hyper's client reports a broken pipe instead of the early answer.)
    let head = format!(
        "PUT /v2/a/manifests/big HTTP/1.1\r\nhost: x\r\ncontent-type: {OCI_MANIFEST}\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let (status, text) = raw_request(&app.base, &head, big.clone());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"errors\""), "{text}");

    // Without a Content-Length (chunked), the limit holds as well.
    let head = format!(
        "PUT /v2/a/manifests/big HTTP/1.1\r\nhost: x\r\ncontent-type: {OCI_MANIFEST}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut chunked = Vec::new();
    for piece in big.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = raw_request(&app.base, &head, chunked);
    assert_eq!(status, 413, "{text}");
    assert_error(app.get("/v2/a/manifests/big").await, 404, "MANIFEST_UNKNOWN").await;

    // distribution-spec: registries SHOULD accept manifests of at least 4 MiB.
    let room = (4 << 20) - (big.len() - (4 << 20));
    manifest["annotations"] = json!({ "padding": "x".repeat(room) });
    let fits = to_vec(&manifest);
    assert_eq!(fits.len(), 4 << 20);
    let resp = app.put_manifest("a", "fits", OCI_MANIFEST, &fits).await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn schema1_is_refused_with_a_clear_message() {
    let app = TestApp::start();
    let signed = to_vec(&json!({
        "schemaVersion": 1,
        "name": "a",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{ "blobSum": sha256(b"x") }],
        "history": [{ "v1Compatibility": "{}" }],
        "signatures": [],
    }));
    for content_type in [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/json",
    ] {
        let resp = app.put_manifest("a", "v1", content_type, &signed).await;
        let body = assert_error(resp, 400, "MANIFEST_INVALID").await;
        let message = body["errors"][0]["message"].as_str().unwrap().to_lowercase();
        assert!(message.contains("schema 1"), "{content_type}: {message}");
    }
}

#[tokio::test]
async fn unknown_manifests_and_repositories_are_404() {
    let app = TestApp::start();
    app.push_image("a", "v1", 1).await;
    assert_error(app.get("/v2/a/manifests/v2").await, 404, "MANIFEST_UNKNOWN").await;
    let missing = sha256(b"no such manifest");
    assert_error(
        app.get(&format!("/v2/a/manifests/{missing}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(app.head("/v2/a/manifests/v2").await.status(), 404);
    assert_error(app.get("/v2/nope/manifests/v1").await, 404, "NAME_UNKNOWN").await;
    assert_error(app.delete("/v2/a/manifests/v2").await, 404, "MANIFEST_UNKNOWN").await;
}
