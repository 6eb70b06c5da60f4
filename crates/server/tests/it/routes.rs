//! Storage routes ("bring your own storage"): repositories matching a route
//! push into a named blob store; the database records which stores hold each
//! blob, so a route changed later breaks neither old blobs nor uploads in
//! flight; a mount into another store copies once; GC and fsck cover every store.
//!
//! The routed stores here are filesystem stores under `stores/NAME` in the
//! data directory, on both test backends (in scale-out the default store is
//! the test's bucket), so their files can be checked on disk.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{
    berth_command, blob_key, header, random_bytes, sha256, spawn_server, with_query, Image, TestApp, DAY_MS,
};

/// Lifecycle schedules off: each test runs the collections it needs.
const QUIET: &str = "[gc]\ninterval_secs = 0\n[retention]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n";

/// Two filesystem stores besides `default`, and `team-a/*` routed to `to`.
fn config(to: &str) -> String {
    format!(
        "{QUIET}[storage.stores.team-a]\nbackend = \"filesystem\"\n[storage.stores.team-b]\nbackend = \"filesystem\"\n\
         [[storage.routes]]\nmatch = \"team-a/*\"\nstore = \"{to}\"\n"
    )
}

/// Writes a new configuration file and restarts the server on it.
fn reconfigure(app: &mut TestApp, toml: &str) {
    std::fs::write(app.data_dir().join("berth.toml"), toml).expect("writing the config file");
    app.restart();
}

/// Where the routed store `store` keeps the blob `digest`.
fn routed_file(app: &TestApp, store: &str, digest: &str) -> PathBuf {
    app.data_dir().join("stores").join(store).join(blob_key(digest))
}

fn digests_of(image: &Image) -> Vec<String> {
    std::iter::once(&image.config)
        .chain(&image.layers)
        .map(|b| sha256(b))
        .collect()
}

async fn assert_blob_reads(app: &TestApp, repo: &str, bytes: &[u8]) {
    let resp = app.get(&format!("/v2/{repo}/blobs/{}", sha256(bytes))).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET {repo} blob");
    assert_eq!(resp.bytes().await.unwrap(), bytes, "{repo} blob bytes");
}

async fn assert_image_reads(app: &TestApp, repo: &str, image: &Image) {
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        assert_blob_reads(app, repo, blob).await;
    }
}

/// `berth fsck --json ARGS`: (exit success, report).
fn fsck(app: &TestApp, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["fsck", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = app.cli(&all, "");
    let report = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("berth {all:?} printed {out:?} (stderr {err}): {e}"));
    (ok, report)
}

fn assert_fsck_clean(app: &TestApp) {
    let (ok, report) = fsck(app, &[]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert!(ok, "{report}");
}

async fn gc(app: &TestApp) -> Value {
    let resp = app
        .client
        .post(app.url("/api/v1/gc?dry_run=false"))
        .send()
        .await
        .expect("POST /api/v1/gc");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("a gc report")
}

async fn mount(app: &TestApp, repo: &str, digest: &str, from: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}")))
        .send()
        .await
        .expect("POST mount")
}

#[tokio::test]
async fn routes_place_new_pushes_and_a_route_change_keeps_old_blobs_readable() {
    let mut app = TestApp::start_with_config(&config("team-a"), &[]);
    let old = app.push_image("team-a/app", "v1", 2).await;
    let elsewhere = app.push_image("other/app", "v1", 1).await;
    for digest in digests_of(&old) {
        assert!(routed_file(&app, "team-a", &digest).is_file(), "{digest} is in team-a");
        assert!(
            !app.stored_blobs().await.contains(&digest),
            "{digest} is not in default"
        );
    }
    for digest in digests_of(&elsewhere) {
        assert!(
            app.stored_blobs().await.contains(&digest),
            "an unrouted repository uses default"
        );
    }
    assert_image_reads(&app, "team-a/app", &old).await;

    reconfigure(&mut app, &config("team-b"));
    // The database says where the old blobs are: still readable from team-a.
    assert_image_reads(&app, "team-a/app", &old).await;
    let new = app.push_image("team-a/app", "v2", 1).await;
    for digest in digests_of(&new) {
        assert!(routed_file(&app, "team-b", &digest).is_file(), "{digest} is in team-b");
        assert!(
            !routed_file(&app, "team-a", &digest).exists(),
            "{digest} is not in team-a"
        );
    }
    assert_image_reads(&app, "team-a/app", &new).await;
    assert_fsck_clean(&app);
}

