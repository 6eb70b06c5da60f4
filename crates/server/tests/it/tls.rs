//! Native TLS (`[tls]`): HTTPS with a certificate from a test CA, HTTP/2 by
//! ALPN, certificate reloads (on SIGHUP and by polling the files) that leave
//! open connections alone, client certificates for the admin API, and the
//! plain-HTTP listener for health probes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use crate::auth_harness::{add_user, basic};
use crate::harness::{assert_error, push_blob, random_bytes, Image, TestApp};
use crate::upstreams::Pki;

/// How long a test waits for a reload to show.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// A server over HTTPS with a certificate of `pki`'s CA, whose files in
/// `certs` a test may replace. `tls_extra` goes under `[tls]`, `before`
/// ahead of it (other sections).
struct TlsApp {
    app: TestApp,
    certs: TempDir,
    pki: Pki,
}

impl TlsApp {
    fn start(before: &str, tls_extra: &str) -> TlsApp {
        let certs = tempfile::tempdir().expect("a temp dir");
        let pki = Pki::generate(certs.path());
        let toml = format!(
            "{before}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n{tls_extra}\n",
            pki.server_cert, pki.server_key
        );
        let mut app = TestApp::start_with_config(&toml, &[]);
        app.base = app.base.replacen("http://", "https://", 1);
        app.client = https_client(&pki);
        TlsApp { app, certs, pki }
    }

    /// `127.0.0.1:PORT`.
    fn addr(&self) -> &str {
        self.app.base.trim_start_matches("https://")
    }

    /// Replaces the server's certificate and key files with `pki`'s, each
    /// by a rename as a careful deployment tool does.
    fn install(&self, cert: &Path, key: &Path) {
        for (from, to) in [(cert, &self.pki.server_cert), (key, &self.pki.server_key)] {
            let staged = self.certs.path().join("staged.pem");
            std::fs::copy(from, &staged).expect("staging a file");
            std::fs::rename(&staged, to).expect("replacing a file");
        }
    }

    /// Whether a new connection trusting only `ca`'s CA gets through.
    async fn trusted_by(&self, ca: &Pki) -> bool {
        https_client(ca).get(self.app.url("/v2/")).send().await.is_ok()
    }

    /// Waits until a new connection trusting only `ca`'s CA gets through.
    async fn wait_trusted_by(&self, ca: &Pki) {
        let deadline = Instant::now() + RELOAD_WAIT;
        while !self.trusted_by(ca).await {
            assert!(
                Instant::now() < deadline,
                "the new certificate was not served within {RELOAD_WAIT:?}; log:\n{}",
                self.app.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the log holds `needle` `times` times.
    async fn wait_logged(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + RELOAD_WAIT;
        while self.app.log().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} logged; log:\n{}",
                self.app.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An HTTPS-only client that trusts `pki`'s CA and nothing else.
fn https_client(pki: &Pki) -> reqwest::Client {
    https_builder(pki).build().expect("building the HTTPS client")
}

fn https_builder(pki: &Pki) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .add_root_certificate(pki.ca_certificate())
        .https_only(true)
}

/// A TLS connection to `addr` trusting `pki`'s CA and offering `h2` and
/// `http/1.1`, with the protocol the server chose.
async fn connect_tls(addr: &str, pki: &Pki) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca_cert).expect("reading the CA");
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("a CA certificate")).expect("adding the CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connecting");
    let name = ServerName::try_from("127.0.0.1").expect("a server name").to_owned();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the TLS handshake");
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, alpn)
}

