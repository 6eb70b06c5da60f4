//! Pull-through caching of real upstream registries of every kind: the
//! reference registry plain, behind TLS with a test CA, requiring a client
//! certificate, with basic auth, and a `berth` with token auth.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;
use crate::upstreams::{BerthUpstream, ReferenceRegistry};

/// A cache of one upstream under the prefix `up`, with `extra` lines in its
/// `[[proxy.upstreams]]` table.
fn cache_of(url: &str, extra: &str) -> TestApp {
    TestApp::start_with_config(
        &format!("[[proxy.upstreams]]\nname = \"up\"\nurl = \"{url}\"\n{extra}\n"),
        &[],
    )
}

async fn pull_all(cache: &TestApp, repo: &str, tag: &str, image: &Image) {
    let resp = cache
        .client
        .get(cache.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{repo}:{tag}: {text}");
    assert_eq!(text.as_bytes(), image.manifest.as_slice(), "byte for byte");
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let resp = cache.get(&format!("/v2/{repo}/blobs/{}", sha256(blob))).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), blob.as_slice());
    }
}

#[tokio::test]
async fn the_reference_registry_behind_tls_with_a_test_ca() {
    let upstream = ReferenceRegistry::start_tls();
    let image = upstream.push_image("team/app", "v1", 2).await;
    let ca = upstream.ca_pem().unwrap().display().to_string();
    let cache = cache_of(&upstream.base(), &format!("ca_file = \"{ca}\""));
    pull_all(&cache, "up/team/app", "v1", &image).await;

    // Without the CA the certificate is refused, with a clear error.
    let untrusting = cache_of(&upstream.base(), "");
    let resp = untrusting.get("/v2/up/team/app/manifests/v1").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    // insecure_skip_verify accepts any certificate.
    let careless = cache_of(&upstream.base(), "insecure_skip_verify = true");
    pull_all(&careless, "up/team/app", "v1", &image).await;
}

#[tokio::test]
async fn the_reference_registry_requiring_a_client_certificate() {
    let upstream = ReferenceRegistry::start_mutual_tls();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let ca = upstream.ca_pem().unwrap().display().to_string();
    let (cert, key) = upstream.client_cert_pem().unwrap();
    let cache = cache_of(
        &upstream.base(),
        &format!(
            "ca_file = \"{ca}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    pull_all(&cache, "up/team/app", "v1", &image).await;
    let without = cache_of(&upstream.base(), &format!("ca_file = \"{ca}\""));
    assert_eq!(
        without.get("/v2/up/team/app/manifests/v1").await.status(),
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn the_reference_registry_with_basic_auth_from_a_password_file() {
    let upstream = ReferenceRegistry::start_basic_auth();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let (user, password) = upstream.credentials().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let cache = cache_of(
        &upstream.base(),
        &format!("username = \"{user}\"\npassword_file = \"{}\"", file.display()),
    );
    pull_all(&cache, "up/team/app", "v1", &image).await;
    let wrong = cache_of(
        &upstream.base(),
        &format!("username = \"{user}\"\npassword = \"wrong\""),
    );
    let resp = wrong.get("/v2/up/team/app/manifests/v1").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(resp.text().await.unwrap().contains("refused access"));
    let anonymous = cache_of(&upstream.base(), "");
    assert_eq!(
        anonymous.get("/v2/up/team/app/manifests/v1").await.status(),
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn a_berth_with_token_auth_through_its_own_realm() {
    let upstream = BerthUpstream::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let (user, password) = upstream.credentials();
    let cache = cache_of(
        upstream.base(),
        &format!("username = \"{user}\"\npassword = \"{password}\""),
    );
    pull_all(&cache, "up/team/app", "v1", &image).await;
    // A second image reuses the cached token for its scope, or gets another.
    let second = upstream.push_image("team/other", "v1", 1).await;
    pull_all(&cache, "up/team/other", "v1", &second).await;
    let anonymous = cache_of(upstream.base(), "");
    assert_eq!(
        anonymous.get("/v2/up/team/app/manifests/v1").await.status(),
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn a_hundred_clients_and_one_upstream_fetch() {
    let upstream = ReferenceRegistry::start();
    let layer = random_bytes(16 << 20);
    let image = Image::of_layers(vec![layer.clone()]);
    image
        .push_as(
            &upstream.client(),
            &upstream.base(),
            "team/big",
            "v1",
            BlobUpload::PostThenPut,
        )
        .await;
    let cache = cache_of(&upstream.base(), "");
    let digest = sha256(&layer);
    let url = cache.url(&format!("/v2/up/team/big/blobs/{digest}"));
    let pulls = (0..100).map(|_| {
        let client = cache.client.clone();
        let url = url.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap() })
    });
    for pull in futures::future::join_all(pulls).await {
        assert_eq!(sha256(&pull.unwrap()), digest);
    }
    let path = format!("/v2/team/big/blobs/{digest}");
    assert_eq!(
        upstream.hits("GET", &path).await,
        1,
        "one upstream fetch for 100 clients"
    );
}

#[tokio::test]
async fn an_upstream_without_a_referrers_api_has_its_tag_schema_signatures_listed() {
    let upstream = ReferenceRegistry::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let sig_tag = format!("sha256-{}.sig", image.digest.trim_start_matches("sha256:"));
    let signature = upstream.push_image("team/app", &sig_tag, 1).await;
    let cache = cache_of(&upstream.base(), "");
    let resp = cache.get(&format!("/v2/up/team/app/referrers/{}", image.digest)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let index: Value = resp.json().await.unwrap();
    assert_eq!(index["manifests"][0]["digest"], json!(signature.digest), "{index}");
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
}

#[tokio::test]
async fn a_multi_arch_index_is_cached_whole_and_its_children_when_asked_for() {
    let mut upstream = ReferenceRegistry::start();
    let platforms = [
        json!({ "os": "linux", "architecture": "amd64" }),
        json!({ "os": "linux", "architecture": "arm64" }),
    ];
    let index = upstream
        .push_index("team/multi", "1", vec![Image::random(1), Image::random(1)], &platforms)
        .await;
    let cache = cache_of(&upstream.base(), "");
    let resp = cache
        .client
        .get(cache.url("/v2/up/team/multi/manifests/1"))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest"), index.digest);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), index.manifest.as_slice());
    let child = &index.children[1];
    pull_all(&cache, "up/team/multi", &child.digest, child).await;
    upstream.stop();
    pull_all(&cache, "up/team/multi", &child.digest, child).await;
    let resp = cache
        .get(&format!("/v2/up/team/multi/manifests/{}", index.children[0].digest))
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_GATEWAY,
        "the other child was never fetched"
    );
}
