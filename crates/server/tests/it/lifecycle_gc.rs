//! Garbage collection and the consistency check: the grace period, untagged
//! manifests and the children of an index, signatures and referrers of a
//! deleted manifest, orphaned files and stray uploads, missing blobs, the
//! schedule, and pushes racing the collector.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

/// Lifecycle schedules off: each test runs the collections it needs.
const QUIET: &str = "[gc]\ninterval_secs = 0\n[retention]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n";
/// A clock step past the default grace period of 24 h.
const PAST_GRACE_MS: i64 = DAY_MS + 3_600_000;
/// The removal counters of a GC report (everything but `dry_run` and `elapsed_ms`).
const COUNTERS: [&str; 8] = [
    "signature_tags_removed",
    "manifests_removed",
    "links_removed",
    "blobs_removed",
    "bytes_reclaimed",
    "orphan_files_removed",
    "orphan_bytes_reclaimed",
    "upload_files_removed",
];
/// Every manifest type a pulling client accepts.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";

/// `POST /api/v1/gc?dry_run=…`; panics unless it answers 200 with a report.
async fn collect_at(client: &reqwest::Client, base: &str, dry_run: bool) -> Value {
    let resp = client
        .post(format!("{base}/api/v1/gc?dry_run={dry_run}"))
        .send()
        .await
        .expect("POST /api/v1/gc");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "POST /api/v1/gc: {text}");
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("gc report {text:?}: {e}"));
    assert_eq!(report["dry_run"], dry_run, "{report}");
    for key in COUNTERS.iter().chain(&["elapsed_ms"]) {
        assert!(report[key].is_u64(), "{key} in {report}");
    }
    report
}

async fn collect(app: &TestApp, dry_run: bool) -> Value {
    collect_at(&app.client, &app.base, dry_run).await
}

/// A report's removal counters, without its timing.
fn removals(report: &Value) -> BTreeMap<&'static str, u64> {
    COUNTERS
        .iter()
        .map(|k| (*k, report[k].as_u64().unwrap_or(u64::MAX)))
        .collect()
}

fn assert_nothing_removed(report: &Value) {
    assert!(
        removals(report).values().all(|n| *n == 0),
        "expected nothing collected: {report}"
    );
}

/// `berth gc --json` on the app's data directory.
fn cli_gc(app: &TestApp) -> Value {
    let (ok, out, err) = app.cli(&["gc", "--json"], "");
    assert!(ok, "berth gc --json failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("berth gc --json printed {out:?}: {e}"))
}

/// `berth fsck --json ARGS`: whether it exited 0, and its report.
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
    assert_eq!(report["problems"], json!([]), "{report}");
    assert_eq!(report["unrepaired"], 0, "{report}");
    assert!(ok, "fsck exits 0 when nothing is wrong: {report}");
}

/// The problems of one kind in an fsck report.
fn problems<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("problems in {report}"))
        .iter()
        .filter(|p| p["kind"] == kind)
        .collect()
}

/// Whether the blob store holds the blob `digest` and bytes of the upload `id`.
async fn stores_both(app: &TestApp, digest: &str, id: &str) -> bool {
    app.stored_blobs().await.contains(digest) && app.stored_uploads().await.contains(id)
}

/// The config and layer digests of an image.
fn blobs_of(image: &Image) -> BTreeSet<String> {
    std::iter::once(&image.config)
        .chain(&image.layers)
        .map(|b| sha256(b))
        .collect()
}

/// What a full pull saw: the manifests (an index and its children) and blobs.
#[derive(Debug, Default)]
struct Pulled {
    manifests: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

/// Pulls `repo:reference` as a client does — the manifest, the manifests an
/// index lists, every config and layer — asserting that each answer is 200
/// and that every manifest and blob hashes to its digest.
async fn pull(client: &reqwest::Client, base: &str, repo: &str, reference: &str) -> (Vec<u8>, Pulled) {
    let mut pulled = Pulled::default();
    let mut top = None;
    let mut todo = vec![reference.to_string()];
    while let Some(reference) = todo.pop() {
        let resp = client
            .get(format!("{base}/v2/{repo}/manifests/{reference}"))
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("GET manifest");
        let status = resp.status();
        let body = resp.bytes().await.expect("manifest body").to_vec();
        assert_eq!(
            status,
            StatusCode::OK,
            "{repo}:{reference}: {}",
            String::from_utf8_lossy(&body)
        );
        let digest = sha256(&body);
        if reference.starts_with("sha256:") {
            assert_eq!(digest, reference, "{repo}@{reference} serves other bytes");
        }
        let manifest: Value = serde_json::from_slice(&body).expect("manifest JSON");
        pulled.manifests.insert(digest);
        if let Some(children) = manifest["manifests"].as_array() {
            todo.extend(
                children
                    .iter()
                    .map(|c| c["digest"].as_str().expect("child digest").to_string()),
            );
        } else {
            let descriptors =
                std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().into_iter().flatten());
            for d in descriptors {
                let digest = d["digest"].as_str().expect("blob digest");
                let resp = client
                    .get(format!("{base}/v2/{repo}/blobs/{digest}"))
                    .send()
                    .await
                    .expect("GET blob");
                assert_eq!(resp.status(), StatusCode::OK, "{repo}: blob {digest} of {reference}");
                let bytes = resp.bytes().await.expect("blob body");
                assert_eq!(sha256(&bytes), digest, "{repo}: blob {digest} has other content");
                pulled.blobs.insert(digest.to_string());
            }
        }
        top.get_or_insert(body);
    }
    (top.expect("one manifest at least"), pulled)
}

