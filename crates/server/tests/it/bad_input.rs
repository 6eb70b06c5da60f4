//! Hostile values in query strings, paths, credentials and bodies: NUL
//! characters (which PostgreSQL text cannot hold), bytes that are not UTF-8,
//! control characters, overlong values and SQL. Each gets its defined answer,
//! the same on every backend (`BERTH_IT_BACKEND=scaleout` runs these on
//! PostgreSQL + S3): never a 5xx.
//!
//! - `/v2/` listings start after any `last` (the spec's rule): 200 with the
//!   items after it in byte order of the bytes the client sent.
//! - A referrers filter that no manifest can name finds nothing (200).
//! - A manifest naming a media type that is not printable ASCII is 400
//!   `MANIFEST_INVALID`; a platform that is not printable text is not recorded.
//! - Every query value of Berth's own APIs must be printable UTF-8 text of at
//!   most 1 KiB and fit its parameter, else 400 `INVALID_REQUEST`; so must
//!   names in their paths and bodies.
//! - A login no account can have is 401 `UNAUTHORIZED`, as a wrong password.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::auth_harness::{add_user, basic, percent_encode, token_app, ALICE_PASSWORD};
use crate::harness::{assert_error, descriptor, header, random_bytes, TestApp, OCI_INDEX, OCI_MANIFEST};

/// Hostile query and path values as a client sends them (percent-encoded),
/// with what they are.
fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("a NUL", "%00".into()),
        ("a NUL and a byte that is not UTF-8", "%00%ff".into()),
        ("a byte that is not UTF-8", "%ff".into()),
        ("text after a NUL", "v1%00zzz".into()),
        ("a byte that is not UTF-8 between letters", "a%ffb".into()),
        ("a control character", "a%0Ab".into()),
        ("SQL", percent_encode("' OR 1=1 --")),
        ("SQL with a NUL", percent_encode("x'; DROP TABLE tags; --\0")),
        ("an overlong value", "v".repeat(5000)),
    ]
}

/// The bytes a percent-encoded value stands for.
fn decoded(encoded: &str) -> Vec<u8> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The items of `all` after `last` in byte order, as the spec's listing
/// defines them.
fn after(all: &[&str], last: &[u8]) -> Vec<String> {
    let mut items: Vec<&str> = all.iter().copied().filter(|t| t.as_bytes() > last).collect();
    items.sort_unstable();
    items.into_iter().map(str::to_string).collect()
}

async fn json_of(app: &TestApp, path: &str) -> (StatusCode, Value, Option<String>) {
    let resp = app.get(path).await;
    let status = resp.status();
    let link = resp
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, link)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[tokio::test]
async fn listings_start_after_any_last() {
    const TAGS: [&str; 8] = ["a", "a1", "b", "v1", "v1.0", "v10", "Z", "_x"];
    const REPOS: [&str; 4] = ["a", "a/b", "b", "v1"];
    let app = TestApp::start();
    let image = app.push_image("a", TAGS[0], 1).await;
    for tag in &TAGS[1..] {
        app.push_manifest("a", tag, OCI_MANIFEST, &image.manifest).await;
    }
    for repo in &REPOS[1..] {
        app.push_blob(repo, b"listed").await;
    }
    for (what, last) in hostile() {
        let bytes = decoded(&last);
        let (status, body, _) = json_of(&app, &format!("/v2/a/tags/list?last={last}")).await;
        assert_eq!(status, 200, "tags after {what}: {body}");
        assert_eq!(strings(&body["tags"]), after(&TAGS, &bytes), "tags after {what}");

        let expected = after(&TAGS, &bytes);
        let (status, body, link) = json_of(&app, &format!("/v2/a/tags/list?n=2&last={last}")).await;
        assert_eq!(status, 200, "a page of tags after {what}: {body}");
        assert_eq!(strings(&body["tags"]), expected[..expected.len().min(2)], "{what}");
        assert_eq!(link.is_some(), expected.len() > 2, "Link after {what}: {link:?}");

        let (status, body, _) = json_of(&app, &format!("/v2/_catalog?last={last}")).await;
        assert_eq!(status, 200, "repositories after {what}: {body}");
        assert_eq!(
            strings(&body["repositories"]),
            after(&REPOS, &bytes),
            "repositories after {what}"
        );
    }
}

