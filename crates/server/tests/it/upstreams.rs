//! Upstream registries for the pull-through tests: real registries on
//! `127.0.0.1` ephemeral ports that Berth can be pointed at, with their
//! files in a temp dir and their processes stopped by PID on drop.
//!
//! - [`ReferenceRegistry`]: the reference implementation (Debian's
//!   `docker-registry`, CNCF distribution 2.8) over the file system, with
//!   deletes on: plain HTTP, HTTPS with a certificate from a test CA, HTTPS
//!   that requires a client certificate, htpasswd basic auth (distribution
//!   2.8 takes it over plain HTTP too), or TLS and basic auth together. It
//!   counts the requests it received from its access log, and can be stopped
//!   and started again on the same port and data.
//! - [`BerthUpstream`]: a second `berth` in token mode with a user, to be an
//!   upstream that wants the Docker bearer-token flow ([`bearer_token`]).
//! - [`Pki`]: a test CA with a server certificate for `127.0.0.1`,
//!   `localhost` and `::1` and a client certificate, as PEM files.
//!
//! Pushes go through the harness's [`Image`] and [`Index`]; the reference
//! registry takes blobs as `POST` + `PUT ?digest=` ([`BlobUpload::PostThenPut`]).
//! The self-tests at the end show each fixture working and refusing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::auth_harness::{add_user, basic, bearer_client, grant};
use crate::harness::{random_bytes, wait_timeout, BlobUpload, Image, Index, TestApp};

/// The reference registry's binary, from Debian's `docker-registry` package.
const REFERENCE_BIN: &str = "docker-registry";
/// How long the reference registry may take to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request count waits for the access log to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The path of the requests that [`ReferenceRegistry::requests`] sends to
/// find the end of the access log; they are left out of what it returns.
const SYNC_PATH: &str = "/berth-fixture-sync/";

// ---------------------------------------------------------------------------
// Certificates.

/// A test CA, a server certificate it signed for `127.0.0.1`, `localhost`
/// and `::1`, and a client certificate it signed, as PEM files in a folder.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Generates the CA and both certificates and writes them into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let named = |names: Vec<String>, common_name: &str| {
            let mut params = CertificateParams::new(names).expect("certificate names");
            params.distinguished_name.push(DnType::CommonName, common_name);
            params
        };
        let mut ca = named(Vec::new(), "Berth test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a CA key")).expect("the CA certificate");

        let leaf = |params: CertificateParams, usage: ExtendedKeyUsagePurpose| {
            let mut params = params;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("a key");
            let cert = params.signed_by(&key, &ca).expect("signing a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let names = ["127.0.0.1", "localhost", "::1"].map(String::from).to_vec();
        let (server_cert, server_key) = leaf(named(names, "127.0.0.1"), ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(
            named(Vec::new(), "berth-test-client"),
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            path
        };
        Pki {
            ca_cert: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
        }
    }

    /// The CA certificate, for a client to trust.
    pub fn ca_certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(&read(&self.ca_cert)).expect("the CA certificate")
    }

    /// The client certificate and its key, for a client to present.
    pub fn client_identity(&self) -> reqwest::Identity {
        let mut pem = read(&self.client_cert);
        pem.extend(read(&self.client_key));
        reqwest::Identity::from_pem(&pem).expect("the client identity")
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A client builder like the harness's client: no redirects followed, a
/// 30 s timeout, and no certificate authority but the ones added to it.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
}

// ---------------------------------------------------------------------------
// The reference registry.

/// Whether and how a reference registry speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP.
    Off,
    /// HTTPS with a server certificate from the test CA.
    Server,
    /// HTTPS that requires a client certificate from the test CA.
    Mutual,
}

/// One line of the reference registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    /// The request target as sent: path and query.
    pub uri: String,
    pub status: u16,
}

