//! `berth backup`: a copy taken while the server runs and takes pushes is
//! served by a fresh server, byte for byte, for everything pushed before
//! the copy began and for whatever of the concurrent pushes it holds; upload
//! sessions in flight are not in it; a non-empty destination is refused, and
//! so is a scale-out installation.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::*;

/// Starts `berth backup DEST --data-dir DATA --json` (with the app's config
/// file, if any) on an embedded app.
fn backup(app: &TestApp, dest: &Path) -> std::process::Child {
    let mut cmd = berth_command();
    cmd.arg("backup")
        .arg(dest)
        .arg("--json")
        .arg("--data-dir")
        .arg(app.data_dir());
    let config = app.data_dir().join("berth.toml");
    if config.is_file() {
        cmd.arg("--config").arg(config);
    }
    cmd.stdout(Stdio::piped());
    cmd.spawn().expect("spawning berth backup")
}

fn finished(child: std::process::Child) -> (bool, String, String) {
    let Output { status, stdout, stderr } = child.wait_with_output().expect("waiting for berth backup");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Asserts that the server at `base` serves `image` under `repo:tag`, every
/// blob of it included, byte for byte.
async fn assert_serves(client: &reqwest::Client, base: &str, repo: &str, tag: &str, image: &Image) {
    let resp = client
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK, "{repo}:{tag}");
    assert_eq!(header(&resp, "docker-content-digest"), image.digest, "{repo}:{tag}");
    let body = resp.bytes().await.expect("manifest body");
    assert_eq!(sha256(&body), image.digest, "{repo}:{tag}");
    let blobs = std::iter::once(&image.config).chain(&image.layers);
    for blob in blobs {
        let digest = sha256(blob);
        let resp = client
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(resp.status(), StatusCode::OK, "{repo}:{tag} blob {digest}");
        let bytes = resp.bytes().await.expect("blob body");
        assert_eq!(sha256(&bytes), digest, "{repo}:{tag} blob {digest}");
    }
}

/// A fresh `berth serve` over the backup directory.
fn serve_copy(dest: &Path) -> Server {
    let mut cmd = berth_command();
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dest);
    spawn_server(cmd).unwrap_or_else(|f| panic!("berth did not start on the copy ({:?}):\n{}", f.status, f.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_pushes_serves_every_image_it_holds() {
    let app = TestApp::start();
    let out = tempfile::tempdir().expect("temp dir");
    let dest: PathBuf = out.path().join("copy");
    if scaleout() {
        let dest_arg = dest.display().to_string();
        let (ok, _, stderr) = app.cli(&["backup", &dest_arg, "--json"], "");
        assert!(!ok, "a scale-out installation is refused");
        assert!(
            stderr.contains("pg_dump"),
            "the refusal says what to do instead: {stderr}"
        );
        assert!(!dest.join("berth.db").exists());
        return;
    }

    // Images before the backup, two of them sharing a layer.
    let shared = random_bytes(4096);
    let mut before = Vec::new();
    for i in 0..6 {
        let repo = format!("team{}/app", i % 2);
        let tag = format!("v{i}");
        let image = if i < 2 {
            let image = Image::of_layers(vec![shared.clone(), random_bytes(2048)]);
            image.push(&app.client, &app.base, &repo, &tag).await;
            image
        } else {
            app.push_image(&repo, &tag, 3).await
        };
        before.push((repo, tag, image));
    }
    // An upload in flight: its bytes are not part of the backup.
    let session = app.start_upload("team0/app").await;
    let resp = app
        .client
        .patch(&session)
        .header("content-type", "application/octet-stream")
        .body(random_bytes(1000))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // Pushes go on, one after another, before and while the copy runs.
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let pusher = tokio::spawn({
        let (client, base, stop, pushed) = (app.client.clone(), app.base.clone(), stop.clone(), pushed.clone());
        async move {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (repo, tag, image) = ("team2/live".to_string(), format!("live{i}"), Image::random(2));
                image.push(&client, &base, &repo, &tag).await;
                pushed.lock().expect("lock").push((repo, tag, image));
            }
        }
    });
    while pushed.lock().expect("lock").len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Acknowledged before the copy began: they must be in it.
    let acknowledged = pushed.lock().expect("lock").len();
    let running = backup(&app, &dest);
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || finished(running))
        .await
        .expect("waiting for berth backup");
    stop.store(true, Ordering::SeqCst);
    pusher.await.expect("the pushes succeed");
    let during = std::mem::take(&mut *pushed.lock().expect("lock"));
    assert!(ok, "berth backup failed:\n{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("the summary is JSON");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["blobs"]["failed"], 0);
    assert!(
        summary["uploads_left_out"].as_u64().expect("uploads_left_out") >= 1,
        "{summary}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dest.join("backup.json")).expect("backup.json")).expect("JSON");
    assert_eq!(manifest["berth_version"], env!("CARGO_PKG_VERSION"));
    assert!(manifest["database"]["tags"].as_u64().expect("tags") >= before.len() as u64);
    assert_eq!(
        manifest["database"]["blobs"], manifest["blobs"]["copied"],
        "every blob the copy records is there, once (one store)"
    );
    let uploads: Vec<_> = std::fs::read_dir(dest.join("uploads")).expect("uploads/").collect();
    assert!(uploads.is_empty(), "no upload file is copied");

    // The original keeps serving; the copy serves what it holds.
    let copy = serve_copy(&dest);
    let base = copy.base();
    for (repo, tag, image) in &before {
        assert_serves(&app.client, &base, repo, tag, image).await;
    }
    // A concurrent push is in the copy entirely or not at all.
    let mut held = 0;
    for (n, (repo, tag, image)) in during.iter().enumerate() {
        let resp = app
            .client
            .head(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("HEAD manifest");
        if resp.status() == StatusCode::OK {
            held += 1;
            assert_serves(&app.client, &base, repo, tag, image).await;
        } else {
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{repo}:{tag}");
            assert!(
                n >= acknowledged,
                "{repo}:{tag} was acknowledged before the backup began"
            );
        }
    }
    assert!(held >= acknowledged);
    eprintln!(
        "{held} of the {} images pushed around the backup are in it ({acknowledged} before it began)",
        during.len()
    );
    let path = session
        .split_once("/v2/")
        .map(|(_, p)| format!("{base}/v2/{p}"))
        .expect("an upload URL");
    let resp = app.client.get(&path).send().await.expect("GET upload");
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "the upload session is not in the copy"
    );
    for (repo, tag, image) in &before {
        assert_serves(&app.client, &app.base, repo, tag, image).await;
    }
}

#[tokio::test]
async fn a_backup_into_a_non_empty_directory_is_refused() {
    let app = TestApp::start();
    if scaleout() {
        return;
    }
    app.push_image("some/repo", "latest", 1).await;
    let out = tempfile::tempdir().expect("temp dir");
    std::fs::write(out.path().join("precious"), b"keep me").expect("writing a file");
    let (ok, _, stderr) = finished(backup(&app, out.path()));
    assert!(!ok, "refused");
    assert!(stderr.contains("is not empty"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(out.path())
        .expect("reading the directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("precious")], "nothing is written");
    assert_eq!(
        std::fs::read(out.path().join("precious")).expect("still there"),
        b"keep me"
    );
}
