//! Pull-through caching against real upstream registries: a second `berth`
//! here (the reference registry and TLS/auth upstreams are in `proxy_upstreams`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::*;
use crate::upstreams::ReferenceRegistry;

/// A downstream configuration caching `upstream` under the prefix `up`,
/// also reachable as the host `upstream.test`.
fn caching(upstream: &TestApp, extra: &str) -> String {
    format!(
        "[proxy]\n{extra}\n[[proxy.upstreams]]\nname = \"up\"\nurl = \"{}\"\nhost = \"upstream.test\"\n",
        upstream.base
    )
}

async fn manifest_of(app: &TestApp, path: &str) -> (StatusCode, String, Vec<u8>) {
    let resp = app
        .client
        .get(app.url(path))
        .header("accept", OCI_MANIFEST)
        .header("accept", OCI_INDEX)
        .send()
        .await
        .expect("GET manifest");
    let status = resp.status();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (
        status,
        digest,
        resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

async fn blob_of(app: &TestApp, path: &str) -> (StatusCode, Result<Vec<u8>, String>) {
    let resp = app.get(path).await;
    let status = resp.status();
    (
        status,
        resp.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string()),
    )
}

/// The stored blob once the store has it: clients get the last byte when the
/// bytes are checked, which may be before the store made them durable.
async fn eventually_stored(app: &TestApp, digest: &str) -> Option<Vec<u8>> {
    for _ in 0..100 {
        if let Some(bytes) = app.stored_blob(digest).await {
            return Some(bytes);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn counters(app: &TestApp) -> Value {
    let resp = app.get("/api/v1/proxy/upstreams").await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.expect("JSON")["counters"].clone()
}

#[tokio::test]
async fn every_addressing_form_pulls_through_into_one_cache_that_outlives_the_upstream() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 2).await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);

    for path in [
        "/v2/up/team/app/manifests/v1",
        "/v2/upstream.test/team/app/manifests/v1",
        "/v2/team/app/manifests/v1?ns=upstream.test",
    ] {
        let (status, digest, body) = manifest_of(&cache, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(digest, image.digest, "{path}");
        assert_eq!(body, image.manifest, "{path}: byte for byte");
    }
    for layer in image.layers.iter().chain([&image.config]) {
        for repo in ["up/team/app", "upstream.test/team/app"] {
            let (status, bytes) = blob_of(&cache, &format!("/v2/{repo}/blobs/{}", sha256(layer))).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(bytes.unwrap(), *layer);
        }
    }
    let c = counters(&cache).await;
    assert_eq!(c["blob_fetches"], 3, "each blob fetched once: {c}");
    // One cache: the repository is listed once, under its prefix.
    let catalog: Value = cache.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["up/team/app"]));
    let images: Value = cache.get("/v1/images?repo=up/team/app").await.json().await.unwrap();
    assert!(images.to_string().contains("mirrored"), "{images}");

    drop(upstream);
    let (status, digest, _) = manifest_of(&cache, "/v2/up/team/app/manifests/v1").await;
    assert_eq!((status, digest.as_str()), (StatusCode::OK, image.digest.as_str()));
    let (status, digest, _) = manifest_of(&cache, &format!("/v2/up/team/app/manifests/{}", image.digest)).await;
    assert_eq!((status, digest.as_str()), (StatusCode::OK, image.digest.as_str()));
    let (status, bytes) = blob_of(&cache, &format!("/v2/up/team/app/blobs/{}", sha256(&image.config))).await;
    assert_eq!((status, bytes.unwrap()), (StatusCode::OK, image.config.clone()));
    // What was never cached is a clear error naming the upstream.
    let resp = cache.get("/v2/up/team/other/manifests/v1").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = resp.text().await.unwrap();
    assert!(body.contains("upstream up"), "{body}");
}

