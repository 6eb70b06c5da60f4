//! The stress test: clients push images, indexes and referrers (blobs by
//! every upload method, reused across images and repositories), move and
//! delete tags, delete manifests and blobs, all at once, while retention
//! runs and garbage collections run in a loop, for a bounded number of
//! requests. A model of what each acknowledged (2xx) request made true is
//! checked against the server during the run and at its end: every tag the
//! model says exists resolves to the acknowledged bytes, every blob a live
//! manifest uses pulls byte for byte, a last collection leaves exactly the
//! blobs that what is still reachable uses, and `berth fsck` finds nothing.
//!
//! Each client owns its tags (`w<N>-…`) and its manifests (every image has a
//! config of its own), so its model is exact although all clients share the
//! repositories and a pool of blobs. Retention applies to the repositories
//! under `stress/ret/`; a tag that goes missing there must have been deleted
//! by a lifecycle run, as the audit log says, after its last push.
//!
//! A manifest `PUT` that is refused because the collector took a blob after
//! its upload (or after a `HEAD` said it was there) is not acknowledged: it
//! is counted, not failed. Any 5xx, any other unexpected answer and any lost
//! acknowledged data fails the test with the seed of the clients' choices
//! (what the server answers, and so the interleaving, may differ in a rerun).
//!
//! `BERTH_STRESS_OPS` is the number of requests (default [`CI_OPS`]),
//! `BERTH_STRESS_SEED` the seed (default: random, printed) and
//! `BERTH_STRESS_WORKERS` the number of clients (default 4).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::harness::{
    resolve, scaleout, sha256, with_query, TestApp, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
    OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};

/// Requests in a run when `BERTH_STRESS_OPS` is not set: what keeps the test
/// under a minute per backend on two cores in a debug build. S3 + PostgreSQL
/// is the slower backend: every collection lists the bucket's 256 blob
/// folders, and the test's S3 server walks its whole bucket for each list.
const CI_OPS: u64 = 1_500;
/// The grace period of the collector. Short, so that what the clients free
/// is collected while they run; the clock is the real one during the run
/// (an offset clock moved ahead would make the files of uploads in flight
/// look old), and is moved past the grace period only once the clients
/// have stopped.
const GRACE_SECS: u64 = 1;
/// Repositories without a retention policy: the model of their tags is exact.
const PLAIN_REPOS: [&str; 3] = ["stress/a", "stress/b", "stress/deep/c"];
/// Repositories under the retention policy `stress/ret/**`.
const RETAINED_REPOS: [&str; 2] = ["stress/ret/x", "stress/ret/y"];
const KEEP_LAST: u32 = 6;
/// Tag names per client, so that pushes land on existing tags (tag moves).
const TAGS_PER_WORKER: u32 = 10;
/// Untagged manifests a client remembers per repository, to tag again.
const UNTAGGED_KEPT: usize = 8;
/// Runs of at least ten times this many requests report their progress.
const PROGRESS_MIN: u64 = 1_000;
/// Blobs shared by all clients, images and repositories.
const POOL_BLOBS: usize = 40;
/// Every manifest type a pulling client accepts.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";

type Outcome<T = ()> = Result<T, String>;

// ---------------------------------------------------------------------------
// Settings and what all tasks share.

struct Settings {
    ops: u64,
    seed: u64,
    workers: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str| -> Option<u64> {
            let value = std::env::var(name).ok().filter(|v| !v.is_empty())?;
            Some(
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
            )
        };
        Settings {
            ops: number("BERTH_STRESS_OPS").unwrap_or(CI_OPS),
            seed: number("BERTH_STRESS_SEED").unwrap_or_else(rand::random),
            workers: usize::try_from(number("BERTH_STRESS_WORKERS").unwrap_or(4)).expect("a worker count"),
        }
    }
}

/// Counters of what happened, printed at the end.
#[derive(Debug, Default)]
struct Stats {
    images_acked: AtomicU64,
    indexes_acked: AtomicU64,
    referrers_acked: AtomicU64,
    tag_moves_acked: AtomicU64,
    tags_deleted: AtomicU64,
    manifests_deleted: AtomicU64,
    blobs_deleted: AtomicU64,
    blob_deletes_already_unlinked: AtomicU64,
    abandoned_blobs: AtomicU64,
    pulls: AtomicU64,
    referrer_listings: AtomicU64,
    uploads_monolithic: AtomicU64,
    uploads_post_put: AtomicU64,
    uploads_chunked: AtomicU64,
    mounts: AtomicU64,
    mounts_refused: AtomicU64,
    head_hits: AtomicU64,
    /// Manifest `PUT`s refused with `MANIFEST_BLOB_UNKNOWN`: a blob or child
    /// was collected between its upload and the `PUT` (not acknowledged).
    puts_refused: AtomicU64,
    /// Of those, pushes that had skipped an upload because `HEAD` said 200.
    puts_refused_after_head: AtomicU64,
    /// Pushes given up after a refusal and a retry.
    pushes_given_up: AtomicU64,
    /// Tags of the retained repositories found deleted by retention.
    tags_gone_by_retention: AtomicU64,
    collections: AtomicU64,
    collections_by_cli: AtomicU64,
    dry_runs: AtomicU64,
    blobs_collected: AtomicU64,
    manifests_collected: AtomicU64,
    retention_runs: AtomicU64,
    retention_runs_by_cli: AtomicU64,
    retention_tags_deleted: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    app: Arc<TestApp>,
    target: u64,
    /// Requests sent (and CLI runs made) so far.
    ops: AtomicU64,
    /// The same count, for the loops that run every so many requests.
    progress: watch::Sender<u64>,
    /// The clients are done (or one failed): the loops stop.
    done: AtomicBool,
    failures: Mutex<Vec<String>>,
    stats: Stats,
    /// For collections and retention runs, which take longer than the
    /// harness client waits on a large S3 bucket.
    lifecycle_client: reqwest::Client,
    started: Instant,
}

impl Shared {
    fn count(&self) {
        let n = self.ops.fetch_add(1, Ordering::Relaxed) + 1;
        self.progress.send_replace(n);
        // A long run says how far it got, every tenth of the way.
        if self.target >= 10 * PROGRESS_MIN && n.is_multiple_of(self.target / 10) {
            eprintln!(
                "stress: {n} requests after {:.0} s",
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Whether a client may start another operation.
    fn budget_left(&self) -> bool {
        !self.done.load(Ordering::Relaxed) && self.ops.load(Ordering::Relaxed) < self.target
    }

    fn fail(&self, why: String) {
        self.failures.lock().expect("failures lock").push(why);
        self.finish();
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
        self.progress.send_modify(|_| {});
    }

    fn url(&self, path: &str) -> String {
        self.app.url(path)
    }

    fn client(&self) -> &reqwest::Client {
        &self.app.client
    }

    /// Sends a request, counting it; a 5xx or no answer at all is an error.
    async fn send(&self, request: RequestBuilder, what: &str) -> Outcome<Response> {
        self.count();
        let resp = request.send().await.map_err(|e| format!("{what}: no answer: {e}"))?;
        if resp.status().is_server_error() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("{what}: {status} {body}"));
        }
        Ok(resp)
    }

    /// Waits until `n` more requests were sent; false once the run is over.
    async fn wait_for_requests(&self, n: u64) -> bool {
        let until = self.ops.load(Ordering::Relaxed).saturating_add(n);
        let mut progress = self.progress.subscribe();
        let _ = progress
            .wait_for(|ops| *ops >= until || self.done.load(Ordering::Relaxed))
            .await;
        !self.done.load(Ordering::Relaxed)
    }
}

/// The status and OCI error code of an answer, and its body for messages.
async fn status_and_code(resp: Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code, text)
}

