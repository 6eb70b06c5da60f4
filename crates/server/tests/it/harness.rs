//! The test harness: a real `berth` process on `127.0.0.1:0` over a temporary
//! data directory, and helpers that speak the distribution API to it.
//!
//! Tests go through the socket; nothing here reaches into the server's
//! crates, so what is tested is what a client sees. Where a test must look
//! at (or damage) the blob store itself, the `stored_*` helpers of
//! [`TestApp`] do it on the store's own layout, with a plain S3 client or the
//! file system.
//!
//! `BERTH_IT_BACKEND` picks the stores of every server: `embedded` (the
//! default: files and SQLite in the data directory) or `scaleout`: a
//! PostgreSQL database and an S3 bucket of its own per [`TestApp`], on the
//! servers that `BERTH_TEST_POSTGRES_URL` and `BERTH_TEST_S3_*` name
//! (`scripts/test` starts them).

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, PutPayload};
use rand::RngCore;
use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256, Sha512};
use sqlx::{Connection as _, PgConnection};
use tempfile::TempDir;

/// The test hook that offsets a `berth` process's clock by the milliseconds in a file.
pub const CLOCK_OFFSET_ENV: &str = "BERTH_TEST_CLOCK_OFFSET_FILE";
pub const DAY_MS: i64 = 86_400_000;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the `berth` binary under test.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// A `berth` command with no `BERTH_*` or `RUST_LOG` variables inherited from
/// the environment running the tests, so only what a test sets applies.
pub fn berth_command() -> Command {
    let mut cmd = Command::new(berth_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// A running server process whose stderr is drained by a thread.
pub struct Server {
    pub child: Child,
    /// The address from the `listening on` line, such as `127.0.0.1:41234`.
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// `http://ADDR`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a server failed to come up: its exit status (if it exited) and stderr.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

/// Spawns `cmd` and waits for its `listening on ADDR` log line.
pub fn spawn_server(mut cmd: Command) -> Result<Server, StartFailure> {
    let mut child = cmd.spawn().expect("spawning the berth binary");
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<String>();
    let sink = log.clone();
    // Keeps reading until the process exits, so the pipe never fills up.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = listening_addr(&line) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
            let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => Ok(Server { child, addr, log }),
        Err(_) => {
            let status = wait_timeout(&mut child, Duration::from_secs(5));
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Give the reader thread a moment to collect the last lines.
            std::thread::sleep(Duration::from_millis(50));
            let stderr = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Err(StartFailure { status, stderr })
        }
    }
}

/// The address in a `listening on 127.0.0.1:PORT` log line (JSON or text).
fn listening_addr(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.contains(':').then_some(addr)
}

/// Waits up to `timeout` for the process to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `berth serve` process on a free port over its own temporary data dir
/// (and, in scale-out mode, its own database and S3 bucket).
pub struct TestApp {
    /// `http://127.0.0.1:PORT`; changes on restart.
    pub base: String,
    pub client: reqwest::Client,
    data: TempDir,
    envs: Vec<(String, String)>,
    config: Option<PathBuf>,
    server: Option<Server>,
    /// Declared after `server`: fields drop in order, so the server is
    /// stopped before its database and objects are removed.
    stores: Stores,
}

impl TestApp {
    /// A server not started yet, over a new temporary data dir (in `parent`,
    /// or the system's temp dir) holding `toml` as its configuration file
    /// when there is one.
    fn prepare(parent: Option<&Path>, toml: Option<&str>, envs: &[(&str, &str)]) -> TestApp {
        let mut builder = tempfile::Builder::new();
        builder.prefix("berth-it-");
        let data = match parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .expect("creating a temp data dir");
        let config = toml.map(|toml| {
            let config = data.path().join("berth.toml");
            std::fs::write(&config, toml).expect("writing the config file");
            config
        });
        let stores = Stores::fresh();
        // The test's own variables come last, so they win.
        let envs = stores
            .envs()
            .into_iter()
            .chain(envs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        TestApp {
            base: String::new(),
            client: client(),
            data,
            envs,
            config,
            server: None,
            stores,
        }
    }

    /// Starts a server with `toml` as its configuration file (written into the
    /// data directory) and extra environment variables.
    pub fn start_with_config(toml: &str, envs: &[(&str, &str)]) -> TestApp {
        let mut app = TestApp::prepare(None, Some(toml), envs);
        app.launch();
        app
    }

    /// Runs `berth ARGS --data-dir DATA [--config FILE]` with `stdin` as its
    /// input; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let (ok, stdout, stderr) = self.cli_bytes(args, stdin.as_bytes());
        (ok, String::from_utf8_lossy(&stdout).into_owned(), stderr)
    }

    /// [`TestApp::cli`] with bytes in and out (an archive through a pipe).
    pub fn cli_bytes(&self, args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
        use std::io::Write as _;
        let mut cmd = berth_command();
        cmd.args(args).arg("--data-dir").arg(self.data.path());
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning berth");
        let mut input = child.stdin.take().expect("stdin is piped");
        let stdin = stdin.to_vec();
        // From a thread of its own: berth may write its output before it has
        // read all of its input, and both pipes have a limited size.
        let writer = std::thread::spawn(move || {
            // berth may exit without reading all of it (a failure).
            let _ = input.write_all(&stdin);
        });
        let out = child.wait_with_output().expect("waiting for berth");
        writer.join().expect("writing stdin");
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts a server with `toml` as its configuration and a clock that
    /// [`TestApp::advance_clock`] moves forward (in the server and in
    /// [`TestApp::cli`] commands alike), so no test waits for days.
    pub fn start_with_clock(toml: &str) -> TestApp {
        let mut app = TestApp::prepare(None, Some(toml), &[]);
        let offset = app.data.path().join("clock-offset");
        std::fs::write(&offset, "0").expect("writing the clock offset");
        app.envs
            .push((CLOCK_OFFSET_ENV.to_string(), offset.display().to_string()));
        app.launch();
        app
    }

    /// Moves the clock of [`TestApp::start_with_clock`] forward by `ms`.
    pub fn advance_clock(&self, ms: i64) {
        let file = self.data.path().join("clock-offset");
        let now: i64 = std::fs::read_to_string(&file)
            .expect("the app was started with a movable clock")
            .trim()
            .parse()
            .expect("clock offset");
        std::fs::write(&file, (now + ms).to_string()).expect("writing the clock offset");
    }

    /// Starts a server with default settings.
    pub fn start() -> TestApp {
        TestApp::start_with_env(&[])
    }

    /// Starts a server with extra environment variables (such as `BERTH_UPLOADS__STALE_AFTER_SECS`).
    pub fn start_with_env(envs: &[(&str, &str)]) -> TestApp {
        let mut app = TestApp::prepare(None, None, envs);
        app.launch();
        app
    }

    /// Starts a server with default settings over a data dir made in
    /// `parent`, so a test can watch what happens next to the data dir.
    pub fn start_in(parent: &Path) -> TestApp {
        let mut app = TestApp::prepare(Some(parent), None, &[]);
        app.launch();
        app
    }

    /// `berth serve` on a free port over this app's data dir, configuration and stores.
    fn serve_command(&self) -> Command {
        let mut cmd = berth_command();
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data.path());
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts another replica over the same PostgreSQL database and S3
    /// bucket (scale-out only: on the embedded backend one process owns the
    /// data directory). Dropping it kills it.
    pub fn replica(&self) -> Server {
        assert!(
            scaleout(),
            "replicas share PostgreSQL and S3: run with {BACKEND_ENV}=scaleout"
        );
        spawn_server(self.serve_command())
            .unwrap_or_else(|f| panic!("a replica did not start (status {:?}); stderr:\n{}", f.status, f.stderr))
    }

    fn launch(&mut self) {
        match spawn_server(self.serve_command()) {
            Ok(server) => {
                self.base = server.base();
                self.server = Some(server);
            }
            Err(f) => panic!("berth did not start (status {:?}); stderr:\n{}", f.status, f.stderr),
        }
    }

    /// The data directory the server runs over (in scale-out mode it holds
    /// only the configuration, the clock offset and the token key).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Every file (object) under `dir` of the blob store, as keys relative to
    /// the store's root, such as `blobs/sha256/ab/ab12…`. Both backends use
    /// the same layout: `blobs/<alg>/<2 hex>/<hex>` for blobs and
    /// `uploads/<id>` (a file, or an S3 folder of segments) for upload sessions.
    pub async fn stored_keys(&self, dir: &str) -> Vec<String> {
        let mut keys: Vec<String> = match self.stores.objects() {
            Some(objects) => objects.keys(dir).await,
            None => {
                let root = self.data.path();
                files_under(&root.join(dir))
                    .into_iter()
                    .map(|path| {
                        let relative = path.strip_prefix(root).expect("a file under the data dir");
                        let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                        parts.join("/")
                    })
                    .collect()
            }
        };
        keys.sort();
        keys
    }

    /// The bytes of the blob store's `key`, or `None` when it has no such key.
    pub async fn read_stored(&self, key: &str) -> Option<Vec<u8>> {
        match self.stores.objects() {
            Some(objects) => objects.read(key).await,
            None => match std::fs::read(self.data.path().join(key)) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("reading {key} in the data dir: {e}"),
            },
        }
    }

    /// Writes `bytes` to the blob store's `key` behind the server's back.
    pub async fn write_stored(&self, key: &str, bytes: &[u8]) {
        match self.stores.objects() {
            Some(objects) => objects.write(key, bytes).await,
            None => {
                let path = self.data.path().join(key);
                std::fs::create_dir_all(path.parent().expect("a key has a folder")).expect("creating the folder");
                std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            }
        }
    }

    /// Removes the blob store's `key` behind the server's back; panics when
    /// there is no such key.
    pub async fn remove_stored(&self, key: &str) {
        assert!(self.read_stored(key).await.is_some(), "the blob store has no {key}");
        match self.stores.objects() {
            Some(objects) => objects.remove(key).await,
            None => std::fs::remove_file(self.data.path().join(key)).expect("removing a file"),
        }
    }

    /// The digests of the blobs the blob store holds, whatever the database
    /// says. A file that is not where its name puts it is listed by its key,
    /// so it shows in any comparison with a set of digests.
    pub async fn stored_blobs(&self) -> BTreeSet<String> {
        self.stored_keys("blobs")
            .await
            .into_iter()
            .map(|key| blob_key_digest(&key).unwrap_or(key))
            .collect()
    }

    /// The bytes the blob store holds under `digest`.
    pub async fn stored_blob(&self, digest: &str) -> Option<Vec<u8>> {
        self.read_stored(&blob_key(digest)).await
    }

    /// Places `bytes` in the blob store as the blob `digest`, without the
    /// database knowing: what a crash between storing a blob and recording it
    /// leaves behind.
    pub async fn put_stored_blob(&self, digest: &str, bytes: &[u8]) {
        self.write_stored(&blob_key(digest), bytes).await;
    }

    /// Deletes the blob `digest` from the blob store behind the database's
    /// back; panics when the store does not hold it.
    pub async fn remove_stored_blob(&self, digest: &str) {
        self.remove_stored(&blob_key(digest)).await;
    }

    /// Places upload bytes for the session `id` in the blob store, as a
    /// session whose database record is gone leaves them.
    pub async fn put_stray_upload(&self, id: &str, bytes: &[u8]) {
        if self.stores.objects().is_some() {
            // The S3 store's session: a marker, and a segment per append named
            // by its offset (crates/storage/src/s3.rs).
            self.write_stored(&format!("uploads/{id}/started"), b"").await;
            self.write_stored(&format!("uploads/{id}/{:020}", 0), bytes).await;
        } else {
            self.write_stored(&format!("uploads/{id}"), bytes).await;
        }
    }

    /// The ids of the upload sessions whose bytes the blob store holds.
    pub async fn stored_uploads(&self) -> BTreeSet<String> {
        self.stored_keys("uploads")
            .await
            .iter()
            .filter_map(|key| key.strip_prefix("uploads/")?.split('/').next())
            // The filesystem store's write probe.
            .filter(|id| !id.starts_with('.'))
            .map(str::to_string)
            .collect()
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.log.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Whether the server logs `text` within 5 s: log lines are written by a
    /// thread of the server's own, a moment after what they report.
    pub async fn logged(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log().contains(text) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Sends the server a signal (`HUP`, `TERM`, ...), as `kill -SIGNAL` does.
    pub fn signal(&self, name: &str) {
        let server = self.server.as_ref().expect("the server runs");
        let pid = server.child.id().to_string();
        let status = Command::new("kill").args([&format!("-{name}"), &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid} failed");
    }

    /// The configuration file the server was started with.
    pub fn config_file(&self) -> &Path {
        self.config
            .as_deref()
            .expect("the app was started with a configuration file")
    }

    /// Stops the server gracefully (SIGTERM) and starts it again on the same data dir.
    pub fn restart(&mut self) {
        if let Some(mut server) = self.server.take() {
            let pid = server.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            match wait_timeout(&mut server.child, Duration::from_secs(10)) {
                Some(status) => assert!(status.success(), "berth exited with {status} after SIGTERM"),
                None => panic!("berth did not stop within 10 s of SIGTERM"),
            }
        }
        self.launch();
    }

    /// Kills the server with SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) {
        // Dropping a server kills it.
        self.server = None;
    }

    /// Starts the server again after [`TestApp::kill9`].
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server still runs");
        self.launch();
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Resolves a `Location` (relative or absolute) against the server.
    pub fn resolve(&self, location: &str) -> String {
        resolve(&self.base, location)
    }

    /// `GET base+path`.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// `HEAD base+path`.
    pub async fn head(&self, path: &str) -> Response {
        self.client.head(self.url(path)).send().await.expect("HEAD")
    }

    /// `DELETE base+path`.
    pub async fn delete(&self, path: &str) -> Response {
        self.client.delete(self.url(path)).send().await.expect("DELETE")
    }

    /// Asserts that `repo` does not serve the blob `digest` (404 `BLOB_UNKNOWN`).
    pub async fn assert_blob_unknown(&self, repo: &str, digest: &str) {
        assert_error(
            self.get(&format!("/v2/{repo}/blobs/{digest}")).await,
            404,
            "BLOB_UNKNOWN",
        )
        .await;
    }

    /// Pushes a blob in one `POST ?digest=` and returns its sha256 digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        push_blob(&self.client, &self.base, repo, bytes).await
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the given Content-Type.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        put_manifest(&self.client, &self.base, repo, reference, media_type, body).await
    }

    /// Pushes an image of `layers` random layers and tags it; panics unless accepted.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: usize) -> Image {
        let image = Image::random(layers);
        image.push(&self.client, &self.base, repo, tag).await;
        image
    }

    /// Pushes the blobs of `image` and its manifest by digest (no tag).
    pub async fn push_untagged(&self, repo: &str, image: &Image) {
        image
            .push_as(&self.client, &self.base, repo, &image.digest, BlobUpload::SinglePost)
            .await;
    }

    /// Pushes `children` by digest and an OCI index over them under `tag`, the
    /// i-th child with the i-th of `platforms`; returns the index's bytes.
    pub async fn push_index(&self, repo: &str, tag: &str, children: &[Image], platforms: &[Value]) -> Vec<u8> {
        let index = Index::of(children.to_vec(), platforms);
        index
            .push_as(&self.client, &self.base, repo, tag, BlobUpload::SinglePost)
            .await;
        index.manifest
    }

    /// The newest entries of the audit log (the test servers run without auth).
    pub async fn audit(&self) -> Vec<Value> {
        let resp = self.get("/api/v1/audit?limit=1000").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("audit JSON");
        body["entries"].as_array().expect("entries").clone()
    }

    /// Pushes `body` as a manifest and asserts it was created; returns its digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let resp = self.put_manifest(repo, reference, media_type, body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "PUT manifest {repo}:{reference}: {text}");
        sha256(body)
    }

    /// Opens an upload session in `repo` and returns its absolute URL.
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .expect("POST upload");
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        self.resolve(header(&resp, "location"))
    }
}

