//! Cross-repository blob mounts: `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>`.

use crate::harness::{header, random_bytes, sha256, with_query, TestApp};

async fn mount(app: &TestApp, repo: &str, query: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v2/{repo}/blobs/uploads/?{query}")))
        .send()
        .await
        .expect("POST mount")
}

#[tokio::test]
async fn a_blob_linked_in_from_is_mounted() {
    let app = TestApp::start();
    let bytes = random_bytes(2000);
    let digest = app.push_blob("src/app", &bytes).await;

    let resp = mount(&app, "dst/app", &format!("mount={digest}&from=src/app")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        app.resolve(header(&resp, "location")),
        app.url(&format!("/v2/dst/app/blobs/{digest}"))
    );
    let blob = app.get(&format!("/v2/dst/app/blobs/{digest}")).await;
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap(), bytes);
    // The source keeps its link.
    assert_eq!(app.head(&format!("/v2/src/app/blobs/{digest}")).await.status(), 200);
}

#[tokio::test]
async fn a_blob_not_linked_in_from_opens_an_upload_session() {
    let app = TestApp::start();
    let bytes = random_bytes(500);
    // The registry has the blob, but only in `other`, not in `src`.
    let digest = app.push_blob("other", &bytes).await;
    app.push_blob("src", b"src has something else").await;

    let resp = mount(&app, "dst", &format!("mount={digest}&from=src")).await;
    assert_eq!(resp.status(), 202);
    assert!(!header(&resp, "docker-upload-uuid").is_empty());
    app.assert_blob_unknown("dst", &digest).await;

    // The session is a real one: upload the blob through it.
    let url = app.resolve(header(&resp, "location"));
    let resp = app
        .client
        .put(with_query(&url, &format!("digest={digest}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        app.get(&format!("/v2/dst/blobs/{digest}")).await.bytes().await.unwrap(),
        bytes
    );
}

#[tokio::test]
async fn a_blob_the_registry_lacks_opens_an_upload_session() {
    let app = TestApp::start();
    app.push_blob("src", b"something").await;
    let missing = sha256(b"nobody pushed this");
    let resp = mount(&app, "dst", &format!("mount={missing}&from=src")).await;
    assert_eq!(resp.status(), 202);
    let url = app.resolve(header(&resp, "location"));
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 204);

    let resp = mount(&app, "dst", &format!("mount={missing}")).await;
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn mount_without_from_links_a_blob_the_registry_has() {
    let app = TestApp::start();
    let bytes = random_bytes(700);
    let digest = app.push_blob("somewhere/else", &bytes).await;
    let resp = mount(&app, "dst", &format!("mount={digest}")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        app.get(&format!("/v2/dst/blobs/{digest}")).await.bytes().await.unwrap(),
        bytes
    );
}

#[tokio::test]
async fn a_mounted_blob_can_back_a_manifest() {
    let app = TestApp::start();
    let image = app.push_image("src", "v1", 2).await;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let resp = mount(&app, "dst", &format!("mount={}&from=src", sha256(blob))).await;
        assert_eq!(resp.status(), 201);
    }
    let digest = app
        .push_manifest("dst", "v1", crate::harness::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(digest, image.digest);
}

#[tokio::test]
async fn invalid_mount_arguments_fall_back_to_an_upload() {
    // distribution-spec: invalid mount arguments fall back to the standard upload (202).
    let app = TestApp::start();
    for query in ["mount=sha256:nothex&from=src", "mount=sha384:abc&from=src"] {
        let resp = mount(&app, "dst", query).await;
        assert_eq!(resp.status(), 202, "{query}");
        assert!(resp.headers().contains_key("docker-upload-uuid"));
    }
    let blob = b"mounted from a bad name";
    app.push_blob("src", blob).await;
    let resp = mount(&app, "dst", &format!("mount={}&from=Not_Valid", sha256(blob))).await;
    assert_eq!(resp.status(), 202);
}