/// Fails unless `resp` has status `want`.
async fn expect(resp: Response, want: u16, what: &str) -> Outcome<Response> {
    if resp.status().as_u16() == want {
        return Ok(resp);
    }
    let (status, _, text) = status_and_code(resp).await;
    Err(format!("{what}: {status} instead of {want}: {text}"))
}

fn location(base: &str, resp: &Response, what: &str) -> Outcome<String> {
    let value = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("{what}: no Location header"))?;
    Ok(resolve(base, value))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Fails unless `bytes` are the content `digest` names, of `size` bytes.
fn check_content(bytes: &[u8], digest: &str, size: usize, what: &str) -> Outcome {
    if bytes.len() != size || sha256(bytes) != digest {
        return Err(format!(
            "{what}: {} bytes hashing to {} instead of the acknowledged {size} bytes of {digest}",
            bytes.len(),
            sha256(bytes)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// What the clients push.

#[derive(Clone)]
struct Blob {
    bytes: Arc<Vec<u8>>,
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256(&bytes),
            bytes: Arc::new(bytes),
        }
    }

    fn random(rng: &mut StdRng, min: usize, max: usize) -> Blob {
        let mut bytes = vec![0u8; rng.random_range(min..=max)];
        rng.fill_bytes(&mut bytes);
        Blob::new(bytes)
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// A manifest as pushed: its bytes, and what it refers to.
struct Built {
    digest: String,
    media_type: &'static str,
    bytes: Vec<u8>,
    /// The config and layers (deduplicated).
    blobs: Vec<Blob>,
    /// The blobs no other manifest uses: safe to delete once this is gone.
    own_blobs: Vec<Blob>,
    /// The images an index lists, pushed by digest before it.
    children: Vec<Arc<Built>>,
    subject: Option<String>,
}

impl Built {
    fn new(
        media_type: &'static str,
        body: &Value,
        blobs: Vec<Blob>,
        own_blobs: Vec<Blob>,
        children: Vec<Arc<Built>>,
    ) -> Built {
        let bytes = serde_json::to_vec(body).expect("manifest JSON");
        let mut unique: Vec<Blob> = Vec::new();
        for blob in blobs {
            if !unique.iter().any(|b| b.digest == blob.digest) {
                unique.push(blob);
            }
        }
        Built {
            digest: sha256(&bytes),
            media_type,
            subject: body["subject"]["digest"].as_str().map(str::to_string),
            bytes,
            blobs: unique,
            own_blobs,
            children,
        }
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// An image of one to three layers, each from the shared pool or new; its
/// config is its own (`nonce`), so no other client pushes the same manifest.
fn new_image(rng: &mut StdRng, pool: &[Blob], docker: bool, nonce: &str) -> Built {
    let (media_type, config_type, layer_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    };
    let mut own = Vec::new();
    let layers: Vec<Blob> = (0..rng.random_range(1..=3))
        .map(|_| {
            if rng.random_bool(0.5) {
                pool.choose(rng).expect("a pool").clone()
            } else {
                let blob = Blob::random(rng, 200, 8192);
                own.push(blob.clone());
                blob
            }
        })
        .collect();
    let config = Blob::new(
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| &l.digest).collect::<Vec<_>>() },
            "config": { "Labels": { "nonce": nonce } },
        }))
        .expect("config JSON"),
    );
    own.push(config.clone());
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(config_type),
        "layers": layers.iter().map(|l| l.descriptor(layer_type)).collect::<Vec<_>>(),
    });
    let blobs = std::iter::once(config).chain(layers).collect();
    Built::new(media_type, &body, blobs, own, Vec::new())
}

/// An index (OCI or Docker manifest list) over two new images.
fn new_index(rng: &mut StdRng, pool: &[Blob], docker: bool, nonce: &str) -> Built {
    let children: Vec<Arc<Built>> = ["amd64", "arm64"]
        .iter()
        .map(|arch| Arc::new(new_image(rng, pool, docker, &format!("{nonce}-{arch}"))))
        .collect();
    let media_type = if docker { DOCKER_MANIFEST_LIST } else { OCI_INDEX };
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": children.iter().zip(["amd64", "arm64"]).map(|(child, arch)| {
            let mut d = child.descriptor();
            d["platform"] = json!({ "architecture": arch, "os": "linux" });
            d
        }).collect::<Vec<_>>(),
    });
    Built::new(media_type, &body, Vec::new(), Vec::new(), children)
}

/// A signature or SBOM of `subject`: the empty config and a payload of its own.
fn new_referrer(rng: &mut StdRng, subject: &Built, empty: &Blob) -> Built {
    let payload = Blob::random(rng, 64, 1024);
    let artifact_type = if rng.random_bool(0.5) { SIGNATURE } else { SBOM };
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(OCI_EMPTY),
        "layers": [payload.descriptor("application/octet-stream")],
        "subject": subject.descriptor(),
    });
    Built::new(
        OCI_MANIFEST,
        &body,
        vec![empty.clone(), payload.clone()],
        vec![payload],
        Vec::new(),
    )
}

// ---------------------------------------------------------------------------
// A client's model of its own tags and manifests in one repository.

struct Tagged {
    digest: String,
    /// When the `PUT` that set the tag was sent (wall clock, ms).
    sent_ms: i64,
}

struct Entry {
    built: Arc<Built>,
    /// Pushed to be tagged (an image or index), as opposed to an index's
    /// child or a referrer, which live through their parent.
    top: bool,
    /// Bumped whenever this manifest stops being live: what was bound to an
    /// earlier epoch (children, referrers) may have been collected since.
    epoch: u64,
    /// The index listing this child, or the subject of this referrer, and
    /// its epoch when this was acknowledged.
    parent: Option<(String, u64)>,
}

/// A tag of a retained repository that went missing: it must have been
/// deleted by a lifecycle run after `sent_ms`, with this digest.
struct Gone {
    repo: &'static str,
    tag: String,
    digest: String,
    sent_ms: i64,
}

struct RepoModel {
    name: &'static str,
    /// Under a retention policy: tags may go at any time.
    retained: bool,
    tags: BTreeMap<String, Tagged>,
    manifests: HashMap<String, Entry>,
}

impl RepoModel {
    fn tagged(&self) -> HashSet<String> {
        self.tags.values().map(|t| t.digest.clone()).collect()
    }

    /// Whether the server must still serve `digest` here (in a plain repository).
    fn live(&self, digest: &str) -> bool {
        let Some(entry) = self.manifests.get(digest) else {
            return false;
        };
        if entry.top {
            return self.tags.values().any(|t| t.digest == digest);
        }
        match &entry.parent {
            Some((parent, epoch)) => self.manifests.get(parent).is_some_and(|p| p.epoch == *epoch) && self.live(parent),
            None => false,
        }
    }

    /// Bumps the epoch of every manifest that was tagged before a change and is not now.
    fn untagged_since(&mut self, before: &HashSet<String>) {
        let now = self.tagged();
        for digest in before.difference(&now) {
            if let Some(entry) = self.manifests.get_mut(digest) {
                entry.epoch += 1;
            }
        }
    }