// ---------------------------------------------------------------------------
// Backends.

/// The variable that picks the stores of every test server.
pub const BACKEND_ENV: &str = "BERTH_IT_BACKEND";

/// Whether this run's servers keep their state in S3 and PostgreSQL
/// (`BERTH_IT_BACKEND=scaleout`) rather than in their data directory
/// (`embedded`, the default).
pub fn scaleout() -> bool {
    static MODE: OnceLock<bool> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var(BACKEND_ENV).as_deref() {
        Err(_) | Ok("") | Ok("embedded") => false,
        Ok("scaleout") => true,
        Ok(other) => panic!("{BACKEND_ENV}={other:?}: expected \"embedded\" (the default) or \"scaleout\""),
    })
}

/// The servers of a scale-out run, from the variables that
/// `scripts/lib/postgres.sh` (`pg_test_start`) and `scripts/lib/s3.sh`
/// (`s3_start`) export.
struct Services {
    postgres_url: String,
    s3_endpoint: String,
    s3_access_key: String,
    s3_secret_key: String,
    s3_region: String,
}

fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let required = [
            "BERTH_TEST_POSTGRES_URL",
            "BERTH_TEST_S3_ENDPOINT",
            "BERTH_TEST_S3_ACCESS_KEY",
            "BERTH_TEST_S3_SECRET_KEY",
        ];
        let missing: Vec<&str> = required.into_iter().filter(|name| var(name).is_none()).collect();
        assert!(
            missing.is_empty(),
            "{BACKEND_ENV}=scaleout runs every test server on PostgreSQL and S3, but {} not set: \
             start the servers with pg_test_start (scripts/lib/postgres.sh) and s3_start (scripts/lib/s3.sh), \
             which export them, or run scripts/test",
            missing.join(", ")
        );
        let get = |name: &str| var(name).expect("checked above");
        Services {
            postgres_url: get("BERTH_TEST_POSTGRES_URL"),
            s3_endpoint: get("BERTH_TEST_S3_ENDPOINT"),
            s3_access_key: get("BERTH_TEST_S3_ACCESS_KEY"),
            s3_secret_key: get("BERTH_TEST_S3_SECRET_KEY"),
            s3_region: var("BERTH_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        }
    })
}

