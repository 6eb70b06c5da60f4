//! Listings: `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, in lexical
//! (byte) order, paginated with `n`, `last` and RFC 5988 `Link` headers.

use serde_json::{json, Value};

use crate::harness::{assert_error, TestApp, OCI_MANIFEST};

const TAGS: [&str; 14] = [
    "latest", "b", "A", "a", "1", "Z", "10", "2", "_x", "a-b", "a.b", "B", "v1.0", "V2",
];
/// `TAGS` in byte order: digits, then uppercase, `_`, lowercase.
const TAGS_SORTED: [&str; 14] = [
    "1", "10", "2", "A", "B", "V2", "Z", "_x", "a", "a-b", "a.b", "b", "latest", "v1.0",
];

const REPOS: [&str; 10] = ["b", "a/z", "a", "a0", "1", "a-b", "a.b", "z9/x", "a_b", "a__b/c"];
/// `REPOS` in byte order: `-` < `.` < `/` < digits < `_` < lowercase.
const REPOS_SORTED: [&str; 10] = ["1", "a", "a-b", "a.b", "a/z", "a0", "a__b/c", "a_b", "b", "z9/x"];

async fn tagged_app() -> TestApp {
    let app = TestApp::start();
    let image = app.push_image("team/app", TAGS[0], 1).await;
    for tag in &TAGS[1..] {
        app.push_manifest("team/app", tag, OCI_MANIFEST, &image.manifest).await;
    }
    app
}

/// The target of a `Link: <url>; rel="next"` header, if there is one.
fn next_link(resp: &reqwest::Response) -> Option<String> {
    let value = resp.headers().get("link")?.to_str().expect("Link is text");
    let target = value
        .strip_prefix('<')
        .and_then(|v| v.split_once('>'))
        .filter(|(_, params)| params.trim_start_matches(';').trim() == "rel=\"next\"")
        .map(|(target, _)| target.to_owned());
    Some(target.unwrap_or_else(|| panic!("malformed Link header {value:?}")))
}

/// Follows `Link` headers from `path`, checking every page holds at most `n`
/// items; returns the pages' items under `key`.
async fn walk(app: &TestApp, path: &str, key: &str, n: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut url = app.url(path);
    loop {
        let resp = app.client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let link = next_link(&resp);
        let body: Value = resp.json().await.unwrap();
        let items: Vec<String> = body[key]
            .as_array()
            .unwrap_or_else(|| panic!("{url}: no {key} array in {body}"))
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        assert!(items.len() <= n, "{url}: {} items, more than n={n}", items.len());
        pages.push(items);
        match link {
            Some(next) => {
                assert!(next.starts_with("/v2/"), "Link target {next}");
                url = app.resolve(&next);
            }
            None => return pages,
        }
        assert!(pages.len() <= 100, "pagination does not end");
    }
}

#[tokio::test]
async fn tags_are_listed_in_byte_order() {
    let app = tagged_app().await;
    let resp = app.get("/v2/team/app/tags/list").await;
    assert_eq!(resp.status(), 200);
    assert!(next_link(&resp).is_none(), "no Link when everything is listed");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({ "name": "team/app", "tags": TAGS_SORTED }));
}

#[tokio::test]
async fn tags_paginate_with_n_and_last() {
    let app = tagged_app().await;

    let resp = app.get("/v2/team/app/tags/list?n=3").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("link").unwrap(),
        "</v2/team/app/tags/list?n=3&last=2>; rel=\"next\""
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["tags"], json!(["1", "10", "2"]));

    let resp = app.get("/v2/team/app/tags/list?n=4&last=Z").await;
    let link = next_link(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["tags"], json!(["_x", "a", "a-b", "a.b"]));
    assert!(link.is_some());

    // `last` need not be a tag: what sorts after it is listed.
    let body: Value = app
        .get("/v2/team/app/tags/list?n=2&last=aa")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["tags"], json!(["b", "latest"]));

    // `last` alone lists everything after it.
    let body: Value = app.get("/v2/team/app/tags/list?last=b").await.json().await.unwrap();
    assert_eq!(body["tags"], json!(["latest", "v1.0"]));

    // The last page has no Link, also when it is exactly full.
    let resp = app.get("/v2/team/app/tags/list?n=2&last=b").await;
    assert!(next_link(&resp).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["tags"], json!(["latest", "v1.0"]));

    let resp = app.get("/v2/team/app/tags/list?n=100").await;
    assert!(next_link(&resp).is_none());
}

#[tokio::test]
async fn following_tag_links_walks_every_tag_once() {
    let app = tagged_app().await;
    for n in [1, 3, 5, 7, 14] {
        let pages = walk(&app, &format!("/v2/team/app/tags/list?n={n}"), "tags", n).await;
        assert_eq!(pages.len(), TAGS.len().div_ceil(n), "n={n}");
        assert_eq!(pages.concat(), TAGS_SORTED, "n={n}");
    }
}

#[tokio::test]
async fn the_catalog_is_listed_in_byte_order_and_paginates() {
    let app = TestApp::start();
    for repo in REPOS {
        app.push_image(repo, "v1", 1).await;
    }
    let resp = app.get("/v2/_catalog").await;
    assert_eq!(resp.status(), 200);
    assert!(next_link(&resp).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({ "repositories": REPOS_SORTED }));

    let resp = app.get("/v2/_catalog?n=4").await;
    let link = next_link(&resp).expect("a Link to the next page");
    assert!(link.starts_with("/v2/_catalog?"), "{link}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["repositories"], json!(["1", "a", "a-b", "a.b"]));

    // A `last` with a slash in it.
    let body: Value = app.get("/v2/_catalog?n=2&last=a%2Fz").await.json().await.unwrap();
    assert_eq!(body["repositories"], json!(["a0", "a__b/c"]));

    for n in [1, 3, 4, 10] {
        let pages = walk(&app, &format!("/v2/_catalog?n={n}"), "repositories", n).await;
        assert_eq!(pages.len(), REPOS.len().div_ceil(n), "n={n}");
        assert_eq!(pages.concat(), REPOS_SORTED, "n={n}");
    }
}

#[tokio::test]
async fn a_bad_n_is_pagination_number_invalid() {
    let app = tagged_app().await;
    for query in ["n=abc", "n=-1", "n=1.5"] {
        let resp = app.get(&format!("/v2/team/app/tags/list?{query}")).await;
        assert_error(resp, 400, "PAGINATION_NUMBER_INVALID").await;
        let resp = app.get(&format!("/v2/_catalog?{query}")).await;
        assert_error(resp, 400, "PAGINATION_NUMBER_INVALID").await;
    }
}

#[tokio::test]
async fn tags_of_an_unknown_repository_are_name_unknown() {
    let app = TestApp::start();
    app.push_image("known", "v1", 1).await;
    assert_error(app.get("/v2/unknown/tags/list").await, 404, "NAME_UNKNOWN").await;
    assert_error(app.get("/v2/known/sub/tags/list").await, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn an_empty_registry_has_an_empty_catalog() {
    let app = TestApp::start();
    let resp = app.get("/v2/_catalog").await;
    assert_eq!(resp.status(), 200);
    assert!(next_link(&resp).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({ "repositories": [] }));
}
