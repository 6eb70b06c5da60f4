//! `berth export` and `berth import`: a registry's content carried to a
//! fresh registry through an archive, byte for byte; the archive's layout
//! and order; importing twice; choosing repositories; and damaged or
//! incomplete archives, which store nothing that shows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::harness::*;

const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";

/// A manifest the source registry serves: where, and its bytes.
struct Served {
    repo: String,
    /// A tag, or the manifest's digest.
    reference: String,
    media_type: String,
    bytes: Vec<u8>,
}

/// What the source registry holds and a copy must serve the same.
#[derive(Default)]
struct Content {
    manifests: Vec<Served>,
    /// (repository, bytes) of every config and layer.
    blobs: Vec<(String, Vec<u8>)>,
    /// Pushed but not exported: an untagged manifest nothing references.
    left_behind: Vec<(String, String)>,
}

impl Content {
    fn manifest(&mut self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        self.manifests.push(Served {
            repo: repo.into(),
            reference: reference.into(),
            media_type: media_type.into(),
            bytes: bytes.to_vec(),
        });
    }

    fn image(&mut self, repo: &str, tag: &str, image: &Image) {
        self.manifest(repo, tag, OCI_MANIFEST, &image.manifest);
        self.manifest(repo, &image.digest, OCI_MANIFEST, &image.manifest);
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            self.blobs.push((repo.into(), blob.clone()));
        }
    }

    fn repositories(&self) -> BTreeSet<String> {
        self.manifests.iter().map(|m| m.repo.clone()).collect()
    }
}

/// Pushes an artifact about `subject` into `repo` (untagged) and records it.
async fn push_referrer(app: &TestApp, content: &mut Content, repo: &str, subject: Value, artifact_type: &str) {
    let empty = app.push_blob(repo, b"{}").await;
    let payload = random_bytes(300);
    app.push_blob(repo, &payload).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": OCI_EMPTY, "digest": empty, "size": 2 },
        "layers": [descriptor("application/octet-stream", &payload)],
        "subject": subject,
    }))
    .unwrap();
    let digest = app
        .push_manifest(repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await;
    content.manifest(repo, &digest, OCI_MANIFEST, &manifest);
    content.blobs.push((repo.into(), b"{}".to_vec()));
    content.blobs.push((repo.into(), payload));
}

/// Fills `app` with: a multi-layer image under two tags and a second image
/// sharing a layer, a signature of it and an untagged manifest nothing
/// references (`team/app`); a multi-arch index of two children with an SBOM
/// of one child (`team/multi`); a Docker schema 2 image (`legacy/docker`);
/// and an image whose layers are `team/app`'s (`other/app`).
async fn fill(app: &TestApp) -> Content {
    let mut content = Content::default();

    let v1 = app.push_image("team/app", "v1", 3).await;
    content.image("team/app", "v1", &v1);
    let v2 = Image::of_layers(vec![v1.layers[0].clone(), random_bytes(2000)]);
    v2.push(&app.client, &app.base, "team/app", "v2").await;
    app.push_manifest("team/app", "latest", OCI_MANIFEST, &v2.manifest)
        .await;
    content.image("team/app", "v2", &v2);
    content.manifest("team/app", "latest", OCI_MANIFEST, &v2.manifest);
    push_referrer(app, &mut content, "team/app", v1.descriptor(), SIGNATURE).await;
    let dangling = Image::random(1);
    app.push_untagged("team/app", &dangling).await;
    content.left_behind.push(("team/app".into(), dangling.digest.clone()));

    let children = [Image::random(1), Image::random(2)];
    let platforms = [
        json!({"os": "linux", "architecture": "amd64"}),
        json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
    ];
    let index = app.push_index("team/multi", "1.0", &children, &platforms).await;
    content.manifest("team/multi", "1.0", OCI_INDEX, &index);
    for child in &children {
        content.image("team/multi", &child.digest, child);
    }
    push_referrer(app, &mut content, "team/multi", children[0].descriptor(), SBOM).await;

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {"nonce": hex::encode(random_bytes(8))}},
    }))
    .unwrap();
    let layer = random_bytes(5000);
    app.push_blob("legacy/docker", &config).await;
    app.push_blob("legacy/docker", &layer).await;
    // Docker's own spacing, which a copy must keep byte for byte.
    let docker = format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{DOCKER_MANIFEST}\",\n   \"config\": {},\n   \"layers\": [{}]\n}}",
        descriptor(DOCKER_CONFIG, &config),
        descriptor(DOCKER_LAYER, &layer)
    )
    .into_bytes();
    app.push_manifest("legacy/docker", "v1", DOCKER_MANIFEST, &docker).await;
    content.manifest("legacy/docker", "v1", DOCKER_MANIFEST, &docker);
    content.blobs.push(("legacy/docker".into(), config));
    content.blobs.push(("legacy/docker".into(), layer));

    let shared = Image::of_layers(v1.layers.clone());
    shared.push(&app.client, &app.base, "other/app", "v1").await;
    content.image("other/app", "v1", &shared);
    content
}

