//! A blob a client just read (`HEAD`, `GET`) or mounted stays at least a
//! garbage-collection grace period from that moment, so "HEAD says it
//! exists, then the manifest PUT" never fails because a collection ran in
//! between; past the grace period from the read, it is collected.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::*;

/// Lifecycle schedules off: each test runs the collections it needs.
const QUIET: &str = "[gc]\ninterval_secs = 0\n[retention]\ninterval_secs = 0\n[lifecycle]\nexpiry_interval_secs = 0\n";
const HOUR_MS: i64 = 3_600_000;

/// How a client shows interest in a blob before it pushes a manifest.
#[derive(Debug, Clone, Copy)]
enum Read {
    Head,
    Get,
    /// `POST ?mount=&from=` from the repository into `<repo>-mounted`.
    Mount,
}

/// The repository the manifest goes to after `read` of a blob of `repo`.
fn pushed_to(repo: &str, read: Read) -> String {
    match read {
        Read::Mount => format!("{repo}-mounted"),
        Read::Head | Read::Get => repo.to_string(),
    }
}

/// Reads `bytes` (linked in `repo`) as `read` does, asserting success.
async fn read_blob(app: &TestApp, repo: &str, bytes: &[u8], read: Read) {
    let digest = sha256(bytes);
    let path = format!("/v2/{repo}/blobs/{digest}");
    match read {
        Read::Head => {
            let resp = app.head(&path).await;
            assert_eq!(resp.status(), StatusCode::OK, "HEAD {path}");
            assert_eq!(header(&resp, "content-length"), bytes.len().to_string());
        }
        Read::Get => {
            let resp = app.get(&path).await;
            assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
            assert_eq!(resp.bytes().await.unwrap(), bytes);
        }
        Read::Mount => {
            let to = pushed_to(repo, read);
            let resp = app
                .client
                .post(app.url(&format!("/v2/{to}/blobs/uploads/?mount={digest}&from={repo}")))
                .send()
                .await
                .expect("POST mount");
            assert_eq!(
                resp.status(),
                StatusCode::CREATED,
                "mount {digest} from {repo} into {to}"
            );
        }
    }
}

/// Runs a collection: `berth gc` in a process of its own (it sees only what
/// the server wrote), or the admin API (in the server, which first writes
/// what it gathered in memory).
async fn collect(app: &TestApp, in_server: bool) -> Value {
    if in_server {
        let resp = app
            .client
            .post(app.url("/api/v1/gc"))
            .send()
            .await
            .expect("POST /api/v1/gc");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("gc report")
    } else {
        let (ok, out, err) = app.cli(&["gc", "--json"], "");
        assert!(ok, "berth gc --json failed: {err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("berth gc --json printed {out:?}: {e}"))
    }
}

/// Pushes two unreferenced blobs to `repo` (at the clock's now), returns them.
async fn two_blobs(app: &TestApp, repo: &str) -> (Vec<u8>, Vec<u8>) {
    let (kept, dropped) = (random_bytes(700), random_bytes(900));
    app.push_blob(repo, &kept).await;
    app.push_blob(repo, &dropped).await;
    (kept, dropped)
}

/// The steps after the reads, the same for every way of reading: less than
/// the grace period after the read, a collection keeps both blobs and a
/// manifest over one of them is accepted; past it, the other one goes.
async fn collect_around_the_grace_period(
    app: &TestApp,
    repo: &str,
    read: Read,
    (kept, dropped): (&[u8], &[u8]),
    in_server: bool,
) {
    app.advance_clock(23 * HOUR_MS);
    let report = collect(app, in_server).await;
    assert_eq!(report["blobs_removed"], 0, "{read:?}: {report}");
    let stored = app.stored_blobs().await;
    assert!(
        stored.contains(&sha256(kept)) && stored.contains(&sha256(dropped)),
        "{read:?}"
    );

    // The client's next step after its read: a manifest over the blob.
    let to = pushed_to(repo, read);
    let image = Image::of_layers(vec![kept.to_vec()]);
    app.push_blob(&to, &image.config).await;
    app.push_manifest(&to, "v1", OCI_MANIFEST, &image.manifest).await;

    app.advance_clock(2 * HOUR_MS);
    let report = collect(app, in_server).await;
    assert_eq!(report["blobs_removed"], 1, "{read:?}: {report}");
    let stored = app.stored_blobs().await;
    assert!(
        !stored.contains(&sha256(dropped)),
        "{read:?}: collected past the grace period"
    );
    assert!(stored.contains(&sha256(kept)), "{read:?}: the manifest keeps its layer");
    app.assert_blob_unknown(repo, &sha256(dropped)).await;
    let resp = app.get(&format!("/v2/{to}/blobs/{}", sha256(kept))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), kept);
}

#[tokio::test]
async fn a_blob_read_long_after_its_push_stays_a_grace_period_from_the_read() {
    // Pushed days before the read: the link could go any moment, so the read
    // is written before it answers, where `berth gc` in a process of its own
    // sees it.
    for read in [Read::Head, Read::Get, Read::Mount] {
        let app = TestApp::start_with_clock(QUIET);
        let blobs = two_blobs(&app, "old/r").await;
        app.advance_clock(3 * DAY_MS);
        read_blob(&app, "old/r", &blobs.0, read).await;
        read_blob(&app, "old/r", &blobs.1, read).await;
        collect_around_the_grace_period(&app, "old/r", read, (&blobs.0, &blobs.1), false).await;
    }
}

#[tokio::test]
async fn a_blob_read_soon_after_its_push_stays_a_grace_period_from_the_read() {
    // Read 6 hours after the push: the touch waits in memory, and the
    // collection in the server writes it before it decides.
    for read in [Read::Head, Read::Get, Read::Mount] {
        let app = TestApp::start_with_clock(QUIET);
        let blobs = two_blobs(&app, "fresh/r").await;
        app.advance_clock(6 * HOUR_MS);
        read_blob(&app, "fresh/r", &blobs.0, read).await;
        read_blob(&app, "fresh/r", &blobs.1, read).await;
        collect_around_the_grace_period(&app, "fresh/r", read, (&blobs.0, &blobs.1), true).await;
    }
}