/// The key prefix of the objects in a bucket of a server's own.
/// Short: s3s-fs fails a multipart upload when bucket and key together are
/// longer than about 135 bytes, and a sha256 blob key adds 81 to this.
pub const S3_PREFIX: &str = "it";

/// Where one test server keeps its blobs and metadata.
pub enum Stores {
    /// Files and SQLite in the server's data directory.
    Embedded,
    /// A PostgreSQL database and an S3 bucket of its own (objects under
    /// [`S3_PREFIX`]), both removed when this is dropped.
    ///
    /// A bucket rather than a prefix in the shared `BERTH_TEST_S3_BUCKET`:
    /// s3s-fs answers a LIST by walking its whole bucket directory, empty
    /// folders of finished tests included, and a GC or fsck run lists each of
    /// the 256 blob folders, so in a shared bucket one run took tens of
    /// seconds late in the suite.
    ScaleOut { database: String, bucket: String },
}

impl Stores {
    /// The stores of a new server in this run's mode: in scale-out mode a new,
    /// empty database and bucket.
    pub fn fresh() -> Stores {
        if scaleout() {
            Stores::scale_out()
        } else {
            Stores::Embedded
        }
    }

    /// A new, empty PostgreSQL database and S3 bucket, whatever the run's
    /// mode; panics when the servers are not configured.
    pub fn scale_out() -> Stores {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = hex::encode(random_bytes(4));
        let database = format!(
            "berth_it_{}_{}_{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let bucket = format!("berth-it-{tag}");
        let server = services().postgres_url.clone();
        let (name, new_bucket) = (database.clone(), bucket.clone());
        on_own_runtime(async move {
            let mut admin = PgConnection::connect(&server)
                .await
                .unwrap_or_else(|e| panic!("connecting to BERTH_TEST_POSTGRES_URL {server}: {e}"));
            // A natural-language collation where the server has ICU (as the
            // meta crate's tests do), so an order that depends on the
            // database's locale shows.
            let icu = format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            );
            if sqlx::query(&icu).execute(&mut admin).await.is_err() {
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| panic!("creating the test database {name}: {e}"));
            }
            admin.close().await.ok();
            // Fails when the bucket exists: no two servers share one.
            bucket_request(&new_bucket, reqwest::Method::PUT)
                .await
                .unwrap_or_else(|e| panic!("creating the test bucket: {e}"));
        });
        Stores::ScaleOut { database, bucket }
    }

    /// The database's name, in scale-out.
    fn database(&self) -> Option<&str> {
        match self {
            Stores::Embedded => None,
            Stores::ScaleOut { database, .. } => Some(database),
        }
    }

    /// Where the objects are, in scale-out.
    fn objects(&self) -> Option<Objects> {
        match self {
            Stores::Embedded => None,
            Stores::ScaleOut { bucket, .. } => Some(Objects {
                bucket: bucket.clone(),
                prefix: S3_PREFIX.to_string(),
            }),
        }
    }

    /// The `BERTH_*` variables that point a `berth` process at these stores.
    pub fn envs(&self) -> Vec<(String, String)> {
        let (Some(database), Some(objects)) = (self.database(), self.objects()) else {
            return Vec::new();
        };
        let s = services();
        [
            ("BERTH_STORAGE__BACKEND", "s3".to_string()),
            ("BERTH_STORAGE__S3__ENDPOINT", s.s3_endpoint.clone()),
            ("BERTH_STORAGE__S3__BUCKET", objects.bucket),
            ("BERTH_STORAGE__S3__REGION", s.s3_region.clone()),
            ("BERTH_STORAGE__S3__ACCESS_KEY_ID", s.s3_access_key.clone()),
            ("BERTH_STORAGE__S3__SECRET_ACCESS_KEY", s.s3_secret_key.clone()),
            ("BERTH_STORAGE__S3__ALLOW_HTTP", "true".to_string()),
            ("BERTH_STORAGE__S3__PREFIX", objects.prefix),
            ("BERTH_META__BACKEND", "postgres".to_string()),
            ("BERTH_META__URL", with_database(&s.postgres_url, database)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Applies [`Stores::envs`] to a command.
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in self.envs() {
            cmd.env(k, v);
        }
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        let (Some(database), Some(objects)) = (self.database(), self.objects()) else {
            return;
        };
        let server = services().postgres_url.clone();
        let name = database.to_string();
        // Never panics: a panic in a drop during a failed test's unwinding
        // would abort the whole run.
        let cleaned = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server).await.map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| format!("dropping {name}: {e}"))?;
                admin.close().await.ok();
                // A bucket must be empty to be deleted.
                let s3 = s3_client(&objects.bucket);
                let keys = s3.list(None).map_ok(|meta| meta.location).boxed();
                s3.delete_stream(keys)
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| format!("emptying the test bucket {}: {e}", objects.bucket))?;
                bucket_request(&objects.bucket, reqwest::Method::DELETE).await
            })
        })
        .join();
        match cleaned {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: cleaning up the test stores failed: {e}"),
            Err(_) => eprintln!("warning: cleaning up the test stores panicked"),
        }
    }
}

