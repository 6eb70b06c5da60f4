//! Crash safety: pushes run while the server is killed with SIGKILL; after a
//! restart, everything the server acknowledged is there byte for byte, and no
//! blob file holds anything but the bytes its name promises.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{header, random_bytes, resolve, sha256, sha512, with_query, Image, TestApp, OCI_MANIFEST};

/// A manifest the server answered 201 to.
struct AckedManifest {
    repo: String,
    tag: String,
    digest: String,
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

/// What the writers saw: acknowledged pushes, and answers that were wrong
/// (as opposed to connections that broke when the server died).
#[derive(Default)]
struct Record {
    manifests: Vec<AckedManifest>,
    blobs: Vec<(String, Vec<u8>)>,
    wrong: Vec<String>,
}

/// Why a writer stopped.
enum Stop {
    /// The connection failed: the server is gone.
    Transport,
    /// The server answered something it should not have.
    Wrong(String),
}

fn check(
    resp: Result<reqwest::Response, reqwest::Error>,
    want: StatusCode,
    what: &str,
) -> Result<reqwest::Response, Stop> {
    let resp = resp.map_err(|_| Stop::Transport)?;
    if resp.status() == want {
        Ok(resp)
    } else {
        Err(Stop::Wrong(format!("{what}: {} instead of {want}", resp.status())))
    }
}

/// Pushes a blob in one request or in chunks, chosen at random.
async fn upload(client: &reqwest::Client, base: &str, repo: &str, bytes: &[u8]) -> Result<(), Stop> {
    let digest = sha256(bytes);
    if rand::random::<bool>() {
        let resp = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .body(bytes.to_vec())
            .send()
            .await;
        check(resp, StatusCode::CREATED, "monolithic upload")?;
        return Ok(());
    }
    let resp = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await;
    let resp = check(resp, StatusCode::ACCEPTED, "start upload")?;
    let mut url = resolve(base, header(&resp, "location"));
    let chunk_size = rand::random_range(16_384..=98_304);
    let mut offset = 0;
    for chunk in bytes.chunks(chunk_size) {
        let end = offset + chunk.len() - 1;
        let resp = client
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{end}"))
            .body(chunk.to_vec())
            .send()
            .await;
        let resp = check(resp, StatusCode::ACCEPTED, "PATCH chunk")?;
        url = resolve(base, header(&resp, "location"));
        offset = end + 1;
    }
    let resp = client.put(with_query(&url, &format!("digest={digest}"))).send().await;
    check(resp, StatusCode::CREATED, "finish upload")?;
    Ok(())
}

/// Pushes small images until the server goes away.
async fn writer(client: reqwest::Client, base: String, id: usize, record: Arc<Mutex<Record>>) {
    let repo = format!("crash/w{id}");
    for n in 0.. {
        let layers: Vec<Vec<u8>> = (0..rand::random_range(1..=3))
            .map(|_| random_bytes(rand::random_range(1..=256 * 1024)))
            .collect();
        let image = Image::of_layers(layers);
        let blobs: Vec<Vec<u8>> = std::iter::once(image.config.clone())
            .chain(image.layers.iter().cloned())
            .collect();
        let pushed = async {
            for blob in &blobs {
                upload(&client, &base, &repo, blob).await?;
                record.lock().unwrap().blobs.push((repo.clone(), blob.clone()));
            }
            let tag = format!("t{n}");
            let resp = client
                .put(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header("content-type", OCI_MANIFEST)
                .body(image.manifest.clone())
                .send()
                .await;
            let resp = check(resp, StatusCode::CREATED, "PUT manifest")?;
            if header(&resp, "docker-content-digest") != image.digest {
                return Err(Stop::Wrong(format!("manifest {tag} acknowledged under another digest")));
            }
            record.lock().unwrap().manifests.push(AckedManifest {
                repo: repo.clone(),
                tag,
                digest: image.digest.clone(),
                manifest: image.manifest.clone(),
                blobs: blobs.clone(),
            });
            Ok(())
        };
        match pushed.await {
            Ok(()) => {}
            Err(Stop::Transport) => return,
            Err(Stop::Wrong(why)) => {
                record.lock().unwrap().wrong.push(format!("writer {id}: {why}"));
                return;
            }
        }
    }
}

#[tokio::test]
async fn acknowledged_pushes_survive_sigkill() {
    let mut app = TestApp::start();
    let record = Arc::new(Mutex::new(Record::default()));
    let writers: Vec<_> = (0..4)
        .map(|id| tokio::spawn(writer(app.client.clone(), app.base.clone(), id, record.clone())))
        .collect();

    // Kill once the writers have something acknowledged to lose, however
    // slow the machine is, at a moment within a chunk or a manifest.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while record.lock().unwrap().manifests.len() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writers acknowledged nothing in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(rand::random_range(0..200))).await;
    app.kill9();
    for w in writers {
        w.await.expect("a writer panicked");
    }

    app.start_again();
    let record = std::mem::take(&mut *record.lock().unwrap());
    eprintln!(
        "acknowledged before SIGKILL: {} manifests, {} blobs",
        record.manifests.len(),
        record.blobs.len()
    );
    assert!(
        record.wrong.is_empty(),
        "wrong answers before the kill: {:?}",
        record.wrong
    );
    assert!(
        record.manifests.len() >= 4,
        "only {} manifests were pushed before the kill; the test proves little",
        record.manifests.len()
    );

    for acked in &record.manifests {
        for reference in [acked.tag.as_str(), acked.digest.as_str()] {
            let resp = app.get(&format!("/v2/{}/manifests/{reference}", acked.repo)).await;
            assert_eq!(resp.status(), 200, "{}:{reference} lost after the crash", acked.repo);
            assert_eq!(header(&resp, "docker-content-digest"), acked.digest);
            assert_eq!(
                resp.bytes().await.unwrap(),
                acked.manifest,
                "{}:{reference}",
                acked.repo
            );
        }
        for blob in &acked.blobs {
            let resp = app.get(&format!("/v2/{}/blobs/{}", acked.repo, sha256(blob))).await;
            assert_eq!(resp.status(), 200, "a blob of {}:{} lost", acked.repo, acked.tag);
            assert!(
                resp.bytes().await.unwrap() == blob[..],
                "a blob of {}:{} changed",
                acked.repo,
                acked.tag
            );
        }
    }
    for (repo, blob) in &record.blobs {
        let resp = app.head(&format!("/v2/{repo}/blobs/{}", sha256(blob))).await;
        assert_eq!(resp.status(), 200, "an acknowledged blob of {repo} was lost");
        assert_eq!(header(&resp, "content-length"), blob.len().to_string());
    }
    for repo in record.manifests.iter().map(|m| &m.repo) {
        let body: Value = app.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap();
        let listed = body["tags"].as_array().unwrap();
        for acked in record.manifests.iter().filter(|m| &m.repo == repo) {
            assert!(
                listed.contains(&Value::from(acked.tag.as_str())),
                "{repo}:{} not listed",
                acked.tag
            );
        }
    }

    // No half-written blob is visible: every blob file holds what its name says.
    // Upload session files under uploads/ may be partial.
    let blob_keys = app.stored_keys("blobs").await;
    assert!(!blob_keys.is_empty());
    for key in &blob_keys {
        // blobs/<algorithm>/<fan-out>/<hex>
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 4, "unexpected blob file {key}");
        let (algorithm, fan_out, name) = (parts[1], parts[2], parts[3]);
        let bytes = app.read_stored(key).await.unwrap_or_else(|| panic!("{key} vanished"));
        let actual = match algorithm {
            "sha256" => sha256(&bytes),
            "sha512" => sha512(&bytes),
            other => panic!("unexpected blob file {key} (algorithm dir {other})"),
        };
        assert_eq!(actual.split_once(':').unwrap().1, name, "{key} holds other bytes");
        assert_eq!(fan_out, &name[..2], "{key} is in the wrong directory");
    }

    // The restarted server takes new pushes into the same repositories.
    let image = app.push_image("crash/w0", "after-restart", 2).await;
    let resp = app.get("/v2/crash/w0/manifests/after-restart").await;
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
}

#[tokio::test]
async fn a_graceful_restart_keeps_everything() {
    let mut app = TestApp::start();
    let image = app.push_image("a", "v1", 2).await;
    let url = app.start_upload("a").await;
    let id = url.rsplit('/').next().unwrap().to_owned();
    let resp = app
        .client
        .patch(&url)
        .header("content-range", "0-9")
        .body(vec![5u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    app.restart();

    let resp = app.get("/v2/a/manifests/v1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    for layer in &image.layers {
        let resp = app.get(&format!("/v2/a/blobs/{}", sha256(layer))).await;
        assert_eq!(resp.bytes().await.unwrap(), layer[..]);
    }
    // An upload session continues across the restart.
    let url = app.url(&format!("/v2/a/blobs/uploads/{id}"));
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(header(&resp, "range"), "0-9");
    let all = [vec![5u8; 10], vec![6u8; 10]].concat();
    let resp = app
        .client
        .put(with_query(&url, &format!("digest={}", sha256(&all))))
        .header("content-range", "10-19")
        .body(vec![6u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = app.get(&format!("/v2/a/blobs/{}", sha256(&all))).await;
    assert_eq!(resp.bytes().await.unwrap(), all);
}
