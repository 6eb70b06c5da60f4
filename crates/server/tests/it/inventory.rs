//! The image inventory, `GET /v1/images`: what each row says (platforms,
//! size, provenance, use, lifecycle), the filters, cursor pagination with its
//! `Link` header, and that callers see only the repositories they may pull.

use std::collections::BTreeSet;

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::auth_harness::*;
use crate::harness::*;

/// `GET base+path_and_query` with `client`; panics unless it answers 200.
async fn inventory_with(client: &reqwest::Client, base: &str, path_and_query: &str) -> (HeaderMap, Value) {
    let resp = client
        .get(format!("{base}{path_and_query}"))
        .send()
        .await
        .expect("GET /v1/images");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{path_and_query}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path_and_query}: {text:?}: {e}"));
    assert!(body["images"].is_array(), "{body}");
    (headers, body)
}

async fn inventory(app: &TestApp, path_and_query: &str) -> Value {
    inventory_with(&app.client, &app.base, path_and_query).await.1
}

/// (repository, tag) of each row, in order.
fn rows(body: &Value) -> Vec<(String, Option<String>)> {
    body["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["repository"].as_str().expect("repository").to_string(),
                i["tag"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The repositories the rows come from.
fn repositories(body: &Value) -> BTreeSet<String> {
    rows(body).into_iter().map(|(repo, _)| repo).collect()
}

fn tagged(repo: &str, tag: &str) -> (String, Option<String>) {
    (repo.to_string(), Some(tag.to_string()))
}

/// Unix seconds of an RFC 3339 time of the form `2026-01-31T12:00:00Z`.
fn unix_secs(text: &str) -> i64 {
    let bytes = text.as_bytes();
    assert!(
        text.len() == 20 && bytes[4] == b'-' && bytes[7] == b'-' && bytes[10] == b'T' && bytes[19] == b'Z',
        "not an RFC 3339 UTC time: {text:?}"
    );
    let num = |range: std::ops::Range<usize>| -> i64 {
        text[range]
            .parse()
            .unwrap_or_else(|_| panic!("not an RFC 3339 time: {text:?}"))
    };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19)
}

fn assert_recent(text: &Value) {
    let secs = unix_secs(text.as_str().unwrap_or_else(|| panic!("a time, not {text}")));
    let now = now_secs() as i64;
    assert!((now - 120..=now + 5).contains(&secs), "{text} is not about now ({now})");
}

#[test]
fn the_time_parser_of_these_tests_agrees_with_known_dates() {
    assert_eq!(unix_secs("1970-01-01T00:00:00Z"), 0);
    assert_eq!(unix_secs("2000-03-01T00:00:00Z"), 951_868_800);
    assert_eq!(unix_secs("2024-02-29T23:59:59Z"), 1_709_251_199);
}

#[tokio::test]
async fn a_row_tells_platform_size_provenance_and_use() {
    let app = TestApp::start();
    let image = app.push_image("team/app", "v1", 2).await;
    let body = inventory(&app, "/v1/images?repository=team/app").await;
    assert_eq!(rows(&body), vec![tagged("team/app", "v1")], "{body}");
    let row = &body["images"][0];
    assert_eq!(row["digest"], image.digest.as_str());
    assert_eq!(row["media_type"], OCI_MANIFEST);
    assert_eq!(row["platforms"], json!(["linux/amd64"]));
    let size = image.manifest.len() + image.config.len() + image.layers.iter().map(Vec::len).sum::<usize>();
    assert_eq!(row["total_size"], size, "{row}");
    assert_eq!(row["provenance"], "pushed");
    assert_recent(&row["pushed_at"]);
    assert_eq!(row["last_pulled_at"], Value::Null, "{row}");
    assert_eq!(row["pull_count"], 0);
    assert_eq!(row["lifecycle"]["action"], "keep", "{row}");
    assert_eq!(row["lifecycle"]["expires_at"], Value::Null, "{row}");
    assert_eq!(body["next_cursor"], Value::Null);

    // A HEAD is not a pull; each GET by tag is.
    assert_eq!(app.head("/v2/team/app/manifests/v1").await.status(), 200);
    for _ in 0..2 {
        let resp = app.get("/v2/team/app/manifests/v1").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    }
    // Pulls are flushed before the inventory answers.
    let body = inventory(&app, "/v1/images?repository=team/app").await;
    let row = &body["images"][0];
    assert_eq!(row["pull_count"], 2, "{row}");
    assert_recent(&row["last_pulled_at"]);
}

#[tokio::test]
async fn an_artifact_row_names_its_artifact_type() {
    let app = TestApp::start();
    let repo = "team/reports";
    let empty = app.push_blob(repo, b"{}").await;
    let payload = random_bytes(500);
    app.push_blob(repo, &payload).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.report.v1+json",
        "config": { "mediaType": OCI_EMPTY, "digest": empty, "size": 2 },
        "layers": [descriptor("application/vnd.example.report.v1+json", &payload)],
    }))
    .unwrap();
    app.push_manifest(repo, "latest", OCI_MANIFEST, &manifest).await;
    let body = inventory(&app, &format!("/v1/images?repository={repo}")).await;
    assert_eq!(rows(&body), vec![tagged(repo, "latest")], "{body}");
    let row = &body["images"][0];
    assert_eq!(row["artifact_type"], "application/vnd.example.report.v1+json", "{row}");
    assert_eq!(row["platforms"], json!([]), "{row}");
    assert_eq!(row["total_size"], manifest.len() + 2 + payload.len(), "{row}");
}