    fn set_tag(&mut self, tag: &str, built: &Arc<Built>, sent_ms: i64) {
        let before = self.tagged();
        self.manifests.entry(built.digest.clone()).or_insert_with(|| Entry {
            built: built.clone(),
            top: true,
            epoch: 0,
            parent: None,
        });
        self.tags.insert(
            tag.to_string(),
            Tagged {
                digest: built.digest.clone(),
                sent_ms,
            },
        );
        self.untagged_since(&before);
        // The server checked the children when it took the index.
        let epoch = self.manifests[&built.digest].epoch;
        for child in &built.children {
            self.bind(child, &built.digest, epoch);
        }
        self.forget_old_untagged();
    }

    fn bind(&mut self, built: &Arc<Built>, parent: &str, epoch: u64) {
        let entry = self.manifests.entry(built.digest.clone()).or_insert_with(|| Entry {
            built: built.clone(),
            top: false,
            epoch: 0,
            parent: None,
        });
        entry.parent = Some((parent.to_string(), epoch));
    }

    fn remove_tag(&mut self, tag: &str) -> Option<Tagged> {
        let before = self.tagged();
        let removed = self.tags.remove(tag);
        self.untagged_since(&before);
        removed
    }

    /// Drops a manifest and what lives through it from the model; returns
    /// their own blobs and the tags that named it.
    fn forget(&mut self, digest: &str) -> (Vec<Blob>, Vec<(String, Tagged)>) {
        let before = self.tagged();
        let names: Vec<String> = self
            .tags
            .iter()
            .filter(|(_, t)| t.digest == digest)
            .map(|(name, _)| name.clone())
            .collect();
        let tags = names
            .into_iter()
            .filter_map(|name| self.tags.remove(&name).map(|t| (name, t)))
            .collect();
        self.untagged_since(&before);
        let mut blobs = Vec::new();
        let mut todo = vec![digest.to_string()];
        while let Some(d) = todo.pop() {
            if let Some(entry) = self.manifests.remove(&d) {
                blobs.extend(entry.built.own_blobs.iter().cloned());
                todo.extend(
                    self.manifests
                        .iter()
                        .filter(|(_, e)| e.parent.as_ref().is_some_and(|(p, _)| *p == d))
                        .map(|(child, _)| child.clone()),
                );
            }
        }
        (blobs, tags)
    }

    /// Keeps the model small: beyond [`UNTAGGED_KEPT`] untagged images and
    /// indexes, some (the first by digest) are no longer tagged again: the
    /// collector takes them.
    fn forget_old_untagged(&mut self) {
        let tagged = self.tagged();
        let mut untagged: Vec<String> = self
            .manifests
            .iter()
            .filter(|(d, e)| e.top && !tagged.contains(*d))
            .map(|(d, _)| d.clone())
            .collect();
        untagged.sort();
        while untagged.len() > UNTAGGED_KEPT {
            let digest = untagged.remove(0);
            // Forgotten, not deleted: its blobs are not offered to
            // `delete_blob`, which deletes only what a deletion freed.
            self.forget(&digest);
        }
    }

    fn top_manifests(&self) -> Vec<Arc<Built>> {
        let mut all: Vec<Arc<Built>> = self
            .manifests
            .values()
            .filter(|e| e.top)
            .map(|e| e.built.clone())
            .collect();
        all.sort_by(|a, b| a.digest.cmp(&b.digest));
        all
    }

    /// What the server must serve here: live manifests (plain repositories only).
    fn expected(&self) -> Vec<&Entry> {
        let mut live: Vec<&Entry> = self
            .manifests
            .values()
            .filter(|e| !self.retained && self.live(&e.built.digest))
            .collect();
        live.sort_by(|a, b| a.built.digest.cmp(&b.built.digest));
        live
    }
}

// ---------------------------------------------------------------------------
// A client.

struct Worker {
    id: usize,
    rng: StdRng,
    shared: Arc<Shared>,
    pool: Arc<Vec<Blob>>,
    empty: Blob,
    repos: Vec<RepoModel>,
    /// Blobs this client may delete: nothing live uses them.
    deletable: Vec<(usize, Blob)>,
    gone: Vec<Gone>,
    serial: u64,
}

/// How a manifest `PUT` was answered.
enum Put {
    Acked,
    /// 400 `MANIFEST_BLOB_UNKNOWN`: something it refers to was collected.
    Refused,
}