#[tokio::test]
async fn a_referrers_filter_no_manifest_can_name_finds_nothing() {
    let app = TestApp::start();
    let subject = app.push_image("app", "v1", 1).await;
    let empty = b"{}";
    app.push_blob("app", empty).await;
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/example",
        "config": descriptor("application/vnd.oci.empty.v1+json", empty),
        "layers": [],
        "subject": subject.descriptor(),
    }))
    .unwrap();
    app.push_manifest("app", "sig", OCI_MANIFEST, &referrer).await;
    let path = format!("/v2/app/referrers/{}", subject.digest);
    let (status, body, _) = json_of(&app, &format!("{path}?artifactType=application%2Fexample")).await;
    assert_eq!(status, 200);
    assert_eq!(body["manifests"].as_array().map(Vec::len), Some(1), "{body}");
    for (what, filter) in hostile() {
        let resp = app.get(&format!("{path}?artifactType={filter}")).await;
        assert_eq!(resp.status(), 200, "filter with {what}");
        assert_eq!(header(&resp, "oci-filters-applied"), "artifactType", "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["manifests"], json!([]), "filter with {what}");
    }
}

#[tokio::test]
async fn manifest_text_that_cannot_be_stored_is_refused_or_left_out() {
    let app = TestApp::start();
    let config = random_bytes(64);
    app.push_blob("app", &config).await;
    let manifest = |artifact_type: &str, config_type: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(config_type, &config),
            "layers": [],
        }))
        .unwrap()
    };
    for (artifact_type, config_type) in [
        ("application/x\0", "application/example"),
        ("application/\u{e9}", "application/example"),
        ("application/example", "application/x\0y"),
        ("application/example", "text/\nplain"),
    ] {
        let resp = app
            .put_manifest("app", "bad", OCI_MANIFEST, &manifest(artifact_type, config_type))
            .await;
        assert_error(resp, 400, "MANIFEST_INVALID").await;
    }
    let fine = manifest("application/example", "application/x; charset=utf-8");
    app.push_manifest("app", "fine", OCI_MANIFEST, &fine).await;

    // A platform is only a fact shown in the inventory: one that is not
    // printable text is left out, and the index is stored as pushed.
    let child = app.push_image("app", "child", 1).await;
    let mut platformed = child.descriptor();
    platformed["platform"] = json!({"os": "linux\u{0}", "architecture": "amd64"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [platformed],
    }))
    .unwrap();
    app.push_manifest("app", "index", OCI_INDEX, &index).await;
    let got = app.get("/v2/app/manifests/index").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), index);
    let (status, body, _) = json_of(&app, "/v1/images?repository=app").await;
    assert_eq!(status, 200, "{body}");
    let row = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == "index")
        .unwrap_or_else(|| panic!("no row of the index: {body}"));
    assert_eq!(row["platforms"], json!([]), "{row}");
}

#[tokio::test]
async fn inventory_parameters_are_checked_before_any_store_sees_them() {
    let app = TestApp::start();
    app.push_image("app", "v1", 1).await;
    let cursor = |text: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    };
    let mut cases: Vec<(String, String)> = Vec::new();
    for (what, value) in hostile() {
        for param in ["repository", "provenance", "expiring_before", "cursor", "n"] {
            cases.push((format!("{param} with {what}"), format!("{param}={value}")));
        }
    }
    // Cursors that decode, but to no position the registry hands out.
    for (what, position) in [
        ("a NUL in the repository", "a\0b\nv1"),
        ("a NUL in the tag", "app\nv1\0"),
        ("SQL as the repository", "' OR 1=1 --\nv1"),
        ("SQL as the tag", "app\n' OR 1=1 --"),
        ("an overlong repository", &format!("{}\nv1", "a".repeat(300))),
        ("no digest after @", "app\n@sha256:x"),
        ("no separator", "app"),
    ] {
        cases.push((format!("a cursor with {what}"), format!("cursor={}", cursor(position))));
    }
    cases.push(("an unknown provenance".into(), "provenance=stolen".into()));
    for (what, query) in cases {
        let resp = app.get(&format!("/v1/images?{query}")).await;
        assert_error(resp, 400, "INVALID_REQUEST")
            .await
            .get("errors")
            .unwrap_or_else(|| panic!("{what}"));
    }
    // What was refused above still works when it is well formed.
    let (status, body, _) = json_of(
        &app,
        &format!("/v1/images?provenance=pushed&cursor={}", cursor("app\nv0")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["images"].as_array().map(Vec::len), Some(1), "{body}");
}

