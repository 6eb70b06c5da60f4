//! Lifecycle rules against a real server whose clock the test moves: tag
//! suffixes, keep-latest, retention policies with preview, run and audit,
//! and signatures that live exactly as long as their subject.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

/// Schedules off: every run in these tests is asked for.
const MANUAL: &str = "[gc]\ninterval_secs = 0\n[retention]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n";

async fn tags(app: &TestApp, repo: &str) -> Vec<String> {
    let resp = app.get(&format!("/v2/{repo}/tags/list")).await;
    if resp.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    let body: Value = resp.json().await.expect("tag list JSON");
    let mut names: Vec<String> = body["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

async fn manifest_status(app: &TestApp, repo: &str, reference: &str) -> u16 {
    app.client
        .get(app.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest")
        .status()
        .as_u16()
}

/// `berth retention run` as the operator would type it; panics on failure.
/// (Pulls the server received in the last second may not be recorded yet.)
fn run_retention(app: &TestApp) -> String {
    let (ok, out, err) = app.cli(&["retention", "run"], "");
    assert!(ok, "retention run failed: {out}{err}");
    err
}

/// A run through the admin API, which first records the server's latest pulls.
async fn run_retention_api(app: &TestApp) -> Value {
    let resp = app
        .client
        .post(app.url("/api/v1/retention/run"))
        .send()
        .await
        .expect("POST run");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("run summary")
}

async fn set_policy(app: &TestApp, pattern: &str, rules: Value) {
    let resp = app
        .client
        .put(app.url("/api/v1/retention/policies"))
        .json(&json!({ "pattern": pattern, "rules": rules }))
        .send()
        .await
        .expect("PUT policy");
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

async fn preview(app: &TestApp) -> Vec<Value> {
    let body: Value = app
        .get("/api/v1/retention/preview")
        .await
        .json()
        .await
        .expect("preview JSON");
    body["entries"].as_array().cloned().unwrap_or_default()
}

fn entry<'a>(entries: &'a [Value], tag: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["tag"] == tag)
        .unwrap_or_else(|| panic!("no preview entry for {tag}: {entries:?}"))
}

#[tokio::test]
async fn ttl_tags_expire_when_their_window_has_passed() {
    let app = TestApp::start_with_clock(MANUAL);
    let image = app.push_image("team/app", "main--ttl-7d", 1).await;
    app.push_manifest("team/app", "stable", OCI_MANIFEST, &image.manifest)
        .await;
    let short = app.push_image("team/app", "pr-1--ttl-1h", 1).await;

    app.advance_clock(2 * 3_600_000);
    run_retention(&app);
    assert_eq!(tags(&app, "team/app").await, ["main--ttl-7d", "stable"]);
    assert_eq!(
        manifest_status(&app, "team/app", &short.digest).await,
        404,
        "the manifest went with its only tag"
    );

    app.advance_clock(6 * DAY_MS);
    run_retention(&app);
    assert_eq!(
        tags(&app, "team/app").await,
        ["main--ttl-7d", "stable"],
        "6 days and 2 hours < 7 days"
    );

    app.advance_clock(DAY_MS);
    run_retention(&app);
    assert_eq!(tags(&app, "team/app").await, ["stable"]);
    assert_eq!(
        manifest_status(&app, "team/app", &image.digest).await,
        200,
        "the manifest stays while another tag names it"
    );

    let rows = app.audit().await;
    let expired = rows
        .iter()
        .find(|r| r["action"] == "tag.delete" && r["target"] == "team/app:main--ttl-7d")
        .expect("the expiry is in the audit log");
    let detail: Value = serde_json::from_str(expired["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["rule"], "ttl");
    assert!(detail["reason"].as_str().unwrap().contains("expired"), "{detail}");
}

#[tokio::test]
async fn a_pull_of_the_tag_or_of_its_digest_resets_the_idle_clock() {
    let app = TestApp::start_with_clock(MANUAL);
    let by_tag = app.push_image("a", "x--idle-3d", 1).await;
    let by_digest = app.push_image("a", "y--idle-3d", 1).await;
    app.push_image("a", "z--idle-3d", 1).await;

    app.advance_clock(2 * DAY_MS);
    assert_eq!(manifest_status(&app, "a", "x--idle-3d").await, 200);
    assert_eq!(manifest_status(&app, "a", &by_digest.digest).await, 200);
    app.advance_clock(2 * DAY_MS);
    run_retention_api(&app).await;
    assert_eq!(
        tags(&app, "a").await,
        ["x--idle-3d", "y--idle-3d"],
        "z was idle for 4 days"
    );

    app.advance_clock(2 * DAY_MS);
    // Pushing the same tag again also restarts the clock.
    app.push_manifest("a", "x--idle-3d", OCI_MANIFEST, &by_tag.manifest)
        .await;
    app.advance_clock(2 * DAY_MS);
    run_retention_api(&app).await;
    assert_eq!(tags(&app, "a").await, ["x--idle-3d"]);
}

#[tokio::test]
async fn malformed_suffixes_are_refused_or_taken_as_plain_tags() {
    let app = TestApp::start_with_clock(MANUAL);
    let image = Image::random(1);
    image.push(&app.client, &app.base, "a", "ok--ttl-365d").await;
    for tag in ["x--ttl-0h", "x--ttl-366d", "x--idle-7y", "x--ttl-30m"] {
        let resp = app.put_manifest("a", tag, OCI_MANIFEST, &image.manifest).await;
        let body = assert_error(resp, 400, "MANIFEST_INVALID").await;
        let message = body["errors"][0]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(tag), "the message names the tag: {message}");
    }

    let lenient = TestApp::start_with_clock(&format!("{MANUAL}invalid_suffix = \"plain\"\n"));
    image.push(&lenient.client, &lenient.base, "a", "x--ttl-0h").await;
    lenient.advance_clock(400 * DAY_MS);
    run_retention(&lenient);
    assert_eq!(tags(&lenient, "a").await, ["x--ttl-0h"], "a plain tag never expires");
}

#[tokio::test]
async fn suffix_rules_and_keep_latest_are_set_per_namespace() {
    let config = format!(
        "{MANUAL}\n[[lifecycle.namespaces]]\npattern = \"legacy/**\"\nsuffix_rules = false\n\n\
         [[lifecycle.namespaces]]\npattern = \"ci/*\"\nkeep_latest = true\n"
    );
    let app = TestApp::start_with_clock(&config);
    app.push_image("legacy/app", "old--ttl-1h", 1).await;
    app.push_image("legacy/app", "x--ttl-0h", 1).await;
    let first = app.push_image("ci/app", "build-1", 1).await;
    app.advance_clock(60_000);
    app.push_image("ci/app", "build-2", 1).await;
    app.advance_clock(60_000);
    app.push_image("ci/app", "build-3", 1).await;
    app.push_image("ci/app", "pr--ttl-7d", 1).await;
    app.push_image("other", "a", 1).await;
    app.push_image("other", "b", 1).await;

    app.advance_clock(DAY_MS);
    run_retention(&app);
    assert_eq!(tags(&app, "legacy/app").await, ["old--ttl-1h", "x--ttl-0h"]);
    assert_eq!(tags(&app, "ci/app").await, ["build-3", "pr--ttl-7d"]);
    assert_eq!(manifest_status(&app, "ci/app", &first.digest).await, 404);
    assert_eq!(tags(&app, "other").await, ["a", "b"], "no policy means no deletion");
}

#[tokio::test]
async fn retention_keeps_what_any_rule_keeps_and_explains_every_decision() {
    let app = TestApp::start_with_clock(MANUAL);
    for (i, tag) in ["v1.0", "build-1", "build-2", "build-3", "build-4", "build-5"]
        .iter()
        .enumerate()
    {
        app.push_image("team/app", tag, 1).await;
        app.advance_clock(DAY_MS + i as i64);
    }
    app.push_image("team/app", "latest", 1).await;
    app.advance_clock(40 * DAY_MS);
    // Pulled recently: kept by keep_pulled_within although old.
    assert_eq!(manifest_status(&app, "team/app", "build-1").await, 200);
    set_policy(
        &app,
        "team/**",
        json!({"keep_last": 2, "keep_patterns": ["v*", "latest"], "keep_pulled_within": 7, "keep_days": 30}),
    )
    .await;
    // A repository no policy matches keeps everything.
    app.push_image("other/app", "old", 1).await;

    let entries = preview(&app).await;
    assert_eq!(entry(&entries, "v1.0")["rule"], "keep_patterns");
    assert_eq!(entry(&entries, "latest")["rule"], "keep_patterns");
    // The two most recent tags are `latest` and build-5, whatever else keeps them.
    assert_eq!(entry(&entries, "build-5")["rule"], "keep_last");
    assert_eq!(entry(&entries, "build-1")["rule"], "keep_pulled_within");
    for gone in ["build-2", "build-3", "build-4"] {
        let e = entry(&entries, gone);
        assert_eq!(e["action"], "delete", "{e}");
        assert_eq!(e["rule"], "retention");
        assert!(e["reason"].as_str().unwrap().contains("beyond keep_last 2"), "{e}");
    }
    assert_eq!(entry(&entries, "old")["rule"], "no_policy");
    let planned: Vec<String> = entries
        .iter()
        .filter(|e| e["action"] == "delete" && e["tag"].is_string())
        .map(|e| e["tag"].as_str().unwrap().to_string())
        .collect();

    // The CLI preview says the same.
    let (ok, out, _) = app.cli(&["retention", "preview", "--deleted-only", "--json"], "");
    assert!(ok);
    let cli_deleted: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["tag"].as_str().map(str::to_string))
        .collect();
    assert_eq!(cli_deleted, planned);

    run_retention(&app);
    assert_eq!(tags(&app, "team/app").await, ["build-1", "build-5", "latest", "v1.0"]);
    let rows = app.audit().await;
    for gone in &planned {
        let row = rows
            .iter()
            .find(|r| r["target"] == format!("team/app:{gone}"))
            .unwrap_or_else(|| panic!("no audit row for {gone}"));
        assert!(row["actor"].as_str().unwrap().starts_with("cli:"), "{row}");
        let detail: Value = serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
        assert_eq!(detail["rule"], "retention");
        assert!(detail["reason"].as_str().unwrap().contains("keep_days 30"), "{detail}");
    }
    assert!(
        rows.iter().any(|r| r["action"] == "manifest.delete"),
        "their manifests went too"
    );
}

#[tokio::test]
async fn keep_days_counts_from_the_push_and_keep_min_is_a_floor() {
    let app = TestApp::start_with_clock(MANUAL);
    for tag in ["a", "b", "c"] {
        app.push_image("r", tag, 1).await;
        app.advance_clock(DAY_MS);
    }
    set_policy(&app, "r", json!({"keep_days": 10, "keep_min": 2})).await;
    app.advance_clock(6 * DAY_MS);
    run_retention(&app);
    assert_eq!(tags(&app, "r").await, ["a", "b", "c"], "a was pushed 9 days ago");
    app.advance_clock(3 * DAY_MS);
    let entries = preview(&app).await;
    assert_eq!(entry(&entries, "a")["action"], "delete");
    assert_eq!(entry(&entries, "b")["rule"], "keep_min");
    run_retention(&app);
    assert_eq!(
        tags(&app, "r").await,
        ["b", "c"],
        "none is within 10 days; keep_min keeps the two most recent"
    );
}

#[tokio::test]
async fn policies_are_managed_by_cli_and_api_and_may_come_from_the_config() {
    let config = format!("{MANUAL}\n[retention.policies.\"fixed/**\"]\nkeep_last = 3\n");
    let app = TestApp::start_with_clock(&config);
    let (ok, _, err) = app.cli(
        &[
            "retention",
            "set",
            "team/*",
            "--keep-last",
            "5",
            "--keep-pattern",
            "v*",
            "--untagged",
            "7",
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = app.cli(&["retention", "set", "bad/*", "--keep-days", "0"], "");
    assert!(!ok && err.contains("keep_days"), "{err}");
    let (ok, out, _) = app.cli(&["retention", "show"], "");
    assert!(ok);
    assert!(
        out.contains("team/*") && out.contains("\"keep_last\":5") && out.contains("\"untagged\":7"),
        "{out}"
    );
    assert!(out.contains("fixed/**") && out.contains("config"), "{out}");

    let body: Value = app.get("/api/v1/retention/policies").await.json().await.unwrap();
    let patterns: Vec<&str> = body["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(patterns, ["fixed/**", "team/*"]);

    let resp = app
        .client
        .put(app.url("/api/v1/retention/policies"))
        .json(&json!({"pattern": "x", "rules": {"keep_lats": 1}}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "INVALID_REQUEST").await;

    let resp = app
        .client
        .delete(app.url("/api/v1/retention/policies?pattern=team/*"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (ok, _, _) = app.cli(&["retention", "delete", "team/*"], "");
    assert!(!ok, "deleting a missing policy is an error");
    let rows = app.audit().await;
    assert!(rows
        .iter()
        .any(|r| r["action"] == "retention.set" && r["target"] == "policy:team/*"));
    assert!(rows
        .iter()
        .any(|r| r["action"] == "retention.delete" && r["target"] == "policy:team/*"));
}

#[tokio::test]
async fn untagged_manifests_go_after_the_policy_days() {
    let app = TestApp::start_with_clock(MANUAL);
    let old = app.push_image("r", "v", 1).await;
    app.push_image("r", "v", 1).await; // `old` loses its tag now
    let by_digest = Image::random(1);
    by_digest.push(&app.client, &app.base, "r", &by_digest.digest).await;
    set_policy(&app, "r", json!({"untagged": 3})).await;
    app.advance_clock(2 * DAY_MS);
    run_retention(&app);
    assert_eq!(manifest_status(&app, "r", &old.digest).await, 200);
    app.advance_clock(2 * DAY_MS);
    run_retention(&app);
    assert_eq!(manifest_status(&app, "r", &old.digest).await, 404);
    assert_eq!(manifest_status(&app, "r", &by_digest.digest).await, 404);
    assert_eq!(tags(&app, "r").await, ["v"]);
}

/// A manifest whose `subject` is `subject`, as `oras attach` or `cosign` with
/// the referrers API push it.
fn referrer_of(subject: &Image, artifact_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": OCI_EMPTY, "digest": sha256(b"{}"), "size": 2 },
        "layers": [{ "mediaType": OCI_EMPTY, "digest": sha256(b"{}"), "size": 2 }],
        "subject": subject.descriptor(),
    }))
    .unwrap()
}

/// A cosign-style signature: a plain manifest of one layer, pushed under the
/// tag schema `sha256-<hex>.sig`.
async fn push_tag_schema_signature(app: &TestApp, repo: &str, subject: &Image) -> (String, String) {
    let sig = Image::random(1);
    let tag = format!("{}.sig", subject.digest.replace(':', "-"));
    sig.push(&app.client, &app.base, repo, &tag).await;
    (tag, sig.digest)
}

#[tokio::test]
async fn signatures_live_exactly_as_long_as_their_subject() {
    let app = TestApp::start_with_clock(MANUAL);
    app.push_blob("s", b"{}").await;
    let old = app.push_image("s", "old", 1).await;
    app.advance_clock(60_000);
    let new = app.push_image("s", "new", 1).await;
    let old_referrer = app
        .push_manifest(
            "s",
            &sha256(&referrer_of(&old, "application/vnd.example.sbom")),
            OCI_MANIFEST,
            &referrer_of(&old, "application/vnd.example.sbom"),
        )
        .await;
    let new_referrer = app
        .push_manifest(
            "s",
            &sha256(&referrer_of(&new, "application/vnd.example.sbom")),
            OCI_MANIFEST,
            &referrer_of(&new, "application/vnd.example.sbom"),
        )
        .await;
    let (old_sig_tag, old_sig) = push_tag_schema_signature(&app, "s", &old).await;
    let (new_sig_tag, new_sig) = push_tag_schema_signature(&app, "s", &new).await;
    set_policy(&app, "s", json!({"keep_last": 1})).await;

    let entries = preview(&app).await;
    assert_eq!(entry(&entries, &new_sig_tag)["action"], "keep");
    assert_eq!(entry(&entries, &new_sig_tag)["rule"], "follows_subject");
    assert_eq!(entry(&entries, &old_sig_tag)["action"], "delete");
    assert_eq!(
        entry(&entries, "new")["rule"],
        "keep_last",
        "signature tags are not counted"
    );

    run_retention(&app);
    let mut expected = vec!["new".to_string(), new_sig_tag.clone()];
    expected.sort();
    assert_eq!(tags(&app, "s").await, expected);
    for gone in [&old.digest, &old_referrer, &old_sig] {
        assert_eq!(
            manifest_status(&app, "s", gone).await,
            404,
            "{gone} went with its subject"
        );
    }
    for kept in [&new.digest, &new_referrer, &new_sig] {
        assert_eq!(
            manifest_status(&app, "s", kept).await,
            200,
            "{kept} stays with its subject"
        );
    }
    let referrers: Value = app
        .get(&format!("/v2/s/referrers/{}", new.digest))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(referrers["manifests"].as_array().unwrap().len(), 1);
}

/// Pushes `body` by digest only, as `oras attach` and `cosign` with the
/// referrers API do; returns its digest.
async fn push_by_digest(app: &TestApp, repo: &str, body: &[u8]) -> String {
    app.push_manifest(repo, &sha256(body), OCI_MANIFEST, body).await
}

/// The preview's deletions: `tag` for a tag, `@digest` for a manifest.
fn deletions(entries: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter(|e| e["action"] == "delete")
        .map(|e| match e["tag"].as_str() {
            Some(tag) => tag.to_string(),
            None => format!("@{}", e["digest"].as_str().unwrap_or_default()),
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn artifacts_are_not_counted_as_images_and_go_with_their_subject() {
    // The case of issue 17: an attestation of `old` under the ordinary tag
    // `att-ref`, pushed last, took keep_last's only place and `new` went.
    let app = TestApp::start_with_clock(MANUAL);
    app.push_blob("r", b"{}").await;
    let old = app.push_image("r", "old", 1).await;
    app.advance_clock(60_000);
    let mid = app.push_image("r", "mid", 1).await;
    app.advance_clock(60_000);
    let new = app.push_image("r", "new", 1).await;
    app.advance_clock(60_000);
    let att_body = referrer_of(&old, "application/vnd.in-toto+json");
    let att = app.push_manifest("r", "att-ref", OCI_MANIFEST, &att_body).await;
    app.advance_clock(60_000);
    // The same kind of artifact of the image that stays, also under a tag.
    let att_new = app
        .push_manifest(
            "r",
            "att-new",
            OCI_MANIFEST,
            &referrer_of(&new, "application/vnd.in-toto+json"),
        )
        .await;
    // Signatures and SBOMs pushed by digest only.
    let sig_new = push_by_digest(
        &app,
        "r",
        &referrer_of(&new, "application/vnd.dev.cosign.artifact.sig.v1+json"),
    )
    .await;
    let sbom_mid = push_by_digest(&app, "r", &referrer_of(&mid, "application/spdx+json")).await;
    let att_body_image = Image {
        manifest: att_body.clone(),
        digest: att.clone(),
        ..Image::random(0)
    };
    let sig_att = push_by_digest(
        &app,
        "r",
        &referrer_of(&att_body_image, "application/vnd.dev.cosign.artifact.sig.v1+json"),
    )
    .await;
    set_policy(&app, "r", json!({"keep_last": 1})).await;

    let entries = preview(&app).await;
    let new_entry = entry(&entries, "new");
    assert_eq!(new_entry["action"], "keep", "{new_entry}");
    assert_eq!(new_entry["reason"], "keep_last: number 1 of the 1 most recent");
    let att_entry = entry(&entries, "att-ref");
    assert_eq!(att_entry["action"], "delete", "{att_entry}");
    assert_eq!(att_entry["rule"], "follows_subject");
    assert!(
        att_entry["reason"].as_str().unwrap().contains(&old.digest),
        "the reason names the subject: {att_entry}"
    );
    assert_eq!(entry(&entries, "att-new")["action"], "keep");
    assert_eq!(entry(&entries, "att-new")["rule"], "follows_subject");
    let mut expected = vec![
        "att-ref".to_string(),
        "mid".to_string(),
        "old".to_string(),
        format!("@{}", old.digest),
        format!("@{}", mid.digest),
        format!("@{att}"),
        format!("@{sbom_mid}"),
        format!("@{sig_att}"),
    ];
    expected.sort();
    assert_eq!(deletions(&entries), expected);
    for referrer in [&att, &sbom_mid, &sig_att] {
        let e = entries
            .iter()
            .find(|e| e["tag"].is_null() && e["digest"] == referrer.as_str())
            .unwrap();
        assert_eq!(e["rule"], "follows_subject", "{e}");
    }

    // The CLI preview and the inventory say the same.
    let (ok, out, _) = app.cli(&["retention", "preview", "--deleted-only", "--json"], "");
    assert!(ok);
    let cli: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(deletions(&cli), expected);
    let inventory: Value = app.get("/v1/images?repository=r").await.json().await.unwrap();
    for image in inventory["images"].as_array().unwrap() {
        let tag = image["tag"].as_str().unwrap_or_default();
        let wanted = match tag {
            "new" | "att-new" => "keep",
            _ => "delete",
        };
        assert_eq!(image["lifecycle"]["action"], wanted, "{image}");
    }

    run_retention(&app);
    assert_eq!(tags(&app, "r").await, ["att-new", "new"]);
    for gone in [&old.digest, &mid.digest, &att, &sbom_mid, &sig_att] {
        assert_eq!(manifest_status(&app, "r", gone).await, 404, "{gone} went");
    }
    for kept in [&new.digest, &att_new, &sig_new] {
        assert_eq!(manifest_status(&app, "r", kept).await, 200, "{kept} stays");
    }
    let referrers: Value = app
        .get(&format!("/v2/r/referrers/{}", new.digest))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(referrers["manifests"].as_array().unwrap().len(), 2, "{referrers}");
    let rows = app.audit().await;
    for (target, action) in [
        ("r:att-ref".to_string(), "tag.delete"),
        (format!("r@{att}"), "manifest.delete"),
    ] {
        let row = rows
            .iter()
            .find(|r| r["target"] == target.as_str() && r["action"] == action)
            .unwrap_or_else(|| panic!("no audit row for {target}"));
        let detail: Value = serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
        assert_eq!(detail["rule"], "follows_subject", "{row}");
    }
    // What is left is stable: a second run would remove nothing.
    assert_eq!(deletions(&preview(&app).await), Vec::<String>::new());
}

#[tokio::test]
async fn artifacts_take_no_place_in_keep_latest_or_keep_days() {
    let config = format!("{MANUAL}\n[[lifecycle.namespaces]]\npattern = \"ci/*\"\nkeep_latest = true\n");
    let app = TestApp::start_with_clock(&config);
    app.push_blob("ci/app", b"{}").await;
    app.push_blob("d", b"{}").await;
    let first = app.push_image("ci/app", "build-1", 1).await;
    let old = app.push_image("d", "old", 1).await;
    app.advance_clock(30 * DAY_MS);
    app.push_image("ci/app", "build-2", 1).await;
    app.push_image("d", "new", 1).await;
    app.advance_clock(60_000);
    app.push_manifest(
        "ci/app",
        "att-ref",
        OCI_MANIFEST,
        &referrer_of(&first, "application/vnd.in-toto+json"),
    )
    .await;
    app.push_manifest(
        "d",
        "att-ref",
        OCI_MANIFEST,
        &referrer_of(&old, "application/vnd.in-toto+json"),
    )
    .await;
    set_policy(&app, "d", json!({"keep_days": 7})).await;

    run_retention(&app);
    assert_eq!(
        tags(&app, "ci/app").await,
        ["build-2"],
        "keep-latest keeps the newest image"
    );
    assert_eq!(
        tags(&app, "d").await,
        ["new"],
        "keep_days keeps the image pushed within 7 days"
    );
}

#[tokio::test]
async fn a_manifest_pushed_again_after_the_preview_is_not_deleted() {
    let app = TestApp::start_with_clock(MANUAL);
    let image = app.push_image("r", "old", 1).await;
    app.advance_clock(60_000);
    app.push_image("r", "new", 1).await;
    set_policy(&app, "r", json!({"keep_last": 1})).await;
    let entries = preview(&app).await;
    assert_eq!(entry(&entries, "old")["action"], "delete");
    // The run decides afresh; the tag pushed again is now the newest.
    app.advance_clock(60_000);
    app.push_manifest("r", "old", OCI_MANIFEST, &image.manifest).await;
    run_retention(&app);
    assert_eq!(tags(&app, "r").await, ["old"]);
}

#[tokio::test]
async fn scheduled_runs_apply_config_policies() {
    let config = "[gc]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n\
                  [retention]\ninterval_secs = 1\n[retention.policies.\"**\"]\nkeep_last = 1\n";
    let app = TestApp::start_with_clock(config);
    app.push_image("r", "a", 1).await;
    app.advance_clock(60_000);
    app.push_image("r", "b", 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while tags(&app, "r").await != ["b"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled retention run did not happen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let rows = app.audit().await;
    assert!(rows
        .iter()
        .any(|r| r["actor"] == "lifecycle:retention" && r["target"] == "r:a"));
}
