//! `berth migrate`: an embedded installation filled over HTTP is moved into a
//! fresh PostgreSQL database and S3 prefix, and a server on those serves
//! the same registry; a second run copies nothing; a damaged blob file is
//! reported, and what needs it is left out.
//!
//! Needs the servers that `BERTH_TEST_POSTGRES_URL` and `BERTH_TEST_S3_*`
//! name; skipped without them unless `BERTH_TEST_REQUIRE_SERVICES=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore as _;
use serde_json::{json, Value};
use sqlx::{Connection as _, PgConnection};
use tempfile::TempDir;

use crate::auth_harness::{access_of, add_user, basic, bearer_client, grant};
use crate::harness::*;

/// A scale-out configuration over a database and an S3 prefix of its own,
/// both removed when this is dropped.
struct Target {
    config: PathBuf,
    dir: TempDir,
    server: String,
    database: String,
    prefix: String,
}

fn service(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A client of the test bucket.
fn s3_client() -> AmazonS3 {
    let get = |n: &str| service(n).unwrap_or_else(|| panic!("{n} is set"));
    AmazonS3Builder::new()
        .with_endpoint(get("BERTH_TEST_S3_ENDPOINT"))
        .with_bucket_name(get("BERTH_TEST_S3_BUCKET"))
        .with_region(service("BERTH_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()))
        .with_access_key_id(get("BERTH_TEST_S3_ACCESS_KEY"))
        .with_secret_access_key(get("BERTH_TEST_S3_SECRET_KEY"))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("an S3 client of the test bucket")
}

/// A fresh target, or `None` (after saying why) when the test servers are not
/// there. `auth` is the target's `auth.mode`.
async fn target(auth: &str) -> Option<Target> {
    if std::env::var("BERTH_IT_BACKEND").is_ok_and(|b| b == "scaleout") {
        eprintln!("skipped: migrate moves an embedded installation; it runs in the embedded pass");
        return None;
    }
    let names = [
        "BERTH_TEST_POSTGRES_URL",
        "BERTH_TEST_S3_ENDPOINT",
        "BERTH_TEST_S3_BUCKET",
        "BERTH_TEST_S3_ACCESS_KEY",
        "BERTH_TEST_S3_SECRET_KEY",
    ];
    let missing: Vec<&str> = names.into_iter().filter(|n| service(n).is_none()).collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("BERTH_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "BERTH_TEST_REQUIRE_SERVICES=1 but {} not set (pg_test_start and s3_start export them)",
            missing.join(", ")
        );
        eprintln!("skipped: set {} to run the berth migrate tests", missing.join(", "));
        return None;
    }
    let get = |n: &str| service(n).expect("checked above");
    let server = get("BERTH_TEST_POSTGRES_URL");
    let tag = hex::encode(random_bytes(4));
    let database = format!("berth_migrate_{}_{tag}", std::process::id());
    let mut admin = PgConnection::connect(&server).await.expect("connecting to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .expect("creating the target database");
    admin.close().await.ok();
    let prefix = format!("mig/{tag}");
    let url = {
        // The server's URL with its database name replaced.
        let authority = server.find("://").map_or(0, |i| i + 3);
        let end = server[authority..]
            .find(['/', '?'])
            .map_or(server.len(), |i| authority + i);
        format!("{}/{database}", &server[..end])
    };
    let dir = tempfile::Builder::new().prefix("berth-migrate-").tempdir().unwrap();
    let config = dir.path().join("target.toml");
    let toml = format!(
        "[auth]\nmode = {auth:?}\n\n[meta]\nbackend = \"postgres\"\nurl = {url:?}\n\n[storage]\nbackend = \"s3\"\n\n\
         [storage.s3]\nendpoint = {:?}\nbucket = {:?}\nregion = {:?}\naccess_key_id = {:?}\n\
         secret_access_key = {:?}\nallow_http = true\nprefix = {prefix:?}\n",
        get("BERTH_TEST_S3_ENDPOINT"),
        get("BERTH_TEST_S3_BUCKET"),
        service("BERTH_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        get("BERTH_TEST_S3_ACCESS_KEY"),
        get("BERTH_TEST_S3_SECRET_KEY"),
    );
    std::fs::write(&config, toml).unwrap();
    Some(Target {
        config,
        dir,
        server,
        database,
        prefix,
    })
}

impl Drop for Target {
    fn drop(&mut self) {
        let (server, database, prefix) = (self.server.clone(), self.database.clone(), self.prefix.clone());
        // Drop runs outside async code (and when a test panicked): a thread
        // with a runtime of its own does the cleaning, and never panics.
        let cleaned = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server).await.map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| format!("dropping {database}: {e}"))?;
                admin.close().await.ok();
                let s3 = s3_client();
                let root = ObjectPath::parse(&prefix).map_err(|e| e.to_string())?;
                let keys = s3.list(Some(&root)).map_ok(|meta| meta.location).boxed();
                s3.delete_stream(keys)
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| format!("deleting {prefix}/ in the test bucket: {e}"))?;
                Ok(())
            })
        })
        .join();
        match cleaned {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: cleaning up the migration target failed: {e}"),
            Err(_) => eprintln!("warning: cleaning up the migration target panicked"),
        }
    }
}