#[tokio::test]
async fn images_are_pushed_and_pulled_over_https_and_http2_is_negotiated() {
    let tls = TlsApp::start("", "");
    let app = &tls.app;
    let image = Image::random(2);
    image.push(&app.client, &app.base, "tls/app", "v1").await;
    let resp = app
        .client
        .get(app.url("/v2/tls/app/manifests/v1"))
        .header("accept", crate::harness::OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "reqwest offers h2 by ALPN");
    assert_eq!(resp.bytes().await.expect("the manifest").as_ref(), image.manifest);

    // A client that speaks HTTP/2 gets it, and pulls over it.
    let (stream, alpn) = connect_tls(tls.addr(), &tls.pki).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN chose HTTP/2");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("the HTTP/2 handshake");
    tokio::spawn(connection);
    let layer = &image.layers[0];
    let request = hyper::Request::get(format!(
        "https://{}/v2/tls/app/blobs/{}",
        tls.addr(),
        crate::harness::sha256(layer)
    ))
    .body(http_body_util::Empty::<Bytes>::new())
    .expect("a request");
    let resp = sender.send_request(request).await.expect("GET blob over HTTP/2");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("the blob").to_bytes();
    assert_eq!(body.as_ref(), layer.as_slice());
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_told_to_use_https_and_silent_clients_are_dropped() {
    let tls = TlsApp::start("", "handshake_timeout_secs = 1");
    let resp = reqwest::get(format!("http://{}/v2/", tls.addr()))
        .await
        .expect("a plain-HTTP request gets an answer");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text = resp.text().await.expect("the answer");
    assert!(text.contains("HTTPS only"), "{text}");

    // A client that connects and says nothing does not hold the server's
    // task past the handshake timeout.
    let mut silent = TcpStream::connect(tls.addr()).await.expect("connecting");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection within its handshake timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "nothing is sent, the connection ends: {read:?}"
    );
    assert!(
        tls.app.client.get(tls.app.url("/v2/")).send().await.is_ok(),
        "still serving"
    );
}

#[tokio::test]
async fn a_certificate_reload_on_sighup_leaves_a_pull_in_progress_alone() {
    let tls = TlsApp::start("", "reload_interval_secs = 0");
    let app = &tls.app;
    let blob = random_bytes(32 << 20);
    let digest = push_blob(&app.client, &app.base, "tls/big", &blob).await;

    let mut pull = https_client(&tls.pki)
        .get(app.url(&format!("/v2/tls/big/blobs/{digest}")))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(pull.status(), StatusCode::OK);
    let mut hash = Sha256::new();
    let mut received = 0usize;
    let first = pull.chunk().await.expect("the first bytes").expect("a first chunk");
    hash.update(&first);
    received += first.len();

    // A certificate of another CA replaces the files while the pull waits.
    let other_dir = tempfile::tempdir().expect("a temp dir");
    let other = Pki::generate(other_dir.path());
    tls.install(&other.server_cert, &other.server_key);
    assert!(
        tls.trusted_by(&tls.pki).await,
        "no reload before the signal (polling is off)"
    );
    app.signal("HUP");
    tls.wait_trusted_by(&other).await;
    assert!(
        !tls.trusted_by(&tls.pki).await,
        "new connections get the new certificate only"
    );

    while let Some(chunk) = pull.chunk().await.expect("the rest of the blob") {
        hash.update(&chunk);
        received += chunk.len();
    }
    assert_eq!(received, blob.len(), "the pull in progress ran to its end");
    assert_eq!(format!("sha256:{}", hex::encode(hash.finalize())), digest);
}

#[tokio::test]
async fn changed_files_are_picked_up_by_polling_and_bad_ones_keep_the_old_certificate() {
    let tls = TlsApp::start("", "reload_interval_secs = 1");
    let second_dir = tempfile::tempdir().expect("a temp dir");
    let third_dir = tempfile::tempdir().expect("a temp dir");
    let second = Pki::generate(second_dir.path());
    let third = Pki::generate(third_dir.path());

    // A key that does not belong to the certificate: refused, old one stays.
    tls.install(&second.server_cert, &third.server_key);
    tls.wait_logged("TLS files not reloaded", 1).await;
    assert!(tls.trusted_by(&tls.pki).await, "the old certificate is still served");
    assert!(!tls.trusted_by(&second).await);

    // Not PEM at all, and on SIGHUP too: the same.
    std::fs::write(&tls.pki.server_key, "not a key\n").expect("writing");
    tls.wait_logged("TLS files not reloaded", 2).await;
    tls.app.signal("HUP");
    tls.wait_logged("TLS files not reloaded", 3).await;
    assert!(tls.trusted_by(&tls.pki).await, "the old certificate is still served");

    // The matching key arrives: the next poll takes the pair.
    tls.install(&second.server_cert, &second.server_key);
    tls.wait_trusted_by(&second).await;
    assert!(!tls.trusted_by(&tls.pki).await);
    assert!(tls.app.logged("TLS certificate reloaded").await);
}