/// Pulls `repo:tag` and checks it is `image`, whole.
async fn assert_pullable(app: &TestApp, repo: &str, tag: &str, image: &Image) {
    let (manifest, pulled) = pull(&app.client, &app.base, repo, tag).await;
    assert_eq!(manifest, image.manifest, "{repo}:{tag} is another manifest");
    assert_eq!(pulled.blobs, blobs_of(image));
}

async fn assert_manifest_unknown(app: &TestApp, repo: &str, reference: &str) {
    assert_error(
        app.get(&format!("/v2/{repo}/manifests/{reference}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

async fn delete_manifest(app: &TestApp, repo: &str, reference: &str) {
    let resp = app.delete(&format!("/v2/{repo}/manifests/{reference}")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "DELETE {repo}:{reference}");
}

/// Pushes two one-layer images by digest and an index over them (under
/// `tag`); returns the index's bytes and the children.
async fn push_index(app: &TestApp, repo: &str, tag: &str) -> (Vec<u8>, Vec<Image>) {
    let children = vec![Image::random(1), Image::random(1)];
    let platforms = [
        json!({"os": "linux", "architecture": "amd64"}),
        json!({"os": "linux", "architecture": "arm64"}),
    ];
    let index = app.push_index(repo, tag, &children, &platforms).await;
    (index, children)
}

#[tokio::test]
async fn gc_waits_out_the_grace_period_then_removes_exactly_the_unreferenced_blobs() {
    let app = TestApp::start_with_clock(QUIET);
    let repo = "team/app";
    let shared = random_bytes(3000);
    let kept = Image::of_layers(vec![shared.clone(), random_bytes(1500)]);
    let gone = Image::of_layers(vec![shared.clone(), random_bytes(1600), random_bytes(1700)]);
    kept.push(&app.client, &app.base, repo, "kept").await;
    gone.push(&app.client, &app.base, repo, "gone").await;
    delete_manifest(&app, repo, &gone.digest).await;
    let unique: BTreeSet<String> = blobs_of(&gone).difference(&blobs_of(&kept)).cloned().collect();
    assert_eq!(unique.len(), 3, "the gone image's config and two layers");
    let unique_bytes: u64 = std::iter::once(&gone.config)
        .chain(&gone.layers[1..])
        .map(|b| b.len() as u64)
        .sum();
    let before = app.stored_blobs().await;
    assert!(unique.is_subset(&before));

    // Within the grace period nothing goes, dry run or not.
    assert_nothing_removed(&collect(&app, true).await);
    assert_nothing_removed(&collect(&app, false).await);
    assert_eq!(app.stored_blobs().await, before);
    for digest in &unique {
        // Unlinking happens with the collection, not with the manifest delete.
        assert_eq!(app.head(&format!("/v2/{repo}/blobs/{digest}")).await.status(), 200);
    }

    app.advance_clock(PAST_GRACE_MS);
    let dry = collect(&app, true).await;
    assert_eq!(dry["links_removed"], 3, "{dry}");
    assert_eq!(dry["manifests_removed"], 0, "{dry}");
    assert_eq!(app.stored_blobs().await, before, "a dry run removes no file");
    // (No HEAD of them here: a read restarts a blob's grace period.)

    let real = collect(&app, false).await;
    assert_eq!(real["links_removed"], 3, "{real}");
    assert_eq!(real["blobs_removed"], 3, "{real}");
    assert_eq!(real["bytes_reclaimed"], unique_bytes, "{real}");
    assert_eq!(real["manifests_removed"], 0, "{real}");
    assert_eq!(real["orphan_files_removed"], 0, "{real}");
    let expected: BTreeSet<String> = before.difference(&unique).cloned().collect();
    assert_eq!(app.stored_blobs().await, expected);
    assert_eq!(
        app.stored_blob(&sha256(&shared)).await,
        Some(shared.clone()),
        "the shared layer stays"
    );
    assert_pullable(&app, repo, "kept", &kept).await;
    for digest in &unique {
        app.assert_blob_unknown(repo, digest).await;
    }

    // The operator command finds nothing left to do.
    let again = cli_gc(&app);
    assert_eq!(again["dry_run"], false, "{again}");
    assert_nothing_removed(&again);
    assert_eq!(app.stored_blobs().await, expected);
    assert_fsck_clean(&app);
}

#[tokio::test]
async fn a_dry_run_reports_what_the_real_run_then_removes() {
    let app = TestApp::start_with_clock(QUIET);
    let repo = "team/app";
    let shared = random_bytes(2000);
    let kept = Image::of_layers(vec![shared.clone()]);
    let gone = Image::of_layers(vec![shared, random_bytes(1000)]);
    kept.push(&app.client, &app.base, repo, "kept").await;
    gone.push(&app.client, &app.base, repo, "gone").await;
    delete_manifest(&app, repo, &gone.digest).await;
    // An untagged index, whose children go in a later pass of the same run.
    push_index(&app, repo, "multi").await;
    delete_manifest(&app, repo, "multi").await;
    app.advance_clock(PAST_GRACE_MS);

    let dry = collect(&app, true).await;
    let real = collect(&app, false).await;
    // The real run removes the gone image's config and layer, the index and
    // its children, and (garbage freeing garbage, with no new grace period)
    // the children's configs and layers.
    assert_eq!(real["blobs_removed"], 6, "{real}");
    assert_eq!(real["manifests_removed"], 3, "{real}");
    assert_eq!(
        removals(&dry),
        removals(&real),
        "the dry run must announce what the run then does\ndry:  {dry}\nreal: {real}"
    );
}

#[tokio::test]
async fn untagged_manifests_and_the_children_of_an_untagged_index_go_after_the_grace_period() {
    let app = TestApp::start_with_clock(QUIET);
    let repo = "team/app";
    let old = app.push_image(repo, "v1", 1).await;
    // Moving the tag leaves `old` untagged.
    let new = app.push_image(repo, "v1", 1).await;
    let loose = Image::random(1);
    app.push_untagged(repo, &loose).await;
    let (index, children) = push_index(&app, repo, "multi").await;
    let index_digest = sha256(&index);

    assert_nothing_removed(&collect(&app, false).await);
    for image in [&old, &loose] {
        let resp = app.get(&format!("/v2/{repo}/manifests/{}", image.digest)).await;
        assert_eq!(resp.status(), 200, "untagged but within the grace period");
    }

    app.advance_clock(PAST_GRACE_MS);
    let report = collect(&app, false).await;
    assert_eq!(
        report["manifests_removed"], 2,
        "the two untagged manifests, not the index's children: {report}"
    );
    assert_manifest_unknown(&app, repo, &old.digest).await;
    assert_manifest_unknown(&app, repo, &loose.digest).await;
    assert_pullable(&app, repo, "v1", &new).await;
    let (_, pulled) = pull(&app.client, &app.base, repo, "multi").await;
    let child_digests: BTreeSet<String> = children.iter().map(|c| c.digest.clone()).collect();
    assert!(
        child_digests.is_subset(&pulled.manifests),
        "children stay while their index is tagged"
    );

    // The index loses its tag: within the grace period all stays; after it,
    // the index goes and, in a later pass of the same run, its children.
    delete_manifest(&app, repo, "multi").await;
    let report = collect(&app, false).await;
    assert_eq!(report["manifests_removed"], 0, "{report}");
    let (_, pulled) = pull(&app.client, &app.base, repo, &index_digest).await;
    assert!(child_digests.is_subset(&pulled.manifests));

    app.advance_clock(PAST_GRACE_MS);
    let report = collect(&app, false).await;
    assert_eq!(report["manifests_removed"], 3, "the index and both children: {report}");
    assert_manifest_unknown(&app, repo, &index_digest).await;
    for child in &children {
        assert_manifest_unknown(&app, repo, &child.digest).await;
    }

    // Once the blobs those removals freed have had their grace period too,
    // only the tagged image's blobs remain.
    app.advance_clock(PAST_GRACE_MS);
    collect(&app, false).await;
    assert_eq!(app.stored_blobs().await, blobs_of(&new));
    assert_pullable(&app, repo, "v1", &new).await;
    assert_nothing_removed(&collect(&app, false).await);
    assert_fsck_clean(&app);
}

/// Pushes an artifact about `subject` (an OCI manifest with `subject` and
/// `artifactType`) by digest; returns its digest and blobs.
async fn push_referrer(app: &TestApp, repo: &str, subject: &Image) -> (String, BTreeSet<String>) {
    let empty = app.push_blob(repo, b"{}").await;
    let sbom = random_bytes(300);
    let layer = app.push_blob(repo, &sbom).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": { "mediaType": OCI_EMPTY, "digest": empty, "size": 2 },
        "layers": [descriptor("application/spdx+json", &sbom)],
        "subject": subject.descriptor(),
    }))
    .expect("referrer JSON");
    let digest = app
        .push_manifest(repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await;
    (digest, [empty, layer].into())
}

/// Pushes a cosign-style signature of `subject`: a plain OCI manifest
/// without `subject`, tagged `sha256-<hex>.sig`. Returns (tag, digest, blobs).
async fn push_signature(app: &TestApp, repo: &str, subject: &Image) -> (String, String, BTreeSet<String>) {
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .expect("config JSON");
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": format!("localhost/{repo}") },
            "image": { "docker-manifest-digest": subject.digest },
            "type": "cosign container image signature",
        },
        "optional": { "nonce": hex::encode(random_bytes(8)) },
    }))
    .expect("payload JSON");
    let config_digest = app.push_blob(repo, &config).await;
    let payload_digest = app.push_blob(repo, &payload).await;
    let mut layer = descriptor("application/vnd.dev.cosign.simplesigning.v1+json", &payload);
    layer["annotations"] = json!({ "dev.cosignproject.cosign/signature": "MEUCIQDfake" });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [layer],
    }))
    .expect("signature manifest JSON");
    let tag = format!("{}.sig", subject.digest.replace(':', "-"));
    let digest = app.push_manifest(repo, &tag, OCI_MANIFEST, &manifest).await;
    (tag, digest, [config_digest, payload_digest].into())
}