impl Target {
    /// `berth ARGS --config TARGET` (an operator command on the target).
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = berth_command();
        cmd.args(args).arg("--config").arg(&self.config);
        cmd.stdout(Stdio::piped());
        cmd.output().expect("running berth")
    }

    /// `berth serve` on the target, with extra environment variables.
    fn serve(&self, envs: &[(&str, &str)]) -> Server {
        let mut cmd = berth_command();
        cmd.envs(envs.iter().copied());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"));
        spawn_server(cmd).unwrap_or_else(|f| panic!("the target server did not start: {f:?}"))
    }
}

/// `berth migrate --from DIR --to CONFIG --json`.
fn migrate_command(from: &Path, target: &Target) -> Command {
    let mut cmd = berth_command();
    cmd.arg("migrate")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(&target.config)
        .arg("--json");
    cmd.stdout(Stdio::piped());
    cmd
}

/// Runs migrate; returns (success, the JSON summary or Null, stderr).
fn migrate(from: &Path, target: &Target) -> (bool, Value, String) {
    let out = migrate_command(from, target).output().expect("running berth migrate");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), summary, stderr)
}

fn written(summary: &Value) -> u64 {
    summary["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["written"].as_u64().expect("written"))
        .sum()
}

fn table<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("no table {name} in {summary}"))
}

async fn json_of(client: &reqwest::Client, url: String) -> Value {
    let resp = client.get(&url).send().await.expect("GET");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {text:?}: {e}"))
}

async fn bytes_of(client: &reqwest::Client, url: String) -> Vec<u8> {
    let resp = client.get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), 200, "{url}");
    resp.bytes().await.expect("body").to_vec()
}

/// Everything a client sees of the registry except pulls' side effects:
/// repositories, tags with their digests, referrers and the inventory.
async fn view(client: &reqwest::Client, base: &str, referrers_of: &[(&str, &str)]) -> BTreeMap<String, Value> {
    let mut view = BTreeMap::new();
    let catalog = json_of(client, format!("{base}/v2/_catalog")).await;
    for repo in catalog["repositories"].as_array().expect("repositories") {
        let repo = repo.as_str().expect("name");
        let tags = json_of(client, format!("{base}/v2/{repo}/tags/list")).await;
        view.insert(format!("tags {repo}"), tags["tags"].clone());
    }
    view.insert("catalog".into(), catalog);
    for (repo, digest) in referrers_of {
        let list = json_of(client, format!("{base}/v2/{repo}/referrers/{digest}")).await;
        view.insert(format!("referrers {repo}@{digest}"), list);
    }
    // Last: the inventory (which writes the pulls held in memory first).
    let inventory = json_of(client, format!("{base}/v1/images?n=1000")).await;
    view.insert("inventory".into(), inventory);
    view
}