/// The path of a file in `dir`, as an argument.
fn arg(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Runs `berth ARGS --json` on `app`; panics unless it succeeds. Returns the summary.
fn run_json(app: &TestApp, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, stdout, stderr) = app.cli(&args, "");
    assert!(ok, "berth {args:?} failed: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{args:?}: summary {stdout:?}: {e}; {stderr}"))
}

/// Runs `berth ARGS` on `app`, expecting it to fail; returns its stderr.
fn run_failing(app: &TestApp, args: &[&str]) -> String {
    let (ok, _, stderr) = app.cli(args, "");
    assert!(!ok, "berth {args:?} should fail; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The entries of an archive in order: (path, bytes, offset of the bytes in the archive).
fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>, u64)> {
    use std::io::Read as _;
    let mut reader = tar::Archive::new(archive);
    let mut out = Vec::new();
    for entry in reader.entries().expect("a tar archive") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let offset = entry.raw_file_position();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("an entry's bytes");
        out.push((path, bytes, offset));
    }
    out
}

/// `blobs/sha256/<hex>` of these bytes.
fn blob_path(bytes: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha256(bytes)["sha256:".len()..])
}

/// Asserts that `app` serves every manifest and blob of `content` exactly as
/// the source did.
async fn assert_serves(app: &TestApp, content: &Content) {
    let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST].join(", ");
    for m in &content.manifests {
        let resp = app
            .client
            .get(app.url(&format!("/v2/{}/manifests/{}", m.repo, m.reference)))
            .header("accept", &accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}:{}", m.repo, m.reference);
        assert_eq!(
            header(&resp, "content-type"),
            m.media_type,
            "{}:{}",
            m.repo,
            m.reference
        );
        assert_eq!(header(&resp, "docker-content-digest"), sha256(&m.bytes));
        assert_eq!(resp.bytes().await.unwrap(), m.bytes, "{}:{}", m.repo, m.reference);
    }
    for (repo, bytes) in &content.blobs {
        let resp = app.get(&format!("/v2/{repo}/blobs/{}", sha256(bytes))).await;
        assert_eq!(resp.status(), 200, "{repo} blob {}", sha256(bytes));
        assert_eq!(&resp.bytes().await.unwrap()[..], &bytes[..]);
    }
}