/// The objects of one test server: a prefix in a bucket.
struct Objects {
    bucket: String,
    prefix: String,
}

impl Objects {
    /// The object of the blob store's `key`.
    fn path(&self, key: &str) -> ObjectPath {
        let prefix = &self.prefix;
        ObjectPath::parse(format!("{prefix}/{key}")).unwrap_or_else(|e| panic!("{prefix}/{key}: {e}"))
    }

    /// The keys under `dir`, relative to the prefix.
    async fn keys(&self, dir: &str) -> Vec<String> {
        let (bucket, prefix) = (&self.bucket, &self.prefix);
        let objects: Vec<_> = s3_client(bucket)
            .list(Some(&self.path(dir)))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("listing {prefix}/{dir} in the test bucket {bucket}: {e}"));
        objects
            .into_iter()
            .map(|meta| {
                let key = meta.location.to_string();
                key.strip_prefix(&format!("{prefix}/"))
                    .unwrap_or_else(|| panic!("{key} is not under {prefix}/"))
                    .to_string()
            })
            .collect()
    }

    async fn read(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.path(key);
        match s3_client(&self.bucket).get(&path).await {
            Ok(got) => Some(got.bytes().await.expect("reading an S3 object").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {path} in the test bucket {}: {e}", self.bucket),
        }
    }

    async fn write(&self, key: &str, bytes: &[u8]) {
        let path = self.path(key);
        s3_client(&self.bucket)
            .put(&path, PutPayload::from(bytes.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("writing {path} in the test bucket {}: {e}", self.bucket));
    }

    async fn remove(&self, key: &str) {
        let path = self.path(key);
        s3_client(&self.bucket)
            .delete(&path)
            .await
            .unwrap_or_else(|e| panic!("deleting {path} in the test bucket {}: {e}", self.bucket));
    }
}

/// Runs `work` on a runtime of its own in a thread of its own, so that sync
/// code can use the async clients whether or not a test's runtime runs on
/// the calling thread; a panic in `work` is a panic here.
fn on_own_runtime<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime")
            .block_on(work)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A client of the test bucket `bucket` (made per use: a client's
/// connections belong to the runtime that opened them).
fn s3_client(bucket: &str) -> AmazonS3 {
    let s = services();
    // new(), not from_env(): only what the test servers say applies.
    AmazonS3Builder::new()
        .with_endpoint(&s.s3_endpoint)
        .with_bucket_name(bucket)
        .with_region(&s.s3_region)
        .with_access_key_id(&s.s3_access_key)
        .with_secret_access_key(&s.s3_secret_key)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("an S3 client of the test bucket")
}

/// Sends `method` to the bucket itself (`PUT` is CreateBucket, `DELETE`
/// DeleteBucket), signed as a presigned URL: object_store has no bucket
/// operations, but signs any path, the empty one included.
async fn bucket_request(bucket: &str, method: reqwest::Method) -> Result<(), String> {
    use object_store::signer::Signer as _;
    let url = s3_client(bucket)
        .signed_url(method.clone(), &ObjectPath::default(), Duration::from_secs(300))
        .await
        .map_err(|e| format!("signing {method} of bucket {bucket}: {e}"))?;
    let resp = reqwest::Client::new()
        .request(method.clone(), url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("{method} of bucket {bucket}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = resp.text().await.unwrap_or_default();
        Err(format!("{method} of bucket {bucket}: {status} {body}"))
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (url, None),
    };
    let authority = main.find("://").map_or(0, |i| i + 3);
    let base = match main[authority..].find('/') {
        Some(i) => &main[..authority + i],
        None => main,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// The blob store's key of the blob `digest` (`blobs/<alg>/<2 hex>/<hex>`).
pub fn blob_key(digest: &str) -> String {
    let (algorithm, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("{digest:?} is not a digest"));
    format!("blobs/{algorithm}/{}/{hex}", &hex[..2])
}

/// The digest a blob key names, when the key follows the layout.
pub fn blob_key_digest(key: &str) -> Option<String> {
    let mut parts = key.strip_prefix("blobs/")?.split('/');
    let (algorithm, fan_out, hex) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && hex.len() > 2 && hex.starts_with(fan_out) && fan_out.len() == 2)
        .then(|| format!("{algorithm}:{hex}"))
}

/// A client that never follows redirects, so every status is seen as sent.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

/// Resolves a `Location` header against `base` as RFC 3986 says.
pub fn resolve(base: &str, location: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(location))
        .unwrap_or_else(|e| panic!("Location {location:?} does not resolve against {base}: {e}"))
        .to_string()
}

/// Appends `key=value` to a URL that may already have a query.
pub fn with_query(url: &str, pair: &str) -> String {
    if url.contains('?') {
        format!("{url}&{pair}")
    } else {
        format!("{url}?{pair}")
    }
}

/// Pushes a blob in one `POST ?digest=`, asserts 201 and returns its sha256 digest.
pub async fn push_blob(client: &reqwest::Client, base: &str, repo: &str, bytes: &[u8]) -> String {
    upload_blob(client, base, repo, bytes, BlobUpload::SinglePost).await
}

/// How the push helpers upload a blob whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobUpload {
    /// One `POST ?digest=` with the bytes, answered 201. Berth takes it; the
    /// distribution spec leaves it optional, and distribution 2.8 opens a
    /// session instead (202) and drops the bytes.
    SinglePost,
    /// A `POST` that opens a session (202), then one `PUT <location>?digest=`
    /// with the bytes (201): what every registry takes.
    PostThenPut,
}

/// Uploads a blob whole as `how` says, asserts the registry took it and
/// returns its sha256 digest.
pub async fn upload_blob(client: &reqwest::Client, base: &str, repo: &str, bytes: &[u8], how: BlobUpload) -> String {
    let digest = sha256(bytes);
    let request = match how {
        BlobUpload::SinglePost => client.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}")),
        BlobUpload::PostThenPut => {
            let resp = client
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .expect("POST upload");
            let status = resp.status();
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "open an upload: {}",
                resp.text().await.unwrap_or_default()
            );
            let location = resolve(base, header(&resp, "location"));
            client.put(with_query(&location, &format!("digest={digest}")))
        }
    };
    let resp = request
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("pushing a blob");
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "push blob: {}",
        resp.text().await.unwrap_or_default()
    );
    digest
}