/// A digest for every tag of the view, by HEAD.
async fn tag_digests(client: &reqwest::Client, base: &str, view: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for (key, tags) in view {
        let Some(repo) = key.strip_prefix("tags ") else {
            continue;
        };
        for tag in tags.as_array().expect("tag list") {
            let tag = tag.as_str().expect("tag");
            let resp = client
                .head(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
                .send()
                .await
                .expect("HEAD");
            assert_eq!(resp.status(), 200, "{repo}:{tag}");
            digests.insert(
                format!("{repo}:{tag}"),
                header(&resp, "docker-content-digest").to_string(),
            );
        }
    }
    digests
}

/// Pushes an artifact about `subject` into `repo`; returns (digest, bytes, blobs).
async fn push_referrer(app: &TestApp, repo: &str, subject: &Value) -> (String, Vec<u8>, Vec<Vec<u8>>) {
    let empty = b"{}".to_vec();
    let payload = random_bytes(200);
    app.push_blob(repo, &empty).await;
    app.push_blob(repo, &payload).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": descriptor(OCI_EMPTY, &empty),
        "layers": [descriptor("application/octet-stream", &payload)],
        "subject": subject,
        "annotations": { "org.example.signed-by": "ci" },
    }))
    .unwrap();
    let digest = app
        .push_manifest(repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await;
    (digest, manifest, vec![empty, payload])
}

/// Every manifest (repository, bytes) and blob (repository, bytes) pushed.
#[derive(Default)]
struct Pushed {
    manifests: Vec<(String, Vec<u8>)>,
    blobs: Vec<(String, Vec<u8>)>,
}

impl Pushed {
    fn image(&mut self, repo: &str, image: &Image) {
        self.manifests.push((repo.into(), image.manifest.clone()));
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            self.blobs.push((repo.into(), blob.clone()));
        }
    }
}