impl AccessEntry {
    /// Parses a combined-log-format line:
    /// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "referer" "agent"`.
    fn parse(line: &str) -> Option<AccessEntry> {
        let (_, rest) = line.split_once(" \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let mut request = request.split(' ');
        let (method, uri) = (request.next()?, request.next()?);
        let status = rest.split(' ').next()?.parse().ok()?;
        Some(AccessEntry {
            method: method.to_string(),
            uri: uri.to_string(),
            status,
        })
    }

    /// The path of the request target, without its query.
    pub fn path(&self) -> &str {
        self.uri.split_once('?').map_or(self.uri.as_str(), |(path, _)| path)
    }
}

/// A `docker-registry serve` process (CNCF distribution 2.8) on
/// `127.0.0.1`, over the file system, with deletes enabled.
pub struct ReferenceRegistry {
    dir: TempDir,
    config: PathBuf,
    port: u16,
    tls: Tls,
    pki: Option<Pki>,
    credentials: Option<(String, String)>,
    child: Option<Child>,
    /// The access log (stdout), kept across restarts.
    access: Arc<Mutex<Vec<String>>>,
    /// The application log (stderr), kept across restarts.
    log: Arc<Mutex<String>>,
    syncs: AtomicU32,
}

impl ReferenceRegistry {
    /// A registry over plain HTTP with no auth.
    pub fn start() -> ReferenceRegistry {
        ReferenceRegistry::start_with(Tls::Off, false)
    }

    /// A registry over HTTPS with a certificate from its test CA.
    pub fn start_tls() -> ReferenceRegistry {
        ReferenceRegistry::start_with(Tls::Server, false)
    }

    /// A registry over HTTPS that requires a client certificate (mutual TLS).
    pub fn start_mutual_tls() -> ReferenceRegistry {
        ReferenceRegistry::start_with(Tls::Mutual, false)
    }

    /// A registry over plain HTTP that requires basic auth (htpasswd).
    pub fn start_basic_auth() -> ReferenceRegistry {
        ReferenceRegistry::start_with(Tls::Off, true)
    }

    /// A registry with the given TLS and, when `basic_auth`, an htpasswd
    /// file of one user with a random password.
    pub fn start_with(tls: Tls, basic_auth: bool) -> ReferenceRegistry {
        let dir = tempfile::Builder::new()
            .prefix("berth-upstream-")
            .tempdir()
            .expect("creating a temp dir");
        let pki = (tls != Tls::Off).then(|| Pki::generate(dir.path()));
        let credentials = basic_auth.then(|| {
            let user = "upstream-user".to_string();
            let password = hex::encode(random_bytes(12));
            // The lowest cost bcrypt allows: a test needs no slow hash.
            let hash = bcrypt::hash(&password, 4).expect("bcrypt");
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).expect("writing htpasswd");
            (user, password)
        });
        let mut registry = ReferenceRegistry {
            config: dir.path().join("config.yml"),
            dir,
            port: 0,
            tls,
            pki,
            credentials,
            child: None,
            access: Arc::default(),
            log: Arc::default(),
            syncs: AtomicU32::new(0),
        };
        // A free port can be taken between finding it and the registry
        // binding it: try a few.
        let mut failures = Vec::new();
        for _ in 0..5 {
            registry.port = free_port();
            registry.write_config();
            match registry.launch() {
                Ok(()) => return registry,
                Err(failure) if failure.contains("address already in use") => failures.push(failure),
                Err(failure) => panic!("the reference registry did not start:\n{failure}"),
            }
        }
        panic!("the reference registry found no free port:\n{}", failures.join("\n"))
    }

