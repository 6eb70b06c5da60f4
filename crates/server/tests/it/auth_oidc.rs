//! OIDC ID tokens as passwords, against a real OpenID Connect provider
//! (`oidc-provider`, started from `tests/oidc`), with tokens minted by a real
//! authorization-code flow.

use std::process::Command;

use serde_json::json;

use crate::auth_harness::*;
use crate::harness::*;

const MAIN: &str = "repo:acme/app:ref:refs/heads/main";

pub fn provider(args: &[&str]) -> Helper {
    let dir = repo_root().join("tests/oidc");
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "tests/oidc/node_modules is missing: run scripts/install-deps.sh (npm ci in tests/oidc)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("provider.mjs")).args(args);
    spawn_helper(cmd)
}

fn mint(issuer: &str, sub: &str, client_id: &str) -> String {
    let out = Command::new("node")
        .arg(repo_root().join("tests/oidc/mint.mjs"))
        .args([issuer, sub, "--client-id", client_id])
        .output()
        .expect("running mint.mjs");
    assert!(out.status.success(), "mint: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn config(issuer: &str) -> String {
    format!(
        r#"
[[auth.oidc]]
issuer = "{issuer}"
audience = "berth"
leeway_secs = 0
jwks_min_refresh_secs = 0
[[auth.oidc.rules]]
claims = {{ sub = "repo:acme/app:ref:refs/heads/main" }}
grants = ["acme/app:push"]
[[auth.oidc.rules]]
claims = {{ sub = "repo:*:ref:refs/heads/main", repository = "acme/*" }}
grants = ["{{repository}}-cache:push"]
"#
    )
}

#[tokio::test]
async fn an_id_token_from_a_configured_issuer_maps_to_grants_by_claim_rules() {
    let idp = provider(&[
        "--client-id",
        "berth,other",
        "--extra-claims",
        r#"{"repository":"acme/app"}"#,
    ]);
    let app = token_app(&config(&idp.url));
    let id_token = mint(&idp.url, MAIN, "berth");
    let scopes = [
        "repository:acme/app:pull,push",
        "repository:acme/app-cache:push",
        "repository:acme/other:pull",
    ];
    let tok = token(&app, Some(("ci", &id_token)), &scopes).await;
    assert_eq!(
        access_of(&tok),
        json!([
            {"type": "repository", "name": "acme/app", "actions": ["pull", "push"]},
            {"type": "repository", "name": "acme/app-cache", "actions": ["push"]}
        ])
    );
    Image::random(1)
        .push(&bearer_client(&tok), &app.base, "acme/app", "ci")
        .await;

    // A branch no rule names gets nothing: the login is refused.
    let feature = mint(&idp.url, "repo:other/app:ref:refs/heads/feature", "berth");
    assert_eq!(token_response(&app, Some(("ci", &feature)), &[]).await.0, 401);
    // A token for another audience is refused.
    let other_aud = mint(&idp.url, MAIN, "other");
    assert_eq!(token_response(&app, Some(("ci", &other_aud)), &[]).await.0, 401);
    // A tampered token is refused.
    let mut parts: Vec<String> = id_token.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    assert_eq!(token_response(&app, Some(("ci", &parts.join("."))), &[]).await.0, 401);
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    // Times are the registry's: its clock moves, the provider's does not.
    let idp = provider(&["--id-token-ttl", "60"]);
    let app = token_app(&config(&idp.url));
    let id_token = mint(&idp.url, MAIN, "berth");
    assert_eq!(token_response(&app, Some(("ci", &id_token)), &[]).await.0, 200);
    app.advance_clock(61_000);
    assert_eq!(token_response(&app, Some(("ci", &id_token)), &[]).await.0, 401);
    drop(idp);

    let later = now_secs() + 3600;
    let idp = provider(&[
        "--id-token-ttl",
        "7200",
        "--extra-claims",
        &format!(r#"{{"nbf":{later}}}"#),
    ]);
    let app = token_app(&config(&idp.url));
    let id_token = mint(&idp.url, MAIN, "berth");
    assert_eq!(token_response(&app, Some(("ci", &id_token)), &[]).await.0, 401);
    app.advance_clock(3_601_000);
    assert_eq!(
        token_response(&app, Some(("ci", &id_token)), &[]).await.0,
        200,
        "valid once the registry's clock passed nbf"
    );
}

#[tokio::test]
async fn a_new_signing_key_is_fetched_when_a_token_names_it() {
    let idp = provider(&["--key-id", "k1"]);
    let port = idp.url.rsplit(':').next().unwrap().to_string();
    let app = token_app(&config(&idp.url));
    let first = mint(&idp.url, MAIN, "berth");
    assert_eq!(token_response(&app, Some(("ci", &first)), &[]).await.0, 200);
    let issuer = idp.url.clone();
    drop(idp);
    // The provider rotates its key: same issuer, new kid.
    let idp = provider(&["--port", &port, "--key-id", "k2"]);
    assert_eq!(idp.url, issuer);
    let second = mint(&idp.url, MAIN, "berth");
    assert_eq!(token_response(&app, Some(("ci", &second)), &[]).await.0, 200);
    // The old key is gone from the JWKS, so its tokens no longer verify.
    assert_eq!(token_response(&app, Some(("ci", &first)), &[]).await.0, 401);
}

#[tokio::test]
async fn an_unreachable_issuer_is_unavailable_not_a_pass() {
    let idp = provider(&[]);
    let app = token_app(&config(&idp.url));
    let id_token = mint(&idp.url, MAIN, "berth");
    drop(idp);
    assert_eq!(token_response(&app, Some(("ci", &id_token)), &[]).await.0, 503);
}
