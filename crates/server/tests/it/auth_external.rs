//! The external validation contract, against the test service in
//! `tests/external-auth/service.py` (a real HTTP service on loopback).

use std::process::Command;

use serde_json::{json, Value};

use crate::auth_harness::*;
use crate::harness::*;

struct External {
    helper: Helper,
    tokens: tempfile::NamedTempFile,
}

impl External {
    fn start(users: Value) -> External {
        let tokens = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tokens.path(), users.to_string()).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/external-auth/service.py"))
            .args(["--port", "0"])
            .arg(tokens.path());
        External {
            helper: spawn_helper(cmd),
            tokens,
        }
    }

    fn set_users(&self, users: Value) {
        std::fs::write(self.tokens.path(), users.to_string()).unwrap();
    }

    async fn requests(&self) -> u64 {
        let stats: Value = reqwest::get(format!("{}/stats", self.helper.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["requests"].as_u64().unwrap()
    }
}

fn bob() -> Value {
    json!({"tok-bob": {"id": "1001", "username": "bob", "email": "bob@example.com", "groups": ["dev"]}})
}

#[tokio::test]
async fn a_token_the_service_vouches_for_logs_in_with_its_groups_grants() {
    let ext = External::start(bob());
    let app = token_app(&format!("[auth.external]\nurl = \"{}\"", ext.helper.url));
    grant(&app, "group:dev", "dev/**", "push");
    grant(&app, "user:bob", "bob/*", "pull");
    for login in ["bob", "1001", "bob@example.com"] {
        let tok = token(&app, Some((login, "tok-bob")), &["repository:dev/app:pull,push"]).await;
        assert_eq!(
            access_of(&tok),
            json!([{"type": "repository", "name": "dev/app", "actions": ["pull", "push"]}]),
            "{login}"
        );
    }
    let tok = token(
        &app,
        Some(("bob", "tok-bob")),
        &[
            "repository:dev/x/y:pull,push",
            "repository:bob/own:pull,push",
            "repository:team/app:pull",
        ],
    )
    .await;
    assert_eq!(
        access_of(&tok),
        json!([
            {"type": "repository", "name": "dev/x/y", "actions": ["pull", "push"]},
            {"type": "repository", "name": "bob/own", "actions": ["pull"]}
        ])
    );
    Image::random(1)
        .push(&bearer_client(&tok), &app.base, "dev/x/y", "1")
        .await;

    // The login name must be the user's id, username or email.
    assert_eq!(token_response(&app, Some(("alice", "tok-bob")), &[]).await.0, 401);
    assert_eq!(token_response(&app, Some(("bob", "tok-unknown")), &[]).await.0, 401);
}

#[tokio::test]
async fn positive_answers_are_cached_briefly_and_negative_ones_never() {
    let ext = External::start(bob());
    let app = token_app(&format!(
        "[auth.external]\nurl = \"{}/api/auth/info\"\ncache_secs = 60",
        ext.helper.url
    ));
    token(&app, Some(("bob", "tok-bob")), &[]).await;
    token(&app, Some(("bob", "tok-bob")), &[]).await;
    assert_eq!(ext.requests().await, 1, "the second login is answered from the cache");
    token_response(&app, Some(("bob", "tok-nobody")), &[]).await;
    token_response(&app, Some(("bob", "tok-nobody")), &[]).await;
    assert_eq!(ext.requests().await, 3, "refusals are asked again each time");

    // Revoked at the service: still good within the cache time, refused after.
    ext.set_users(json!({}));
    assert_eq!(token_response(&app, Some(("bob", "tok-bob")), &[]).await.0, 200);
    app.advance_clock(59_000);
    assert_eq!(token_response(&app, Some(("bob", "tok-bob")), &[]).await.0, 200);
    app.advance_clock(2_000);
    assert_eq!(token_response(&app, Some(("bob", "tok-bob")), &[]).await.0, 401);
}

#[tokio::test]
async fn a_failing_service_never_lets_anyone_in() {
    let ext = External::start(bob());
    let app = token_app(&format!(
        "[auth.external]\nurl = \"{}\"\ntimeout_secs = 1\n[auth.login_limit]\nfailures = 100",
        ext.helper.url
    ));
    for token in ["broken", "slow"] {
        let (status, body) = token_response(&app, Some(("bob", token)), &[]).await;
        assert_eq!(status, 503, "{token}: {body}");
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }
    drop(ext);
    let (status, _) = token_response(&app, Some(("bob", "tok-bob")), &[]).await;
    assert_eq!(status, 503, "an unreachable service");
}

#[tokio::test]
async fn the_service_url_can_come_from_validation_service_url() {
    let ext = External::start(bob());
    let app = TestApp::start_with_config(
        "[auth]\nmode = \"token\"\n",
        &[("VALIDATION_SERVICE_URL", ext.helper.url.as_str())],
    );
    assert_eq!(token_response(&app, Some(("bob", "tok-bob")), &[]).await.0, 200);
}

#[tokio::test]
async fn local_users_take_precedence_over_the_service() {
    let ext = External::start(json!({"tok-alice": {"id": "7", "username": "alice", "email": "alice@ext.example"}}));
    let app = token_app(&format!("[auth.external]\nurl = \"{}\"", ext.helper.url));
    add_user(&app, "alice", ALICE_PASSWORD, false);
    assert_eq!(token_response(&app, Some(("alice", "tok-alice")), &[]).await.0, 401);
    assert_eq!(token_response(&app, Some(("alice", ALICE_PASSWORD)), &[]).await.0, 200);
    assert_eq!(ext.requests().await, 0);
    // An outside account named like a local user cannot log in under another of
    // its names and become that user.
    for login in ["alice@ext.example", "7"] {
        assert_eq!(
            token_response(&app, Some((login, "tok-alice")), &[]).await.0,
            401,
            "{login}"
        );
    }
}

#[tokio::test]
async fn names_the_service_vouches_for_must_be_text_the_registry_can_keep() {
    // A username with a NUL (which PostgreSQL text cannot hold) or a line
    // break is no identity; a group with one has no grants, the others do.
    let ext = External::start(json!({
        "tok-nul": {"id": "2001", "username": "eve\u{0}", "groups": ["dev"]},
        "tok-newline": {"id": "2002", "username": "eve\nadmin", "groups": ["dev"]},
        "tok-groups": {"id": "2003", "username": "carol", "groups": ["dev\u{0}", "ops\r", "dev"]},
    }));
    let app = token_app(&format!(
        "[auth.external]\nurl = \"{}\"\n[auth.login_limit]\nfailures = 100",
        ext.helper.url
    ));
    grant(&app, "group:dev", "dev/**", "pull");
    for (login, token) in [("2001", "tok-nul"), ("2002", "tok-newline")] {
        let (status, body) = token_response(&app, Some((login, token)), &["repository:dev/app:pull"]).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{token}: {body}");
    }
    let tok = token(&app, Some(("carol", "tok-groups")), &["repository:dev/app:pull"]).await;
    assert_eq!(
        access_of(&tok),
        json!([{"type": "repository", "name": "dev/app", "actions": ["pull"]}])
    );
}