#[tokio::test]
async fn admin_api_values_are_checked_before_any_store_sees_them() {
    let app = TestApp::start();
    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = app.client.request(method, app.url(&path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    use reqwest::Method;
    for (what, value) in hostile() {
        for (method, path, body) in [
            (
                Method::DELETE,
                format!("/api/v1/retention/policies?pattern={value}"),
                None,
            ),
            (Method::GET, format!("/api/v1/retention/preview?repo={value}"), None),
            (Method::POST, format!("/api/v1/retention/run?repo={value}"), None),
            (Method::GET, format!("/api/v1/audit?limit={value}"), None),
            (Method::GET, format!("/api/v1/audit?before={value}"), None),
            (
                Method::PUT,
                format!("/api/v1/users/{value}/password"),
                Some(json!({"password": "a-long-enough-password"})),
            ),
            (Method::POST, format!("/api/v1/users/{value}/disable"), None),
            (Method::POST, format!("/api/v1/users/{value}/enable"), None),
            (Method::DELETE, format!("/api/v1/tokens/{value}"), None),
            (Method::DELETE, format!("/api/v1/grants/{value}"), None),
        ] {
            let resp = send(method.clone(), path, body).await.unwrap();
            let answer = assert_error(resp, 400, "INVALID_REQUEST").await;
            assert!(answer["errors"][0]["message"].is_string(), "{method} with {what}");
        }
    }
    // Names in JSON bodies: a NUL, a control character, an overlong name.
    let long = "x".repeat(5000);
    for name in ["a\0b", "a\nb", long.as_str()] {
        for (path, body) in [
            (
                "/api/v1/users",
                json!({"name": name, "password": "a-long-enough-password"}),
            ),
            ("/api/v1/tokens", json!({"name": name, "grants": ["team/*:pull"]})),
            (
                "/api/v1/grants",
                json!({"subject": format!("group:{name}"), "pattern": "team/*", "role": "pull"}),
            ),
            (
                "/api/v1/grants",
                json!({"subject": format!("user:{name}"), "pattern": "team/*", "role": "pull"}),
            ),
            (
                "/api/v1/grants",
                json!({"subject": "group:dev", "pattern": name, "role": "pull"}),
            ),
            (
                "/api/v1/grants",
                json!({"subject": "group:dev", "pattern": "team/*", "role": name}),
            ),
        ] {
            let resp = send(Method::POST, path.to_string(), Some(body)).await.unwrap();
            assert_error(resp, 400, "INVALID_REQUEST").await;
        }
        let policy = json!({"pattern": name, "rules": {"keep_last": 1}});
        let resp = send(Method::PUT, "/api/v1/retention/policies".into(), Some(policy))
            .await
            .unwrap();
        assert_error(resp, 400, "INVALID_REQUEST").await;
    }
    // A group name is the identity provider's to choose: SQL is only text.
    let sql = "' OR 1=1 --";
    let resp = send(
        Method::POST,
        "/api/v1/grants".into(),
        Some(json!({"subject": format!("group:{sql}"), "pattern": "team/*", "role": "pull"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    let (status, body, _) = json_of(&app, "/api/v1/grants").await;
    assert_eq!(status, 200);
    let subjects: Vec<&Value> = body["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| &g["subject"])
        .collect();
    assert_eq!(subjects, [&json!(format!("group:{sql}"))], "{body}");
    // Nothing refused above reached the audit log; the grant did.
    let audit = app.audit().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
}

#[tokio::test]
async fn logins_no_account_can_have_are_refused_as_wrong_credentials() {
    // Room for every refused attempt below from this one address.
    let app = token_app("[auth.login_limit]\nfailures = 1000");
    add_user(&app, "alice", ALICE_PASSWORD, true);
    let long = "a".repeat(5000);
    let logins = ["alice\0", "a\0b", "ali\nce", "' OR 1=1 --", "alice' --", long.as_str()];
    for login in logins {
        for path in ["/v2/token", "/v1/images", "/api/v1/users"] {
            let resp = app
                .client
                .get(app.url(path))
                .header("authorization", basic(login, ALICE_PASSWORD))
                .send()
                .await
                .unwrap();
            assert_error(resp, 401, "UNAUTHORIZED").await;
        }
    }
    let mut forms: Vec<String> = logins.iter().map(|l| percent_encode(l)).collect();
    forms.extend(["%ff".to_string(), "alice%00".into(), "%00%ff".into()]);
    for login in forms {
        let resp = app
            .client
            .post(app.url("/v2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=password&username={login}&password={}",
                percent_encode(ALICE_PASSWORD)
            ))
            .send()
            .await
            .unwrap();
        assert_error(resp, 401, "UNAUTHORIZED").await;
    }
    // Scopes, services and accounts that name nothing are left out of the token.
    let resp = app
        .client
        .get(app.url(
            "/v2/token?service=%00%ff&account=%27%20OR%201%3D1%20--&scope=repository:a%00:pull&scope=repository:%ff:pull",
        ))
        .header("authorization", basic("alice", ALICE_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        crate::auth_harness::access_of(body["token"].as_str().unwrap()),
        json!([])
    );
    // And alice still logs in: the refused attempts were not hers.
    let resp = app
        .client
        .get(app.url("/api/v1/users"))
        .header("authorization", basic("alice", ALICE_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