#[tokio::test]
async fn an_index_row_lists_its_platforms_and_counts_its_children() {
    let app = TestApp::start();
    let repo = "team/multi";
    let children = [Image::random(1), Image::random(2)];
    let platforms = [
        json!({"os": "linux", "architecture": "amd64"}),
        json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
    ];
    let index = app.push_index(repo, "multi", &children, &platforms).await;
    let digest = sha256(&index);

    let body = inventory(&app, &format!("/v1/images?repository={repo}")).await;
    // The children are part of the index, not images of their own.
    assert_eq!(rows(&body), vec![tagged(repo, "multi")], "{body}");
    let row = &body["images"][0];
    assert_eq!(row["digest"], digest.as_str());
    assert_eq!(row["media_type"], OCI_INDEX);
    assert_eq!(row["platforms"], json!(["linux/amd64", "linux/arm64/v8"]), "{row}");
    let children_size: usize = children
        .iter()
        .map(|c| c.manifest.len() + c.config.len() + c.layers.iter().map(Vec::len).sum::<usize>())
        .sum();
    assert_eq!(row["total_size"], index.len() + children_size, "{row}");
}

#[tokio::test]
async fn filters_by_repository_provenance_and_expiry() {
    let app = TestApp::start();
    for repo in ["team/app", "team/web", "team/deep/x", "other/app"] {
        app.push_image(repo, "v1", 1).await;
    }
    let body = inventory(&app, "/v1/images?repository=team/*").await;
    assert_eq!(
        rows(&body),
        vec![tagged("team/app", "v1"), tagged("team/web", "v1")],
        "{body}"
    );
    let body = inventory(&app, "/v1/images?repository=team/**").await;
    assert_eq!(
        repositories(&body),
        BTreeSet::from(["team/app".into(), "team/deep/x".into(), "team/web".into()])
    );
    let body = inventory(&app, "/v1/images?repository=other/app").await;
    assert_eq!(rows(&body), vec![tagged("other/app", "v1")], "{body}");
    let body = inventory(&app, "/v1/images?repository=nothing/here").await;
    assert_eq!(rows(&body), vec![]);

    let body = inventory(&app, "/v1/images?provenance=pushed").await;
    assert_eq!(rows(&body).len(), 4, "{body}");
    let body = inventory(&app, "/v1/images?provenance=mirrored").await;
    assert_eq!(rows(&body), vec![], "nothing was mirrored: {body}");

    // Tags whose suffix gives them a lifetime.
    let image = app.push_image("exp/app", "x--ttl-2d", 1).await;
    for tag in ["y--ttl-30d", "z"] {
        app.push_manifest("exp/app", tag, OCI_MANIFEST, &image.manifest).await;
    }
    let in_five_days = now_secs() + 5 * 86_400;
    let body = inventory(&app, &format!("/v1/images?expiring_before={in_five_days}")).await;
    assert_eq!(rows(&body), vec![tagged("exp/app", "x--ttl-2d")], "{body}");
    let row = &body["images"][0];
    assert_eq!(row["lifecycle"]["rule"], "ttl", "{row}");
    assert_eq!(row["lifecycle"]["action"], "keep", "{row}");
    let pushed = unix_secs(row["pushed_at"].as_str().unwrap());
    let expires = unix_secs(row["lifecycle"]["expires_at"].as_str().expect("expires_at"));
    assert!(
        (expires - (pushed + 2 * 86_400)).abs() <= 1,
        "a --ttl-2d tag expires two days after its push: {row}"
    );

    let body = inventory(&app, "/v1/images?expiring_before=2999-01-01T00:00:00Z").await;
    assert_eq!(
        rows(&body),
        vec![tagged("exp/app", "x--ttl-2d"), tagged("exp/app", "y--ttl-30d")],
        "a plain tag never expires: {body}"
    );
    let body = inventory(
        &app,
        "/v1/images?repository=team/*&expiring_before=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(rows(&body), vec![], "{body}");
    let body = inventory(&app, "/v1/images?expiring_before=0").await;
    assert_eq!(rows(&body), vec![], "{body}");
}

/// The target of a `Link: <…>; rel="next"` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().expect("Link is text");
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    let start = link.find('<').expect("<") + 1;
    let end = link.find('>').expect(">");
    Some(link[start..end].to_string())
}