impl Worker {
    fn new(id: usize, seed: u64, shared: Arc<Shared>, pool: Arc<Vec<Blob>>, empty: Blob) -> Worker {
        let repos = PLAIN_REPOS
            .iter()
            .map(|name| (*name, false))
            .chain(RETAINED_REPOS.iter().map(|name| (*name, true)))
            .map(|(name, retained)| RepoModel {
                name,
                retained,
                tags: BTreeMap::new(),
                manifests: HashMap::new(),
            })
            .collect();
        Worker {
            id,
            rng: StdRng::seed_from_u64(seed.wrapping_add(id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            shared,
            pool,
            empty,
            repos,
            deletable: Vec::new(),
            gone: Vec::new(),
            serial: 0,
        }
    }

    async fn run(mut self) -> Worker {
        while self.shared.budget_left() {
            if let Err(why) = self.step().await {
                self.shared.fail(format!("client {}: {why}", self.id));
            }
        }
        self
    }

    async fn step(&mut self) -> Outcome {
        let r = self.rng.random_range(0..self.repos.len());
        match self.rng.random_range(0..100) {
            0..28 => self.push_image(r).await,
            28..35 => self.push_index(r).await,
            35..42 => self.push_referrer(r).await,
            42..52 => self.move_tag(r).await,
            52..60 => self.delete_tag(r).await,
            60..66 => self.delete_manifest(r).await,
            66..71 => self.delete_blob().await,
            71..75 => self.abandon_upload(r).await,
            75..95 => self.pull(r).await,
            _ => self.list_referrers(r).await,
        }
    }

    fn nonce(&mut self) -> String {
        self.serial += 1;
        format!("w{}-{}-{}", self.id, self.serial, self.rng.next_u64())
    }

    fn pick_tag(&mut self) -> String {
        format!("w{}-{}", self.id, self.rng.random_range(0..TAGS_PER_WORKER))
    }

    fn name(&self, r: usize) -> &'static str {
        self.repos[r].name
    }

    // -- uploads --------------------------------------------------------

    /// Makes the repository hold `blob` as a client does: (half of the time,
    /// where `may_skip`) a `HEAD` first and nothing more when it is there;
    /// else one `POST`, `POST` then `PUT`, chunks, or a mount from a
    /// repository or from anywhere. Returns whether a `HEAD` made the upload
    /// unnecessary.
    async fn ensure_blob(&mut self, repo: &str, blob: &Blob, may_skip: bool) -> Outcome<bool> {
        let s = self.shared.clone();
        let digest = &blob.digest;
        let head_first = may_skip && self.rng.random_bool(0.5);
        let way = self.rng.random_range(0..5);
        if head_first {
            let what = format!("HEAD {repo} blob {digest}");
            let resp = s
                .send(s.client().head(s.url(&format!("/v2/{repo}/blobs/{digest}"))), &what)
                .await?;
            match resp.status().as_u16() {
                200 => {
                    let length = resp.headers().get("content-length").and_then(|v| v.to_str().ok());
                    if length != Some(blob.bytes.len().to_string().as_str()) {
                        return Err(format!("{what}: Content-Length {length:?}, not {}", blob.bytes.len()));
                    }
                    bump(&s.stats.head_hits);
                    return Ok(true);
                }
                404 => {}
                other => return Err(format!("{what}: {other}")),
            }
        }
        let uploads = format!("/v2/{repo}/blobs/uploads/");
        match way {
            0 => {
                let what = format!("monolithic upload of {digest} to {repo}");
                let request = s
                    .client()
                    .post(s.url(&format!("{uploads}?digest={digest}")))
                    .header("content-type", "application/octet-stream")
                    .body(blob.bytes.to_vec());
                expect(s.send(request, &what).await?, 201, &what).await?;
                bump(&s.stats.uploads_monolithic);
            }
            1 => {
                let url = self.start_upload(repo).await?;
                self.finish_upload(&url, blob, None, "POST-PUT").await?;
                bump(&s.stats.uploads_post_put);
            }
            2 => {
                let url = self.start_upload(repo).await?;
                self.upload_chunks(url, blob).await?;
                bump(&s.stats.uploads_chunked);
            }
            _ => {
                let from = (way == 3).then(|| *self.repos.choose(&mut self.rng).map(|r| &r.name).expect("repos"));
                let query = match from {
                    Some(from) => format!("?mount={digest}&from={from}"),
                    None => format!("?mount={digest}"),
                };
                let what = format!("mount of {digest} into {repo} from {from:?}");
                let resp = s
                    .send(s.client().post(s.url(&format!("{uploads}{query}"))), &what)
                    .await?;
                match resp.status().as_u16() {
                    201 => bump(&s.stats.mounts),
                    // Nothing to mount: upload through the session it opened.
                    202 => {
                        let url = location(&s.app.base, &resp, &what)?;
                        self.finish_upload(&url, blob, None, "mount fallback").await?;
                        bump(&s.stats.mounts_refused);
                    }
                    _ => {
                        let (status, _, text) = status_and_code(resp).await;
                        return Err(format!("{what}: {status} {text}"));
                    }
                }
            }
        }
        Ok(false)
    }

    async fn start_upload(&self, repo: &str) -> Outcome<String> {
        let s = &self.shared;
        let what = format!("POST upload to {repo}");
        let resp = s
            .send(s.client().post(s.url(&format!("/v2/{repo}/blobs/uploads/"))), &what)
            .await?;
        let resp = expect(resp, 202, &what).await?;
        location(&s.app.base, &resp, &what)
    }

    /// `PUT ?digest=`, with the whole blob or the part from `tail` on.
    async fn finish_upload(&self, url: &str, blob: &Blob, tail: Option<usize>, how: &str) -> Outcome {
        let s = &self.shared;
        let what = format!("{how}: PUT finishing the upload of {}", blob.digest);
        let mut request = s.client().put(with_query(url, &format!("digest={}", blob.digest)));
        match tail {
            Some(from) if from < blob.bytes.len() => {
                request = request
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{from}-{}", blob.bytes.len() - 1))
                    .body(blob.bytes[from..].to_vec());
            }
            Some(_) => {}
            None => {
                request = request
                    .header("content-type", "application/octet-stream")
                    .body(blob.bytes.to_vec());
            }
        }
        expect(s.send(request, &what).await?, 201, &what).await?;
        Ok(())
    }

    /// `PATCH`es of random sizes, then a `PUT` with or without the last chunk.
    async fn upload_chunks(&mut self, mut url: String, blob: &Blob) -> Outcome {
        let s = self.shared.clone();
        let size = self.rng.random_range(512..=4096);
        let chunks: Vec<(usize, usize)> = (0..blob.bytes.len())
            .step_by(size)
            .map(|start| (start, (start + size).min(blob.bytes.len())))
            .collect();
        let tail_in_put = chunks.len() > 1 && self.rng.random_bool(0.5);
        let patched = if tail_in_put { chunks.len() - 1 } else { chunks.len() };
        for &(start, end) in &chunks[..patched] {
            let what = format!("PATCH {start}-{} of {}", end - 1, blob.digest);
            let request = s
                .client()
                .patch(&url)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{start}-{}", end - 1))
                .body(blob.bytes[start..end].to_vec());
            let resp = expect(s.send(request, &what).await?, 202, &what).await?;
            url = location(&s.app.base, &resp, &what)?;
        }
        let from = chunks.get(patched).map_or(blob.bytes.len(), |(start, _)| *start);
        self.finish_upload(&url, blob, Some(from), "chunked").await
    }

    /// Makes the repository hold every one of `blobs` ([`Worker::ensure_blob`]);
    /// returns whether a `HEAD` made an upload unnecessary.
    async fn ensure_blobs(&mut self, repo: &str, blobs: &[Blob], may_skip: bool) -> Outcome<bool> {
        let mut skipped = false;
        for blob in blobs {
            skipped |= self.ensure_blob(repo, blob, may_skip).await?;
        }
        Ok(skipped)
    }

    async fn put_manifest(&self, repo: &str, reference: &str, built: &Built) -> Outcome<Put> {
        let s = &self.shared;
        let what = format!("PUT {repo}:{reference} ({})", built.digest);
        let request = s
            .client()
            .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", built.media_type)
            .body(built.bytes.clone());
        let resp = s.send(request, &what).await?;
        let headers = resp.headers().clone();
        let (status, code, text) = status_and_code(resp).await;
        match (status, code.as_str()) {
            (201, _) => {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
                if header("docker-content-digest").as_deref() != Some(built.digest.as_str()) {
                    return Err(format!("{what}: acknowledged as {:?}", header("docker-content-digest")));
                }
                if built.subject.is_some() && header("oci-subject") != built.subject {
                    return Err(format!("{what}: OCI-Subject {:?}", header("oci-subject")));
                }
                Ok(Put::Acked)
            }
            (400, "MANIFEST_BLOB_UNKNOWN") => {
                bump(&s.stats.puts_refused);
                Ok(Put::Refused)
            }
            _ => Err(format!("{what}: {status} {text}")),
        }
    }

    /// Pushes `built` (children first) and its manifest under `reference`,
    /// as a client does: blobs, then the manifest; when the manifest is
    /// refused, everything once more. Returns whether it was acknowledged.
    async fn push(&mut self, r: usize, built: &Arc<Built>, reference: &str) -> Outcome<bool> {
        let repo = self.name(r);
        for attempt in 0..2 {
            let mut skipped = false;
            let mut children_ok = true;
            for child in &built.children {
                skipped |= self.ensure_blobs(repo, &child.blobs, attempt == 0).await?;
                if let Put::Refused = self.put_manifest(repo, &child.digest, child).await? {
                    children_ok = false;
                    break;
                }
            }
            if !children_ok {
                continue;
            }
            skipped |= self.ensure_blobs(repo, &built.blobs, attempt == 0).await?;
            match self.put_manifest(repo, reference, built).await? {
                Put::Acked => return Ok(true),
                Put::Refused if skipped => bump(&self.shared.stats.puts_refused_after_head),
                Put::Refused => {}
            }
        }
        bump(&self.shared.stats.pushes_given_up);
        Ok(false)
    }

    // -- operations -----------------------------------------------------

    async fn push_image(&mut self, r: usize) -> Outcome {
        let nonce = self.nonce();
        let docker = self.rng.random_bool(0.3);
        let built = Arc::new(new_image(&mut self.rng, &self.pool, docker, &nonce));
        self.push_tagged(r, built, true).await
    }

    async fn push_index(&mut self, r: usize) -> Outcome {
        let nonce = self.nonce();
        let docker = self.rng.random_bool(0.3);
        let built = Arc::new(new_index(&mut self.rng, &self.pool, docker, &nonce));
        self.push_tagged(r, built, false).await
    }

    async fn push_tagged(&mut self, r: usize, built: Arc<Built>, image: bool) -> Outcome {
        let tag = self.pick_tag();
        let sent_ms = now_ms();
        if self.push(r, &built, &tag).await? {
            self.repos[r].set_tag(&tag, &built, sent_ms);
            let stats = &self.shared.stats;
            bump(if image {
                &stats.images_acked
            } else {
                &stats.indexes_acked
            });
        }
        Ok(())
    }

    /// A signature or SBOM by digest, of a live image of a plain repository.
    async fn push_referrer(&mut self, r: usize) -> Outcome {
        let model = &self.repos[r];
        let subjects: Vec<Arc<Built>> = model
            .top_manifests()
            .into_iter()
            .filter(|b| !model.retained && model.live(&b.digest))
            .collect();
        let Some(subject) = subjects.choose(&mut self.rng).cloned() else {
            return self.push_image(r).await;
        };
        let built = Arc::new(new_referrer(&mut self.rng, &subject, &self.empty));
        if self.push(r, &built, &built.digest.clone()).await? {
            let model = &mut self.repos[r];
            let epoch = model.manifests[&subject.digest].epoch;
            model.bind(&built, &subject.digest, epoch);
            bump(&self.shared.stats.referrers_acked);
        }
        Ok(())
    }

    /// Tags an image or index the client pushed before (tagged or not) by
    /// putting its manifest again, as `crane tag` does.
    async fn move_tag(&mut self, r: usize) -> Outcome {
        let Some(built) = self.repos[r].top_manifests().choose(&mut self.rng).cloned() else {
            return self.push_image(r).await;
        };
        let tag = self.pick_tag();
        let sent_ms = now_ms();
        if let Put::Acked = self.put_manifest(self.name(r), &tag, &built).await? {
            self.repos[r].set_tag(&tag, &built, sent_ms);
            bump(&self.shared.stats.tag_moves_acked);
        }
        Ok(())
    }

    async fn delete_tag(&mut self, r: usize) -> Outcome {
        let tags: Vec<String> = self.repos[r].tags.keys().cloned().collect();
        let Some(tag) = tags.choose(&mut self.rng).cloned() else {
            return self.push_image(r).await;
        };
        let s = self.shared.clone();
        let repo = self.name(r);
        let what = format!("DELETE {repo}:{tag}");
        let resp = s
            .send(s.client().delete(s.url(&format!("/v2/{repo}/manifests/{tag}"))), &what)
            .await?;
        let (status, code, text) = status_and_code(resp).await;
        let tagged = self.repos[r].remove_tag(&tag).expect("the tag was in the model");
        match (status, code.as_str()) {
            (202, _) => bump(&s.stats.tags_deleted),
            (404, "MANIFEST_UNKNOWN") if self.repos[r].retained => self.retention_took(r, tag, tagged),
            _ => return Err(format!("{what}: {status} {text}; the tag was acknowledged")),
        }
        Ok(())
    }

    fn retention_took(&mut self, r: usize, tag: String, tagged: Tagged) {
        bump(&self.shared.stats.tags_gone_by_retention);
        self.gone.push(Gone {
            repo: self.name(r),
            tag,
            digest: tagged.digest,
            sent_ms: tagged.sent_ms,
        });
    }

    /// Deletes an image or index by digest (its tags go with it); its own
    /// blobs may then be deleted too.
    async fn delete_manifest(&mut self, r: usize) -> Outcome {
        let Some(built) = self.repos[r].top_manifests().choose(&mut self.rng).cloned() else {
            return self.push_image(r).await;
        };
        let s = self.shared.clone();
        let repo = self.name(r);
        let what = format!("DELETE {repo}@{}", built.digest);
        let resp = s
            .send(
                s.client()
                    .delete(s.url(&format!("/v2/{repo}/manifests/{}", built.digest))),
                &what,
            )
            .await?;
        let (status, code, text) = status_and_code(resp).await;
        let model = &self.repos[r];
        let (live, retained) = (model.live(&built.digest), model.retained);
        let (blobs, tags) = self.repos[r].forget(&built.digest);
        match (status, code.as_str()) {
            (202, _) => bump(&s.stats.manifests_deleted),
            // Retention took it (with its tags), or the collector took it untagged.
            (404, "MANIFEST_UNKNOWN") if retained || !live => {
                for (tag, tagged) in tags {
                    self.retention_took(r, tag, tagged);
                }
            }
            _ => return Err(format!("{what}: {status} {text}; live: {live}")),
        }
        self.deletable.extend(blobs.into_iter().map(|b| (r, b)));
        Ok(())
    }

    /// Unlinks a blob that nothing of this client uses any more.
    async fn delete_blob(&mut self) -> Outcome {
        if self.deletable.is_empty() {
            let r = self.rng.random_range(0..self.repos.len());
            return self.abandon_upload(r).await;
        }
        let i = self.rng.random_range(0..self.deletable.len());
        let (r, blob) = self.deletable.swap_remove(i);
        let s = self.shared.clone();
        let repo = self.name(r);
        let what = format!("DELETE {repo} blob {}", blob.digest);
        let resp = s
            .send(
                s.client().delete(s.url(&format!("/v2/{repo}/blobs/{}", blob.digest))),
                &what,
            )
            .await?;
        let (status, code, text) = status_and_code(resp).await;
        match (status, code.as_str()) {
            (202, _) => bump(&s.stats.blobs_deleted),
            // The collector unlinked it first.
            (404, "BLOB_UNKNOWN") => bump(&s.stats.blob_deletes_already_unlinked),
            _ => return Err(format!("{what}: {status} {text}")),
        }
        Ok(())
    }

    /// Uploads blobs no manifest will use: an interrupted push.
    async fn abandon_upload(&mut self, r: usize) -> Outcome {
        let repo = self.name(r);
        for _ in 0..self.rng.random_range(1..=2) {
            let blob = Blob::random(&mut self.rng, 200, 6000);
            self.ensure_blob(repo, &blob, false).await?;
            bump(&self.shared.stats.abandoned_blobs);
            if self.rng.random_bool(0.5) {
                self.deletable.push((r, blob));
            }
        }
        Ok(())
    }

    /// Pulls a tag and one blob (or child) of it, as a client does; in a
    /// plain repository it must be there, byte for byte.
    async fn pull(&mut self, r: usize) -> Outcome {
        let tags: Vec<(String, String)> = self.repos[r]
            .tags
            .iter()
            .map(|(name, t)| (name.clone(), t.digest.clone()))
            .collect();
        let Some((tag, digest)) = tags.choose(&mut self.rng).cloned() else {
            return self.push_image(r).await;
        };
        let built = self.repos[r].manifests[&digest].built.clone();
        let retained = self.repos[r].retained;
        let repo = self.name(r);
        let s = self.shared.clone();
        bump(&s.stats.pulls);
        let Some(bytes) = get_manifest(&s, repo, &tag, retained).await? else {
            let tagged = self.repos[r].remove_tag(&tag).expect("the tag was in the model");
            self.retention_took(r, tag, tagged);
            return Ok(());
        };
        check_content(&bytes, &built.digest, built.bytes.len(), &format!("GET {repo}:{tag}"))?;
        let part = built.children.choose(&mut self.rng).cloned().unwrap_or(built);
        if part.digest != digest {
            let Some(bytes) = get_manifest(&s, repo, &part.digest, retained).await? else {
                return Ok(());
            };
            check_content(
                &bytes,
                &part.digest,
                part.bytes.len(),
                &format!("GET child {repo}@{}", part.digest),
            )?;
        }
        if let Some(blob) = part.blobs.choose(&mut self.rng) {
            get_blob(&s, repo, blob, retained).await?;
        }
        Ok(())
    }

    /// Lists the referrers of a live image: every live signature and SBOM is there.
    async fn list_referrers(&mut self, r: usize) -> Outcome {
        let model = &self.repos[r];
        let mut subjects: Vec<&String> = model
            .manifests
            .values()
            .filter_map(|e| e.parent.as_ref().filter(|_| e.built.subject.is_some()).map(|(p, _)| p))
            .filter(|p| model.live(p))
            .collect();
        subjects.sort();
        subjects.dedup();
        let Some(subject) = subjects.choose(&mut self.rng).map(|s| s.to_string()) else {
            return self.pull(r).await;
        };
        let expected: BTreeSet<String> = model
            .manifests
            .values()
            .filter(|e| e.built.subject.as_deref() == Some(subject.as_str()) && model.live(&e.built.digest))
            .map(|e| e.built.digest.clone())
            .collect();
        let listed = referrers(&self.shared, self.name(r), &subject).await?;
        bump(&self.shared.stats.referrer_listings);
        let missing: Vec<&String> = expected.iter().filter(|d| !listed.contains(*d)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "referrers of {}@{subject}: {missing:?} acknowledged but not listed",
                self.name(r)
            ));
        }
        Ok(())
    }
}