/// `PUT /v2/<repo>/manifests/<reference>` with `media_type` as the Content-Type.
pub async fn put_manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Response {
    client
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest")
}

/// A random image: a config, layers and the OCI manifest over them.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Image {
    /// An image of `layers` random layers of 1–4 KiB.
    pub fn random(layers: usize) -> Image {
        let layers: Vec<Vec<u8>> = (0..layers)
            .map(|_| random_bytes(1024 + rand::random_range(0..3072)))
            .collect();
        Image::of_layers(layers)
    }

    /// An image over the given layer bytes with a unique config.
    pub fn of_layers(layers: Vec<Vec<u8>>) -> Image {
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>() },
            "config": { "Labels": { "nonce": hex::encode(random_bytes(8)) } },
        }))
        .expect("config JSON");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
        }))
        .expect("manifest JSON");
        let digest = sha256(&manifest);
        Image {
            config,
            layers,
            manifest,
            digest,
        }
    }

    /// The descriptor of this image's manifest.
    pub fn descriptor(&self) -> Value {
        descriptor(OCI_MANIFEST, &self.manifest)
    }

    /// The digest of the config blob.
    pub fn config_digest(&self) -> String {
        sha256(&self.config)
    }

    /// The digests of the layers, in order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha256(l)).collect()
    }

    /// Pushes the blobs (monolithically) and the manifest under `tag`.
    pub async fn push(&self, client: &reqwest::Client, base: &str, repo: &str, tag: &str) {
        self.push_as(client, base, repo, tag, BlobUpload::SinglePost).await;
    }

    /// Pushes the blobs, each uploaded as `how` says, and the manifest under
    /// `reference` (a tag, or the manifest's digest).
    pub async fn push_as(&self, client: &reqwest::Client, base: &str, repo: &str, reference: &str, how: BlobUpload) {
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            upload_blob(client, base, repo, blob, how).await;
        }
        let resp = put_manifest(client, base, repo, reference, OCI_MANIFEST, &self.manifest).await;
        let status = resp.status();
        let digest = resp.headers().get("docker-content-digest").cloned();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "PUT manifest {repo}:{reference}: {text}");
        assert_eq!(
            digest.as_ref().and_then(|d| d.to_str().ok()),
            Some(self.digest.as_str())
        );
    }
}

