//! The referrers API: `GET /v2/<name>/referrers/<digest>` and the
//! `OCI-Subject` answer to pushes of manifests with a subject.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::harness::{assert_error, descriptor, header, sha256, Image, TestApp, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};

pub const SBOM: &str = "application/spdx+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// Pushes an artifact manifest about `subject` and returns (digest, bytes).
pub async fn push_referrer(
    app: &TestApp,
    repo: &str,
    subject: &Value,
    artifact_type: Option<&str>,
    annotations: Value,
) -> (String, Vec<u8>) {
    let empty = app.push_blob(repo, b"{}").await;
    let payload = crate::harness::random_bytes(64);
    app.push_blob(repo, &payload).await;
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_EMPTY, "digest": empty, "size": 2 },
        "layers": [descriptor("application/octet-stream", &payload)],
        "subject": subject,
        "annotations": annotations,
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = json!(t);
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let resp = app.put_manifest(repo, &sha256(&bytes), OCI_MANIFEST, &bytes).await;
    assert_eq!(resp.status(), 201);
    // distribution-spec: a registry that supports referrers answers with OCI-Subject.
    assert_eq!(header(&resp, "oci-subject"), subject["digest"].as_str().unwrap());
    (sha256(&bytes), bytes)
}

async fn referrers(app: &TestApp, repo: &str, digest: &str, query: &str) -> (reqwest::header::HeaderMap, Value) {
    let resp = app.get(&format!("/v2/{repo}/referrers/{digest}{query}")).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert_eq!(crate::harness::header_of(&headers, "content-type"), OCI_INDEX);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], OCI_INDEX);
    (headers, body)
}

fn by_digest<'a>(index: &'a Value, digest: &str) -> &'a Value {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == digest)
        .unwrap_or_else(|| panic!("{digest} is not listed in {index}"))
}

#[tokio::test]
async fn referrers_list_the_manifests_about_a_subject() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    let subject = image.descriptor();
    let (sbom, sbom_bytes) = push_referrer(&app, "a", &subject, Some(SBOM), json!({ "kind": "sbom" })).await;
    let (sig, sig_bytes) = push_referrer(&app, "a", &subject, Some(SIGNATURE), json!({ "kind": "signature" })).await;
    // Without artifactType, the config media type stands in for it.
    let (plain, _) = push_referrer(&app, "a", &subject, None, json!({ "kind": "plain" })).await;
    // A manifest about something else is not listed.
    let other = app.push_image("a", "v2", 1).await;
    push_referrer(&app, "a", &other.descriptor(), Some(SBOM), json!({})).await;

    let (headers, index) = referrers(&app, "a", &image.digest, "").await;
    assert!(headers.get("oci-filters-applied").is_none());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
    let d = by_digest(&index, &sbom);
    assert_eq!(d["mediaType"], OCI_MANIFEST);
    assert_eq!(d["size"], sbom_bytes.len());
    assert_eq!(d["artifactType"], SBOM);
    assert_eq!(d["annotations"], json!({ "kind": "sbom" }));
    let d = by_digest(&index, &sig);
    assert_eq!(d["size"], sig_bytes.len());
    assert_eq!(d["artifactType"], SIGNATURE);
    assert_eq!(d["annotations"], json!({ "kind": "signature" }));
    let d = by_digest(&index, &plain);
    assert_eq!(d["artifactType"], OCI_EMPTY);
    assert_eq!(d["annotations"], json!({ "kind": "plain" }));
}

#[tokio::test]
async fn the_artifact_type_filter_is_applied_and_announced() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    let subject = image.descriptor();
    let (sbom, _) = push_referrer(&app, "a", &subject, Some(SBOM), json!({})).await;
    push_referrer(&app, "a", &subject, Some(SIGNATURE), json!({})).await;

    let (headers, index) = referrers(&app, "a", &image.digest, "?artifactType=application%2Fspdx%2Bjson").await;
    assert_eq!(
        crate::harness::header_of(&headers, "oci-filters-applied"),
        "artifactType"
    );
    let listed: Vec<&Value> = index["manifests"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["digest"], sbom);

    let (headers, index) = referrers(&app, "a", &image.digest, "?artifactType=application/unknown").await;
    assert_eq!(
        crate::harness::header_of(&headers, "oci-filters-applied"),
        "artifactType"
    );
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn an_unknown_subject_has_an_empty_list() {
    let app = TestApp::start();
    app.push_image("a", "v1", 1).await;
    let (_, index) = referrers(&app, "a", &sha256(b"no such manifest"), "").await;
    assert_eq!(index["manifests"], json!([]));
    // distribution-spec: never a 404 from the referrers API, or clients think it unsupported.
    let (_, index) = referrers(&app, "nope", &sha256(b"x"), "").await;
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn a_subject_may_be_pushed_after_its_referrers() {
    // distribution-spec: a manifest whose subject is missing is still accepted.
    let app = TestApp::start();
    let image = Image::random(1);
    let (sig, _) = push_referrer(&app, "a", &image.descriptor(), Some(SIGNATURE), json!({})).await;
    let (_, index) = referrers(&app, "a", &image.digest, "").await;
    assert_eq!(index["manifests"][0]["digest"], sig);
    image.push(&app.client, &app.base, "a", "v1").await;
    let (_, index) = referrers(&app, "a", &image.digest, "").await;
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_index_with_a_subject_is_a_referrer() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    let child = app.push_image("a", "child", 1).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [child.descriptor()],
        "subject": image.descriptor(),
        "annotations": { "bundle": "yes" },
    }))
    .unwrap();
    let resp = app.put_manifest("a", "bundle", OCI_INDEX, &index).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "oci-subject"), image.digest);

    // distribution-spec: an index without artifactType is listed without one.
    let untyped = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child.descriptor()],
        "subject": image.descriptor(),
    }))
    .unwrap();
    let resp = app.put_manifest("a", "untyped", OCI_INDEX, &untyped).await;
    assert_eq!(resp.status(), 201);

    let (_, list) = referrers(&app, "a", &image.digest, "").await;
    assert_eq!(list["manifests"].as_array().unwrap().len(), 2, "{list}");
    let d = by_digest(&list, &sha256(&index));
    assert_eq!(d["mediaType"], OCI_INDEX);
    assert_eq!(d["size"], index.len());
    assert_eq!(d["artifactType"], "application/vnd.example.bundle");
    assert_eq!(d["annotations"], json!({ "bundle": "yes" }));
    let d = by_digest(&list, &sha256(&untyped));
    assert!(d.get("artifactType").is_none(), "{d}");
}