/// `GET` of a manifest; `None` for a 404 where `may_be_gone`.
async fn get_manifest(s: &Shared, repo: &str, reference: &str, may_be_gone: bool) -> Outcome<Option<Vec<u8>>> {
    let separator = if reference.contains(':') { '@' } else { ':' };
    let what = format!("GET {repo}{separator}{reference}");
    let request = s
        .client()
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", ACCEPT);
    let resp = s.send(request, &what).await?;
    match resp.status().as_u16() {
        200 => {
            let bytes = resp.bytes().await.map_err(|e| format!("{what}: body: {e}"))?;
            Ok(Some(bytes.to_vec()))
        }
        404 if may_be_gone => Ok(None),
        _ => {
            let (status, _, text) = status_and_code(resp).await;
            Err(format!("{what}: {status} {text}; it was acknowledged"))
        }
    }
}

/// `GET` of a blob, which must hash to its digest; a 404 only where `may_be_gone`.
async fn get_blob(s: &Shared, repo: &str, blob: &Blob, may_be_gone: bool) -> Outcome {
    let what = format!("GET {repo} blob {}", blob.digest);
    let resp = s
        .send(
            s.client().get(s.url(&format!("/v2/{repo}/blobs/{}", blob.digest))),
            &what,
        )
        .await?;
    match resp.status().as_u16() {
        200 => {
            let bytes = resp.bytes().await.map_err(|e| format!("{what}: body: {e}"))?;
            check_content(&bytes, &blob.digest, blob.bytes.len(), &what)
        }
        404 if may_be_gone => Ok(()),
        _ => {
            let (status, _, text) = status_and_code(resp).await;
            Err(format!("{what}: {status} {text}; a live manifest uses it"))
        }
    }
}