    /// Writes the configuration (JSON, which YAML reads) for the current port.
    fn write_config(&self) {
        let dir = self.dir.path();
        let mut http = json!({
            "addr": self.host(),
            "secret": hex::encode(random_bytes(16)),
        });
        if let Some(pki) = &self.pki {
            http["tls"] = json!({ "certificate": pki.server_cert, "key": pki.server_key });
            if self.tls == Tls::Mutual {
                http["tls"]["clientcas"] = json!([pki.ca_cert]);
            }
        }
        let mut config = json!({
            "version": "0.1",
            "log": { "level": "info", "formatter": "text", "accesslog": { "disabled": false } },
            "storage": {
                "filesystem": { "rootdirectory": dir.join("data") },
                "delete": { "enabled": true },
                "maintenance": { "uploadpurging": { "enabled": false } },
            },
            "http": http,
        });
        if self.credentials.is_some() {
            config["auth"] = json!({ "htpasswd": { "realm": "berth-test", "path": dir.join("htpasswd") } });
        }
        let text = serde_json::to_string_pretty(&config).expect("config JSON");
        std::fs::write(&self.config, text).expect("writing the registry config");
    }

    /// Starts the process on `self.port` and waits until it listens; the
    /// error is its log.
    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(REFERENCE_BIN);
        cmd.arg("serve").arg(&self.config);
        // It crashes at start when AWS_CA_BUNDLE is set, and reads any
        // REGISTRY_* variable as configuration.
        cmd.env_remove("AWS_CA_BUNDLE");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(&key);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {REFERENCE_BIN}: {e} (Debian's docker-registry package; scripts/install-deps.sh installs it)")
        });
        let (ready, listening) = mpsc::channel();
        drain_lines(child.stdout.take().expect("stdout is piped"), {
            let access = self.access.clone();
            move |line| access.lock().unwrap_or_else(|p| p.into_inner()).push(line)
        });
        drain_lines(child.stderr.take().expect("stderr is piped"), {
            let log = self.log.clone();
            let mut ready = Some(ready);
            move |line| {
                if line.contains("listening on ") {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if listening.recv_timeout(Duration::from_millis(50)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait();
                // Give the reader threads a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!("{status:?}; log:\n{}", self.log()));
            }
        }
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub fn base(&self) -> String {
        let scheme = if self.tls == Tls::Off { "http" } else { "https" };
        format!("{scheme}://{}", self.host())
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The test CA and certificates (TLS only).
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// The PEM file of the CA that signed the server certificate (TLS only).
    pub fn ca_pem(&self) -> Option<&Path> {
        self.pki.as_ref().map(|p| p.ca_cert.as_path())
    }

    /// The PEM files of the client certificate and its key (mutual TLS only).
    pub fn client_cert_pem(&self) -> Option<(&Path, &Path)> {
        let pki = self.pki.as_ref().filter(|_| self.tls == Tls::Mutual)?;
        Some((&pki.client_cert, &pki.client_key))
    }

    /// The user and password (basic auth only).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A client that trusts the test CA and presents nothing: no client
    /// certificate, no credentials.
    pub fn anonymous_client(&self) -> reqwest::Client {
        let mut builder = client_builder();
        if let Some(pki) = &self.pki {
            builder = builder.add_root_certificate(pki.ca_certificate());
        }
        builder.build().expect("building the HTTP client")
    }

    /// A client with everything the registry asks for: it trusts the test
    /// CA, presents the client certificate and sends the credentials.
    pub fn client(&self) -> reqwest::Client {
        let mut builder = client_builder();
        if let Some(pki) = &self.pki {
            builder = builder.add_root_certificate(pki.ca_certificate());
            if self.tls == Tls::Mutual {
                builder = builder.identity(pki.client_identity());
            }
        }
        if let Some((user, password)) = self.credentials() {
            let mut headers = HeaderMap::new();
            let value = HeaderValue::from_str(&basic(user, password)).expect("header value");
            headers.insert(AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        builder.build().expect("building the HTTP client")
    }

    /// Pushes an image of `layers` random layers under `repo:tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: usize) -> Image {
        let image = Image::random(layers);
        image
            .push_as(&self.client(), &self.base(), repo, tag, BlobUpload::PostThenPut)
            .await;
        image
    }

    /// Pushes `children` by digest and an OCI index over them under `repo:tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, children: Vec<Image>, platforms: &[Value]) -> Index {
        let index = Index::of(children, platforms);
        index
            .push_as(&self.client(), &self.base(), repo, tag, BlobUpload::PostThenPut)
            .await;
        index
    }

    /// Every request the registry has logged, oldest first, over all its
    /// runs. While it runs, a marker request is sent first and awaited in
    /// the log, so every request answered before the call is in.
    pub async fn requests(&self) -> Vec<AccessEntry> {
        if self.child.is_some() {
            self.settle().await;
        }
        let lines = self.access.lock().unwrap_or_else(|p| p.into_inner()).clone();
        lines
            .iter()
            .filter_map(|line| AccessEntry::parse(line))
            .filter(|entry| !entry.uri.starts_with(SYNC_PATH))
            .collect()
    }

    /// How many `method` requests for `path` (query ignored) the registry
    /// received, e.g. `hits("GET", "/v2/library/app/blobs/sha256:…")`.
    pub async fn hits(&self, method: &str, path: &str) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|entry| entry.method == method && entry.path() == path)
            .count()
    }

    /// Sends a marker request and waits until the access log shows it. The
    /// log line of a request is written once its handler returns, which may
    /// be a moment after the client has the response.
    async fn settle(&self) {
        let marker = format!("{SYNC_PATH}{}", self.syncs.fetch_add(1, Ordering::Relaxed));
        let url = format!("{}{marker}", self.base());
        // Any answer will do: the request is logged whatever it is.
        if let Err(e) = self.client().get(&url).send().await {
            panic!("the marker request to the reference registry failed: {e}");
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let seen = self
                .access
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|line| line.contains(&format!(" {marker} ")));
            if seen {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the access log did not show {marker} within {SETTLE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process (by its PID); the port and data stay for
    /// [`ReferenceRegistry::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_timeout(&mut child, Duration::from_secs(10));
        }
    }

    /// Starts the process again on the same port over the same data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the reference registry still runs");
        if let Err(failure) = self.launch() {
            panic!(
                "the reference registry did not start again on {}:\n{failure}",
                self.host()
            );
        }
    }

    /// Waits up to 10 s for `text` to appear in [`ReferenceRegistry::log`];
    /// panics with the log when it does not.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the reference registry did not log {text:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the registry has logged (not the access log), over all runs.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for ReferenceRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Hands each line of `pipe` to `sink` in a thread of its own, until the
/// pipe closes, so the process never blocks on a full pipe.
fn drain_lines(pipe: impl Read + Send + 'static, mut sink: impl FnMut(String) + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink(line);
        }
    });
}