#[tokio::test]
async fn a_deleted_referrer_is_no_longer_listed() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    let (sbom, _) = push_referrer(&app, "a", &image.descriptor(), Some(SBOM), json!({})).await;
    assert_eq!(app.delete(&format!("/v2/a/manifests/{sbom}")).await.status(), 202);
    let (_, index) = referrers(&app, "a", &image.digest, "").await;
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_need_a_valid_digest() {
    let app = TestApp::start();
    app.push_image("a", "v1", 1).await;
    assert_error(app.get("/v2/a/referrers/sha256:abc").await, 400, "DIGEST_INVALID").await;
    assert_error(app.get("/v2/a/referrers/latest").await, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn a_manifest_without_subject_gets_no_oci_subject_header() {
    let app = TestApp::start();
    let image = Image::random(1);
    app.push_blob("a", &image.config).await;
    app.push_blob("a", &image.layers[0]).await;
    let resp = app.put_manifest("a", "v1", OCI_MANIFEST, &image.manifest).await;
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("oci-subject").is_none());
}

/// Pushes `count` referrers of `subject` sharing one payload blob, the i-th of
/// type `types[i % types.len()]` with annotations of about `padding` bytes;
/// returns their digests by type.
async fn push_many_referrers(
    app: &TestApp,
    repo: &str,
    subject: &Value,
    count: usize,
    types: &[&str],
    padding: usize,
) -> BTreeMap<String, BTreeSet<String>> {
    let empty = app.push_blob(repo, b"{}").await;
    let payload = b"one payload for every referrer";
    app.push_blob(repo, payload).await;
    let mut by_type: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in 0..count {
        let artifact_type = types[i % types.len()];
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": { "mediaType": OCI_EMPTY, "digest": empty, "size": 2 },
            "layers": [descriptor("application/octet-stream", payload)],
            "subject": subject,
            "annotations": { "n": i.to_string(), "padding": "x".repeat(padding) },
        }))
        .unwrap();
        let digest = app
            .push_manifest(repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
            .await;
        by_type.entry(artifact_type.to_string()).or_default().insert(digest);
    }
    by_type
}

/// The target of a `Link: <target>; rel="next"` header, if there is one.
fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().expect("Link is text");
    let (target, params) = link.split_once(';').expect("Link: <target>; rel=\"next\"");
    assert_eq!(params.trim(), "rel=\"next\"", "{link}");
    Some(
        target
            .trim()
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or_else(|| panic!("Link target in <>: {link}"))
            .to_string(),
    )
}

/// Follows the `Link` headers from `first` (a path) as ORAS does; returns
/// each page's digests and body size. Every page must be a valid OCI index,
/// filtered (with `OCI-Filters-Applied`) when `filtered`.
async fn follow_pages(app: &TestApp, first: &str, filtered: bool) -> Vec<(Vec<String>, usize)> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(path) = next {
        assert!(pages.len() < 100, "the Link headers do not end");
        let resp = app.get(&path).await;
        assert_eq!(resp.status(), 200, "{path}");
        let headers = resp.headers().clone();
        assert_eq!(crate::harness::header_of(&headers, "content-type"), OCI_INDEX);
        if filtered {
            assert_eq!(
                crate::harness::header_of(&headers, "oci-filters-applied"),
                "artifactType",
                "{path}"
            );
        }
        let bytes = resp.bytes().await.unwrap();
        let index: Value = serde_json::from_slice(&bytes).expect("each page is JSON");
        assert_eq!(index["schemaVersion"], 2, "{path}");
        assert_eq!(index["mediaType"], OCI_INDEX, "{path}");
        let digests = index["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("manifests in {index}"))
            .iter()
            .map(|d| {
                assert_eq!(d["mediaType"], OCI_MANIFEST);
                assert!(d["size"].as_u64().unwrap() > 0);
                d["digest"].as_str().unwrap().to_string()
            })
            .collect();
        pages.push((digests, bytes.len()));
        next = next_link(&headers);
    }
    pages
}