/// Follows `Link` headers from `first`; returns the rows and the page sizes.
async fn all_pages(app: &TestApp, first: &str) -> (Vec<(String, Option<String>)>, Vec<usize>) {
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    let mut url = first.to_string();
    loop {
        let (headers, body) = inventory_with(&app.client, &app.base, &url).await;
        sizes.push(rows(&body).len());
        got.extend(rows(&body));
        match next_link(&headers) {
            Some(next) => {
                let cursor = body["next_cursor"].as_str().expect("next_cursor with a Link");
                assert!(next.contains(&format!("cursor={cursor}")), "{next} vs {cursor}");
                assert!(next.starts_with("/v1/images?"), "{next}");
                url = next;
            }
            None => {
                assert_eq!(body["next_cursor"], Value::Null, "no Link, no cursor: {body}");
                return (got, sizes);
            }
        }
        assert!(sizes.len() < 20, "pagination does not end: {sizes:?}");
    }
}

#[tokio::test]
async fn pages_follow_the_cursor_and_the_link_header() {
    let app = TestApp::start();
    let mut expected = Vec::new();
    for (repo, count) in [("p/a", 9), ("p/b", 8), ("p/c", 8)] {
        let image = app.push_image(repo, "t00", 1).await;
        for i in 1..count {
            app.push_manifest(repo, &format!("t{i:02}"), OCI_MANIFEST, &image.manifest)
                .await;
        }
        expected.extend((0..count).map(|i| tagged(repo, &format!("t{i:02}"))));
        if repo == "p/b" {
            // An untagged image comes after the repository's tags.
            let loose = Image::random(1);
            for blob in std::iter::once(&loose.config).chain(&loose.layers) {
                app.push_blob(repo, blob).await;
            }
            app.push_manifest(repo, &loose.digest, OCI_MANIFEST, &loose.manifest)
                .await;
            expected.push((repo.to_string(), None));
        }
    }
    // Another repository outside the filter.
    app.push_image("q/z", "t00", 1).await;

    // Unfiltered, in one page: tags by name, then the untagged image.
    let body = inventory(&app, "/v1/images?repository=p/*").await;
    assert_eq!(rows(&body), expected);

    // Page boundaries inside a repository's tags (n = 10) and right on its
    // untagged image (n = 9) give every row once, in the same order.
    for n in [10, 9] {
        let (got, sizes) = all_pages(&app, &format!("/v1/images?repository=p/*&n={n}")).await;
        let want: Vec<usize> = expected.chunks(n).map(<[_]>::len).collect();
        assert_eq!(got, expected, "pages of {sizes:?} with n={n}");
        assert_eq!(sizes, want);
    }

    // The cursor alone, without the Link header's other parameters.
    let (_, first) = inventory_with(&app.client, &app.base, "/v1/images?n=10").await;
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_string();
    let (_, second) = inventory_with(&app.client, &app.base, &format!("/v1/images?n=10&cursor={cursor}")).await;
    let both: Vec<_> = rows(&first).into_iter().chain(rows(&second)).collect();
    assert_eq!(both, expected[..20].to_vec());
}

