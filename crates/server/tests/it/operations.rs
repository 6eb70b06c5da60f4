//! What an operator sees: `/metrics`, the access log with its request ids,
//! the log level changed while running, and no secret in any log line.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::auth_harness::{add_user, basic, bearer_client, robot, token};
use crate::harness::*;

/// The value of the sample `name{labels}` (labels as Prometheus prints them,
/// sorted by name), or `None` when the text has no such sample.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics_text(app: &TestApp) -> String {
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        header(&resp, "content-type").starts_with("text/plain; version=0.0.4"),
        "{:?}",
        resp.headers()
    );
    resp.text().await.unwrap()
}

/// Waits until `check` holds for the metrics text (the storage gauges are
/// computed on a schedule), failing after 10 s with the last text.
async fn metrics_until(app: &TestApp, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(app).await;
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never got there:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JSON access log lines of the server (target `berth::access`).
fn access_lines(app: &TestApp) -> Vec<Value> {
    app.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "berth::access")
        .collect()
}

/// Waits for the access line of the request `id` (written when its response ends).
async fn access_line(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = access_lines(app).into_iter().find(|l| l["request_id"] == id) {
            return line;
        }
        assert!(Instant::now() < deadline, "no access line for {id}:\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_a_push_and_a_pull_without_naming_repositories() {
    let app = TestApp::start_with_config("[metrics]\nnamespaces = [\"team\"]\nusage_interval_secs = 1\n", &[]);
    let image = app.push_image("team/secret-app", "v1", 2).await;
    app.push_image("loner", "v1", 1).await;
    let manifest = app.get("/v2/team/secret-app/manifests/v1").await;
    assert_eq!(manifest.status(), StatusCode::OK);
    let layer = &image.layer_digests()[0];
    let blob = app.get(&format!("/v2/team/secret-app/blobs/{layer}")).await;
    assert_eq!(blob.bytes().await.unwrap().len(), image.layers[0].len());
    assert_eq!(
        app.get("/v2/team/secret-app/manifests/nope").await.status(),
        StatusCode::NOT_FOUND
    );

    let team_bytes: usize = image.layers.iter().map(Vec::len).sum::<usize>() + image.config.len();
    let text = metrics_until(&app, |t| {
        sample(t, r#"berth_storage_bytes{namespace="team"}"#) == Some(team_bytes as f64)
    })
    .await;
    let at_least = |series: &str, n: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= n, "{series} = {v}, expected at least {n}");
    };
    at_least(
        r#"berth_http_requests_total{method="PUT",route="manifest",status="201"}"#,
        2.0,
    );
    at_least(
        r#"berth_http_requests_total{method="GET",route="manifest",status="200"}"#,
        1.0,
    );
    at_least(
        r#"berth_http_requests_total{method="GET",route="manifest",status="404"}"#,
        1.0,
    );
    at_least(
        r#"berth_http_requests_total{method="GET",route="blob",status="200"}"#,
        1.0,
    );
    at_least(
        r#"berth_http_requests_total{method="POST",route="upload",status="201"}"#,
        3.0,
    );
    at_least(
        r#"berth_http_request_duration_seconds_count{method="GET",route="blob"}"#,
        1.0,
    );
    at_least(
        r#"berth_http_response_bytes_total{route="blob"}"#,
        image.layers[0].len() as f64,
    );
    at_least(r#"berth_http_request_bytes_total{route="upload"}"#, team_bytes as f64);
    at_least(
        r#"berth_db_operation_duration_seconds_count{operation="put_manifest",result="ok"}"#,
        2.0,
    );
    at_least(
        r#"berth_blobstore_operation_duration_seconds_count{operation="get",result="ok",store="default"}"#,
        1.0,
    );
    at_least(r#"berth_storage_bytes{namespace="other"}"#, 1.0);
    at_least(r#"berth_repositories{namespace="team"}"#, 1.0);
    at_least("berth_storage_usage_refreshed_timestamp_seconds", 1.0);
    assert_eq!(sample(&text, "berth_upload_sessions_open"), Some(0.0), "{text}");
    at_least("process_resident_memory_bytes", 1.0);
    // Bounded label values: no repository name, no digest.
    assert!(!text.contains("secret-app") && !text.contains("loner"), "{text}");
    assert!(!text.contains("sha256:"), "{text}");
}

#[tokio::test]
async fn metrics_can_move_to_a_listener_of_their_own() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let app = TestApp::start_with_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), &[]);
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    app.push_image("a/b", "v1", 1).await;
    let text = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sample(
            &text,
            r#"berth_http_requests_total{method="PUT",route="manifest",status="201"}"#
        ) == Some(1.0),
        "{text}"
    );
    let off = TestApp::start_with_config("[metrics]\nenabled = false\n", &[]);
    assert_eq!(off.get("/metrics").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_its_access_line() {
    let app = TestApp::start();
    app.push_image("team/app", "v1", 1).await;

    // A well-formed id from the client is kept.
    let resp = app
        .client
        .get(app.url("/v2/team/app/manifests/v1"))
        .header("x-request-id", "trace-1234:abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-request-id"), "trace-1234:abc");
    let body_len = resp.bytes().await.unwrap().len() as u64;
    let line = access_line(&app, "trace-1234:abc").await;
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "manifest");
    assert_eq!(line["repository"], "team/app");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_out"], body_len);
    assert_eq!(line["identity"], "-");
    assert_eq!(line["completed"], true);
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");

    // A malformed one (spaces, too long) is replaced by one of ours.
    for bad in ["has spaces in it", &"x".repeat(300)] {
        let resp = app
            .client
            .get(app.url("/v2/"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = header(&resp, "x-request-id").to_string();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "a UUID: {id}");
        access_line(&app, &id).await;
    }
    // None at all: one of ours too, on errors as well.
    let resp = app.get("/v2/team/app/manifests/missing").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let id = header(&resp, "x-request-id").to_string();
    let line = access_line(&app, &id).await;
    assert_eq!(line["status"], 404);
    // Events logged while handling a request carry its id (the span).
    assert!(
        app.log()
            .lines()
            .all(|l| !l.contains("\"message\":\"request\"") || l.contains("request_id")),
        "{}",
        app.log()
    );
}