/// The digests of all pages, asserting that none is listed twice.
fn each_once(pages: &[(Vec<String>, usize)]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for digest in pages.iter().flat_map(|(digests, _)| digests) {
        assert!(seen.insert(digest.clone()), "{digest} is listed twice");
    }
    seen
}

#[tokio::test]
async fn referrers_page_with_n_and_link_headers() {
    let app = TestApp::start();
    let image = app.push_image("a/b", "v1", 1).await;
    let by_type = push_many_referrers(&app, "a/b", &image.descriptor(), 23, &[SIGNATURE, SBOM], 0).await;
    let all: BTreeSet<String> = by_type.values().flatten().cloned().collect();
    assert_eq!(all.len(), 23);

    let pages = follow_pages(&app, &format!("/v2/a/b/referrers/{}?n=5", image.digest), false).await;
    assert_eq!(pages.iter().map(|(d, _)| d.len()).collect::<Vec<_>>(), [5, 5, 5, 5, 3]);
    assert_eq!(each_once(&pages), all);
    let order: Vec<&String> = pages.iter().flat_map(|(d, _)| d).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "digest order: {order:?}");

    // With the filter, every page is filtered and the Link keeps the filter.
    let first = format!(
        "/v2/a/b/referrers/{}?n=4&artifactType=application%2Fspdx%2Bjson",
        image.digest
    );
    let resp = app.get(&first).await;
    let link = next_link(resp.headers()).expect("a second page");
    assert!(link.contains("artifactType=application%2Fspdx%2Bjson"), "{link}");
    assert!(
        link.starts_with(&format!("/v2/a/b/referrers/{}?", image.digest)),
        "{link}"
    );
    let pages = follow_pages(&app, &first, true).await;
    assert_eq!(pages.iter().map(|(d, _)| d.len()).collect::<Vec<_>>(), [4, 4, 3]);
    assert_eq!(each_once(&pages), by_type[SBOM]);

    // Without n, a page holds up to 1,000: all of these, and no Link.
    let pages = follow_pages(&app, &format!("/v2/a/b/referrers/{}", image.digest), false).await;
    assert_eq!(pages.len(), 1);
    assert_eq!(each_once(&pages), all);
    // A page that ends exactly at the last referrer has no Link.
    let pages = follow_pages(&app, &format!("/v2/a/b/referrers/{}?n=23", image.digest), false).await;
    assert_eq!(pages.len(), 1);
    // n=0 asks for nothing.
    let pages = follow_pages(&app, &format!("/v2/a/b/referrers/{}?n=0", image.digest), false).await;
    assert_eq!(pages.len(), 1);
    assert!(pages[0].0.is_empty(), "{pages:?}");
}

#[tokio::test]
async fn a_referrers_page_stays_under_a_mebibyte() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    // Five referrers with about 300 KB of annotations each: 1.5 MB in all.
    let by_type = push_many_referrers(&app, "a", &image.descriptor(), 5, &[SIGNATURE], 300_000).await;
    let pages = follow_pages(&app, &format!("/v2/a/referrers/{}", image.digest), false).await;
    assert_eq!(pages.iter().map(|(d, _)| d.len()).collect::<Vec<_>>(), [3, 2]);
    for (_, bytes) in &pages {
        assert!(*bytes < 1 << 20, "a page of {bytes} bytes");
    }
    assert_eq!(each_once(&pages), by_type[SIGNATURE]);
}

#[tokio::test]
async fn referrers_paging_arguments_are_checked() {
    let app = TestApp::start();
    let image = app.push_image("a", "v1", 1).await;
    let path = format!("/v2/a/referrers/{}", image.digest);
    assert_error(app.get(&format!("{path}?n=-1")).await, 400, "PAGINATION_NUMBER_INVALID").await;
    assert_error(
        app.get(&format!("{path}?n=many")).await,
        400,
        "PAGINATION_NUMBER_INVALID",
    )
    .await;
    assert_error(app.get(&format!("{path}?last=v1")).await, 400, "DIGEST_INVALID").await;
    assert_error(
        app.get(&format!("{path}?last=sha256%3A%00")).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    // An empty cursor is no cursor; one past every referrer gives an empty page.
    let (_, index) = referrers(&app, "a", &image.digest, "?last=").await;
    assert_eq!(index["manifests"], json!([]));
    let last = format!("sha256:{}", "f".repeat(64));
    let (headers, index) = referrers(&app, "a", &image.digest, &format!("?n=1&last={last}")).await;
    assert_eq!(index["manifests"], json!([]));
    assert!(headers.get("link").is_none());
}