/// The audit log, newest first.
/// The `detail` of an audit entry as JSON (it may be stored as text).
fn detail_of(entry: &Value) -> Value {
    match &entry["detail"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

#[tokio::test]
async fn signatures_and_referrers_of_a_deleted_manifest_go_after_the_grace_period() {
    let app = TestApp::start_with_clock(QUIET);
    let repo = "team/app";
    let other = app.push_image(repo, "other", 1).await;
    let subject = app.push_image(repo, "v1", 1).await;
    let (referrer, referrer_blobs) = push_referrer(&app, repo, &subject).await;
    let (sig_tag, sig, sig_blobs) = push_signature(&app, repo, &subject).await;
    // A signature of a subject that stays is never collected.
    let (other_sig_tag, other_sig, other_sig_blobs) = push_signature(&app, repo, &other).await;

    delete_manifest(&app, repo, &subject.digest).await;
    assert_nothing_removed(&collect(&app, false).await);
    assert_eq!(app.get(&format!("/v2/{repo}/manifests/{referrer}")).await.status(), 200);
    assert_eq!(app.get(&format!("/v2/{repo}/manifests/{sig_tag}")).await.status(), 200);

    app.advance_clock(PAST_GRACE_MS);
    let report = collect(&app, false).await;
    assert_eq!(report["signature_tags_removed"], 1, "{report}");
    assert_eq!(
        report["manifests_removed"], 2,
        "the signature's manifest and the referrer: {report}"
    );
    assert_manifest_unknown(&app, repo, &referrer).await;
    assert_manifest_unknown(&app, repo, &sig_tag).await;
    assert_manifest_unknown(&app, repo, &sig).await;
    let resp = app.get(&format!("/v2/{repo}/manifests/{other_sig_tag}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sha256(&resp.bytes().await.unwrap()), other_sig);
    assert_pullable(&app, repo, "other", &other).await;

    // Each removal is in the audit log, by the collector, with its rule.
    let entries = app.audit().await;
    let by_gc: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["actor"] == "gc")
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["target"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for wanted in [
        ("tag.delete".to_string(), format!("{repo}:{sig_tag}")),
        ("manifest.delete".to_string(), format!("{repo}@{sig}")),
        ("manifest.delete".to_string(), format!("{repo}@{referrer}")),
    ] {
        assert!(by_gc.contains(&wanted), "{wanted:?} is not audited as gc: {by_gc:?}");
    }
    assert_eq!(by_gc.len(), 3, "{by_gc:?}");
    for entry in entries.iter().filter(|e| e["actor"] == "gc") {
        let detail = detail_of(entry);
        assert!(detail["rule"].is_string() && detail["reason"].is_string(), "{entry}");
    }
    let sig_entry = entries
        .iter()
        .find(|e| e["actor"] == "gc" && e["action"] == "tag.delete")
        .expect("the tag removal");
    assert_eq!(detail_of(sig_entry)["digest"], sig.as_str(), "{sig_entry}");

    // Their blobs follow once the grace period has passed again; the
    // signature config both signatures share stays.
    app.advance_clock(PAST_GRACE_MS);
    collect(&app, false).await;
    let kept: BTreeSet<String> = blobs_of(&other).union(&other_sig_blobs).cloned().collect();
    assert_eq!(app.stored_blobs().await, kept);
    assert!(referrer_blobs.union(&sig_blobs).any(|b| !kept.contains(b)));
    assert_fsck_clean(&app);
}

#[tokio::test]
async fn tagged_referrers_of_a_deleted_manifest_go_like_signatures_and_the_dry_run_counts_them_exactly() {
    // A manifest with a `subject` lives and dies with its subject whatever
    // its tags are called; a tag that only looks like the signature schema
    // is an ordinary tag.
    let app = TestApp::start_with_clock(QUIET);
    let repo = "team/att";
    let subject = app.push_image(repo, "v1", 1).await;
    let (referrer, _) = push_referrer(&app, repo, &subject).await;
    let body = app
        .get(&format!("/v2/{repo}/manifests/{referrer}"))
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    app.push_manifest(repo, "att-ref", OCI_MANIFEST, &body).await;
    app.push_manifest(repo, "sbom-of-v1", OCI_MANIFEST, &body).await;
    let (sig_tag, sig, _) = push_signature(&app, repo, &subject).await;
    // The same signature manifest under a second schema tag.
    let sig_body = app
        .get(&format!("/v2/{repo}/manifests/{sig}"))
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let att_tag = sig_tag.replace(".sig", ".att");
    app.push_manifest(repo, &att_tag, OCI_MANIFEST, &sig_body).await;
    let lookalike = app.push_image(repo, "sha256-latest", 1).await;

    delete_manifest(&app, repo, &subject.digest).await;
    app.advance_clock(PAST_GRACE_MS);
    let dry = collect(&app, true).await;
    let report = collect(&app, false).await;
    assert_eq!(report["signature_tags_removed"], 4, "{report}");
    assert_eq!(
        report["manifests_removed"], 2,
        "the attestation and the signature, each once: {report}"
    );
    assert_eq!(removals(&dry), removals(&report), "dry run {dry}, real run {report}");
    for gone in ["att-ref", "sbom-of-v1", &sig_tag, &att_tag, &referrer, &sig] {
        assert_manifest_unknown(&app, repo, gone).await;
    }
    assert_pullable(&app, repo, "sha256-latest", &lookalike).await;
    let audited: Vec<String> = app
        .audit()
        .await
        .iter()
        .filter(|e| e["actor"] == "gc" && e["action"] == "tag.delete")
        .map(|e| {
            assert_eq!(detail_of(e)["rule"], "follows_subject", "{e}");
            e["target"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(audited.contains(&format!("{repo}:att-ref")), "{audited:?}");
    assert_nothing_removed(&collect(&app, false).await);
}

#[tokio::test]
async fn what_a_deletion_frees_waits_out_the_grace_period_from_the_deletion() {
    // DESIGN.md: a manifest is a candidate only after it has been
    // unreferenced for the grace period. Children of an index and referrers
    // and signatures of a subject pushed long ago become unreferenced when
    // the index or subject is deleted, not when they were pushed.
    let app = TestApp::start_with_clock(QUIET);
    let repo = "team/app";
    let (index, children) = push_index(&app, repo, "multi").await;
    let subject = app.push_image(repo, "v1", 1).await;
    let (referrer, _) = push_referrer(&app, repo, &subject).await;
    let (sig_tag, _, _) = push_signature(&app, repo, &subject).await;
    app.advance_clock(3 * DAY_MS);
    assert_nothing_removed(&collect(&app, false).await);

    delete_manifest(&app, repo, &sha256(&index)).await;
    delete_manifest(&app, repo, &subject.digest).await;
    let report = collect(&app, false).await;
    assert_nothing_removed(&report);
    for child in &children {
        let resp = app.get(&format!("/v2/{repo}/manifests/{}", child.digest)).await;
        assert_eq!(resp.status(), 200, "a child of an index deleted just now");
    }
    assert_eq!(app.get(&format!("/v2/{repo}/manifests/{referrer}")).await.status(), 200);
    assert_eq!(app.get(&format!("/v2/{repo}/manifests/{sig_tag}")).await.status(), 200);

    app.advance_clock(PAST_GRACE_MS);
    let report = collect(&app, false).await;
    assert_eq!(report["manifests_removed"], 4, "{report}");
    assert_eq!(report["signature_tags_removed"], 1, "{report}");
}

#[tokio::test]
async fn orphaned_files_and_stray_uploads_are_reported_and_collected_after_the_grace_period() {
    let app = TestApp::start_with_clock(QUIET);
    let image = app.push_image("team/app", "v1", 2).await;
    // A blob file the database does not know, as a crash between placing
    // a file and recording it leaves behind.
    let orphan = random_bytes(2048);
    let orphan_digest = sha256(&orphan);
    app.put_stored_blob(&orphan_digest, &orphan).await;
    // Upload bytes whose session is gone.
    let stray_id = "0b7c7d4e-5a7b-4c1e-9f3a-2d6e8f1a0b3c";
    app.put_stray_upload(stray_id, &random_bytes(100)).await;

    // Files written just now are younger than the grace period.
    assert_nothing_removed(&collect(&app, false).await);
    assert!(stores_both(&app, &orphan_digest, stray_id).await);
    let (ok, report) = fsck(&app, &[]);
    assert!(!ok, "fsck exits non-zero while problems remain: {report}");
    let orphans = problems(&report, "orphan_file");
    assert_eq!(orphans.len(), 1, "{report}");
    assert_eq!(orphans[0]["digest"], orphan_digest.as_str());
    assert_eq!(orphans[0]["size"], 2048);
    assert_eq!(orphans[0]["repaired"], false);

    app.advance_clock(PAST_GRACE_MS);
    let (ok, report) = fsck(&app, &[]);
    assert!(!ok, "{report}");
    assert_eq!(problems(&report, "orphan_file").len(), 1, "{report}");
    let stray = problems(&report, "upload_file_without_session");
    assert_eq!(stray.len(), 1, "{report}");
    assert_eq!(stray[0]["upload"], stray_id);
    assert_eq!(report["problems"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["unrepaired"], 2, "{report}");

    let dry = collect(&app, true).await;
    assert_eq!(dry["orphan_files_removed"], 1, "{dry}");
    assert_eq!(dry["orphan_bytes_reclaimed"], 2048, "{dry}");
    assert_eq!(dry["upload_files_removed"], 1, "{dry}");
    assert!(
        stores_both(&app, &orphan_digest, stray_id).await,
        "a dry run removes nothing"
    );

    let report = collect(&app, false).await;
    assert_eq!(report["orphan_files_removed"], 1, "{report}");
    assert_eq!(report["orphan_bytes_reclaimed"], 2048, "{report}");
    assert_eq!(report["upload_files_removed"], 1, "{report}");
    assert_eq!(report["blobs_removed"], 0, "{report}");
    assert_eq!(
        app.stored_blob(&orphan_digest).await,
        None,
        "the orphaned blob file is gone"
    );
    assert!(
        !app.stored_uploads().await.contains(stray_id),
        "the stray upload file is gone"
    );
    assert_eq!(app.stored_blobs().await, blobs_of(&image));
    assert_pullable(&app, "team/app", "v1", &image).await;
    assert_fsck_clean(&app);
}

#[tokio::test]
async fn fsck_reports_missing_blobs_and_repairs_only_the_unreferenced_ones() {
    let app = TestApp::start_with_clock(QUIET);
    let repo = "team/app";
    let image = app.push_image(repo, "v1", 2).await;
    let loose = random_bytes(700);
    let loose_digest = app.push_blob(repo, &loose).await;
    assert_fsck_clean(&app);

    let layer_digest = sha256(&image.layers[0]);
    app.remove_stored_blob(&layer_digest).await;
    app.remove_stored_blob(&loose_digest).await;

    let (ok, report) = fsck(&app, &[]);
    assert!(!ok, "{report}");
    let missing = problems(&report, "missing_blob");
    assert_eq!(missing.len(), 2, "{report}");
    let find = |digest: &str| {
        missing
            .iter()
            .find(|p| p["digest"] == digest)
            .unwrap_or_else(|| panic!("{digest} is not reported missing: {report}"))
    };
    assert_eq!(
        find(&layer_digest)["used_by"],
        json!([format!("{repo}@{}", image.digest)])
    );
    assert_eq!(find(&layer_digest)["repaired"], false);
    assert_eq!(find(&loose_digest)["used_by"], json!([]));
    assert_eq!(find(&loose_digest)["repaired"], false);
    assert_eq!(report["unrepaired"], 2, "{report}");

    // The records of the unreferenced blob can go; the image's layer cannot
    // be repaired, only pushed again.
    let (ok, report) = fsck(&app, &["--repair"]);
    assert!(!ok, "a missing blob that is used stays a problem: {report}");
    let missing = problems(&report, "missing_blob");
    let repaired: BTreeMap<String, bool> = missing
        .iter()
        .map(|p| (p["digest"].as_str().unwrap().to_string(), p["repaired"] == true))
        .collect();
    assert_eq!(
        repaired,
        BTreeMap::from([(layer_digest.clone(), false), (loose_digest.clone(), true)]),
        "{report}"
    );
    assert_eq!(report["unrepaired"], 1, "{report}");
    assert_eq!(
        app.head(&format!("/v2/{repo}/blobs/{loose_digest}")).await.status(),
        404
    );
    app.assert_blob_unknown(repo, &layer_digest).await;

    let (ok, report) = fsck(&app, &[]);
    assert!(!ok);
    assert_eq!(report["problems"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(problems(&report, "missing_blob")[0]["digest"], layer_digest.as_str());

    // Pushing the layer again heals the image.
    app.push_blob(repo, &image.layers[0]).await;
    assert_fsck_clean(&app);
    assert_pullable(&app, repo, "v1", &image).await;
}

#[tokio::test]
async fn scheduled_gc_removes_what_a_deletion_freed() {
    let app = TestApp::start_with_config(
        "[gc]\ninterval_secs = 1\ngrace_secs = 1\n[retention]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n",
        &[],
    );
    let repo = "team/app";
    let shared = random_bytes(1500);
    let kept = Image::of_layers(vec![shared.clone(), random_bytes(900)]);
    let gone = Image::of_layers(vec![shared, random_bytes(800)]);
    kept.push(&app.client, &app.base, repo, "kept").await;
    gone.push(&app.client, &app.base, repo, "gone").await;
    delete_manifest(&app, repo, &gone.digest).await;
    let unique: BTreeSet<String> = blobs_of(&gone).difference(&blobs_of(&kept)).cloned().collect();

    let deadline = Instant::now() + Duration::from_secs(15);
    while !app.stored_blobs().await.is_disjoint(&unique) {
        assert!(
            Instant::now() < deadline,
            "the scheduled collection has not removed {unique:?} within 15 s; log:\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.stored_blobs().await, blobs_of(&kept));
    assert_pullable(&app, repo, "kept", &kept).await;
}

// ---------------------------------------------------------------------------
// Pushes racing the collector.

/// What the pushing clients of the race saw.
#[derive(Debug, Default)]
struct RaceStats {
    head_hits: AtomicU64,
    uploads: AtomicU64,
    mounts: AtomicU64,
    retries: AtomicU64,
    collections: AtomicU64,
    blobs_collected: AtomicU64,
    pulls: AtomicU64,
}

/// Makes `repo` hold a blob as a client does: `HEAD`, and only when that
/// says 404, a cross-repository mount from `from` (when given) or an upload.
async fn ensure_blob(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    from: Option<&str>,
    stats: &RaceStats,
) {
    let digest = sha256(bytes);
    let head = client
        .head(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD blob");
    match head.status().as_u16() {
        200 => {
            stats.head_hits.fetch_add(1, Ordering::Relaxed);
            return;
        }
        404 => {}
        other => panic!("HEAD {repo} blob {digest}: {other}"),
    }
    if let Some(from) = from {
        let resp = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"))
            .send()
            .await
            .expect("POST mount");
        match resp.status().as_u16() {
            201 => {
                stats.mounts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            202 => {
                // Not there to mount: upload through the session it opened.
                let location = resolve(base, header(&resp, "location"));
                let resp = client
                    .put(with_query(&location, &format!("digest={digest}")))
                    .body(bytes.to_vec())
                    .send()
                    .await
                    .expect("PUT upload");
                assert_eq!(resp.status(), StatusCode::CREATED, "finishing the upload of {digest}");
                stats.uploads.fetch_add(1, Ordering::Relaxed);
                return;
            }
            other => panic!("mount of {digest} into {repo}: {other}"),
        }
    }
    push_blob(client, base, repo, bytes).await;
    stats.uploads.fetch_add(1, Ordering::Relaxed);
}

/// Pushes `image` under `tag` as a registry client does: blobs the
/// repository already has are skipped, then the manifest. When the manifest
/// is refused because the collector took a blob in between, the blobs are
/// uploaded again. Returns once the manifest is acknowledged (201).
async fn push_like_a_client(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    image: &Image,
    from: Option<&str>,
    stats: &RaceStats,
) {
    for attempt in 0..5 {
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            if attempt == 0 {
                ensure_blob(client, base, repo, blob, from, stats).await;
            } else {
                push_blob(client, base, repo, blob).await;
                stats.uploads.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A slow client: time passes between the blob checks and the manifest.
        let pause = rand::random_range(0..200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let resp = put_manifest(client, base, repo, tag, OCI_MANIFEST, &image.manifest).await;
        match resp.status().as_u16() {
            201 => {
                assert_eq!(header(&resp, "docker-content-digest"), image.digest);
                return;
            }
            400 => {
                let body: Value = resp.json().await.expect("error body");
                assert_eq!(
                    body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN",
                    "PUT {repo}:{tag}: {body}"
                );
                stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("PUT {repo}:{tag}: {other} {}", resp.text().await.unwrap_or_default()),
        }
    }
    panic!("{repo}:{tag} was not acknowledged after 5 attempts");
}

/// A layer that became unreferenced in `repo` when its image was deleted at `at`.
#[derive(Debug, Clone)]
struct Freed {
    repo: &'static str,
    layer: Vec<u8>,
    at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_gc_lose_nothing_acknowledged_and_gc_leaves_nothing_unreferenced() {
    // Real time with a short grace period rather than the movable clock: with
    // the clock moved ahead, every file written during the race would look
    // older than the cutoff (which no real clock produces), and the
    // collector would take the file of an upload whose session row is not
    // committed yet.
    const GRACE: Duration = Duration::from_secs(3);
    const RACE: Duration = Duration::from_secs(15);
    let app = Arc::new(TestApp::start_with_config(
        &format!(
            "[gc]\ninterval_secs = 0\ngrace_secs = {}\n[retention]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n",
            GRACE.as_secs()
        ),
        &[],
    ));
    let repos = ["race/one", "race/two", "race/three"];
    let pool: Vec<Vec<u8>> = (0..12)
        .map(|_| random_bytes(1024 + rand::random_range(0..2048)))
        .collect();

    // Thirty images with two shared layers and one of their own; half go.
    let mut survivors: Vec<(String, String, Image)> = Vec::new();
    let mut deleted: Vec<(String, Image)> = Vec::new();
    for i in 0..30 {
        let image = Image::of_layers(vec![
            pool[i % 12].clone(),
            pool[(5 * i + 3) % 12].clone(),
            random_bytes(1500),
        ]);
        let repo = repos[i % 3].to_string();
        let tag = format!("v{i}");
        image.push(&app.client, &app.base, &repo, &tag).await;
        if i % 2 == 0 {
            delete_manifest(&app, &repo, &image.digest).await;
            deleted.push((repo, image));
        } else {
            survivors.push((repo, tag, image));
        }
    }
    // Blobs that go: configs and own layers of deleted images; pushers bring them back.
    let mut hot: Vec<Vec<u8>> = deleted
        .iter()
        .flat_map(|(_, image)| [image.config.clone(), image.layers[2].clone()])
        .collect();
    hot.extend(pool.iter().cloned());
    let hot = Arc::new(hot);
    let deleted = Arc::new(deleted);
    let survivors = Arc::new(survivors);
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;

    let stats = Arc::new(RaceStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String, Image)>>> = Arc::default();
    let deadline = Instant::now() + RACE;

    // The collector: the admin API in a loop, now and then `berth gc` in its own process.
    let collector = {
        let (app, stop, stats) = (app.clone(), stop.clone(), stats.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let report = if round.is_multiple_of(4) {
                    let app = app.clone();
                    tokio::task::spawn_blocking(move || cli_gc(&app))
                        .await
                        .expect("berth gc task")
                } else {
                    collect_at(&app.client, &app.base, round.is_multiple_of(7)).await
                };
                if report["dry_run"] == false {
                    stats.collections.fetch_add(1, Ordering::Relaxed);
                    let n = report["blobs_removed"].as_u64().unwrap_or(0);
                    stats.blobs_collected.fetch_add(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..40))).await;
            }
        })
    };

    // Churn: images with a layer of their own, pushed and deleted again (and
    // every other layer unlinked from its repository), so blobs keep reaching
    // the end of their grace period while pushers use them.
    let freed: Arc<Mutex<Vec<Freed>>> = Arc::default();
    let churn = {
        let (app, stop, hot, freed) = (app.clone(), stop.clone(), hot.clone(), freed.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let repo = repos[n % 3];
                let own = random_bytes(1024 + rand::random_range(0..1024));
                let image = Image::of_layers(vec![own.clone(), hot[rand::random_range(0..hot.len())].clone()]);
                image.push(&app.client, &app.base, repo, &format!("churn-{n}")).await;
                delete_manifest(&app, repo, &image.digest).await;
                if n % 2 == 0 {
                    // Unlinked too: the blob is in no repository, only in the store.
                    let resp = app.delete(&format!("/v2/{repo}/blobs/{}", sha256(&own))).await;
                    assert_eq!(resp.status(), StatusCode::ACCEPTED, "DELETE blob");
                }
                freed.lock().unwrap().push(Freed {
                    repo,
                    layer: own,
                    at: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(rand::random_range(50..200))).await;
            }
        })
    };

    // A reader pulling the surviving images the whole time.
    let reader = {
        let (app, stop, stats, survivors) = (app.clone(), stop.clone(), stats.clone(), survivors.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (repo, tag, image) = &survivors[rand::random_range(0..survivors.len())];
                let (manifest, pulled) = pull(&app.client, &app.base, repo, tag).await;
                assert_eq!(&manifest, &image.manifest);
                assert_eq!(pulled.blobs, blobs_of(image));
                stats.pulls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Pushers: images of layers whose grace period is about to end or just
    // ended, into the repository that still links them (or mounting from it),
    // new images of hot layers, and deleted images pushed again.
    let pushers: Vec<_> = (0..4)
        .map(|p| {
            let (app, stats, hot, deleted, acked, freed) = (
                app.clone(),
                stats.clone(),
                hot.clone(),
                deleted.clone(),
                acked.clone(),
                freed.clone(),
            );
            tokio::spawn(async move {
                let mut j = 0;
                while Instant::now() < deadline {
                    j += 1;
                    // Up to two layers whose grace period is ending about now.
                    let ripe: Vec<Freed> = {
                        let freed = freed.lock().unwrap();
                        let ripe: Vec<&Freed> = freed
                            .iter()
                            .filter(|f| {
                                let age = f.at.elapsed();
                                age + Duration::from_millis(100) >= GRACE && age <= GRACE + Duration::from_millis(400)
                            })
                            .collect();
                        (0..ripe.len().min(2))
                            .map(|_| ripe[rand::random_range(0..ripe.len())].clone())
                            .collect()
                    };
                    let hot_layer = || hot[rand::random_range(0..hot.len())].clone();
                    let (repo, image, from) = match (j % 5, ripe.first()) {
                        (0, _) => {
                            let (repo, image) = &deleted[rand::random_range(0..deleted.len())];
                            (repo.clone(), image.clone(), None)
                        }
                        (_, Some(first)) => {
                            let mut layers: Vec<Vec<u8>> = ripe.iter().map(|f| f.layer.clone()).collect();
                            layers.dedup();
                            layers.push(hot_layer());
                            let image = Image::of_layers(layers);
                            match j % 5 {
                                // The repository that linked the layer, where a HEAD may still find it.
                                1 | 2 => (first.repo.to_string(), image, None),
                                // Another one, mounting from there or uploading what the
                                // store may still hold.
                                other => {
                                    let repo = repos.iter().find(|r| **r != first.repo).expect("another repository");
                                    (repo.to_string(), image, (other == 3).then_some(first.repo))
                                }
                            }
                        }
                        (_, None) => {
                            let repo = if j % 7 == 0 {
                                "race/four"
                            } else {
                                repos[rand::random_range(0..3)]
                            };
                            let from = (j % 2 == 0)
                                .then(|| repos[rand::random_range(0..3)])
                                .filter(|f| *f != repo);
                            (repo.to_string(), Image::of_layers(vec![hot_layer(), hot_layer()]), from)
                        }
                    };
                    let tag = format!("p{p}-{j}");
                    push_like_a_client(&app.client, &app.base, &repo, &tag, &image, from, &stats).await;
                    acked.lock().unwrap().push((repo, tag, image));
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..50))).await;
                }
            })
        })
        .collect();

    for pusher in pushers {
        pusher.await.expect("a pusher failed");
    }
    stop.store(true, Ordering::Relaxed);
    churn.await.expect("the churn task failed");
    reader.await.expect("the reader failed");
    collector.await.expect("the collector failed");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!("race: {} images acknowledged; {stats:?}", acked.len());
    assert!(acked.len() >= 20, "too few pushes to mean anything: {}", acked.len());
    assert!(
        stats.blobs_collected.load(Ordering::Relaxed) > 0,
        "the collector removed nothing during the race: {stats:?}"
    );

    // Every acknowledged image, and every earlier one that was not deleted, is whole.
    let mut referenced = BTreeSet::new();
    let mut expected_tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (repo, tag, image) in acked.iter().chain(survivors.iter()) {
        assert_pullable(&app, repo, tag, image).await;
        referenced.extend(blobs_of(image));
        expected_tags.entry(repo.clone()).or_default().insert(tag.clone());
    }

    // Past the grace period once more, one collection leaves exactly the
    // blobs the surviving manifests use.
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    collect(&app, false).await;
    let catalog: Value = app.get("/v2/_catalog?n=1000").await.json().await.unwrap();
    let catalog: BTreeSet<&str> = catalog["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(catalog, expected_tags.keys().map(String::as_str).collect());
    for (repo, tags) in &expected_tags {
        let resp = app.get(&format!("/v2/{repo}/tags/list?n=10000")).await;
        assert_eq!(resp.status(), 200);
        let listed: Value = resp.json().await.unwrap();
        let listed: BTreeSet<String> = listed["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(&listed, tags, "tags of {repo}");
    }
    let on_disk = app.stored_blobs().await;
    let unreferenced: Vec<&String> = on_disk.difference(&referenced).collect();
    let lost: Vec<&String> = referenced.difference(&on_disk).collect();
    assert!(lost.is_empty(), "blobs of surviving images are gone: {lost:?}");
    assert!(
        unreferenced.is_empty(),
        "unreferenced blobs past the grace period remain: {unreferenced:?}"
    );
    assert_fsck_clean(&app);
    for (repo, _, image) in acked.iter().chain(survivors.iter()) {
        let (manifest, pulled) = pull(&app.client, &app.base, repo, &image.digest).await;
        assert_eq!(manifest, image.manifest);
        assert_eq!(pulled.blobs, blobs_of(image));
    }
}