/// The digests the referrers API lists for `subject`.
async fn referrers(s: &Shared, repo: &str, subject: &str) -> Outcome<BTreeSet<String>> {
    let what = format!("GET referrers of {repo}@{subject}");
    let resp = s
        .send(s.client().get(s.url(&format!("/v2/{repo}/referrers/{subject}"))), &what)
        .await?;
    let resp = expect(resp, 200, &what).await?;
    let index: Value = resp.json().await.map_err(|e| format!("{what}: {e}"))?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| format!("{what}: no manifests in {index}"))?;
    Ok(manifests
        .iter()
        .filter_map(|d| d["digest"].as_str().map(str::to_string))
        .collect())
}

// ---------------------------------------------------------------------------
// The lifecycle loops.

/// Collections every so many requests: the admin API, a dry run now and
/// then, and `berth gc` in a process of its own every fifth time.
async fn collector(s: Arc<Shared>, every: u64) -> Outcome {
    let mut round = 0u64;
    while s.wait_for_requests(every).await {
        round += 1;
        let report = if round.is_multiple_of(5) {
            let app = s.app.clone();
            s.count();
            bump(&s.stats.collections_by_cli);
            tokio::task::spawn_blocking(move || {
                let (ok, out, err) = app.cli(&["gc", "--json"], "");
                if !ok {
                    return Err(format!("berth gc failed: {err}"));
                }
                serde_json::from_str::<Value>(out.trim()).map_err(|e| format!("berth gc printed {out:?}: {e}"))
            })
            .await
            .map_err(|e| format!("the berth gc task: {e}"))??
        } else {
            let dry_run = round.is_multiple_of(7);
            let what = format!("POST /api/v1/gc?dry_run={dry_run}");
            let resp = s
                .send(
                    s.lifecycle_client.post(s.url(&format!("/api/v1/gc?dry_run={dry_run}"))),
                    &what,
                )
                .await?;
            let resp = expect(resp, 200, &what).await?;
            resp.json().await.map_err(|e| format!("{what}: {e}"))?
        };
        if report["dry_run"] == true {
            bump(&s.stats.dry_runs);
            continue;
        }
        bump(&s.stats.collections);
        let n = |key: &str| {
            report[key]
                .as_u64()
                .ok_or_else(|| format!("no {key} in the GC report {report}"))
        };
        s.stats
            .blobs_collected
            .fetch_add(n("blobs_removed")?, Ordering::Relaxed);
        s.stats
            .manifests_collected
            .fetch_add(n("manifests_removed")?, Ordering::Relaxed);
    }
    Ok(())
}