#[tokio::test]
async fn malformed_parameters_get_an_invalid_request_error() {
    let app = TestApp::start();
    app.push_image("team/app", "v1", 1).await;
    for query in [
        // Not base64, base64 of no position, not UTF-8.
        "cursor=not-a-cursor!",
        "cursor=Zm9v",
        "cursor=%FF",
        "expiring_before=next-tuesday",
        "n=abc",
    ] {
        let resp = app.get(&format!("/v1/images?{query}")).await;
        assert_error(resp, 400, "INVALID_REQUEST").await;
    }
}

const ROOT_PASSWORD: &str = "root-secret-password";

#[tokio::test]
async fn callers_see_only_the_repositories_they_may_pull() {
    let app = token_app("");
    add_user(&app, "root", ROOT_PASSWORD, true);
    add_user(&app, "alice", ALICE_PASSWORD, false);
    grant(&app, "user:alice", "team/*", "pull");
    let root = Some(("root", ROOT_PASSWORD));
    let alice = Some(("alice", ALICE_PASSWORD));
    let repos = ["team/app", "team/web", "other/app"];
    let scopes: Vec<String> = repos.iter().map(|r| format!("repository:{r}:pull,push")).collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let pusher = bearer_client(&token(&app, root, &scopes).await);
    for repo in repos {
        Image::random(1).push(&pusher, &app.base, repo, "v1").await;
    }
    let all: BTreeSet<String> = repos.iter().map(|r| r.to_string()).collect();
    let team: BTreeSet<String> = ["team/app".to_string(), "team/web".to_string()].into();

    // Basic credentials.
    let resp = app
        .client
        .get(app.url("/v1/images"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(repositories(&resp.json().await.unwrap()), team);
    let resp = app
        .client
        .get(app.url("/v1/images"))
        .basic_auth("root", Some(ROOT_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(repositories(&body), all);
    assert!(
        body["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["pushed_by"].is_string()),
        "a push with a token records who pushed: {body}"
    );

    // Bearer tokens: the catalog scope shows what the user may pull; a token
    // for one repository shows that repository.
    let catalog = bearer_client(&token(&app, alice, &["registry:catalog:*"]).await);
    let (_, body) = inventory_with(&catalog, &app.base, "/v1/images").await;
    assert_eq!(repositories(&body), team);
    let one = bearer_client(&token(&app, alice, &["repository:team/app:pull"]).await);
    let (_, body) = inventory_with(&one, &app.base, "/v1/images").await;
    assert_eq!(repositories(&body), BTreeSet::from(["team/app".to_string()]));
    let (_, body) = inventory_with(&one, &app.base, "/v1/images?repository=other/app").await;
    assert_eq!(rows(&body), vec![], "a filter does not widen what one sees");
    let admin = bearer_client(&token(&app, root, &["registry:catalog:*"]).await);
    let (_, body) = inventory_with(&admin, &app.base, "/v1/images").await;
    assert_eq!(repositories(&body), all);

    // No credentials: only what anonymous pull allows, here nothing.
    let body = inventory(&app, "/v1/images").await;
    assert_eq!(rows(&body), vec![], "{body}");

    // Bad credentials are refused, not treated as anonymous.
    let resp = app
        .client
        .get(app.url("/v1/images"))
        .basic_auth("alice", Some("wrong-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = bearer_client("not.a.token")
        .get(app.url("/v1/images"))
        .send()
        .await
        .unwrap();
    let challenge = header(&resp, "www-authenticate").to_string();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );
    assert_error(resp, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn anonymous_callers_see_what_anonymous_pull_allows() {
    let app = token_app("anonymous = [\"public/**\"]");
    add_user(&app, "root", ROOT_PASSWORD, true);
    let pusher = bearer_client(
        &token(
            &app,
            Some(("root", ROOT_PASSWORD)),
            &["repository:public/base:pull,push", "repository:team/app:pull,push"],
        )
        .await,
    );
    Image::random(1).push(&pusher, &app.base, "public/base", "1").await;
    Image::random(1).push(&pusher, &app.base, "team/app", "1").await;

    let body = inventory(&app, "/v1/images").await;
    assert_eq!(rows(&body), vec![tagged("public/base", "1")], "{body}");
    let anonymous = bearer_client(&token(&app, None, &["registry:catalog:*"]).await);
    let (_, body) = inventory_with(&anonymous, &app.base, "/v1/images").await;
    assert_eq!(rows(&body), vec![tagged("public/base", "1")], "{body}");
}

/// Repositories one inventory request plans at most (`lifecycle::inventory`).
const REPOSITORIES_PER_PAGE: usize = 50;

#[tokio::test]
async fn a_page_bounds_its_work_and_links_to_where_it_stopped() {
    // `expiring_before=0` matches nothing: one request used to plan every
    // repository to say so.
    let app = TestApp::start();
    let count = 2 * REPOSITORIES_PER_PAGE + 20;
    let repos: Vec<String> = (0..count).map(|i| format!("many/r{i:03}")).collect();
    for chunk in repos.chunks(8) {
        let pushes = chunk.iter().map(|repo| {
            let (client, base, repo) = (app.client.clone(), app.base.clone(), repo.clone());
            tokio::spawn(async move { Image::random(0).push(&client, &base, &repo, "v1").await })
        });
        for push in pushes.collect::<Vec<_>>() {
            push.await.expect("push task");
        }
    }

    let (headers, body) = inventory_with(&app.client, &app.base, "/v1/images?expiring_before=0").await;
    assert_eq!(rows(&body), vec![], "{body}");
    let next = next_link(&headers).expect("a Link to where the work stopped");
    assert!(next.contains("expiring_before=0"), "{next}");
    let (got, sizes) = all_pages(&app, "/v1/images?expiring_before=0").await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(sizes, [0, 0, 0], "{count} repositories, {REPOSITORIES_PER_PAGE} a page");

    // Without a filter, pages end where the work does, before n images,
    // and together hold every image once, in order.
    let (got, sizes) = all_pages(&app, "/v1/images?n=1000").await;
    let want: Vec<_> = repos.iter().map(|r| tagged(r, "v1")).collect();
    assert_eq!(got, want);
    assert_eq!(sizes, [REPOSITORIES_PER_PAGE, REPOSITORIES_PER_PAGE, 20]);
    // A page that fills up before its work bound is full, as before.
    let (got, sizes) = all_pages(&app, "/v1/images?n=30").await;
    assert_eq!(got, want);
    assert_eq!(sizes, [30, 30, 30, 30]);
}
