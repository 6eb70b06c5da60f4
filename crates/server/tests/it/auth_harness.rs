//! Helpers of the access tests: a server in token mode, the token endpoint,
//! and the real identity providers the tests start (the external validation
//! service in `tests/external-auth`, the OpenID Connect provider in `tests/oidc`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::TestApp;

pub const ALICE_PASSWORD: &str = "alice-secret-password";

/// The repository root, where `tests/` lives.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A server with `auth.mode = "token"` plus `extra` TOML under `[auth]`,
/// and a clock that [`TestApp::advance_clock`] moves.
pub fn token_app(extra: &str) -> TestApp {
    TestApp::start_with_clock(&format!("[auth]\nmode = \"token\"\n{extra}\n"))
}

pub fn add_user(app: &TestApp, name: &str, password: &str, admin: bool) {
    let mut args = vec!["user", "add", name];
    if admin {
        args.push("--admin");
    }
    let (ok, _, err) = app.cli(&args, &format!("{password}\n"));
    assert!(ok, "user add {name}: {err}");
}

pub fn grant(app: &TestApp, subject: &str, pattern: &str, role: &str) {
    let (ok, _, err) = app.cli(&["grant", "add", subject, pattern, role], "");
    assert!(ok, "grant add {subject} {pattern} {role}: {err}");
}

/// Creates a robot token with the given grants and returns it.
pub fn robot(app: &TestApp, name: &str, grants: &[&str], expires: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--name", name];
    for g in grants {
        args.extend(["--grant", g]);
    }
    if let Some(e) = expires {
        args.extend(["--expires", e]);
    }
    let (ok, out, err) = app.cli(&args, "");
    assert!(ok, "token create: {err}");
    out.trim().to_string()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn basic(login: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"))
    )
}

/// `GET /v2/token` with the scopes and (optionally) Basic credentials.
pub async fn token_response(app: &TestApp, creds: Option<(&str, &str)>, scopes: &[&str]) -> (StatusCode, Value) {
    let mut url = app.url("/v2/token?service=berth");
    for s in scopes {
        url.push_str("&scope=");
        url.push_str(&percent_encode(s));
    }
    let mut req = app.client.get(url);
    if let Some((login, password)) = creds {
        req = req.header(AUTHORIZATION, basic(login, password));
    }
    let resp = req.send().await.expect("GET /v2/token");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A token for the scopes; panics unless the endpoint answers 200.
pub async fn token(app: &TestApp, creds: Option<(&str, &str)>, scopes: &[&str]) -> String {
    let (status, body) = token_response(app, creds, scopes).await;
    assert_eq!(status, StatusCode::OK, "token request: {body}");
    body["token"].as_str().expect("token in the answer").to_string()
}

/// The `access` claim of one of our tokens (decoded without verifying: the
/// server verifies, the test only reads what it was granted).
pub fn access_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["access"].clone()
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client that sends `Authorization: Bearer TOKEN` with every request.
pub fn bearer_client(token: &str) -> reqwest::Client {
    authorized_client(&format!("Bearer {token}"))
}

/// A client that sends `Authorization: VALUE` with every request.
pub fn authorized_client(value: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header value"));
    reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

/// A helper process (identity provider) that prints `listening on URL`.
pub struct Helper {
    child: Child,
    pub url: String,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits up to 30 s for its `listening on URL` line on stdout.
pub fn spawn_helper(mut cmd: Command) -> Helper {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (scripts/install-deps.sh installs what tests need)"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => Helper { child, url },
        Err(_) => {
            let _ = child.kill();
            panic!("{cmd:?} did not say where it listens within 30 s");
        }
    }
}