#[tokio::test]
async fn the_admin_api_needs_a_client_certificate_in_addition_to_admin_credentials() {
    let certs = tempfile::tempdir().expect("a temp dir");
    let clients = Pki::generate(certs.path());
    let tls = TlsApp::start(
        "[auth]\nmode = \"token\"",
        &format!("client_ca_file = {:?}", clients.ca_cert),
    );
    let app = &tls.app;
    add_user(app, "root", "secret-pw", true);
    let users = app.url("/api/v1/users");
    let credentials = basic("root", "secret-pw");

    // Credentials without a certificate: refused.
    let resp = app
        .client
        .get(&users)
        .header("authorization", &credentials)
        .send()
        .await
        .expect("GET users");
    assert_error(resp, 403, "DENIED").await;

    // A certificate from the client CA and credentials: accepted.
    let with_cert = https_builder(&tls.pki)
        .identity(clients.client_identity())
        .build()
        .expect("a client with a certificate");
    let resp = with_cert
        .get(&users)
        .header("authorization", &credentials)
        .send()
        .await
        .expect("GET users");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap_or_default()
    );

    // A certificate alone is not an administrator.
    let resp = with_cert.get(&users).send().await.expect("GET users");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A certificate of another CA does not get through the handshake.
    let stranger = tempfile::tempdir().expect("a temp dir");
    let stranger = Pki::generate(stranger.path());
    let with_stranger = https_builder(&tls.pki)
        .identity(stranger.client_identity())
        .build()
        .expect("a client with a foreign certificate");
    assert!(with_stranger.get(&users).send().await.is_err());

    // The registry API needs no certificate, and its challenge names the
    // token endpoint over HTTPS.
    let resp = app.get("/v2/").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = crate::harness::header(&resp, "www-authenticate");
    assert!(
        challenge.contains(&format!("realm=\"https://{}/v2/token\"", tls.addr())),
        "{challenge}"
    );
}

#[tokio::test]
async fn the_plain_listener_answers_health_only() {
    let tls = TlsApp::start("", "plain_listen = \"127.0.0.1:0\"");
    let marker = "over plain HTTP on ";
    tls.wait_logged(marker, 1).await;
    let log = tls.app.log();
    let at = log
        .find(marker)
        .unwrap_or_else(|| panic!("no plain listener logged:\n{log}"));
    let addr: String = log[at + marker.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
        .collect();
    let plain = crate::harness::client();
    let get = |path: &str| plain.get(format!("http://{addr}{path}")).send();
    let resp = get("/healthz").await.expect("GET /healthz");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(get("/readyz").await.expect("GET /readyz").status(), StatusCode::OK);
    for path in ["/v2/", "/v2/tls/app/tags/list", "/api/v1/users", "/"] {
        assert_eq!(get(path).await.expect("GET").status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The HTTPS listener serves everything as before.
    assert_eq!(tls.app.get("/v2/").await.status(), StatusCode::OK);

    // `berth healthcheck` probes the plain listener the environment names,
    // and fails on the TLS port, which answers plain HTTP with a 400.
    let healthcheck = |var: &str, value: &str| {
        crate::harness::berth_command()
            .arg("healthcheck")
            .env(var, value)
            .status()
            .expect("running berth healthcheck")
            .success()
    };
    assert!(healthcheck("BERTH_TLS__PLAIN_LISTEN", &addr));
    assert!(!healthcheck("BERTH_LISTEN", tls.addr()));
}