/// Every row of the image inventory, by (repository, tag or digest).
async fn inventory(app: &TestApp) -> BTreeMap<(String, String), Value> {
    let resp = app.get("/v1/images?n=1000").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["next_cursor"], Value::Null, "one page holds them all");
    body["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|row| {
            let key = row["tag"].as_str().or(row["digest"].as_str()).unwrap_or_default();
            (
                (
                    row["repository"].as_str().unwrap_or_default().to_string(),
                    key.to_string(),
                ),
                row.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_export_imported_into_a_fresh_registry_serves_the_same_bytes() {
    let source = TestApp::start();
    let content = fill(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let archive_path = arg(dir.path(), "all.tar");
    let summary = run_json(&source, &["export", "--all", &archive_path]);
    assert_eq!(summary["repositories"], 4, "{summary}");
    // v1, v2, latest, 1.0, legacy v1, other v1.
    assert_eq!(summary["tags"], 6, "{summary}");
    assert!(!Path::new(&format!("{archive_path}.partial")).exists());

    // The layout: oci-layout and index.json first, then every manifest, then
    // configs and layers, each blob once.
    let archive = std::fs::read(&archive_path).unwrap();
    let entries = entries(&archive);
    let paths: Vec<&str> = entries.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths[..2], ["oci-layout", "index.json"]);
    let unique: BTreeSet<&str> = paths.iter().copied().collect();
    assert_eq!(unique.len(), paths.len(), "each blob once: {paths:?}");
    let manifest_paths: BTreeSet<String> = content.manifests.iter().map(|m| blob_path(&m.bytes)).collect();
    let first_layer = paths[2..]
        .iter()
        .position(|p| !manifest_paths.contains(*p))
        .map_or(paths.len(), |i| i + 2);
    assert_eq!(
        paths[2..first_layer]
            .iter()
            .map(|p| p.to_string())
            .collect::<BTreeSet<_>>(),
        manifest_paths,
        "all manifests come before the first layer"
    );
    let blob_paths: BTreeSet<String> = content.blobs.iter().map(|(_, b)| blob_path(b)).collect();
    assert_eq!(
        paths[first_layer..]
            .iter()
            .map(|p| p.to_string())
            .collect::<BTreeSet<_>>(),
        blob_paths
    );
    assert_eq!(summary["manifests"], manifest_paths.len(), "{summary}");
    assert_eq!(summary["blobs"], blob_paths.len(), "{summary}");
    // The index's children are reached through it, not listed; the
    // signature and the SBOM are, untagged.
    let index: Value = serde_json::from_slice(&entries[1].1).unwrap();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 6 + 2, "{index}");
    for d in listed {
        let a = &d["annotations"];
        assert!(a["io.berth.repository"].is_string(), "{d}");
        assert_eq!(a["io.berth.provenance"], "pushed", "{d}");
        assert_eq!(a.get("io.berth.upstream"), None, "no upstream is known: {d}");
    }
    let tagged: BTreeSet<(String, String)> = listed
        .iter()
        .filter_map(|d| {
            let a = &d["annotations"];
            Some((
                a["io.berth.repository"].as_str()?.to_string(),
                a["org.opencontainers.image.ref.name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let expected_tags: BTreeSet<(String, String)> = [
        ("legacy/docker", "v1"),
        ("other/app", "v1"),
        ("team/app", "latest"),
        ("team/app", "v1"),
        ("team/app", "v2"),
        ("team/multi", "1.0"),
    ]
    .iter()
    .map(|(r, t)| (r.to_string(), t.to_string()))
    .collect();
    assert_eq!(tagged, expected_tags);

    let target = TestApp::start();
    let summary = run_json(&target, &["import", &archive_path]);
    assert_eq!(summary["repositories"], 4, "{summary}");
    assert_eq!(summary["tags_set"], 6, "{summary}");
    assert_eq!(summary["blobs_stored"], blob_paths.len(), "{summary}");
    assert_serves(&target, &content).await;
    for (repo, digest) in &content.left_behind {
        assert_error(
            target.get(&format!("/v2/{repo}/manifests/{digest}")).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }
    // The referrers API finds the signature and the SBOM again.
    let v1 = &content.manifests[0];
    let resp = target
        .get(&format!("/v2/team/app/referrers/{}", sha256(&v1.bytes)))
        .await;
    let referrers: Value = resp.json().await.unwrap();
    assert_eq!(referrers["manifests"][0]["artifactType"], SIGNATURE, "{referrers}");
    // Imported images are snapshots.
    let rows = inventory(&target).await;
    assert!(rows.len() >= 6, "{rows:?}");
    for (key, row) in &rows {
        assert_eq!(row["provenance"], "snapshot", "{key:?}: {row}");
    }

    // Again: it succeeds and changes nothing.
    let before = inventory(&target).await;
    let blobs_before = target.stored_blobs().await;
    let summary = run_json(&target, &["import", &archive_path]);
    assert_eq!(summary["tags_set"], 0, "{summary}");
    assert_eq!(summary["tags_unchanged"], 6, "{summary}");
    assert_eq!(summary["manifests_stored"], 0, "{summary}");
    assert_eq!(summary["blobs_stored"], 0, "{summary}");
    assert_eq!(summary["blobs_linked"], 0, "{summary}");
    assert_eq!(summary["blobs_present"], blob_paths.len(), "{summary}");
    assert_eq!(inventory(&target).await, before);
    assert_eq!(target.stored_blobs().await, blobs_before);
    assert_serves(&target, &content).await;
}

#[tokio::test]
async fn an_archive_goes_through_a_pipe() {
    let source = TestApp::start();
    let image = source.push_image("team/app", "v1", 2).await;
    let (ok, archive, stderr) = source.cli_bytes(&["export", "--repo", "team/**", "-"], b"");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("1 repositories"),
        "the summary goes to stderr: {stderr}"
    );
    let target = TestApp::start();
    let (ok, stdout, stderr) = target.cli_bytes(&["import", "-"], &archive);
    assert!(ok, "{stderr}");
    assert!(stdout.is_empty());
    let mut content = Content::default();
    content.image("team/app", "v1", &image);
    assert_serves(&target, &content).await;
}

#[tokio::test]
async fn repo_patterns_choose_what_is_exported() {
    let source = TestApp::start();
    let content = fill(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let archive_path = arg(dir.path(), "team.tar");
    let summary = run_json(
        &source,
        &["export", "--repo", "team/*", "--repo", "legacy/dock?r", &archive_path],
    );
    assert_eq!(summary["repositories"], 3, "{summary}");

    let target = TestApp::start();
    run_json(&target, &["import", &archive_path]);
    let chosen = Content {
        manifests: content
            .manifests
            .into_iter()
            .filter(|m| m.repo != "other/app")
            .collect(),
        blobs: content.blobs.into_iter().filter(|(r, _)| r != "other/app").collect(),
        left_behind: Vec::new(),
    };
    assert_eq!(chosen.repositories().len(), 3);
    assert_serves(&target, &chosen).await;
    assert_error(target.get("/v2/other/app/manifests/v1").await, 404, "NAME_UNKNOWN").await;

    // Neither a repository nor --all: refused before anything is written.
    let stderr = run_failing(&source, &["export", &arg(dir.path(), "none.tar")]);
    assert!(stderr.contains("--all"), "{stderr}");
    let stderr = run_failing(&source, &["export", "--repo", "Team/*", &arg(dir.path(), "bad.tar")]);
    assert!(stderr.contains("Team/*"), "{stderr}");
    assert!(!dir.path().join("bad.tar").exists());
}

/// Exports `app` whole and returns the archive's bytes.
fn export_all(app: &TestApp, dir: &Path) -> Vec<u8> {
    let path = arg(dir, "all.tar");
    run_json(app, &["export", "--all", &path]);
    std::fs::read(&path).unwrap()
}

/// Asserts that `app` shows none of `content`'s manifests or tags.
async fn assert_nothing_shows(app: &TestApp, content: &Content) {
    for m in &content.manifests {
        let resp = app.get(&format!("/v2/{}/manifests/{}", m.repo, m.reference)).await;
        assert_eq!(resp.status(), 404, "{}:{} shows", m.repo, m.reference);
    }
    for repo in content.repositories() {
        let resp = app.get(&format!("/v2/{repo}/tags/list")).await;
        if resp.status() == 200 {
            let tags: Value = resp.json().await.unwrap();
            assert!(
                tags["tags"].as_array().is_none_or(|t| t.is_empty()),
                "{repo} has tags: {tags}"
            );
        }
    }
    assert!(app.stored_uploads().await.is_empty(), "no upload is left behind");
}

#[tokio::test]
async fn a_damaged_layer_fails_the_import_and_is_never_stored() {
    let source = TestApp::start();
    let content = fill(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let mut archive = export_all(&source, dir.path());
    // The last layer of the archive, with one byte flipped.
    let (path, bytes, offset) = entries(&archive).pop().expect("entries");
    let (repo, _) = content
        .blobs
        .iter()
        .find(|(_, b)| blob_path(b) == path)
        .expect("the last entry is a layer");
    let digest = sha256(&bytes);
    let at = usize::try_from(offset).unwrap() + bytes.len() / 2;
    archive[at] ^= 0x20;
    let damaged = dir.path().join("damaged.tar");
    std::fs::write(&damaged, &archive).unwrap();

    let target = TestApp::start();
    let stderr = run_failing(&target, &["import", &damaged.to_string_lossy()]);
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(stderr.contains(&path), "the message names the entry: {stderr}");
    target.assert_blob_unknown(repo, &digest).await;
    assert!(!target.stored_blobs().await.contains(&digest), "never stored");
    assert_nothing_shows(&target, &content).await;

    // The whole archive, after the damaged one, imports.
    let whole = dir.path().join("all.tar");
    run_json(&target, &["import", &whole.to_string_lossy()]);
    assert_serves(&target, &content).await;
}

#[tokio::test]
async fn a_truncated_or_incomplete_archive_fails_the_import_and_tags_nothing() {
    let source = TestApp::start();
    let content = fill(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = export_all(&source, dir.path());
    let all = entries(&archive);
    let target = TestApp::start();

    // Cut in the middle of the last layer.
    let (path, bytes, offset) = all.last().expect("entries");
    let cut = usize::try_from(*offset).unwrap() + bytes.len() / 2;
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &archive[..cut]).unwrap();
    let stderr = run_failing(&target, &["import", &truncated.to_string_lossy()]);
    assert!(stderr.contains("incomplete"), "{stderr}");
    assert!(stderr.contains(path.as_str()), "the message names the entry: {stderr}");
    assert_nothing_shows(&target, &content).await;

    // Cut after a whole entry: a manifest's layer never arrives.
    let (_, _, last_offset) = all.last().expect("entries");
    // The header of the last entry starts 512 bytes before its data.
    let at_entry = usize::try_from(*last_offset).unwrap() - 512;
    let short = dir.path().join("short.tar");
    std::fs::write(&short, &archive[..at_entry]).unwrap();
    let stderr = run_failing(&target, &["import", &short.to_string_lossy()]);
    let missing = path.strip_prefix("blobs/sha256/").unwrap();
    assert!(stderr.contains("incomplete"), "{stderr}");
    assert!(stderr.contains(missing), "the message names the missing blob: {stderr}");
    assert_nothing_shows(&target, &content).await;

    // Cut inside the header of the last entry.
    let in_header = dir.path().join("in-header.tar");
    std::fs::write(&in_header, &archive[..at_entry + 100]).unwrap();
    let stderr = run_failing(&target, &["import", &in_header.to_string_lossy()]);
    assert!(stderr.contains("incomplete"), "{stderr}");
    assert_nothing_shows(&target, &content).await;

    // Not an archive at all.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, random_bytes(3000)).unwrap();
    run_failing(&target, &["import", &junk.to_string_lossy()]);
    let stderr = run_failing(&target, &["import", &arg(dir.path(), "missing.tar")]);
    assert!(stderr.contains("missing.tar"), "{stderr}");
    assert_nothing_shows(&target, &content).await;
}

#[tokio::test]
async fn an_archive_whose_index_comes_after_its_blobs_is_refused() {
    let source = TestApp::start();
    source.push_image("team/app", "v1", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = export_all(&source, dir.path());
    // The same entries, index.json last.
    let mut entries = entries(&archive);
    let index = entries.remove(1);
    entries.push(index);
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes, _) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, &bytes[..]).unwrap();
    }
    let reordered = dir.path().join("reordered.tar");
    std::fs::write(&reordered, builder.into_inner().unwrap()).unwrap();
    let target = TestApp::start();
    let stderr = run_failing(&target, &["import", &reordered.to_string_lossy()]);
    assert!(stderr.contains("index.json first"), "{stderr}");
    assert_error(target.get("/v2/team/app/manifests/v1").await, 404, "NAME_UNKNOWN").await;
}