/// An OCI index over images, each with a platform.
#[derive(Debug, Clone)]
pub struct Index {
    pub children: Vec<Image>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Index {
    /// An index over `children`, the i-th with the i-th of `platforms`.
    pub fn of(children: Vec<Image>, platforms: &[Value]) -> Index {
        assert_eq!(children.len(), platforms.len(), "a platform per child");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children.iter().zip(platforms).map(|(c, p)| {
                let mut d = c.descriptor();
                d["platform"] = p.clone();
                d
            }).collect::<Vec<_>>(),
        }))
        .expect("index JSON");
        let digest = sha256(&manifest);
        Index {
            children,
            manifest,
            digest,
        }
    }

    /// Pushes the children by digest (blobs uploaded as `how` says) and the
    /// index under `tag`; panics unless each is accepted.
    pub async fn push_as(&self, client: &reqwest::Client, base: &str, repo: &str, tag: &str, how: BlobUpload) {
        for child in &self.children {
            child.push_as(client, base, repo, &child.digest, how).await;
        }
        let resp = put_manifest(client, base, repo, tag, OCI_INDEX, &self.manifest).await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "PUT index {repo}:{tag}: {text}");
    }
}

/// A content descriptor of `bytes`.
pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(bytes), "size": bytes.len() })
}