#[tokio::test]
async fn a_mount_into_another_store_copies_once() {
    let app = TestApp::start_with_config(&config("team-a"), &[]);
    let bytes = random_bytes(300_000);
    let digest = app.push_blob("other/app", &bytes).await;
    let copy = routed_file(&app, "team-a", &digest);
    assert!(!copy.exists());

    let resp = mount(&app, "team-a/one", &digest, "other/app").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(std::fs::read(&copy).expect("the copy in team-a"), bytes);
    assert_blob_reads(&app, "team-a/one", &bytes).await;
    let first = std::fs::metadata(&copy).unwrap();

    // The second mount finds the copy and copies nothing.
    let resp = mount(&app, "team-a/two", &digest, "other/app").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let second = std::fs::metadata(&copy).unwrap();
    assert_eq!(
        (first.ino(), first.mtime_nsec(), first.mtime()),
        (second.ino(), second.mtime_nsec(), second.mtime()),
        "the copy was not written again"
    );
    assert_blob_reads(&app, "team-a/two", &bytes).await;
    // A mount within the store copies nothing either.
    assert_eq!(
        mount(&app, "team-a/three", &digest, "team-a/one").await.status(),
        StatusCode::CREATED
    );
    // The original stays where it was, and no session is left in either store.
    assert_eq!(app.stored_blob(&digest).await.as_deref(), Some(&bytes[..]));
    assert!(app.stored_uploads().await.is_empty());
    let team_a_uploads = std::fs::read_dir(app.data_dir().join("stores/team-a/uploads"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(team_a_uploads, 0);
    assert_fsck_clean(&app);
}

#[tokio::test]
async fn an_upload_started_before_a_route_change_finishes_in_its_store() {
    let mut app = TestApp::start_with_config(&config("team-a"), &[]);
    let bytes = random_bytes(10_000);
    let digest = sha256(&bytes);
    let location = app.start_upload("team-a/app").await;
    let resp = app
        .client
        .patch(&location)
        .header("content-range", "0-4999")
        .header("content-type", "application/octet-stream")
        .body(bytes[..5000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = app.resolve(header(&resp, "location"));
    let path = reqwest::Url::parse(&location).unwrap();
    let path = format!("{}?{}", path.path(), path.query().unwrap_or(""));

    reconfigure(&mut app, &config("team-b"));
    let location = app.url(&path);
    let resp = app
        .client
        .patch(&location)
        .header("content-range", "5000-9999")
        .header("content-type", "application/octet-stream")
        .body(bytes[5000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = app.resolve(header(&resp, "location"));
    let resp = app
        .client
        .put(with_query(&location, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(std::fs::read(routed_file(&app, "team-a", &digest)).unwrap(), bytes);
    assert!(!routed_file(&app, "team-b", &digest).exists());
    assert_blob_reads(&app, "team-a/app", &bytes).await;
    assert_fsck_clean(&app);
}

#[tokio::test]
async fn gc_removes_the_files_of_every_store_holding_a_copy() {
    let app = TestApp::start_with_clock(&config("team-a"));
    let bytes = random_bytes(4000);
    let digest = app.push_blob("other/app", &bytes).await;
    assert_eq!(
        mount(&app, "team-a/app", &digest, "other/app").await.status(),
        StatusCode::CREATED
    );
    let copy = routed_file(&app, "team-a", &digest);
    assert!(copy.is_file());
    assert!(app.stored_blobs().await.contains(&digest));

    for repo in ["other/app", "team-a/app"] {
        let resp = app.delete(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "DELETE {repo} blob");
    }
    app.advance_clock(DAY_MS + 3_600_000);
    let report = gc(&app).await;
    assert_eq!(report["blobs_removed"], 1, "{report}");
    assert_eq!(report["orphan_files_removed"], 0, "{report}");
    assert!(!copy.exists(), "the copy in team-a is gone");
    assert!(
        !app.stored_blobs().await.contains(&digest),
        "the file in default is gone"
    );
    assert_fsck_clean(&app);
}

#[tokio::test]
async fn fsck_checks_every_store_and_reports_a_file_missing_from_a_routed_store() {
    let app = TestApp::start_with_config(&config("team-a"), &[]);
    let image = app.push_image("team-a/app", "v1", 2).await;
    app.push_image("other/app", "v1", 1).await;
    assert_fsck_clean(&app);

    let layer = sha256(&image.layers[0]);
    std::fs::remove_file(routed_file(&app, "team-a", &layer)).unwrap();
    let orphan = random_bytes(100);
    let orphan_file = routed_file(&app, "team-b", &sha256(&orphan));
    std::fs::create_dir_all(orphan_file.parent().unwrap()).unwrap();
    std::fs::write(&orphan_file, &orphan).unwrap();

    let (ok, report) = fsck(&app, &[]);
    assert!(!ok, "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{report}");
    let missing = problems
        .iter()
        .find(|p| p["kind"] == "missing_blob")
        .expect("missing_blob");
    assert_eq!(missing["digest"], layer.as_str());
    assert_eq!(missing["store"], "team-a");
    assert_eq!(
        missing["used_by"],
        serde_json::json!([format!("team-a/app@{}", image.digest)])
    );
    let stray = problems
        .iter()
        .find(|p| p["kind"] == "orphan_file")
        .expect("orphan_file");
    assert_eq!(stray["store"], "team-b");
}

#[tokio::test]
async fn a_store_removed_from_the_configuration_is_named_and_never_collected() {
    let mut app = TestApp::start_with_clock(&config("team-a"));
    let bytes = random_bytes(2000);
    let digest = app.push_blob("team-a/app", &bytes).await;
    reconfigure(&mut app, QUIET);

    // The database still answers HEAD; the bytes are out of reach.
    assert_eq!(
        app.head(&format!("/v2/team-a/app/blobs/{digest}")).await.status(),
        StatusCode::OK
    );
    let resp = app.get(&format!("/v2/team-a/app/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.text().await.unwrap();
    assert!(body.contains("team-a"), "the error names the store: {body}");

    let (ok, report) = fsck(&app, &[]);
    assert!(!ok, "{report}");
    assert_eq!(report["problems"][0]["kind"], "store_not_configured", "{report}");
    assert_eq!(report["problems"][0]["store"], "team-a", "{report}");

    assert_eq!(
        app.delete(&format!("/v2/team-a/app/blobs/{digest}")).await.status(),
        StatusCode::ACCEPTED
    );
    app.advance_clock(DAY_MS + 3_600_000);
    let report = gc(&app).await;
    assert_eq!(report["blobs_removed"], 0, "{report}");
    assert_eq!(report["blobs_kept_store_not_configured"], 1, "{report}");
    assert!(routed_file(&app, "team-a", &digest).is_file());

    // Configured again, the blob is collected with its file.
    reconfigure(&mut app, &config("team-a"));
    let report = gc(&app).await;
    assert_eq!(report["blobs_removed"], 1, "{report}");
    assert!(!routed_file(&app, "team-a", &digest).exists());
}

#[tokio::test]
async fn a_route_to_an_unknown_store_is_a_startup_error() {
    let app = TestApp::start();
    let config = app.data_dir().join("bad-routes.toml");
    std::fs::write(
        &config,
        "[[storage.routes]]\nmatch = \"team-a/*\"\nstore = \"nowhere\"\n",
    )
    .unwrap();
    let mut cmd = berth_command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(app.data_dir().join("other"))
        .arg("--config")
        .arg(&config);
    let failure = match spawn_server(cmd) {
        Ok(_) => panic!("berth started with a route to an unknown store"),
        Err(f) => f,
    };
    assert!(
        failure.stderr.contains("nowhere") && failure.stderr.contains("[storage.stores]"),
        "{}",
        failure.stderr
    );

    std::fs::write(&config, "[storage.stores.default]\nbackend = \"filesystem\"\n").unwrap();
    let mut cmd = berth_command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(app.data_dir().join("other"))
        .arg("--config")
        .arg(&config);
    let failure = spawn_server(cmd).err().expect("a store named default is refused");
    assert!(failure.stderr.contains("storage.stores.default"), "{}", failure.stderr);
}