// ---------------------------------------------------------------------------
// Berth as an upstream with token auth.

/// A second `berth` in token mode: anonymous requests get the Docker bearer
/// challenge, and one user may pull and push every repository.
pub struct BerthUpstream {
    pub app: TestApp,
    user: String,
    password: String,
}

impl BerthUpstream {
    /// Starts the server and creates its user with a random password.
    pub fn start() -> BerthUpstream {
        let app = TestApp::start_with_config("[auth]\nmode = \"token\"\n", &[]);
        let user = "upstream-user".to_string();
        let password = hex::encode(random_bytes(12));
        add_user(&app, &user, &password, false);
        grant(&app, &format!("user:{user}"), "**", "push");
        BerthUpstream { app, user, password }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.app.base
    }

    /// The user and password.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.user, &self.password)
    }

    /// A client with a bearer token for `scope`, got as a Docker client gets it.
    pub async fn client_for(&self, scope: &str) -> reqwest::Client {
        let token = bearer_token(&self.app.client, self.base(), Some(self.credentials()), scope).await;
        bearer_client(&token)
    }

    /// Pushes an image of `layers` random layers under `repo:tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: usize) -> Image {
        let client = self.client_for(&format!("repository:{repo}:pull,push")).await;
        let image = Image::random(layers);
        image.push(&client, self.base(), repo, tag).await;
        image
    }

    /// Pushes `children` by digest and an OCI index over them under `repo:tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, children: Vec<Image>, platforms: &[Value]) -> Index {
        let client = self.client_for(&format!("repository:{repo}:pull,push")).await;
        let index = Index::of(children, platforms);
        index
            .push_as(&client, self.base(), repo, tag, BlobUpload::SinglePost)
            .await;
        index
    }
}

