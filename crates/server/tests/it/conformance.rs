//! The four workflows of the OCI distribution-spec conformance suite (pull,
//! push, content discovery, content management), replayed request by request
//! in the suite's order against one repository, with automatic cross-mount
//! on, and every answer checked as the suite checks it.
//!
//! The suite itself is Go and cannot be built here; this replay keeps its
//! expectations in the test suite so that "zero conformance failures" holds
//! on every change and on both backends. Each check carries the name of the
//! suite's spec it stands for, and the test reports every failed check at
//! once, as the suite's report would.

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::harness::{random_bytes, sha256, with_query, TestApp, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};

/// The repository every workflow works in (`OCI_NAMESPACE`).
const NAMESPACE: &str = "conformance/app";
/// The repository blobs are mounted into (`OCI_CROSSMOUNT_NAMESPACE`).
const CROSSMOUNT: &str = "conformance-crossmount";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The reference the suite uses for a manifest that does not exist.
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
const TEST_TAG: &str = "tagtest0";
const EMPTY_LAYER_TAG: &str = "emptylayer";
const ANNOTATION: &str = "org.opencontainers.conformance.test";
const ARTIFACT_TYPE_A: &str = "application/vnd.nhl.peanut.butter.bagel";
const ARTIFACT_TYPE_B: &str = "application/vnd.nba.strawberry.jam.croissant";
const ARTIFACT_TYPE_INDEX: &str = "application/vnd.food.stand";

/// The error codes the suite accepts in a 400 body.
const SUITE_ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
];