#[tokio::test]
async fn an_embedded_registry_moves_to_postgres_and_s3_whole() {
    let Some(target) = target("token").await else { return };
    let app = TestApp::start();
    let mut pushed = Pushed::default();

    // Several repositories and images, tags with a suffix.
    for (repo, tag) in [
        ("library/alpine", "3.19"),
        ("library/alpine", "latest"),
        ("team/tools", "build-1--ttl-7d"),
    ] {
        let image = app.push_image(repo, tag, 2).await;
        pushed.image(repo, &image);
    }
    // A multi-arch index over two images.
    let (amd, arm) = (Image::random(1), Image::random(1));
    let index = app
        .push_index(
            "team/app",
            "multi",
            &[amd.clone(), arm.clone()],
            &[
                json!({"os": "linux", "architecture": "amd64"}),
                json!({"os": "linux", "architecture": "arm64"}),
            ],
        )
        .await;
    pushed.image("team/app", &amd);
    pushed.image("team/app", &arm);
    pushed.manifests.push(("team/app".into(), index.clone()));
    // A referrer whose subject is one of them.
    let (sig, sig_bytes, sig_blobs) = push_referrer(&app, "team/app", &amd.descriptor()).await;
    pushed.manifests.push(("team/app".into(), sig_bytes));
    pushed
        .blobs
        .extend(sig_blobs.into_iter().map(|b| ("team/app".to_string(), b)));
    // A repository with only a blob.
    let lonely = random_bytes(3000);
    app.push_blob("scratch/blob-only", &lonely).await;
    pushed.blobs.push(("scratch/blob-only".into(), lonely));

    // Pulls, so pull counts and times are not the defaults.
    for _ in 0..3 {
        let resp = app.get("/v2/library/alpine/manifests/3.19").await;
        assert_eq!(resp.status(), 200);
    }
    let resp = app
        .client
        .get(app.url("/v2/team/app/manifests/multi"))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Users, a grant, a robot, a retention policy (all in the audit log).
    add_user(&app, "alice", "alice-password-1", true);
    add_user(&app, "bob", "bob-password-22", false);
    grant(&app, "user:bob", "team/*", "push");
    let (ok, _, err) = app.cli(&["token", "create", "--name", "ci", "--grant", "team/**:push"], "");
    assert!(ok, "token create: {err}");
    let (ok, _, err) = app.cli(&["retention", "set", "team/**", "--keep-last", "5"], "");
    assert!(ok, "retention set: {err}");
    let audit = app.audit().await;
    assert!(audit.len() >= 4, "{audit:?}");

    let referrers_of = [("team/app", amd.digest.as_str())];
    let digests = tag_digests(&app.client, &app.base, &view(&app.client, &app.base, &[]).await).await;
    let before = view(&app.client, &app.base, &referrers_of).await;
    assert_eq!(digests["team/app:multi"], sha256(&index));
    let pulls: u64 = before["inventory"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pull_count"].as_u64().unwrap_or(0))
        .sum();
    assert!(pulls > 0, "pulls show in the inventory: {}", before["inventory"]);

    // While the server has the database open, migrate refuses to start.
    let (ok, _, stderr) = migrate(app.data_dir(), &target);
    assert!(!ok);
    assert!(stderr.contains("in use"), "{stderr}");

    let mut app = app;
    app.kill9();
    let source = app.data_dir().to_path_buf();

    // A first run killed early (if it is not done by then), then a full run.
    let mut first = migrate_command(&source, &target).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let _ = first.kill();
    let _ = first.wait();
    let (ok, summary, stderr) = migrate(&source, &target);
    assert!(ok, "migrate: {stderr}\n{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["blobs"]["failed"], 0, "{summary}");
    let blobs = &summary["blobs"];
    assert_eq!(
        blobs["copied"].as_u64().unwrap() + blobs["already_present"].as_u64().unwrap(),
        blobs["total"].as_u64().unwrap(),
        "{summary}"
    );
    assert!(blobs["total"].as_u64().unwrap() >= 12, "{summary}");
    assert_eq!(table(&summary, "repositories")["rows"], 4, "{summary}");
    assert_eq!(table(&summary, "users")["rows"], 2, "{summary}");
    assert!(summary["not_copied"].to_string().contains("uploads"), "{summary}");

    // Again: nothing new, and success.
    let (ok, again, stderr) = migrate(&source, &target);
    assert!(ok, "second migrate: {stderr}\n{again}");
    assert_eq!(again["blobs"]["copied"], 0, "{again}");
    assert_eq!(again["blobs"]["already_present"], again["blobs"]["total"], "{again}");
    assert_eq!(written(&again), 0, "{again}");

    // The operator commands see the users and the policy in the target.
    let users = target.cli(&["user", "list"]);
    let users = String::from_utf8_lossy(&users.stdout);
    assert!(users.contains("alice") && users.contains("bob"), "{users}");
    let policies = target.cli(&["retention", "show"]);
    let policies = String::from_utf8_lossy(&policies.stdout);
    assert!(policies.contains("team/**"), "{policies}");

    // A server on the target serves the same registry (seen without auth first).
    let server = target.serve(&[("BERTH_AUTH__MODE", "none")]);
    let base = server.base();
    let http = client();
    let after = view(&http, &base, &referrers_of).await;
    for (key, value) in &before {
        assert_eq!(after.get(key), Some(value), "{key} differs after the move");
    }
    assert_eq!(after.len(), before.len());
    let referrers = &after[&format!("referrers team/app@{}", amd.digest)];
    assert_eq!(referrers["manifests"][0]["digest"], sig, "{referrers}");
    assert_eq!(tag_digests(&http, &base, &after).await, digests);
    for (repo, manifest) in &pushed.manifests {
        let got = bytes_of(&http, format!("{base}/v2/{repo}/manifests/{}", sha256(manifest))).await;
        assert!(got == *manifest, "{repo}@{}: bytes differ", sha256(manifest));
    }
    for (repo, blob) in &pushed.blobs {
        let got = bytes_of(&http, format!("{base}/v2/{repo}/blobs/{}", sha256(blob))).await;
        assert_eq!(sha256(&got), sha256(blob), "{repo}");
    }
    let audit_after = json_of(&http, format!("{base}/api/v1/audit?limit=1000")).await;
    let entries = audit_after["entries"].as_array().expect("entries");
    for entry in &audit {
        assert!(entries.contains(entry), "audit entry {entry} came along");
    }
    drop(server);

    // With auth on, the users log in with the passwords they had.
    let server = target.serve(&[]);
    let base = server.base();
    let resp = http
        .get(format!(
            "{base}/v2/token?service=berth&scope=repository:team/app:push,pull"
        ))
        .header("authorization", basic("bob", "bob-password-22"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bob logs in");
    let token: Value = resp.json().await.unwrap();
    let access = access_of(token["token"].as_str().unwrap());
    assert!(access.to_string().contains("push"), "bob's grant came along: {access}");
    let resp = http
        .get(format!(
            "{base}/v2/token?service=berth&scope=repository:library/alpine:pull"
        ))
        .header("authorization", basic("alice", "alice-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "alice logs in");
    let token: Value = resp.json().await.unwrap();
    let alice = bearer_client(token["token"].as_str().unwrap());
    let resp = alice
        .get(format!("{base}/v2/library/alpine/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_damaged_blob_is_reported_and_what_needs_it_is_left_out() {
    let Some(target) = target("none").await else { return };
    let mut app = TestApp::start();
    let good = app.push_image("shop/web", "good", 1).await;
    let bad = app.push_image("shop/web", "bad", 2).await;
    let index = app
        .push_index(
            "shop/multi",
            "v1",
            &[bad.clone(), Image::random(1)],
            &[
                json!({"os": "linux", "architecture": "amd64"}),
                json!({"os": "linux", "architecture": "arm64"}),
            ],
        )
        .await;
    // Same length, other bytes: only the digest tells.
    let damaged = sha256(&bad.layers[1]);
    let hex = damaged.strip_prefix("sha256:").unwrap();
    let path = app.data_dir().join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    app.kill9();

    let (ok, summary, stderr) = migrate(app.data_dir(), &target);
    assert!(!ok, "a damaged blob fails the run: {summary}");
    assert!(stderr.contains(&damaged), "{stderr}");
    assert_eq!(summary["ok"], false);
    assert_eq!(summary["failed_blobs"][0]["digest"], damaged, "{summary}");
    assert!(
        summary["failed_blobs"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{summary}"
    );
    let left: Vec<(String, String)> = summary["manifests_left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["repository"].as_str().unwrap().into(),
                m["digest"].as_str().unwrap().into(),
            )
        })
        .collect();
    // The image in both repositories that use the blob, and the index over one.
    assert!(left.contains(&("shop/web".into(), bad.digest.clone())), "{left:?}");
    assert!(left.contains(&("shop/multi".into(), bad.digest.clone())), "{left:?}");
    assert!(left.contains(&("shop/multi".into(), sha256(&index))), "{left:?}");
    assert_eq!(left.len(), 3, "{left:?}");

    // Run again: the same report, still a failure, nothing new written.
    let (ok, again, _) = migrate(app.data_dir(), &target);
    assert!(!ok);
    assert_eq!(again["failed_blobs"], summary["failed_blobs"]);
    assert_eq!(written(&again), 0, "{again}");

    // The target serves what is whole and nothing that needs the blob.
    let server = target.serve(&[]);
    let base = server.base();
    let http = client();
    let status = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            http.get(&url)
                .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
                .send()
                .await
                .expect("GET")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("/v2/shop/web/manifests/good".into()).await, 200);
    assert_eq!(
        status(format!("/v2/shop/web/blobs/{}", sha256(&good.layers[0]))).await,
        200
    );
    assert_eq!(status("/v2/shop/web/manifests/bad".into()).await, 404);
    assert_eq!(status(format!("/v2/shop/web/manifests/{}", bad.digest)).await, 404);
    assert_eq!(status("/v2/shop/multi/manifests/v1".into()).await, 404);
    assert_eq!(status(format!("/v2/shop/web/blobs/{damaged}")).await, 404);
    drop(server);

    // Another installation cannot be merged into this one.
    let mut other = TestApp::start();
    other.push_image("elsewhere/x", "1", 1).await;
    other.kill9();
    let (ok, _, stderr) = migrate(other.data_dir(), &target);
    assert!(!ok);
    assert!(stderr.contains("does not merge"), "{stderr}");
}