/// A token for `scope` from the registry at `base`, by the Docker token
/// flow: `GET /v2/` answers 401 with a `Bearer realm=…,service=…`
/// challenge, and the realm, asked with the service and scope (and Basic
/// `credentials`, if any), answers the token.
pub async fn bearer_token(
    client: &reqwest::Client,
    base: &str,
    credentials: Option<(&str, &str)>,
    scope: &str,
) -> String {
    let resp = client.get(format!("{base}/v2/")).send().await.expect("GET /v2/");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{base}/v2/ wants no token");
    let challenge = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .expect("a WWW-Authenticate challenge");
    let params = challenge
        .strip_prefix("Bearer ")
        .map(challenge_params)
        .unwrap_or_else(|| panic!("not a bearer challenge: {challenge}"));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in the challenge {challenge}"))
    };
    let mut request = client
        .get(param("realm"))
        .query(&[("service", param("service")), ("scope", scope.to_string())]);
    if let Some((user, password)) = credentials {
        request = request.header(AUTHORIZATION, basic(user, password));
    }
    let resp = request.send().await.expect("GET the token realm");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "token request: {body}");
    body["token"]
        .as_str()
        .or(body["access_token"].as_str())
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_string()
}

/// The `key="value"` (or bare `key=value`) parameters of a challenge.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.push((key, value.to_string()));
        rest = after.trim_start_matches(',').trim();
    }
    params
}

// ---------------------------------------------------------------------------
// Self-tests: each fixture serves what was pushed and refuses what it should.

/// Pulls the image's manifest and every blob through `client` and checks the bytes.
async fn assert_serves(client: &reqwest::Client, base: &str, repo: &str, tag: &str, image: &Image) {
    let resp = client
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", crate::harness::OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK, "{base}/v2/{repo}/manifests/{tag}");
    assert_eq!(resp.bytes().await.expect("manifest body"), image.manifest);
    for (digest, bytes) in std::iter::once((image.config_digest(), &image.config))
        .chain(image.layer_digests().into_iter().zip(&image.layers))
    {
        let resp = client
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(resp.status(), StatusCode::OK, "blob {digest}");
        assert_eq!(&resp.bytes().await.expect("blob body")[..], &bytes[..]);
    }
}