#[tokio::test]
async fn a_cached_tag_is_served_when_the_upstream_is_down_and_a_moved_tag_is_seen_after_the_freshness_time() {
    let upstream = TestApp::start();
    let first = upstream.push_image("team/app", "v1", 1).await;
    let cache = TestApp::start_with_config(&caching(&upstream, "freshness_secs = 1"), &[]);
    assert_eq!(
        manifest_of(&cache, "/v2/up/team/app/manifests/v1").await.1,
        first.digest
    );

    let second = upstream.push_image("team/app", "v1", 1).await;
    assert_eq!(
        manifest_of(&cache, "/v2/up/team/app/manifests/v1").await.1,
        first.digest,
        "fresh for a second"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        manifest_of(&cache, "/v2/up/team/app/manifests/v1").await.1,
        second.digest
    );

    drop(upstream);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, digest, _) = manifest_of(&cache, "/v2/up/team/app/manifests/v1").await;
    assert_eq!((status, digest.as_str()), (StatusCode::OK, second.digest.as_str()));
    let c = counters(&cache).await;
    assert!(c["served_stale"].as_u64().unwrap() >= 1, "{c}");
    let tags: Value = cache.get("/v2/up/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
}

#[tokio::test]
async fn a_tag_deleted_upstream_is_still_served_and_tags_merge_with_the_upstreams() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    upstream.push_image("team/app", "v2", 1).await;
    let cache = TestApp::start_with_config(&caching(&upstream, "freshness_secs = 0"), &[]);
    assert_eq!(
        manifest_of(&cache, "/v2/up/team/app/manifests/v1").await.1,
        image.digest
    );
    let tags: Value = cache.get("/v2/up/team/app/tags/list?n=1").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    let tags: Value = cache.get("/v2/up/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));
    assert_eq!(tags["name"], "up/team/app");

    assert_eq!(
        upstream.delete("/v2/team/app/manifests/v1").await.status(),
        StatusCode::ACCEPTED
    );
    let (status, digest, _) = manifest_of(&cache, "/v2/up/team/app/manifests/v1").await;
    assert_eq!((status, digest.as_str()), (StatusCode::OK, image.digest.as_str()));
    assert!(cache.logged("no longer has this tag").await, "logged");
    // Never cached and not upstream: unknown.
    assert_error(cache.get("/v2/up/team/app/manifests/v9").await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(cache.get("/v2/up/team/none/manifests/v1").await, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn pushes_to_a_remote_repository_and_every_write_in_mirror_mode_are_denied() {
    let upstream = TestApp::start();
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    let resp = cache
        .client
        .post(cache.url("/v2/up/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 403, "DENIED").await;
    assert!(body.to_string().contains("upstream up"), "{body}");
    let resp = cache.put_manifest("upstream.test/x", "v1", OCI_MANIFEST, b"{}").await;
    assert_error(resp, 403, "DENIED").await;
    // Local repositories still take pushes.
    cache.push_image("team/app", "v1", 1).await;

    let mirror = TestApp::start_with_config(
        &format!("[registry]\nmode = \"mirror\"\n{}", caching(&upstream, "")),
        &[],
    );
    let resp = mirror
        .client
        .post(mirror.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 403, "DENIED").await;
    assert!(body.to_string().contains("pull-only mirror"), "{body}");
    assert_error(mirror.delete("/v2/team/app/manifests/v1").await, 403, "DENIED").await;
    let image = upstream.push_image("team/app", "v1", 1).await;
    assert_eq!(
        manifest_of(&mirror, "/v2/up/team/app/manifests/v1").await.1,
        image.digest
    );
}

#[tokio::test]
async fn a_blob_the_upstream_corrupts_is_cut_short_and_never_stored() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let layer = &image.layers[0];
    let digest = sha256(layer);
    let mut bad = layer.clone();
    bad[0] ^= 0xff;
    upstream.put_stored_blob(&digest, &bad).await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    for _ in 0..2 {
        // Cut after the headers; or, when the check failed before the answer
        // started (a small blob arrives whole), cut before them or answered
        // with an error: never a complete 200.
        let url = cache.url(&format!("/v2/up/team/app/blobs/{digest}"));
        let outcome = match cache.client.get(url).send().await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                resp.bytes().await.map(|b| b.len()).map_err(|e| e.to_string())
            }
            Ok(resp) => Err(format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        };
        assert!(outcome.is_err(), "the answer is cut, never complete: {outcome:?}");
    }
    assert_eq!(cache.stored_blob(&digest).await, None);
    assert_eq!(
        cache.head(&format!("/v2/up/team/app/blobs/{digest}")).await.status(),
        StatusCode::OK,
        "a HEAD asks the upstream, which still has it"
    );
    let log = cache.log();
    assert!(log.contains("does not match"), "{log}");
}

/// Small blobs fetched together are stored together; one that cannot be
/// stored (its shard directory is unusable here) does not keep the others
/// out of the cache, and every client gets its bytes either way.
#[tokio::test]
async fn a_small_blob_that_cannot_be_stored_leaves_the_others_of_its_batch_stored() {
    if scaleout() {
        // The bucket cannot be broken for one blob from here.
        return;
    }
    let upstream = TestApp::start();
    let layers: Vec<Vec<u8>> = (0..8).map(|_| random_bytes(4096)).collect();
    let image = Image::of_layers(layers.clone());
    image.push(&upstream.client, &upstream.base, "team/many", "v1").await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    let broken = sha256(&layers[0]);
    let shard = cache.data_dir().join(blob_key(&broken)).parent().unwrap().to_path_buf();
    std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&shard);
    std::fs::write(&shard, b"not a directory").unwrap();
    let pulls = layers.iter().map(|layer| {
        let client = cache.client.clone();
        let url = cache.url(&format!("/v2/up/team/many/blobs/{}", sha256(layer)));
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    let got = futures::future::join_all(pulls).await;
    for (layer, bytes) in layers.iter().zip(&got) {
        assert_eq!(&bytes[..], &layer[..], "every client gets its blob");
    }
    for layer in &layers[1..] {
        assert_eq!(
            eventually_stored(&cache, &sha256(layer)).await.as_deref(),
            Some(&layer[..]),
            "a blob of the batch is stored"
        );
    }
    assert!(shard.is_file(), "nothing was placed where the broken blob would go");
}

#[tokio::test]
async fn many_clients_asking_for_one_uncached_blob_cause_one_fetch() {
    let upstream = TestApp::start();
    let layer = random_bytes(8 << 20);
    let image = Image::of_layers(vec![layer.clone()]);
    image.push(&upstream.client, &upstream.base, "team/big", "v1").await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    let url = cache.url(&format!("/v2/up/team/big/blobs/{}", sha256(&layer)));
    let pulls = (0..50).map(|_| {
        let client = cache.client.clone();
        let url = url.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap() })
    });
    for pull in futures::future::join_all(pulls).await {
        assert_eq!(pull.unwrap().len(), layer.len());
    }
    assert_eq!(counters(&cache).await["blob_fetches"], 1);
    assert_eq!(
        eventually_stored(&cache, &sha256(&layer)).await.map(|b| b.len()),
        Some(layer.len())
    );
}

#[tokio::test]
async fn a_virtual_repository_resolves_in_order_merges_tags_and_pushes_to_its_local_member() {
    let upstream = TestApp::start();
    let remote_v1 = upstream.push_image("team/app", "v1", 1).await;
    let remote_v2 = upstream.push_image("team/app", "v2", 1).await;
    let config = format!(
        "{}\n[[proxy.virtual]]\nname = \"all\"\nmembers = [\"local\", \"up\"]\npush_to = \"local\"\n",
        caching(&upstream, "")
    );
    let cache = TestApp::start_with_config(&config, &[]);
    let local_v1 = cache.push_image("local/team/app", "v1", 1).await;
    assert_eq!(
        manifest_of(&cache, "/v2/all/team/app/manifests/v1").await.1,
        local_v1.digest
    );
    assert_eq!(
        manifest_of(&cache, "/v2/all/team/app/manifests/v2").await.1,
        remote_v2.digest
    );
    assert_ne!(local_v1.digest, remote_v1.digest);
    let (status, bytes) = blob_of(
        &cache,
        &format!("/v2/all/team/app/blobs/{}", sha256(&remote_v2.layers[0])),
    )
    .await;
    assert_eq!((status, bytes.unwrap()), (StatusCode::OK, remote_v2.layers[0].clone()));
    let tags: Value = cache.get("/v2/all/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));
    let pushed = Image::random(1);
    pushed.push(&cache.client, &cache.base, "all/team/app", "v3").await;
    assert_eq!(
        manifest_of(&cache, "/v2/local/team/app/manifests/v3").await.1,
        pushed.digest
    );
    assert_error(
        cache.get("/v2/all/team/app/manifests/v9").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn replicas_sharing_the_stores_fetch_a_blob_once() {
    if !scaleout() {
        eprintln!("replicas need PostgreSQL and S3: run with BERTH_IT_BACKEND=scaleout");
        return;
    }
    let upstream = TestApp::start();
    let layer = random_bytes(4 << 20);
    let image = Image::of_layers(vec![layer.clone()]);
    image.push(&upstream.client, &upstream.base, "team/big", "v1").await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    let replica = cache.replica();
    let path = format!("/v2/up/team/big/blobs/{}", sha256(&layer));
    let pulls = (0..20).map(|i| {
        let client = cache.client.clone();
        let url = if i % 2 == 0 {
            cache.url(&path)
        } else {
            format!("{}{path}", replica.base())
        };
        tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap() })
    });
    for pull in futures::future::join_all(pulls).await {
        assert_eq!(pull.unwrap().len(), layer.len());
    }
    let replica_counters: Value = cache
        .client
        .get(format!("{}/api/v1/proxy/upstreams", replica.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fetched = counters(&cache).await["blob_fetches"].as_u64().unwrap()
        + replica_counters["counters"]["blob_fetches"].as_u64().unwrap();
    assert_eq!(fetched, 1, "one fetch between the two replicas");
}

#[tokio::test]
async fn referrers_of_a_mirrored_image_come_from_the_upstream_and_its_tag_schema() {
    use crate::referrers::{push_referrer, SBOM};
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let (sbom, _) = push_referrer(
        &upstream,
        "team/app",
        &image.descriptor(),
        Some(SBOM),
        serde_json::json!({}),
    )
    .await;
    // A cosign-style signature: no subject, kept under the tag schema's tag.
    let sig = Image::random(1);
    let sig_tag = format!("sha256-{}.sig", image.digest.trim_start_matches("sha256:"));
    sig.push(&upstream.client, &upstream.base, "team/app", &sig_tag).await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    assert_eq!(
        manifest_of(&cache, "/v2/up/team/app/manifests/v1").await.1,
        image.digest
    );

    let resp = cache.get(&format!("/v2/up/team/app/referrers/{}", image.digest)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let index: Value = resp.json().await.unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&sbom.as_str()), "{index}");
    assert!(listed.contains(&sig.digest.as_str()), "{index}");
    // Cached: still listed with the upstream gone, and the signature's tag is pullable.
    drop(upstream);
    let index: Value = cache
        .get(&format!("/v2/up/team/app/referrers/{}", image.digest))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    assert_eq!(
        manifest_of(&cache, &format!("/v2/up/team/app/manifests/{sig_tag}"))
            .await
            .1,
        sig.digest
    );
}

/// Cache retention is the retention engine with a cache's rule: what was
/// pulled lately stays, the rest goes after its last use; preview, run and
/// garbage collection work on cached content as on pushed content.
#[tokio::test]
async fn cache_retention_expires_what_was_not_used_and_gc_reclaims_it() {
    let upstream = TestApp::start();
    let used = upstream.push_image("team/app", "used", 1).await;
    let unused = upstream.push_image("team/app", "unused", 1).await;
    let config = format!(
        "[retention]\ninterval_secs = 0\n[retention.policies.\"up/**\"]\n\
         keep_by_age = {{ max_age_days = 30, match_pulled_in_last_days = 14 }}\n\
         [gc]\ninterval_secs = 0\ngrace_secs = 60\n[lifecycle]\nexpiry_interval_secs = 0\n{}",
        caching(&upstream, "")
    );
    let cache = TestApp::start_with_clock(&config);
    for tag in ["used", "unused"] {
        manifest_of(&cache, &format!("/v2/up/team/app/manifests/{tag}")).await;
    }
    let unused_layer = sha256(&unused.layers[0]);
    assert_eq!(
        blob_of(&cache, &format!("/v2/up/team/app/blobs/{unused_layer}"))
            .await
            .0,
        StatusCode::OK
    );
    cache.advance_clock(20 * DAY_MS);
    manifest_of(&cache, "/v2/up/team/app/manifests/used").await;
    cache.advance_clock(15 * DAY_MS);

    let preview: Value = cache.get("/api/v1/retention/preview").await.json().await.unwrap();
    let entries = preview["entries"].as_array().unwrap();
    let of = |tag: &str| entries.iter().find(|e| e["tag"] == tag).cloned().unwrap_or_default();
    assert_eq!(of("used")["action"], "keep", "{preview}");
    assert_eq!(of("used")["rule"], "keep_by_age");
    assert_eq!(of("unused")["action"], "delete", "{preview}");
    assert!(
        of("unused")["reason"].as_str().unwrap().contains("keep_by_age"),
        "{preview}"
    );

    let run = cache
        .client
        .post(cache.url("/api/v1/retention/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), StatusCode::OK);
    let tags: Value = cache.get("/v2/up/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(
        tags["tags"],
        serde_json::json!(["unused", "used"]),
        "the upstream still lists both"
    );
    drop(upstream);
    let tags: Value = cache.get("/v2/up/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["used"]), "only the kept one is cached");
    cache.advance_clock(2 * DAY_MS);
    let gc = cache
        .client
        .post(cache.url("/api/v1/gc?dry_run=false"))
        .send()
        .await
        .unwrap();
    assert_eq!(gc.status(), StatusCode::OK);
    assert_eq!(cache.stored_blob(&unused_layer).await, None, "its blob is collected");
    assert!(
        cache.stored_blob(&sha256(&used.layers[0])).await.is_none(),
        "never fetched, never stored"
    );
    assert_eq!(
        manifest_of(&cache, "/v2/up/team/app/manifests/used").await.1,
        used.digest
    );
}

#[tokio::test]
async fn the_inventory_lists_cached_images_with_their_upstream_and_an_admin_can_evict_one() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 2).await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    cache.push_image("team/local", "v1", 1).await;
    manifest_of(&cache, "/v2/up/team/app/manifests/v1").await;
    manifest_of(&cache, "/v2/up/team/app/manifests/v1").await;
    // Pull counts are written about once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed: Value = cache.get("/v1/images?provenance=mirrored").await.json().await.unwrap();
    let images = listed["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "{listed}");
    let cached = &images[0];
    assert_eq!(cached["repository"], "up/team/app", "{cached}");
    assert_eq!(cached["provenance"], "mirrored", "{cached}");
    assert_eq!(cached["pushed_by"], "up", "the upstream it came from: {cached}");
    assert_eq!(cached["pull_count"], 2, "{cached}");
    assert!(cached["last_pulled_at"].is_string(), "{cached}");
    assert!(cached["total_size"].as_u64().unwrap() > 0, "{cached}");

    let evict = |path: String| {
        let client = cache.client.clone();
        let url = cache.url(&path);
        async move { client.delete(url).send().await.unwrap().status() }
    };
    assert_eq!(
        evict(format!("/api/v1/proxy/cache/team/local@{}", image.digest)).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        evict(format!("/api/v1/proxy/cache/up/team/app@{}", image.digest)).await,
        StatusCode::NO_CONTENT
    );
    let listed: Value = cache.get("/v1/images?provenance=mirrored").await.json().await.unwrap();
    assert_eq!(listed["images"].as_array().unwrap().len(), 0, "{listed}");
    // Evicted, not refused: the next pull fetches it again.
    assert_eq!(
        manifest_of(&cache, "/v2/up/team/app/manifests/v1").await.1,
        image.digest
    );
}

#[tokio::test]
async fn preload_fills_the_cache_once_and_a_second_run_fetches_nothing() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 2).await;
    let (amd, arm) = (Image::random(1), Image::random(1));
    let platforms = [
        serde_json::json!({ "os": "linux", "architecture": "amd64" }),
        serde_json::json!({ "os": "linux", "architecture": "arm64" }),
    ];
    upstream
        .push_index("team/multi", "1", &[amd.clone(), arm.clone()], &platforms)
        .await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    let list = cache.data_dir().join("preload.txt");
    std::fs::write(
        &list,
        format!(
            "# edge images\nup/team/app:v1\nupstream.test/team/multi:1 linux/arm64\nup/team/app@{}\n",
            image.digest
        ),
    )
    .unwrap();
    let list = list.display().to_string();
    let (ok, _, err) = cache.cli(&["cache", "preload", &list], "");
    assert!(ok, "{err}");
    assert!(err.contains("preloaded 3 images (0 failed)"), "{err}");
    // app: config + 2 layers; multi's arm64 child: config + 1 layer.
    assert!(err.contains("5 blobs fetched"), "{err}");
    let (ok, _, err) = cache.cli(&["cache", "preload", &list], "");
    assert!(ok, "{err}");
    assert!(err.contains("0 blobs fetched"), "a second run fetches nothing: {err}");

    drop(upstream);
    let (status, digest, _) = manifest_of(&cache, "/v2/up/team/multi/manifests/1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        manifest_of(&cache, &format!("/v2/up/team/multi/manifests/{}", arm.digest))
            .await
            .1,
        arm.digest
    );
    assert!(!digest.is_empty());
    for blob in [&arm.config, &arm.layers[0], &image.config, &image.layers[1]] {
        let (status, bytes) = blob_of(&cache, &format!("/v2/up/team/multi/blobs/{}", sha256(blob))).await;
        let repo_of_blob = if status == StatusCode::OK { "multi" } else { "app" };
        if repo_of_blob == "app" {
            let (status, bytes) = blob_of(&cache, &format!("/v2/up/team/app/blobs/{}", sha256(blob))).await;
            assert_eq!((status, bytes.unwrap()), (StatusCode::OK, blob.clone()));
        } else {
            assert_eq!(bytes.unwrap(), *blob);
        }
    }
    // The amd64 child was left out.
    assert_eq!(
        blob_of(&cache, &format!("/v2/up/team/multi/blobs/{}", sha256(&amd.layers[0])))
            .await
            .0,
        StatusCode::BAD_GATEWAY
    );
    let images: Value = cache.get("/v1/images?provenance=snapshot").await.json().await.unwrap();
    assert!(
        !images["images"].as_array().unwrap().is_empty(),
        "preloaded images are snapshots: {images}"
    );

    let (ok, _, err) = cache.cli(&["cache", "preload", "/nonexistent/list"], "");
    assert!(!ok && err.contains("/nonexistent/list"), "{err}");
}

/// Over `proxy.max_bytes` the least recently used cached images go; a full
/// cache still takes every pull.
#[tokio::test]
async fn a_cache_over_its_size_cap_evicts_the_least_recently_used() {
    let upstream = TestApp::start();
    // Layers of one size: with random sizes two big images could outweigh
    // three small ones and the cap below would hold all three.
    let images: Vec<Image> = ["a", "b", "c"]
        .map(|_| Image::of_layers(vec![random_bytes(3000)]))
        .into_iter()
        .collect();
    for (image, tag) in images.iter().zip(["a", "b", "c"]) {
        image.push(&upstream.client, &upstream.base, "team/app", tag).await;
    }
    let biggest = images
        .iter()
        .map(|i| i.manifest.len() + i.config.len() + i.layers[0].len())
        .max()
        .unwrap();
    // Room for two images, not three.
    let config = format!(
        "[gc]\ninterval_secs = 0\ngrace_secs = 60\n{}",
        caching(
            &upstream,
            &format!("max_bytes = {}\nevict_interval_secs = 0", biggest * 2 + 100)
        )
    );
    let cache = TestApp::start_with_clock(&config);
    for tag in ["a", "b", "c"] {
        manifest_of(&cache, &format!("/v2/up/team/app/manifests/{tag}")).await;
        cache.advance_clock(60_000);
    }
    // `a` is used again: `b` is now the least recently used.
    manifest_of(&cache, "/v2/up/team/app/manifests/a").await;
    let report: Value = cache
        .client
        .post(cache.url("/api/v1/proxy/evict"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["images_evicted"], 1, "{report}");
    drop(upstream);
    let tags: Value = cache.get("/v2/up/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["a", "c"]), "{report}");
    let report: Value = cache
        .client
        .post(cache.url("/api/v1/proxy/evict"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["images_evicted"], 0, "under the cap now: {report}");
}

/// The whole cache travels to a disconnected site: export from a cache,
/// import into a fresh registry without upstreams, every digest the same,
/// the upstream still recorded.
#[tokio::test]
async fn a_cache_exported_and_imported_elsewhere_keeps_every_digest_and_its_upstream() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 2).await;
    let cache = TestApp::start_with_config(&caching(&upstream, ""), &[]);
    let list = cache.data_dir().join("list.txt");
    std::fs::write(&list, "up/team/app:v1\n").unwrap();
    let (ok, _, err) = cache.cli(&["cache", "preload", &list.display().to_string()], "");
    assert!(ok, "{err}");
    let archive = cache.data_dir().join("cache.tar").display().to_string();
    let (ok, _, err) = cache.cli(&["export", "--all", &archive], "");
    assert!(ok, "{err}");
    drop(upstream);

    let site = TestApp::start();
    let (ok, _, err) = site.cli(&["import", &archive], "");
    assert!(ok, "{err}");
    let (status, digest, body) = manifest_of(&site, "/v2/up/team/app/manifests/v1").await;
    assert_eq!(
        (status, digest.as_str(), body),
        (StatusCode::OK, image.digest.as_str(), image.manifest.clone())
    );
    for blob in image.layers.iter().chain([&image.config]) {
        let (status, bytes) = blob_of(&site, &format!("/v2/up/team/app/blobs/{}", sha256(blob))).await;
        assert_eq!((status, bytes.unwrap()), (StatusCode::OK, blob.clone()));
    }
    let images: Value = site.get("/v1/images?repo=up/team/app").await.json().await.unwrap();
    let imported = &images["images"][0];
    assert_eq!(imported["provenance"], "snapshot", "{images}");
    assert_eq!(imported["pushed_by"], "up", "the upstream is kept: {images}");
}

/// Grants apply to remote repositories as to local ones: pull on `up/**`
/// is what lets someone fill the cache; nobody may push there.
#[tokio::test]
async fn grants_decide_who_may_pull_through_and_nobody_pushes_to_a_cache() {
    use crate::auth_harness::{add_user, bearer_client, grant, token};
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let cache = TestApp::start_with_clock(&format!("[auth]\nmode = \"token\"\n{}", caching(&upstream, "")));
    add_user(&cache, "reader", "reader-password-1", false);
    add_user(&cache, "other", "other-password-1", false);
    add_user(&cache, "root", "root-password-1", true);
    grant(&cache, "user:reader", "up/**", "pull");
    grant(&cache, "user:other", "team/**", "pull");

    let scope = ["repository:up/team/app:pull,push"];
    let reader = bearer_client(&token(&cache, Some(("reader", "reader-password-1")), &scope).await);
    let resp = reader
        .get(cache.url("/v2/up/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest"), image.digest);

    let other = bearer_client(&token(&cache, Some(("other", "other-password-1")), &scope).await);
    let resp = other
        .get(cache.url("/v2/up/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no grant on up/**");

    let root = bearer_client(&token(&cache, Some(("root", "root-password-1")), &scope).await);
    let resp = root
        .post(cache.url("/v2/up/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 403, "DENIED").await;
    assert!(body.to_string().contains("upstream up"), "even an admin: {body}");
}

/// `proxy.offline`: an air-gapped edge serves what it holds and never
/// contacts an upstream (a running one included).
#[tokio::test]
async fn an_offline_cache_serves_what_it_holds_and_asks_no_upstream() {
    let upstream = ReferenceRegistry::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let other = upstream.push_image("team/app", "v2", 1).await;
    let online = TestApp::start_with_config(
        &format!("[[proxy.upstreams]]\nname = \"up\"\nurl = \"{}\"\n", upstream.base()),
        &[],
    );
    let list = online.data_dir().join("list.txt");
    std::fs::write(&list, "up/team/app:v1\n").unwrap();
    let (ok, _, err) = online.cli(&["cache", "preload", &list.display().to_string()], "");
    assert!(ok, "{err}");
    let archive = online.data_dir().join("edge.tar").display().to_string();
    let (ok, _, err) = online.cli(&["export", "--all", &archive], "");
    assert!(ok, "{err}");

    let edge = TestApp::start_with_config(
        &format!(
            "[proxy]\noffline = true\nfreshness_secs = 0\n[[proxy.upstreams]]\nname = \"up\"\nurl = \"{}\"\n",
            upstream.base()
        ),
        &[],
    );
    let (ok, _, err) = edge.cli(&["import", &archive], "");
    assert!(ok, "{err}");
    let before = upstream.requests().await.len();
    assert_eq!(manifest_of(&edge, "/v2/up/team/app/manifests/v1").await.1, image.digest);
    let (status, bytes) = blob_of(&edge, &format!("/v2/up/team/app/blobs/{}", sha256(&image.layers[0]))).await;
    assert_eq!((status, bytes.unwrap()), (StatusCode::OK, image.layers[0].clone()));
    assert_error(edge.get("/v2/up/team/app/manifests/v2").await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(
        edge.get(&format!("/v2/up/team/app/blobs/{}", sha256(&other.layers[0])))
            .await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let tags: Value = edge.get("/v2/up/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    // The upstream's log: only the requests() marker of this count came since.
    let after: Vec<_> = upstream.requests().await.into_iter().skip(before).collect();
    assert!(
        after.iter().all(|r| !r.path().contains("team/app")),
        "the upstream was contacted: {after:?}"
    );
}

/// A client that goes away mid-blob does not stop the fetch: the others
/// get every byte, and the blob is stored once.
#[tokio::test]
async fn a_client_that_goes_away_does_not_cancel_the_fetch_for_the_others() {
    let upstream = ReferenceRegistry::start();
    let layer = random_bytes(32 << 20);
    let image = Image::of_layers(vec![layer.clone()]);
    image
        .push_as(
            &upstream.client(),
            &upstream.base(),
            "team/big",
            "v1",
            BlobUpload::PostThenPut,
        )
        .await;
    let cache = TestApp::start_with_config(
        &format!("[[proxy.upstreams]]\nname = \"up\"\nurl = \"{}\"\n", upstream.base()),
        &[],
    );
    let digest = sha256(&layer);
    let url = cache.url(&format!("/v2/up/team/big/blobs/{digest}"));
    let mut quitter = cache.client.get(&url).send().await.unwrap();
    let first = quitter.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    let stayer = {
        let client = cache.client.clone();
        let url = url.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap() })
    };
    drop(quitter);
    assert_eq!(sha256(&stayer.await.unwrap()), digest);
    assert_eq!(upstream.hits("GET", &format!("/v2/team/big/blobs/{digest}")).await, 1);
    assert_eq!(
        eventually_stored(&cache, &digest).await.map(|b| b.len()),
        Some(layer.len())
    );
}

#[tokio::test]
async fn a_blob_the_registry_holds_under_another_name_is_fetched_for_a_remote_repository_not_lost() {
    let upstream = TestApp::start();
    let image = upstream.push_image("team/app", "v1", 1).await;
    let layer = &image.layers[0];
    let digest = sha256(layer);
    // Two upstream names for one registry, and the layer pushed locally too.
    let config = format!(
        "{}\n[[proxy.upstreams]]\nname = \"other\"\nurl = \"{}\"\n",
        caching(&upstream, ""),
        upstream.base
    );
    let cache = TestApp::start_with_config(&config, &[]);
    cache.push_blob("mine/app", layer).await;

    for (path, fetches) in [
        // Held locally only: this upstream must show it has the bytes.
        ("/v2/up/team/app", 1),
        // Cached through `up` already: another name of the same upstream links it.
        ("/v2/upstream.test/team/app", 1),
        // Cached through another upstream: fetched from this one.
        ("/v2/other/team/app", 2),
    ] {
        let (status, body) = blob_of(&cache, &format!("{path}/blobs/{digest}")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body.as_deref(), Ok(&layer[..]), "{path}");
        assert_eq!(counters(&cache).await["blob_fetches"], fetches, "{path}");
        eventually_stored(&cache, &digest).await;
        // And again, now from the cache.
        let (status, body) = blob_of(&cache, &format!("{path}/blobs/{digest}")).await;
        assert_eq!(
            (status, body.as_deref()),
            (StatusCode::OK, Ok(&layer[..])),
            "{path} again"
        );
        assert_eq!(counters(&cache).await["blob_fetches"], fetches, "{path} again");
    }

    // An upstream that lacks the blob gets no loan of the local copy.
    let empty = TestApp::start();
    let config = format!(
        "[proxy]\n[[proxy.upstreams]]\nname = \"empty\"\nurl = \"{}\"\n",
        empty.base
    );
    let cache = TestApp::start_with_config(&config, &[]);
    cache.push_blob("mine/app", layer).await;
    let (status, _) = blob_of(&cache, &format!("/v2/empty/team/app/blobs/{digest}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