/// Retention runs every so many requests: the admin API, and `berth
/// retention run` every fourth time.
async fn retention(s: Arc<Shared>, every: u64) -> Outcome {
    let mut round = 0u64;
    while s.wait_for_requests(every).await {
        round += 1;
        if round.is_multiple_of(4) {
            let app = s.app.clone();
            s.count();
            bump(&s.stats.retention_runs_by_cli);
            tokio::task::spawn_blocking(move || {
                let (ok, _, err) = app.cli(&["retention", "run"], "");
                if ok {
                    Ok(())
                } else {
                    Err(format!("berth retention run failed: {err}"))
                }
            })
            .await
            .map_err(|e| format!("the berth retention run task: {e}"))??;
            continue;
        }
        let what = "POST /api/v1/retention/run";
        let resp = s
            .send(s.lifecycle_client.post(s.url("/api/v1/retention/run")), what)
            .await?;
        let resp = expect(resp, 200, what).await?;
        let body: Value = resp.json().await.map_err(|e| format!("{what}: {e}"))?;
        let deleted = body["summary"]["tags_deleted"]
            .as_u64()
            .ok_or_else(|| format!("{what}: no summary.tags_deleted in {body}"))?;
        bump(&s.stats.retention_runs);
        s.stats.retention_tags_deleted.fetch_add(deleted, Ordering::Relaxed);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The checks after the run.

/// The tags of `repo` whose names start with `prefix`, with the manifests they name.
async fn server_tags(s: &Shared, repo: &str, prefix: &str) -> Outcome<BTreeMap<String, Vec<u8>>> {
    let what = format!("GET {repo} tags");
    let resp = s
        .send(s.client().get(s.url(&format!("/v2/{repo}/tags/list?n=10000"))), &what)
        .await?;
    let listed: Vec<String> = match resp.status().as_u16() {
        200 => {
            let body: Value = resp.json().await.map_err(|e| format!("{what}: {e}"))?;
            body["tags"]
                .as_array()
                .map(|tags| tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        }
        // A repository nothing was ever pushed to.
        404 => Vec::new(),
        status => return Err(format!("{what}: {status}")),
    };
    let mut tags = BTreeMap::new();
    for tag in listed.into_iter().filter(|t| t.starts_with(prefix)) {
        let bytes = get_manifest(s, repo, &tag, false).await?.unwrap_or_default();
        tags.insert(tag, bytes);
    }
    Ok(tags)
}

/// Checks one client's model against the server; returns the tags of the
/// retained repositories that went since the client last looked.
async fn check_model(s: &Shared, worker: &Worker) -> Outcome<Vec<Gone>> {
    let prefix = format!("w{}-", worker.id);
    let mut gone = Vec::new();
    for model in &worker.repos {
        let repo = model.name;
        let on_server = server_tags(s, repo, &prefix).await?;
        for (tag, bytes) in &on_server {
            let tagged = model
                .tags
                .get(tag)
                .ok_or_else(|| format!("{repo}:{tag} is on the server but was deleted or never acknowledged"))?;
            let built = &model.manifests[&tagged.digest].built;
            check_content(bytes, &built.digest, built.bytes.len(), &format!("{repo}:{tag}"))?;
            // A retained repository: what is still tagged pulls whole.
            if model.retained {
                for child in &built.children {
                    let got = get_manifest(s, repo, &child.digest, false).await?.unwrap_or_default();
                    check_content(
                        &got,
                        &child.digest,
                        child.bytes.len(),
                        &format!("{repo}@{}", child.digest),
                    )?;
                    for blob in &child.blobs {
                        get_blob(s, repo, blob, false).await?;
                    }
                }
                for blob in &built.blobs {
                    get_blob(s, repo, blob, false).await?;
                }
            }
        }
        for (tag, tagged) in &model.tags {
            if on_server.contains_key(tag) {
                continue;
            }
            if !model.retained {
                return Err(format!("{repo}:{tag} ({}) was acknowledged and is gone", tagged.digest));
            }
            gone.push(Gone {
                repo,
                tag: tag.clone(),
                digest: tagged.digest.clone(),
                sent_ms: tagged.sent_ms,
            });
        }
        // Everything live in a plain repository: images, indexes, their
        // children, referrers of live subjects, and every blob they use.
        for entry in model.expected() {
            let built = &entry.built;
            let what = format!("{repo}@{}", built.digest);
            let bytes = get_manifest(s, repo, &built.digest, false).await?.unwrap_or_default();
            check_content(&bytes, &built.digest, built.bytes.len(), &what)?;
            for blob in &built.blobs {
                get_blob(s, repo, blob, false).await?;
            }
            if let Some(subject) = &built.subject {
                if !referrers(s, repo, subject).await?.contains(&built.digest) {
                    return Err(format!("{what}: a live referrer of {subject} is not listed"));
                }
            }
        }
    }
    Ok(gone)
}

/// The `tag.delete` entries of the audit log: target → (digest, when, who).
async fn tag_deletions(s: &Shared) -> Outcome<HashMap<String, Vec<(String, i64, String)>>> {
    let mut deletions: HashMap<String, Vec<(String, i64, String)>> = HashMap::new();
    let mut before: Option<i64> = None;
    loop {
        let query = before.map_or(String::new(), |id| format!("&before={id}"));
        let what = "GET /api/v1/audit";
        let resp = s
            .send(s.client().get(s.url(&format!("/api/v1/audit?limit=1000{query}"))), what)
            .await?;
        let body: Value = expect(resp, 200, what)
            .await?
            .json()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let entries = body["entries"].as_array().ok_or_else(|| format!("{what}: {body}"))?;
        let Some(last) = entries.last() else { break };
        before = Some(
            last["id"]
                .as_i64()
                .ok_or_else(|| format!("{what}: an entry without id: {last}"))?,
        );
        for entry in entries.iter().filter(|e| e["action"] == "tag.delete") {
            // The detail is JSON, stored as text.
            let detail: Value = match &entry["detail"] {
                Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
                other => other.clone(),
            };
            let (Some(target), Some(digest), Some(at_ms), Some(actor)) = (
                entry["target"].as_str(),
                detail["digest"].as_str(),
                entry["at_ms"].as_i64(),
                entry["actor"].as_str(),
            ) else {
                return Err(format!(
                    "{what}: a tag.delete entry without target, digest, time or actor: {entry}"
                ));
            };
            deletions
                .entry(target.to_string())
                .or_default()
                .push((digest.to_string(), at_ms, actor.to_string()));
        }
    }
    Ok(deletions)
}

/// What a client pulling everything the server lists reaches: manifests by
/// repository and the blobs they use, every one checked against its digest.
#[derive(Default)]
struct Reached {
    manifests: BTreeSet<(String, String)>,
    blobs: BTreeSet<String>,
}

/// Pulls every tag of every repository, the children of every index and the
/// referrers of every manifest reached, and every blob of those.
async fn pull_everything(s: &Shared) -> Outcome<Reached> {
    let what = "GET /v2/_catalog";
    let resp = s.send(s.client().get(s.url("/v2/_catalog?n=1000")), what).await?;
    let catalog: Value = expect(resp, 200, what)
        .await?
        .json()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let repos: Vec<String> = catalog["repositories"]
        .as_array()
        .ok_or_else(|| format!("{what}: {catalog}"))?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let mut reached = Reached::default();
    for repo in &repos {
        let mut todo: Vec<String> = server_tags(s, repo, "")
            .await?
            .into_values()
            .map(|bytes| sha256(&bytes))
            .collect();
        while let Some(digest) = todo.pop() {
            if !reached.manifests.insert((repo.clone(), digest.clone())) {
                continue;
            }
            let where_ = format!("{repo}@{digest}");
            let bytes = get_manifest(s, repo, &digest, false).await?.unwrap_or_default();
            if sha256(&bytes) != digest {
                return Err(format!("{where_}: the bytes served hash to {}", sha256(&bytes)));
            }
            let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{where_}: not JSON: {e}"))?;
            for child in manifest["manifests"].as_array().into_iter().flatten() {
                todo.extend(child["digest"].as_str().map(str::to_string));
            }
            let blobs = manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(std::iter::once(&manifest["config"]).filter(|c| c.is_object()));
            for blob in blobs {
                let (Some(d), Some(size)) = (blob["digest"].as_str(), blob["size"].as_u64()) else {
                    return Err(format!("{where_}: a descriptor without digest or size: {blob}"));
                };
                let what = format!("GET {repo} blob {d} of {digest}");
                let resp = s
                    .send(s.client().get(s.url(&format!("/v2/{repo}/blobs/{d}"))), &what)
                    .await?;
                let body = expect(resp, 200, &what)
                    .await?
                    .bytes()
                    .await
                    .map_err(|e| format!("{what}: {e}"))?;
                check_content(&body, d, usize::try_from(size).unwrap_or(usize::MAX), &what)?;
                reached.blobs.insert(d.to_string());
            }
            todo.extend(referrers(s, repo, &digest).await?);
        }
    }
    Ok(reached)
}

/// `berth fsck --json` on the data dir: its report, when it found nothing.
fn fsck_clean(app: &TestApp) -> Outcome<Value> {
    let (ok, out, err) = app.cli(&["fsck", "--json"], "");
    let report: Value =
        serde_json::from_str(out.trim()).map_err(|e| format!("berth fsck printed {out:?} ({err}): {e}"))?;
    if !ok || report["problems"] != json!([]) {
        return Err(format!("berth fsck found problems: {report}"));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_deletes_retention_and_gc_at_once_lose_nothing_acknowledged() {
    let settings = Settings::from_env();
    let backend = if scaleout() { "S3 + PostgreSQL" } else { "embedded" };
    eprintln!(
        "stress: seed {} (BERTH_STRESS_SEED), {} requests, {} clients, {backend}",
        settings.seed, settings.ops, settings.workers
    );
    let config = format!(
        "[gc]\ninterval_secs = 0\ngrace_secs = {GRACE_SECS}\n\
         [retention]\ninterval_secs = 0\n[retention.policies.\"stress/ret/**\"]\nkeep_last = {KEEP_LAST}\n\
         [lifecycle]\nexpiry_interval_secs = 0\n"
    );
    let app = Arc::new(TestApp::start_with_clock(&config));
    let (progress, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        app: app.clone(),
        target: settings.ops,
        ops: AtomicU64::new(0),
        progress,
        done: AtomicBool::new(false),
        failures: Mutex::default(),
        stats: Stats::default(),
        lifecycle_client: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .expect("an HTTP client"),
        started: Instant::now(),
    });

    let mut rng = StdRng::seed_from_u64(settings.seed);
    let pool: Arc<Vec<Blob>> = Arc::new((0..POOL_BLOBS).map(|_| Blob::random(&mut rng, 256, 16_384)).collect());
    let empty = Blob::new(b"{}".to_vec());
    // A collection every so many requests (about twenty in a CI run, fifty
    // in a long one), and a retention run a little less often.
    let every = (settings.ops / 20).clamp(100, 2_000);
    let started = Instant::now();
    let loops = [
        tokio::spawn(collector(shared.clone(), every)),
        tokio::spawn(retention(shared.clone(), every + every / 3)),
    ];
    let clients: Vec<_> = (0..settings.workers)
        .map(|id| {
            let worker = Worker::new(id, settings.seed, shared.clone(), pool.clone(), empty.clone());
            tokio::spawn(worker.run())
        })
        .collect();
    let mut workers = Vec::new();
    for client in clients {
        workers.push(client.await.expect("a client panicked"));
    }
    shared.finish();
    for job in loops {
        if let Err(why) = job.await.expect("a lifecycle loop panicked") {
            shared.fail(why);
        }
    }
    let elapsed = started.elapsed();
    let requests = shared.ops.load(Ordering::Relaxed);
    let stats = &shared.stats;
    eprintln!(
        "stress: {requests} requests in {:.1} s ({:.0}/s) on {backend}; {stats:#?}",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
    let seed = settings.seed;
    let failures = shared.failures.lock().expect("failures lock").clone();
    assert!(
        failures.is_empty(),
        "stress failed (the clients' choices: BERTH_STRESS_SEED={seed}):\n{}",
        failures.join("\n")
    );

    let verdict: Outcome = async {
        // Every client's acknowledged state, as it left it.
        let mut gone: Vec<Gone> = Vec::new();
        for worker in &mut workers {
            gone.append(&mut worker.gone);
            gone.extend(check_model(&shared, worker).await?);
        }
        // A tag of a retained repository that is missing went by a lifecycle
        // run, with the digest it had, after it was last pushed.
        let deletions = tag_deletions(&shared).await?;
        for g in &gone {
            let target = format!("{}:{}", g.repo, g.tag);
            let by_lifecycle = deletions.get(&target).into_iter().flatten().any(|(digest, at_ms, actor)| {
                *digest == g.digest && *at_ms >= g.sent_ms && actor != "gc"
            });
            if !by_lifecycle {
                return Err(format!(
                    "{target} ({}, pushed at {} ms) is gone, but no retention run deleted it after that: {:?}",
                    g.digest,
                    g.sent_ms,
                    deletions.get(&target)
                ));
            }
        }
        // Past the grace period, a collection leaves exactly the blobs of
        // what is still reachable, and all of that pulls whole.
        app.advance_clock(i64::try_from(GRACE_SECS).unwrap_or(0) * 1000 + 60_000);
        let what = "POST /api/v1/gc (after the run)";
        let resp = shared.send(shared.lifecycle_client.post(shared.url("/api/v1/gc")), what).await?;
        expect(resp, 200, what).await?;
        let reached = pull_everything(&shared).await?;
        for worker in &workers {
            for model in &worker.repos {
                for entry in model.expected() {
                    if !reached.manifests.contains(&(model.name.to_string(), entry.built.digest.clone())) {
                        return Err(format!(
                            "{}@{} is live but not reached from any tag after the last collection",
                            model.name, entry.built.digest
                        ));
                    }
                }
            }
        }
        let stored = app.stored_blobs().await;
        let lost: Vec<&String> = reached.blobs.difference(&stored).collect();
        let left: Vec<&String> = stored.difference(&reached.blobs).collect();
        if !lost.is_empty() || !left.is_empty() {
            return Err(format!(
                "after the last collection the store should hold exactly the reachable blobs: \
                 missing {lost:?}, unreferenced {left:?}"
            ));
        }
        let app = app.clone();
        tokio::task::spawn_blocking(move || fsck_clean(&app))
            .await
            .map_err(|e| format!("the fsck task: {e}"))??;
        eprintln!(
            "stress: after the run {} manifests and {} blobs reachable, all byte-exact; {} tags gone by retention, each in the audit log; fsck clean",
            reached.manifests.len(),
            reached.blobs.len(),
            gone.len()
        );
        Ok(())
    }
    .await;
    if let Err(why) = verdict {
        panic!("stress: {why} (the clients' choices: BERTH_STRESS_SEED={seed})");
    }
    // The run did what it says: the collector and retention took things
    // while clients pushed, and clients had their pushes acknowledged.
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert!(load(&stats.images_acked) > 0 && load(&stats.indexes_acked) > 0 && load(&stats.referrers_acked) > 0);
    assert!(
        load(&stats.blobs_collected) > 0,
        "the collector removed no blob during the run"
    );
    assert!(
        load(&stats.retention_tags_deleted) > 0,
        "retention deleted no tag during the run"
    );
}