#[tokio::test]
async fn a_plain_reference_registry_serves_what_was_pushed_and_counts_requests() {
    let upstream = ReferenceRegistry::start();
    assert!(upstream.base().starts_with("http://127.0.0.1:"));
    assert!(upstream.ca_pem().is_none() && upstream.credentials().is_none());
    let image = upstream.push_image("library/app", "v1", 2).await;
    assert_serves(&upstream.client(), &upstream.base(), "library/app", "v1", &image).await;

    let layer = format!("/v2/library/app/blobs/{}", image.layer_digests()[0]);
    assert_eq!(upstream.hits("GET", &layer).await, 1);
    for _ in 0..3 {
        let resp = upstream
            .client()
            .get(format!("{}{layer}", upstream.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(upstream.hits("GET", &layer).await, 4);
    assert_eq!(upstream.hits("HEAD", &layer).await, 0);
    assert_eq!(upstream.hits("PUT", "/v2/library/app/manifests/v1").await, 1);
    // The marker requests are not counted.
    let requests = upstream.requests().await;
    assert!(requests.iter().all(|r| !r.uri.starts_with(SYNC_PATH)));
    assert!(requests.contains(&AccessEntry {
        method: "GET".into(),
        uri: layer.clone(),
        status: 200
    }));
}

#[tokio::test]
async fn a_reference_registry_serves_an_index() {
    let upstream = ReferenceRegistry::start();
    let platforms = [
        json!({ "os": "linux", "architecture": "amd64" }),
        json!({ "os": "linux", "architecture": "arm64", "variant": "v8" }),
    ];
    let children = vec![Image::random(1), Image::random(1)];
    let index = upstream.push_index("multi/arch", "latest", children, &platforms).await;
    let client = upstream.client();
    let resp = client
        .get(format!("{}/v2/multi/arch/manifests/latest", upstream.base()))
        .header("accept", crate::harness::OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], index.digest.as_str());
    assert_eq!(resp.bytes().await.unwrap(), index.manifest);
    for child in &index.children {
        assert_serves(&client, &upstream.base(), "multi/arch", &child.digest, child).await;
    }
}

#[tokio::test]
async fn a_tls_reference_registry_is_reached_only_by_clients_that_trust_its_ca() {
    let upstream = ReferenceRegistry::start_tls();
    assert!(upstream.base().starts_with("https://127.0.0.1:"));
    let ca = upstream.ca_pem().expect("a CA");
    assert!(std::fs::read_to_string(ca)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(upstream.client_cert_pem().is_none());
    let image = upstream.push_image("tls/app", "v1", 1).await;
    assert_serves(&upstream.anonymous_client(), &upstream.base(), "tls/app", "v1", &image).await;
    // By name as well as by address: the certificate names both.
    let by_name = upstream.base().replace("127.0.0.1", "localhost");
    assert_serves(&upstream.client(), &by_name, "tls/app", "v1", &image).await;

    let untrusting = client_builder().build().unwrap();
    let err = untrusting
        .get(format!("{}/v2/", upstream.base()))
        .send()
        .await
        .expect_err("a client that does not trust the test CA is refused");
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
}

#[tokio::test]
async fn a_mutual_tls_reference_registry_wants_a_client_certificate_from_its_ca() {
    let upstream = ReferenceRegistry::start_mutual_tls();
    let (cert, key) = upstream.client_cert_pem().expect("client certificate files");
    assert!(cert.exists() && key.exists());
    let image = upstream.push_image("mtls/app", "v1", 1).await;
    assert_serves(&upstream.client(), &upstream.base(), "mtls/app", "v1", &image).await;

    let url = format!("{}/v2/mtls/app/manifests/v1", upstream.base());
    let without = upstream.anonymous_client().get(&url).send().await;
    assert!(without.is_err(), "no client certificate: {without:?}");

    // A certificate from another CA is refused too.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::generate(other_dir.path());
    let stranger = client_builder()
        .add_root_certificate(upstream.pki().unwrap().ca_certificate())
        .identity(other.client_identity())
        .build()
        .unwrap();
    let refused = stranger.get(&url).send().await;
    assert!(refused.is_err(), "a client certificate from another CA: {refused:?}");
    // Refused for the right reasons.
    upstream.wait_for_log("tls: client didn't provide a certificate");
    upstream.wait_for_log("tls: failed to verify client certificate");
}

#[tokio::test]
async fn a_basic_auth_reference_registry_wants_its_credentials() {
    let upstream = ReferenceRegistry::start_basic_auth();
    let (user, password) = upstream.credentials().expect("credentials");
    let image = upstream.push_image("private/app", "v1", 1).await;
    assert_serves(&upstream.client(), &upstream.base(), "private/app", "v1", &image).await;

    let url = format!("{}/v2/private/app/manifests/v1", upstream.base());
    let resp = upstream.anonymous_client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Basic realm=\"berth-test\"");
    let wrong = upstream
        .anonymous_client()
        .get(&url)
        .header(AUTHORIZATION, basic(user, "not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = upstream
        .anonymous_client()
        .get(&url)
        .header(AUTHORIZATION, basic(user, password))
        .header("accept", crate::harness::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(upstream.hits("GET", "/v2/private/app/manifests/v1").await, 4);
}

#[tokio::test]
async fn tls_and_basic_auth_combine() {
    let upstream = ReferenceRegistry::start_with(Tls::Server, true);
    let image = upstream.push_image("both/app", "v1", 1).await;
    assert_serves(&upstream.client(), &upstream.base(), "both/app", "v1", &image).await;
    let resp = upstream
        .anonymous_client()
        .get(format!("{}/v2/", upstream.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_reference_registry_stops_and_starts_again_on_its_port_and_data() {
    let mut upstream = ReferenceRegistry::start_mutual_tls();
    let image = upstream.push_image("restart/app", "v1", 1).await;
    let base = upstream.base();
    upstream.stop();
    assert!(!upstream.is_running());
    let down = upstream.client().get(format!("{base}/v2/")).send().await;
    assert!(down.is_err(), "a stopped registry answers nothing: {down:?}");
    // Requests of the first run are still counted while it is down.
    assert_eq!(upstream.hits("PUT", "/v2/restart/app/manifests/v1").await, 1);

    upstream.start_again();
    assert_eq!(upstream.base(), base);
    assert_serves(&upstream.client(), &base, "restart/app", "v1", &image).await;
    assert_eq!(upstream.hits("GET", "/v2/restart/app/manifests/v1").await, 1);
}

#[test]
fn access_lines_and_challenges_parse() {
    let line = r#"127.0.0.1 - - [05/Dec/2026:00:10:51 +0000] "POST /v2/a/b/blobs/uploads/?digest=sha256:ab HTTP/1.1" 202 0 "" "curl/7.88.1""#;
    let entry = AccessEntry::parse(line).unwrap();
    assert_eq!(
        (entry.method.as_str(), entry.path(), entry.status),
        ("POST", "/v2/a/b/blobs/uploads/", 202)
    );
    assert_eq!(entry.uri, "/v2/a/b/blobs/uploads/?digest=sha256:ab");
    assert_eq!(AccessEntry::parse("time=\"…\" level=info msg=\"listening\""), None);

    let params =
        challenge_params(r#"realm="http://127.0.0.1:5000/v2/token",service="berth",scope="repository:a/b:pull,push""#);
    assert_eq!(
        params,
        [
            ("realm".to_string(), "http://127.0.0.1:5000/v2/token".to_string()),
            ("service".to_string(), "berth".to_string()),
            ("scope".to_string(), "repository:a/b:pull,push".to_string()),
        ]
    );
    assert_eq!(challenge_params("realm=x, service=y").len(), 2);
}

#[tokio::test]
async fn a_berth_upstream_wants_the_bearer_token_flow() {
    let upstream = BerthUpstream::start();
    let image = upstream.push_image("team/app", "v1", 2).await;
    let index = upstream
        .push_index(
            "team/multi",
            "v1",
            vec![Image::random(1)],
            &[json!({ "os": "linux", "architecture": "amd64" })],
        )
        .await;

    // Anonymous: the challenge, and a token without credentials is refused.
    let url = format!("{}/v2/team/app/manifests/v1", upstream.base());
    let resp = upstream.app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()[WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    // A token got without credentials lets nothing through.
    let anonymous = bearer_token(&upstream.app.client, upstream.base(), None, "repository:team/app:pull").await;
    let resp = bearer_client(&anonymous).get(&url).send().await.unwrap();
    crate::harness::assert_error(resp, 401, "DENIED").await;

    let puller = upstream.client_for("repository:team/app:pull").await;
    assert_serves(&puller, upstream.base(), "team/app", "v1", &image).await;
    let puller = upstream.client_for("repository:team/multi:pull").await;
    let resp = puller
        .get(format!("{}/v2/team/multi/manifests/v1", upstream.base()))
        .header("accept", crate::harness::OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), index.manifest);
}
