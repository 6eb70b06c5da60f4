//! Hostile `/v2/` paths: encoded slashes, dot segments, NUL and non-UTF-8
//! bytes, overlong segments. Each is answered as the resource it addresses
//! (or as no endpoint), never with a redirect or a 5xx, and never with a file
//! from outside the data dir or a file written there.
//!
//! The requests are written by hand on a socket, so the path reaches the
//! server byte for byte as sent (an HTTP client would resolve `..` first).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;

use crate::harness::{files_under, raw_request, sha256, TestApp};

/// Sends `method path` with an optional body; returns the status and the
/// whole raw response (head and body).
fn send(app: &TestApp, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let host = app.base.trim_start_matches("http://");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    raw_request(&app.base, &head, body.to_vec())
}

/// The error code of a raw response's JSON body.
fn error_code(raw: &str) -> String {
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    json["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn encoded_slashes_are_answered_as_the_resource_they_address() {
    let app = TestApp::start();
    // In a repository that exists, a missing manifest is MANIFEST_UNKNOWN.
    app.push_image("app", "v1", 1).await;
    let digest = sha256(b"x");
    let cases = [
        // The examples: an encoded `/` once re-split the path.
        (
            "GET",
            "/v2/app/manifests/..%2f..%2fetc%2fpasswd",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("HEAD", "/v2/app/manifests/..%2F..%2Fetc%2Fpasswd", 404, ""),
        (
            "DELETE",
            "/v2/app/manifests/..%2f..%2fetc%2fpasswd",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "PUT",
            "/v2/app/manifests/..%2f..%2fetc%2fpasswd",
            400,
            "MANIFEST_INVALID",
        ),
        ("PATCH", "/v2/app/blobs/uploads/..%2f..%2fx", 404, "BLOB_UPLOAD_UNKNOWN"),
        (
            "PUT",
            "/v2/app/blobs/uploads/..%2f..%2fx?digest=sha256:00",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        ("GET", "/v2/app/blobs/uploads/%2e%2e", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("GET", "/v2/app/blobs/..%2f..%2fblobs%2fsha256", 404, "BLOB_UNKNOWN"),
        ("DELETE", "/v2/app/blobs/sha256:..%2f..", 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/app/referrers/..%2f..", 400, "DIGEST_INVALID"),
        // A name component with an encoded `/` or dots is no component.
        ("GET", "/v2/app%2f..%2f..%2fx/tags/list", 400, "NAME_INVALID"),
        ("POST", "/v2/..%2fapp/blobs/uploads/", 400, "NAME_INVALID"),
        ("GET", "/v2/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
        // Raw dot segments are not resolved: they are part of the name, or
        // the path addresses no endpoint.
        ("GET", "/v2/../v2/app/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/app/../../../etc/passwd", 404, "UNSUPPORTED"),
    ];
    for (method, path, status, code) in cases {
        let (got, raw) = send(&app, method, path, b"");
        assert_eq!(got, status, "{method} {path}: {raw}");
        if method != "HEAD" {
            assert_eq!(error_code(&raw), code, "{method} {path}: {raw}");
        }
    }
    // A digest whose `:` is sent encoded is the same digest.
    let (got, raw) = send(
        &app,
        "GET",
        &format!("/v2/app/blobs/{}", digest.replace(':', "%3A")),
        b"",
    );
    assert_eq!((got, error_code(&raw).as_str()), (404, "BLOB_UNKNOWN"), "{raw}");
}

/// One piece of a generated path: the bytes of a segment or of part of one.
fn atom() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "..",
        ".",
        "%2e%2e",
        "%2E",
        "%2f",
        "%2F",
        "..%2f",
        "%5c",
        "..%5c",
        "%00",
        "%ff",
        "%c0%af",
        "%e0%80%af",
        "%252f",
        "%25",
        "%",
        "%zz",
        "%2",
        "~",
        ";",
        ",",
        "=",
        "+",
        "@",
        "!",
        "$",
        "*",
        "'",
        "(",
        ")",
        ":",
        "sha256:",
        "manifests",
        "blobs",
        "uploads",
        "tags",
        "list",
        "referrers",
        "_catalog",
        "v2",
        "app",
        "a",
        "etc",
        "passwd",
        "secret.txt",
        "berth.toml",
        "meta.db",
        "latest",
        "-x",
        "_x",
        "A",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        6 => fixed,
        1 => Just(sha256(b"hostile")),
        1 => (1usize..600).prop_map(|n| "x".repeat(n)),
        1 => (1usize..40).prop_map(|n| "%2e%2e%2f".repeat(n)),
        1 => "[a-z0-9._-]{1,12}",
    ]
}

/// A path of 1 to 8 segments after `/v2/`, each made of 1 to 3 atoms,
/// sometimes with a trailing slash or a query.
fn hostile_path() -> impl Strategy<Value = String> {
    let segment = prop::collection::vec(atom(), 1..4).prop_map(|atoms| atoms.concat());
    (
        prop::collection::vec(segment, 1..9),
        any::<bool>(),
        prop::option::of("(digest|mount|from|n|last)=[a-z0-9.%:/]{0,20}"),
    )
        .prop_map(|(segments, slash, query)| {
            let mut path = format!("/v2/{}", segments.join("/"));
            if slash {
                path.push('/');
            }
            if let Some(q) = query {
                path.push('?');
                path.push_str(&q);
            }
            path
        })
}

/// Every file under `dir`, except those under `skip`.
fn files_outside(dir: &Path, skip: &Path) -> BTreeSet<PathBuf> {
    files_under(dir).into_iter().filter(|f| !f.starts_with(skip)).collect()
}

/// The repository the hostile requests address; it exists (so a missing
/// manifest in it is MANIFEST_UNKNOWN, not NAME_UNKNOWN).
const REPO: &str = "app";

#[tokio::test]
async fn hostile_paths_never_get_a_redirect_a_5xx_or_a_file_outside_the_data_dir() {
    // The data dir lives in a directory of the test's own, next to a file
    // the server must never serve; nothing may appear next to the data dir.
    let parent = tempfile::tempdir().expect("a temp dir");
    let secret = format!("secret-{}", hex::encode(crate::harness::random_bytes(16)));
    std::fs::write(parent.path().join("secret.txt"), &secret).expect("writing the secret");
    let etc = parent.path().join("etc");
    std::fs::create_dir(&etc).expect("creating etc");
    std::fs::write(etc.join("passwd"), &secret).expect("writing etc/passwd");
    let app = TestApp::start_in(parent.path());
    app.push_image(REPO, "v1", 1).await;
    let before = files_outside(parent.path(), app.data_dir());

    let config = proptest::test_runner::Config {
        cases: 400,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    };
    let methods = prop::sample::select(vec!["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]);
    let mut runner = proptest::test_runner::TestRunner::new(config.clone());
    runner
        .run(
            &(methods, hostile_path(), prop::collection::vec(any::<u8>(), 0..64)),
            |(method, path, body)| {
                let (status, raw) = send(&app, method, &path, &body);
                prop_assert!(status < 500, "{method} {path}: {raw}");
                prop_assert!(!(300..400).contains(&status), "{method} {path}: a redirect: {raw}");
                prop_assert!(
                    !raw.contains(&secret),
                    "{method} {path}: served a file outside the data dir"
                );
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));

    // A parameter made of the same atoms (one segment: it holds no raw `/`)
    // is answered as the resource it stands in for.
    let resources = prop::sample::select(vec![
        ("GET", "manifests", "MANIFEST_UNKNOWN"),
        ("DELETE", "manifests", "MANIFEST_UNKNOWN"),
        ("GET", "blobs", "BLOB_UNKNOWN"),
        ("DELETE", "blobs", "BLOB_UNKNOWN"),
        ("GET", "blobs/uploads", "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", "blobs/uploads", "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", "blobs/uploads", "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", "blobs/uploads", "BLOB_UPLOAD_UNKNOWN"),
    ]);
    let parameter = prop::collection::vec(atom(), 1..6).prop_map(|atoms| atoms.concat());
    // A runner of its own: a runner counts its cases across runs.
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&(resources, parameter), |((method, action, code), parameter)| {
            if action == "blobs" && parameter == "uploads" {
                // `/blobs/uploads` is the endpoint that starts an upload.
                return Ok(());
            }
            let path = format!("/v2/{REPO}/{action}/{parameter}");
            let (status, raw) = send(&app, method, &path, b"");
            prop_assert_eq!(
                (status, error_code(&raw)),
                (404, code.to_owned()),
                "{} {}: {}",
                method,
                path,
                raw
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        files_outside(parent.path(), app.data_dir()),
        before,
        "files appeared next to the data dir"
    );
    assert!(!app.log().contains("panicked"), "the server panicked:\n{}", app.log());
}