/// Passwords, robot tokens, bearer tokens and Basic credentials never reach
/// the log, even at the most verbose level.
#[tokio::test]
async fn no_secret_is_ever_logged() {
    let app = TestApp::start_with_config(
        "[auth]\nmode = \"token\"\n[log]\nlevel = \"trace\"\n",
        &[("RUST_LOG", "trace")],
    );
    let password = "correct-horse-battery-staple-42";
    add_user(&app, "alice", password, true);
    let robot_secret = robot(&app, "ci", &["team/**:push"], None);

    let access = token(&app, Some(("alice", password)), &["repository:team/app:pull,push"]).await;
    let client = bearer_client(&access);
    Image::random(1).push(&client, &app.base, "team/app", "v1").await;
    // The password through the OAuth2 form and through the admin API's Basic auth.
    let form = app
        .client
        .post(app.url("/v2/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", password),
            ("service", "berth"),
            ("scope", "repository:team/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let admin = app
        .client
        .get(app.url("/api/v1/users"))
        .header("authorization", basic("alice", password))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    // A wrong password and the robot token as a password.
    token_with(&app, "alice", "wrong-password-not-this-one").await;
    let robot_access = token(&app, Some(("ci", &robot_secret)), &["repository:team/app:push"]).await;
    assert!(!robot_access.is_empty());
    // Give the access lines of the last requests time to be written.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = app.log();
    assert!(
        log.contains("berth::access"),
        "the log has access lines at least:\n{log}"
    );
    for secret in [
        password,
        "wrong-password-not-this-one",
        robot_secret.as_str(),
        access.as_str(),
        robot_access.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
    let basic_value = basic("alice", password);
    let encoded = basic_value.trim_start_matches("Basic ");
    assert!(!log.contains(encoded), "Basic credentials are in the log");
    // A JWT's signature part alone must not be there either.
    let signature = access.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "a token signature is in the log");
}

async fn token_with(app: &TestApp, login: &str, password: &str) {
    let resp = app
        .client
        .get(app.url("/v2/token?service=berth&scope=repository:team/app:pull"))
        .header("authorization", basic(login, password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_log_level_changes_through_the_admin_api_and_on_sighup() {
    let app = TestApp::start_with_config("[log]\nlevel = \"info\"\n", &[]);
    let marked = |id: &str| {
        let id = id.to_string();
        let app = &app;
        async move {
            app.client
                .get(app.url("/v2/"))
                .header("x-request-id", &id)
                .send()
                .await
                .unwrap();
            // The line, when there is one, is written as the response ends.
            tokio::time::sleep(Duration::from_millis(200)).await;
            access_lines(app).iter().any(|l| l["request_id"] == id.as_str())
        }
    };
    assert!(marked("before-change").await, "info logs requests");

    let resp = app
        .client
        .put(app.url("/api/v1/log"))
        .body(r#"{"level":"warn"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!marked("while-warn").await, "warn does not log requests");
    let now: Value = app.get("/api/v1/log").await.json().await.unwrap();
    assert_eq!(now["level"], "warn");

    let bad = app
        .client
        .put(app.url("/api/v1/log"))
        .body(r#"{"level":"berth=[unclosed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let now: Value = app.get("/api/v1/log").await.json().await.unwrap();
    assert_eq!(now["level"], "warn", "a bad level changes nothing");

    // SIGHUP applies the configuration file's level again.
    std::fs::write(app.config_file(), "[log]\nlevel = \"info\"\n").unwrap();
    app.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marked("after-hangup").await {
        assert!(Instant::now() < deadline, "SIGHUP did not restore info:\n{}", app.log());
    }
    // A configuration that no longer loads keeps the server as it is.
    std::fs::write(app.config_file(), "[log]\nlevel = 5\n").unwrap();
    app.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(marked("after-bad-hangup").await, "still info");
    assert!(
        app.logged("SIGHUP: the configuration does not load").await,
        "{}",
        app.log()
    );
}

#[tokio::test]
async fn refused_credentials_are_counted_by_reason() {
    let app = TestApp::start_with_config("[auth]\nmode = \"token\"\n", &[]);
    add_user(&app, "bob", "bobs-password", false);
    assert_eq!(app.get("/v2/").await.status(), StatusCode::UNAUTHORIZED);
    let bad_token = bearer_client("not.a.token");
    let resp = bad_token.get(app.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    token_with(&app, "bob", "not-bobs-password").await;
    let text = metrics_text(&app).await;
    assert_eq!(
        sample(&text, r#"berth_auth_failures_total{reason="missing"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"berth_auth_failures_total{reason="bad_token"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"berth_auth_failures_total{reason="bad_credentials"}"#),
        Some(1.0),
        "{text}"
    );
}

/// SIGTERM lets requests in progress finish up to `shutdown_grace_secs`,
/// then exits 0; an upload cut by the deadline resumes from its last
/// acknowledged chunk after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_out_the_grace_and_a_cut_upload_resumes() {
    let mut app = TestApp::start_with_config("shutdown_grace_secs = 2\n", &[]);
    let blob = random_bytes(300_000);
    let location = app.start_upload("team/app").await;
    let path = location.trim_start_matches(&app.base).to_string();
    let first = app
        .client
        .patch(&location)
        .header("content-range", "0-99999")
        .body(blob[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);

    // The next chunk stops halfway and stays open.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let uploader = app.client.clone();
    let url = location.clone();
    let _stalled = tokio::spawn(async move {
        uploader
            .patch(url)
            .header("content-range", "100000-299999")
            .header("content-length", "200000")
            .body(reqwest::Body::wrap_stream(rx))
            .send()
            .await
    });
    futures::SinkExt::send(&mut tx, Ok(blob[100_000..150_000].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    // SIGTERM, wait for exit 0 (asserted by the harness), start again.
    tokio::task::block_in_place(|| app.restart());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "did not wait for the request: {took:?}"
    );
    assert!(took < Duration::from_secs(9), "waited past the grace: {took:?}");

    let status = app.get(&path).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-99999");
    let rest = app
        .client
        .patch(app.url(&path))
        .header("content-range", "100000-299999")
        .body(blob[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::ACCEPTED);
    let done = app
        .client
        .put(with_query(&app.url(&path), &format!("digest={}", sha256(&blob))))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::CREATED);
    let pulled = app.get(&format!("/v2/team/app/blobs/{}", sha256(&blob))).await;
    assert_eq!(pulled.bytes().await.unwrap().as_ref(), &blob[..]);
}