/// Bytes and their digest.
struct Blob {
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob { bytes, digest }
    }

    fn json(value: &Value) -> Blob {
        Blob::new(serde_json::to_vec_pretty(value).expect("JSON"))
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// The suite's test data: a config and a manifest per workflow (each
/// manifest over its config and one shared layer), blobs for the upload
/// tests, and the artifacts with a subject for the referrers tests.
struct Data {
    configs: Vec<Blob>,
    layer: Blob,
    manifests: Vec<Blob>,
    empty_layer_manifest: Blob,
    blob_a: Blob,
    blob_b: Blob,
    /// Where `blob_b` is split for the chunked upload.
    chunk_split: usize,
    dummy_digest: String,
    empty_json: Blob,
    ref_blob_a: Blob,
    ref_blob_b: Blob,
    refs_a_config: Blob,
    refs_b_config: Blob,
    refs_a_layer: Blob,
    refs_b_layer: Blob,
    /// An artifact whose subject (`manifests[3]`) is not pushed at the time.
    refs_c_layer: Blob,
    refs_index: Blob,
}

impl Data {
    fn new() -> Data {
        let configs: Vec<Blob> = (0..5)
            .map(|_| {
                Blob::json(&json!({
                    "author": hex::encode(random_bytes(8)),
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": { "type": "layers", "diff_ids": [] },
                }))
            })
            .collect();
        let layer = Blob::new(random_bytes(120));
        // The suite's config descriptors carry the config inline (`data`)
        // and a field no spec defines, which a registry must keep.
        let config_descriptor = |config: &Blob| {
            let mut d = config.descriptor(OCI_CONFIG);
            d["data"] = json!(base64_of(&config.bytes));
            d["newUnspecifiedField"] = json!(base64_of(b"hello world"));
            d
        };
        let manifests: Vec<Blob> = configs
            .iter()
            .map(|config| {
                Blob::json(&json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": config_descriptor(config),
                    "layers": [layer.descriptor(GZIP_LAYER)],
                }))
            })
            .collect();
        // No `mediaType` field: the Content-Type says what it is.
        let empty_layer_manifest = Blob::json(&json!({
            "schemaVersion": 2,
            "config": config_descriptor(&configs[1]),
            "layers": [],
        }));
        let empty_json = Blob::new(b"{}".to_vec());
        let ref_blob_a = Blob::new(b"NHL Peanut Butter on my NHL bagel".to_vec());
        let ref_blob_b = Blob::new(b"NBA Strawberry Jam on my NBA croissant".to_vec());
        let subject = manifests[4].descriptor(OCI_MANIFEST);
        let config_artifact = |artifact_type: &str, blob: &Blob, note: &str| {
            Blob::json(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": blob.descriptor(artifact_type),
                "subject": subject,
                "layers": [empty_json.descriptor(OCI_EMPTY)],
                "annotations": { ANNOTATION: note },
            }))
        };
        let layer_artifact = |artifact_type: &str, blob: &Blob, subject: &Value, note: Option<&str>| {
            let mut m = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": empty_json.descriptor(OCI_EMPTY),
                "subject": subject,
                "layers": [blob.descriptor(artifact_type)],
            });
            if let Some(note) = note {
                m["annotations"] = json!({ ANNOTATION: note });
            }
            Blob::json(&m)
        };
        let refs_a_config = config_artifact(ARTIFACT_TYPE_A, &ref_blob_a, "test config a");
        let refs_b_config = config_artifact(ARTIFACT_TYPE_B, &ref_blob_b, "test config b");
        let refs_a_layer = layer_artifact(ARTIFACT_TYPE_A, &ref_blob_a, &subject, Some("test layer a"));
        let refs_b_layer = layer_artifact(ARTIFACT_TYPE_B, &ref_blob_b, &subject, Some("test layer b"));
        let refs_c_layer = layer_artifact(
            ARTIFACT_TYPE_B,
            &ref_blob_b,
            &manifests[3].descriptor(OCI_MANIFEST),
            None,
        );
        let refs_index = Blob::json(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": ARTIFACT_TYPE_INDEX,
            "manifests": [refs_a_config.descriptor(OCI_MANIFEST), refs_a_layer.descriptor(OCI_MANIFEST)],
            "subject": subject,
            "annotations": { ANNOTATION: "test index" },
        }));
        let blob_b = Blob::new(random_bytes(42));
        Data {
            configs,
            layer,
            manifests,
            empty_layer_manifest,
            blob_a: Blob::new(random_bytes(42)),
            chunk_split: blob_b.bytes.len() / 2 + 1,
            blob_b,
            dummy_digest: sha256(b"hello world"),
            empty_json,
            ref_blob_a,
            ref_blob_b,
            refs_a_config,
            refs_b_config,
            refs_a_layer,
            refs_b_layer,
            refs_c_layer,
            refs_index,
        }
    }

    /// The annotation each referrer of `manifests[4]` carries.
    fn annotation_of(&self, digest: &str) -> Option<&'static str> {
        [
            (&self.refs_a_config, "test config a"),
            (&self.refs_b_config, "test config b"),
            (&self.refs_a_layer, "test layer a"),
            (&self.refs_b_layer, "test layer b"),
            (&self.refs_index, "test index"),
        ]
        .into_iter()
        .find(|(b, _)| b.digest == digest)
        .map(|(_, note)| note)
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An answer as the suite sees it.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    async fn of(resp: Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("response body").to_vec();
        Answer { status, headers, body }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn is_2xx(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `Location` as a path (and query), as the suite's client uses it.
    fn location(&self) -> String {
        let location = self.header("location");
        match reqwest::Url::parse(location) {
            Ok(url) => match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            },
            Err(_) => location.to_owned(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }

    fn tags(&self) -> Vec<String> {
        serde_json::from_value(self.json()["tags"].clone()).unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

/// A request of the replay: method, path (relative to the server), headers, body.
struct Call<'a> {
    method: Method,
    path: String,
    headers: Vec<(&'a str, String)>,
    body: Option<Vec<u8>>,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: impl Into<String>) -> Call<'a> {
        Call {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn query(mut self, key: &str, value: &str) -> Self {
        self.path = with_query(&self.path, &format!("{key}={value}"));
        self
    }

    /// A body, with the `Content-Length` the suite's client sends.
    fn body(mut self, bytes: &[u8]) -> Self {
        self.body = Some(bytes.to_vec());
        self
    }
}

/// The replay: the server, the data, and every check that failed.
struct Replay {
    app: TestApp,
    data: Data,
    failures: Vec<String>,
}

impl Replay {
    async fn send(&self, call: Call<'_>) -> Answer {
        let mut req = self.app.client.request(call.method.clone(), self.app.url(&call.path));
        for (name, value) in &call.headers {
            req = req.header(*name, value);
        }
        // Go's client sends `Content-Length: 0` on a POST, PUT or PATCH without a body.
        let body = match (call.body, &call.method) {
            (Some(b), _) => Some(b),
            (None, m) if [Method::POST, Method::PUT, Method::PATCH].contains(m) => Some(Vec::new()),
            (None, _) => None,
        };
        if let Some(body) = body {
            req = req.body(body);
        }
        Answer::of(req.send().await.expect("request")).await
    }

    fn check(&mut self, spec: &str, ok: bool, answer: &Answer) {
        if !ok {
            self.failures.push(format!("{spec}: got {}", answer.describe()));
        }
    }

    fn check_status(&mut self, spec: &str, answer: &Answer, allowed: &[u16]) {
        self.check(spec, allowed.contains(&answer.status), answer);
    }

    /// A 2xx, or one of `other`.
    fn check_2xx_or(&mut self, spec: &str, answer: &Answer, other: &[u16]) {
        self.check(spec, answer.is_2xx() || other.contains(&answer.status), answer);
    }

    fn upload_path(repo: &str) -> String {
        format!("/v2/{repo}/blobs/uploads/")
    }

    fn manifest_path(reference: &str) -> String {
        format!("/v2/{NAMESPACE}/manifests/{reference}")
    }

    fn blob_path(digest: &str) -> String {
        format!("/v2/{NAMESPACE}/blobs/{digest}")
    }

    /// `POST` a session, then `PUT` the whole blob to it (the suite's setup push).
    async fn push_blob(&mut self, spec: &str, digest: &str, bytes: &[u8]) {
        let session = self.send(Call::new(Method::POST, Self::upload_path(NAMESPACE))).await;
        let put = Call::new(Method::PUT, session.location())
            .query("digest", digest)
            .header("content-type", "application/octet-stream")
            .body(bytes);
        let answer = self.send(put).await;
        self.check(spec, answer.is_2xx(), &answer);
    }

    async fn put_manifest(&mut self, reference: &str, media_type: &str, bytes: &[u8]) -> Answer {
        let call = Call::new(Method::PUT, Self::manifest_path(reference))
            .header("content-type", media_type)
            .body(bytes);
        self.send(call).await
    }

    async fn get_manifest(&self, method: Method, reference: &str) -> Answer {
        let call = Call::new(method, Self::manifest_path(reference)).header("accept", OCI_MANIFEST);
        self.send(call).await
    }

    async fn delete(&self, path: String) -> Answer {
        self.send(Call::new(Method::DELETE, path)).await
    }

    async fn pull(&mut self) {
        let d = &self.data;
        let (c0, c1, layer) = (
            d.configs[0].digest.clone(),
            d.configs[1].digest.clone(),
            d.layer.digest.clone(),
        );
        let (m0, m1) = (d.manifests[0].digest.clone(), d.manifests[1].digest.clone());
        let (c0_bytes, c1_bytes, layer_bytes) = (
            d.configs[0].bytes.clone(),
            d.configs[1].bytes.clone(),
            d.layer.bytes.clone(),
        );
        let (m0_bytes, m1_bytes) = (d.manifests[0].bytes.clone(), d.manifests[1].bytes.clone());
        let dummy = d.dummy_digest.clone();

        self.push_blob("pull: populate registry with test blob", &c0, &c0_bytes)
            .await;
        self.push_blob("pull: populate registry with test blob", &c1, &c1_bytes)
            .await;
        self.push_blob("pull: populate registry with test layer", &layer, &layer_bytes)
            .await;
        let a = self.put_manifest(TEST_TAG, OCI_MANIFEST, &m0_bytes).await;
        self.check("pull: populate registry with test manifest", a.is_2xx(), &a);
        let a = self.put_manifest(&m1, OCI_MANIFEST, &m1_bytes).await;
        self.check("pull: populate registry with test manifest", a.is_2xx(), &a);

        let a = self.send(Call::new(Method::HEAD, Self::blob_path(&dummy))).await;
        self.check_status(
            "pull: HEAD request to nonexistent blob should result in 404 response",
            &a,
            &[404],
        );
        let a = self.send(Call::new(Method::HEAD, Self::blob_path(&c0))).await;
        let spec = "pull: HEAD request to existing blob should yield 200";
        self.check(
            spec,
            a.status == 200 && [c0.as_str(), ""].contains(&a.header("docker-content-digest")),
            &a,
        );
        let a = self.send(Call::new(Method::GET, Self::blob_path(&dummy))).await;
        self.check_status("pull: GET nonexistent blob should result in 404 response", &a, &[404]);
        let a = self.send(Call::new(Method::GET, Self::blob_path(&c0))).await;
        self.check_status("pull: GET request to existing blob URL should yield 200", &a, &[200]);

        let a = self
            .send(Call::new(Method::HEAD, Self::manifest_path(NONEXISTENT_MANIFEST)))
            .await;
        self.check_status(
            "pull: HEAD request to nonexistent manifest should return 404",
            &a,
            &[404],
        );
        for (digest, spec) in [
            (
                &m0,
                "pull: HEAD request to manifest[0] path (digest) should yield 200 response",
            ),
            (
                &m1,
                "pull: HEAD request to manifest[1] path (digest) should yield 200 response",
            ),
        ] {
            let a = self.get_manifest(Method::HEAD, digest).await;
            self.check(
                spec,
                a.status == 200 && [digest.as_str(), ""].contains(&a.header("docker-content-digest")),
                &a,
            );
        }
        let a = self.get_manifest(Method::HEAD, TEST_TAG).await;
        let spec = "pull: HEAD request to manifest path (tag) should yield 200 response";
        self.check(
            spec,
            a.status == 200 && [m0.as_str(), ""].contains(&a.header("docker-content-digest")),
            &a,
        );
        let a = self
            .send(Call::new(Method::GET, Self::manifest_path(NONEXISTENT_MANIFEST)))
            .await;
        self.check_status("pull: GET nonexistent manifest should return 404", &a, &[404]);
        for (digest, spec) in [
            (
                &m0,
                "pull: GET request to manifest[0] path (digest) should yield 200 response",
            ),
            (
                &m1,
                "pull: GET request to manifest[1] path (digest) should yield 200 response",
            ),
        ] {
            let a = self.get_manifest(Method::GET, digest).await;
            self.check_status(spec, &a, &[200]);
        }
        let a = self.get_manifest(Method::GET, TEST_TAG).await;
        self.check_status(
            "pull: GET request to manifest path (tag) should yield 200 response",
            &a,
            &[200],
        );

        let call = Call::new(Method::GET, Self::manifest_path("sha256:totallywrong"))
            .header("content-type", OCI_MANIFEST)
            .body(b"blablabla");
        let a = self.send(call).await;
        let spec = "pull: 400 response body should contain OCI-conforming JSON message";
        let ok = a.status == 404 || (a.status == 400 && SUITE_ERROR_CODES.contains(&a.error_code().as_str()));
        self.check(spec, ok, &a);

        // Teardown, manifests before blobs (the suite's default).
        for digest in [&m0, &m1] {
            let a = self.delete(Self::manifest_path(digest)).await;
            self.check_2xx_or("pull: delete manifest created in setup", &a, &[405]);
        }
        for digest in [&c0, &c1, &layer] {
            let a = self.delete(Self::blob_path(digest)).await;
            self.check_2xx_or("pull: delete blob created in setup", &a, &[404, 405]);
        }
    }

    async fn push(&mut self) {
        let d = &self.data;
        let (a_digest, a_bytes) = (d.blob_a.digest.clone(), d.blob_a.bytes.clone());
        let (c1, c1_bytes) = (d.configs[1].digest.clone(), d.configs[1].bytes.clone());
        let (layer, layer_bytes) = (d.layer.digest.clone(), d.layer.bytes.clone());
        let (b_digest, split) = (d.blob_b.digest.clone(), d.chunk_split);
        let (chunk1, chunk2) = (d.blob_b.bytes[..split].to_vec(), d.blob_b.bytes[split..].to_vec());
        let range1 = format!("0-{}", chunk1.len() - 1);
        let range2 = format!("{}-{}", chunk1.len(), d.blob_b.bytes.len() - 1);
        let (m1, m1_bytes) = (d.manifests[1].digest.clone(), d.manifests[1].bytes.clone());
        let (empty_layer, empty_layer_bytes) = (
            d.empty_layer_manifest.digest.clone(),
            d.empty_layer_manifest.bytes.clone(),
        );
        let dummy = d.dummy_digest.clone();

        // Blob upload streamed.
        let session = self.send(Call::new(Method::POST, Self::upload_path(NAMESPACE))).await;
        let patch = Call::new(Method::PATCH, session.location())
            .header("content-type", "application/octet-stream")
            .body(&a_bytes);
        let a = self.send(patch).await;
        self.check_status(
            "push: PATCH request with blob in body should yield 202 response",
            &a,
            &[202],
        );
        let put = Call::new(Method::PUT, a.location())
            .query("digest", &a_digest)
            .header("content-type", "application/octet-stream");
        let a = self.send(put).await;
        let spec = "push: PUT request to session URL with digest should yield 201 response";
        self.check(spec, a.status == 201 && !a.header("location").is_empty(), &a);

        // Blob upload monolithic.
        let a = self.send(Call::new(Method::GET, Self::blob_path(&dummy))).await;
        self.check_status("push: GET nonexistent blob should result in 404 response", &a, &[404]);
        let post = Call::new(Method::POST, Self::upload_path(NAMESPACE))
            .query("digest", &c1)
            .header("content-type", "application/octet-stream")
            .body(&c1_bytes);
        let posted = self.send(post).await;
        let spec = "push: POST request with digest and blob should yield a 201 or 202";
        self.check(
            spec,
            [201, 202].contains(&posted.status) && !posted.header("location").is_empty(),
            &posted,
        );
        let a = self.send(Call::new(Method::GET, Self::blob_path(&c1))).await;
        let want = if posted.status == 202 { 404 } else { 200 };
        let spec = "push: GET request to blob URL from prior request should yield 200 or 404 based on response code";
        self.check_status(spec, &a, &[want]);
        let session = self.send(Call::new(Method::POST, Self::upload_path(NAMESPACE))).await;
        self.check_status("push: POST request should yield a session ID", &session, &[202]);
        let put = Call::new(Method::PUT, session.location())
            .query("digest", &c1)
            .header("content-type", "application/octet-stream")
            .body(&c1_bytes);
        let a = self.send(put).await;
        let spec = "push: PUT upload of a blob should yield a 201 Response";
        self.check(spec, a.status == 201 && !a.header("location").is_empty(), &a);
        let a = self.send(Call::new(Method::GET, Self::blob_path(&c1))).await;
        self.check_status(
            "push: GET request to existing blob should yield 200 response",
            &a,
            &[200],
        );
        let session = self.send(Call::new(Method::POST, Self::upload_path(NAMESPACE))).await;
        let put = Call::new(Method::PUT, session.location())
            .query("digest", &layer)
            .header("content-type", "application/octet-stream")
            .body(&layer_bytes);
        let a = self.send(put).await;
        let spec = "push: PUT upload of a layer blob should yield a 201 Response";
        self.check(spec, a.status == 201 && !a.header("location").is_empty(), &a);
        let a = self.send(Call::new(Method::GET, Self::blob_path(&layer))).await;
        self.check_status(
            "push: GET request to existing layer should yield 200 response",
            &a,
            &[200],
        );

        // Blob upload chunked.
        let empty_post = || Call::new(Method::POST, Self::upload_path(NAMESPACE)).header("content-length", "0");
        let chunk = |location: String, range: &str, bytes: &[u8]| {
            Call::new(Method::PATCH, location)
                .header("content-type", "application/octet-stream")
                .header("content-range", range.to_owned())
                .body(bytes)
        };
        let session = self.send(empty_post()).await;
        let spec = "push: out-of-order blob upload should return 416";
        self.check(spec, !session.header("location").is_empty(), &session);
        let a = self.send(chunk(session.location(), &range2, &chunk2)).await;
        self.check_status(spec, &a, &[416]);
        let first = self.send(empty_post()).await;
        let a = self.send(chunk(first.location(), &range1, &chunk1)).await;
        let spec = "push: PATCH request with first chunk should return 202";
        self.check(spec, a.status == 202 && a.header("range") == range1, &a);
        let a = self.send(chunk(first.location(), &range1, &chunk1)).await;
        self.check_status("push: retry previous blob chunk should return 416", &a, &[416]);
        let status = self.send(Call::new(Method::GET, first.location())).await;
        let spec = "push: get on stale blob upload should return 204 with a range and location";
        let ok = status.status == 204 && !status.header("location").is_empty() && status.header("range") == range1;
        self.check(spec, ok, &status);
        let a = self.send(chunk(status.location(), &range2, &chunk2)).await;
        let spec = "push: PATCH request with second chunk should return 202";
        self.check(spec, a.status == 202 && !a.header("location").is_empty(), &a);
        let put = Call::new(Method::PUT, a.location())
            .query("digest", &b_digest)
            .header("content-type", "application/octet-stream");
        let a = self.send(put).await;
        let spec = "push: PUT request with digest should return 201";
        self.check(spec, a.status == 201 && !a.header("location").is_empty(), &a);

        // Cross-repository blob mount.
        let a = self
            .send(Call::new(Method::POST, Self::upload_path(CROSSMOUNT)).query("mount", &dummy))
            .await;
        let spec = "push: cross-mounting of a blob without the from argument should yield session id";
        self.check(spec, a.status == 202 && !a.header("location").is_empty(), &a);
        let call = Call::new(Method::POST, Self::upload_path(CROSSMOUNT))
            .query("mount", &a_digest)
            .query("from", NAMESPACE);
        let mounted = self.send(call).await;
        let spec = "push: POST request to mount another repository's blob should return 201 or 202";
        self.check_status(spec, &mounted, &[201, 202]);
        if mounted.status == 201 {
            let spec = "push: GET request to test digest within cross-mount namespace should return 200";
            let want = format!("/v2/{CROSSMOUNT}/blobs/{a_digest}");
            self.check(spec, mounted.location() == want, &mounted);
            let a = self.send(Call::new(Method::GET, mounted.location())).await;
            self.check_status(spec, &a, &[200]);
            // OCI_AUTOMATIC_CROSSMOUNT=1: a mount without `from` finds the blob.
            let a = self
                .send(Call::new(Method::POST, Self::upload_path(CROSSMOUNT)).query("mount", &a_digest))
                .await;
            let spec = "push: cross-mounting without from, and automatic content discovery enabled should return a 201";
            self.check_status(spec, &a, &[201]);
        } else {
            let spec = "push: cross-mounting of nonexistent blob should yield session id";
            let ok = mounted
                .location()
                .starts_with(&format!("/v2/{CROSSMOUNT}/blobs/uploads/"));
            self.check(spec, ok, &mounted);
        }

        // Manifest upload.
        let a = self
            .send(Call::new(Method::GET, Self::manifest_path(NONEXISTENT_MANIFEST)))
            .await;
        self.check_status("push: GET nonexistent manifest should return 404", &a, &[404]);
        for i in 0..4 {
            let a = self.put_manifest(&format!("test{i}"), OCI_MANIFEST, &m1_bytes).await;
            let spec = "push: PUT should accept a manifest upload";
            self.check(spec, a.status == 201 && !a.header("location").is_empty(), &a);
        }
        let a = self
            .put_manifest(EMPTY_LAYER_TAG, OCI_MANIFEST, &empty_layer_bytes)
            .await;
        // The suite only warns when this is refused; Berth accepts it.
        let spec = "push: registry should accept a manifest upload with no layers";
        self.check(spec, a.status == 201 && !a.header("location").is_empty(), &a);
        let empty_layer_pushed = a.status == 201;
        let a = self.get_manifest(Method::GET, &m1).await;
        self.check_status(
            "push: GET request to manifest URL (digest) should yield 200 response",
            &a,
            &[200],
        );

        // Teardown.
        let a = self.delete(Self::manifest_path(&m1)).await;
        self.check_2xx_or("push: delete manifest created in tests", &a, &[405]);
        if empty_layer_pushed {
            let a = self.delete(Self::manifest_path(&empty_layer)).await;
            self.check_2xx_or("push: delete manifest created in tests", &a, &[405]);
        }
        for digest in [&c1, &layer] {
            let a = self.delete(Self::blob_path(digest)).await;
            self.check_2xx_or("push: delete blob created in tests", &a, &[404, 405]);
        }
    }

    async fn content_discovery(&mut self) {
        let d = &self.data;
        let blobs = |b: &Blob| (b.digest.clone(), b.bytes.clone());
        let (c2, c2_bytes) = blobs(&d.configs[2]);
        let (c4, c4_bytes) = blobs(&d.configs[4]);
        let (layer, layer_bytes) = blobs(&d.layer);
        let (m2, m2_bytes) = blobs(&d.manifests[2]);
        let (m3, m4, m4_bytes) = (
            d.manifests[3].digest.clone(),
            d.manifests[4].digest.clone(),
            d.manifests[4].bytes.clone(),
        );
        let (empty, empty_bytes) = blobs(&d.empty_json);
        let (ref_a, ref_a_bytes) = blobs(&d.ref_blob_a);
        let (ref_b, ref_b_bytes) = blobs(&d.ref_blob_b);
        let (refs_a_config, refs_a_config_bytes) = blobs(&d.refs_a_config);
        let (refs_a_layer, refs_a_layer_bytes) = blobs(&d.refs_a_layer);
        let (refs_b_config, refs_b_config_bytes) = blobs(&d.refs_b_config);
        let (refs_b_layer, refs_b_layer_bytes) = blobs(&d.refs_b_layer);
        let (refs_c_layer, refs_c_layer_bytes) = blobs(&d.refs_c_layer);
        let (refs_index, refs_index_bytes) = blobs(&d.refs_index);
        let dummy = d.dummy_digest.clone();

        self.push_blob("discovery: populate registry with test blob", &c2, &c2_bytes)
            .await;
        self.push_blob("discovery: populate registry with test layer", &layer, &layer_bytes)
            .await;
        for i in 0..4 {
            let a = self.put_manifest(&format!("test{i}"), OCI_MANIFEST, &m2_bytes).await;
            self.check("discovery: populate registry with test tags", a.is_2xx(), &a);
        }

        // References setup: referrers pushed before and after their subject,
        // and one whose subject is never pushed.
        let spec = "discovery: references setup";
        self.push_blob(spec, &empty, &empty_bytes).await;
        self.push_blob(spec, &ref_a, &ref_a_bytes).await;
        for (digest, bytes, media_type) in [
            (&refs_a_config, &refs_a_config_bytes, OCI_MANIFEST),
            (&refs_a_layer, &refs_a_layer_bytes, OCI_MANIFEST),
            (&refs_index, &refs_index_bytes, OCI_INDEX),
        ] {
            let a = self.put_manifest(digest, media_type, bytes).await;
            self.check(spec, a.is_2xx() && a.header("oci-subject") == m4, &a);
        }
        self.push_blob(spec, &c4, &c4_bytes).await;
        self.push_blob(spec, &layer, &layer_bytes).await;
        let a = self.put_manifest(TEST_TAG, OCI_MANIFEST, &m4_bytes).await;
        self.check(spec, a.is_2xx(), &a);
        self.push_blob(spec, &ref_b, &ref_b_bytes).await;
        for (digest, bytes) in [
            (&refs_b_config, &refs_b_config_bytes),
            (&refs_b_layer, &refs_b_layer_bytes),
        ] {
            let a = self.put_manifest(digest, OCI_MANIFEST, bytes).await;
            self.check(spec, a.is_2xx() && a.header("oci-subject") == m4, &a);
        }
        let a = self
            .put_manifest(&refs_c_layer, OCI_MANIFEST, &refs_c_layer_bytes)
            .await;
        self.check(spec, a.is_2xx() && a.header("oci-subject") == m3, &a);

        // Listing tags.
        let tags_path = format!("/v2/{NAMESPACE}/tags/list");
        let a = self.send(Call::new(Method::GET, tags_path.clone())).await;
        self.check_status(
            "discovery: GET request to list tags should yield 200 response",
            &a,
            &[200],
        );
        let num_tags = a.tags().len();
        let half = (num_tags / 2).to_string();
        let a = self
            .send(Call::new(Method::GET, tags_path.clone()).query("n", &half))
            .await;
        let spec = "discovery: GET number of tags should be limitable by `n` query parameter";
        self.check(spec, a.status == 200 && a.tags().len() == num_tags / 2, &a);
        let first_page = a.tags();
        let spec = "discovery: GET start of tag is set by `last` query parameter";
        match first_page.last() {
            Some(last) => {
                let call = Call::new(Method::GET, tags_path.clone())
                    .query("n", &half)
                    .query("last", last);
                let a = self.send(call).await;
                self.check(spec, a.status == 200 && a.tags().len() <= num_tags / 2, &a);
            }
            None => self.check(spec, false, &a),
        }

        // Listing referrers.
        let referrers = |digest: &str| Call::new(Method::GET, format!("/v2/{NAMESPACE}/referrers/{digest}"));
        let a = self.send(referrers(&dummy)).await;
        let spec = "discovery: GET request to nonexistent blob should result in empty 200 response";
        let ok = a.status == 200 && a.header("content-type") == OCI_INDEX && a.json()["manifests"] == json!([]);
        self.check(spec, ok, &a);
        let a = self.send(referrers(&m4)).await;
        let spec = "discovery: GET request to existing blob should yield 200";
        let ok = a.status == 200 && a.header("content-type") == OCI_INDEX && self.annotated_referrers(&a, 5);
        self.check(spec, ok, &a);
        let a = self.send(referrers(&m4).query("artifactType", ARTIFACT_TYPE_A)).await;
        let spec = "discovery: GET request to existing blob with filter should yield 200";
        let filtered = a.header("oci-filters-applied") == "artifactType";
        let ok =
            a.status == 200 && a.header("content-type") == OCI_INDEX && filtered && self.annotated_referrers(&a, 2);
        self.check(spec, ok, &a);
        let a = self.send(referrers(&m3)).await;
        let spec = "discovery: GET request to missing manifest should yield 200";
        let listed = a.json()["manifests"].clone();
        let ok = a.status == 200
            && a.header("content-type") == OCI_INDEX
            && listed.as_array().map(Vec::len) == Some(1)
            && listed[0]["digest"] == refs_c_layer;
        self.check(spec, ok, &a);

        // Teardown: manifests (and the tag), then blobs.
        for reference in [
            &refs_index,
            &m2,
            &m4,
            &refs_a_config,
            &refs_a_layer,
            &TEST_TAG.to_owned(),
            &refs_b_config,
            &refs_b_layer,
            &refs_c_layer,
        ] {
            let a = self.delete(Self::manifest_path(reference)).await;
            self.check_2xx_or("discovery: delete created manifest & associated tags", &a, &[404, 405]);
        }
        let a = self.delete(Self::blob_path(&c2)).await;
        self.check_2xx_or("discovery: delete config blob created in tests", &a, &[405]);
        let a = self.delete(Self::blob_path(&layer)).await;
        self.check_2xx_or("discovery: delete layer blob created in setup", &a, &[405]);
        for reference in [
            &refs_index,
            &refs_a_config,
            &refs_a_layer,
            &m4,
            &refs_b_config,
            &refs_b_layer,
        ] {
            let a = self.delete(Self::manifest_path(reference)).await;
            self.check_2xx_or("discovery: references teardown", &a, &[404, 405]);
        }
        for digest in [&c4, &ref_a, &ref_b, &empty] {
            let a = self.delete(Self::blob_path(digest)).await;
            self.check_2xx_or("discovery: references teardown", &a, &[404, 405]);
        }
    }

    /// Whether a referrers answer lists `count` distinct manifests, each with
    /// exactly the one annotation it was pushed with.
    fn annotated_referrers(&self, answer: &Answer, count: usize) -> bool {
        let body = answer.json();
        let Some(listed) = body["manifests"].as_array() else {
            return false;
        };
        let distinct: std::collections::BTreeSet<&str> = listed.iter().filter_map(|d| d["digest"].as_str()).collect();
        listed.len() == count
            && distinct.len() == count
            && listed.iter().all(|d| {
                let expected = d["digest"].as_str().and_then(|digest| self.data.annotation_of(digest));
                d["annotations"].as_object().map(|a| a.len()) == Some(1)
                    && expected.is_some()
                    && d["annotations"][ANNOTATION].as_str() == expected
            })
    }

    async fn content_management(&mut self) {
        let d = &self.data;
        let (c3, c3_bytes) = (d.configs[3].digest.clone(), d.configs[3].bytes.clone());
        let (layer, layer_bytes) = (d.layer.digest.clone(), d.layer.bytes.clone());
        let (m3, m3_bytes) = (d.manifests[3].digest.clone(), d.manifests[3].bytes.clone());
        let tags_path = format!("/v2/{NAMESPACE}/tags/list");

        self.push_blob("management: populate registry with test config blob", &c3, &c3_bytes)
            .await;
        self.push_blob("management: populate registry with test layer", &layer, &layer_bytes)
            .await;
        let a = self.put_manifest(TEST_TAG, OCI_MANIFEST, &m3_bytes).await;
        self.check("management: populate registry with test tag", a.is_2xx(), &a);
        let a = self.send(Call::new(Method::GET, tags_path.clone())).await;
        let spec = "management: check how many tags there are before anything gets deleted";
        self.check_status(spec, &a, &[200]);
        let num_tags = a.tags().len();

        let a = self.delete(Self::manifest_path(TEST_TAG)).await;
        let spec =
            "management: DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)";
        let ok = [202, 405].contains(&a.status) || (a.status == 400 && a.error_code() == "UNSUPPORTED");
        self.check(spec, ok, &a);
        let a = self.delete(Self::manifest_path(&m3)).await;
        let spec = "management: DELETE request to manifest (digest) should yield 202 response unless already deleted";
        self.check_status(spec, &a, &[202, 404]);
        let a = self.send(Call::new(Method::GET, Self::manifest_path(&m3))).await;
        let spec =
            "management: GET request to deleted manifest URL should yield 404 response, unless delete is disallowed";
        self.check_status(spec, &a, &[404, 200]);
        let a = self.send(Call::new(Method::GET, tags_path)).await;
        let spec = "management: GET request to tags list should reflect manifest deletion";
        self.check(spec, a.status == 200 && a.tags().len() < num_tags, &a);

        let a = self.delete(Self::blob_path(&c3)).await;
        let spec = "management: DELETE request to blob URL should yield 202 response";
        self.check_status(spec, &a, &[202, 404, 405]);
        let a = self.delete(Self::blob_path(&layer)).await;
        self.check_status(spec, &a, &[202, 404, 405]);
        let blob_delete_allowed = a.status != 405;
        if blob_delete_allowed {
            let a = self.send(Call::new(Method::GET, Self::blob_path(&c3))).await;
            self.check_status(
                "management: GET request to deleted blob URL should yield 404 response",
                &a,
                &[404],
            );
        }
    }
}

#[tokio::test]
async fn the_conformance_suites_four_workflows_pass() {
    let mut replay = Replay {
        app: TestApp::start(),
        data: Data::new(),
        failures: Vec::new(),
    };
    replay.pull().await;
    replay.push().await;
    replay.content_discovery().await;
    replay.content_management().await;
    assert!(
        replay.failures.is_empty(),
        "{} conformance checks failed:\n{}",
        replay.failures.len(),
        replay.failures.join("\n")
    );
}