/// `n` random bytes, so every blob is new to the registry.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The `sha512:<hex>` digest of `bytes`.
pub fn sha512(bytes: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(bytes)))
}

/// A header as text; panics when it is missing.
pub fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    header_of(resp.headers(), name)
}

/// A header of `headers` as text; panics when it is missing.
pub fn header_of<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header; headers: {headers:?}"))
        .to_str()
        .expect("header is text")
}

/// Asserts an OCI error answer: its status, its `errors[0].code`, and the
/// error body shape. Returns the body for further checks.
pub async fn assert_error(resp: Response, status: u16, code: &str) -> Value {
    let url = resp.url().clone();
    let got = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.expect("error body");
    assert_eq!(got.as_u16(), status, "{url}: status (body {text})");
    assert!(
        content_type.starts_with("application/json"),
        "{url}: error Content-Type {content_type:?}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: error body {text:?}: {e}"));
    assert_eq!(body["errors"][0]["code"], code, "{url}: {text}");
    assert!(body["errors"][0]["message"].is_string(), "{url}: {text}");
    body
}

/// Walks a directory tree and returns every regular file in it.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

/// Sends a hand-written HTTP/1.1 request and returns the response status and
/// raw bytes. The body is written from another thread while the response is
/// read, so a server that answers before reading the whole body (as it may,
/// e.g. with 413) is seen answering, which hyper's client does not report.
pub fn raw_request(base: &str, head: &str, body: Vec<u8>) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").expect("http base URL");
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(head.as_bytes()).expect("writing the request head");
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The server may close early; what it answered is what counts.
        let _ = writer.write_all(&body);
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(_) if !response.is_empty() => break,
            Err(e) => panic!("reading the response: {e}"),
        }
        // Stop once a complete response with a Content-Length body is in.
        if let Some(end) = complete_response_len(&response) {
            response.truncate(end);
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// The length of a complete response (head plus Content-Length body), if all of it is in `bytes`.
fn complete_response_len(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    (bytes.len() >= head_end + len).then_some(head_end + len)
}
