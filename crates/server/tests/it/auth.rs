//! Token auth with local users and robot tokens: challenges, the token
//! endpoint, each action allowed and denied, anonymous pull, the catalog,
//! mounts, login limits, refresh tokens, the admin API and the audit log.

use serde_json::{json, Value};

use crate::auth_harness::*;
use crate::harness::*;

const PUSH_SCOPE: &str = "repository:team/app:pull,push,delete";

#[tokio::test]
async fn requests_without_a_token_get_the_docker_challenge() {
    let app = token_app("");
    let realm = format!("{}/v2/token", app.base);
    let cases = [
        ("GET", "/v2/", format!("Bearer realm=\"{realm}\",service=\"berth\"")),
        (
            "GET",
            "/v2/team/app/manifests/latest",
            format!("Bearer realm=\"{realm}\",service=\"berth\",scope=\"repository:team/app:pull\""),
        ),
        (
            "POST",
            "/v2/team/app/blobs/uploads/",
            format!("Bearer realm=\"{realm}\",service=\"berth\",scope=\"repository:team/app:pull,push\""),
        ),
        (
            "DELETE",
            "/v2/team/app/manifests/latest",
            format!("Bearer realm=\"{realm}\",service=\"berth\",scope=\"repository:team/app:delete\""),
        ),
        (
            "GET",
            "/v2/_catalog",
            format!("Bearer realm=\"{realm}\",service=\"berth\",scope=\"registry:catalog:*\""),
        ),
    ];
    for (method, path, expected) in cases {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "www-authenticate"), expected, "{method} {path}");
        assert_error(resp, 401, "UNAUTHORIZED").await;
    }
    let resp = bearer_client("not.a.token").get(app.url("/v2/")).send().await.unwrap();
    assert!(header(&resp, "www-authenticate").ends_with(",error=\"invalid_token\""));
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_user_gets_what_the_grants_allow_and_no_more() {
    let app = token_app("");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    grant(&app, "user:alice", "team/*", "push");
    let alice = Some(("alice", ALICE_PASSWORD));

    // Partly denied scopes give fewer actions, not an error.
    let tok = token(
        &app,
        alice,
        &[PUSH_SCOPE, "repository:other/app:pull", "repository:*:*"],
    )
    .await;
    assert_eq!(
        access_of(&tok),
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    let client = bearer_client(&tok);
    assert_eq!(client.get(app.url("/v2/")).send().await.unwrap().status(), 200);
    let image = Image::random(1);
    image.push(&client, &app.base, "team/app", "v1").await;
    let got = client.get(app.url("/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), image.manifest);

    // Delete is not granted: 401 DENIED with insufficient_scope.
    let resp = client
        .delete(app.url(&format!("/v2/team/app/manifests/{}", image.digest)))
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "www-authenticate").contains("error=\"insufficient_scope\""));
    assert_error(resp, 401, "DENIED").await;

    // Another repository is not in the token at all.
    let resp = client
        .post(app.url("/v2/other/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "DENIED").await;

    // A delete grant allows deletes.
    grant(&app, "user:alice", "team/app", "delete");
    let tok = token(&app, alice, &[PUSH_SCOPE]).await;
    let client = bearer_client(&tok);
    let resp = client
        .delete(app.url(&format!("/v2/team/app/manifests/{}", image.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // A pull-only user reads but cannot push.
    add_user(&app, "carol", "carol-secret-password", false);
    grant(&app, "user:carol", "team/**", "pull");
    image.push(&bearer_client(&tok), &app.base, "team/app", "v2").await;
    let tok = token(&app, Some(("carol", "carol-secret-password")), &[PUSH_SCOPE]).await;
    assert_eq!(
        access_of(&tok),
        json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}])
    );
    let carol = bearer_client(&tok);
    assert_eq!(
        carol
            .get(app.url("/v2/team/app/manifests/v2"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        carol
            .get(app.url("/v2/team/app/tags/list"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = carol.post(app.url("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    assert_error(resp, 401, "DENIED").await;
    let resp = carol
        .put(app.url("/v2/team/app/manifests/v3"))
        .header("content-type", OCI_MANIFEST)
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "DENIED").await;
}

#[tokio::test]
async fn bad_credentials_are_refused_and_disabled_users_cannot_log_in() {
    let app = token_app("");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    let resp = app
        .client
        .get(app.url("/v2/token"))
        .header("authorization", basic("alice", "wrong-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "www-authenticate"), "Basic realm=\"berth\"");
    assert_eq!(header(&resp, "cache-control"), "no-store");
    assert_error(resp, 401, "UNAUTHORIZED").await;
    let (status, _) = token_response(&app, Some(("nobody", ALICE_PASSWORD)), &[]).await;
    assert_eq!(status, 401);
    let resp = app
        .client
        .get(app.url("/v2/token"))
        .header("authorization", "Basic !!!")
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "UNAUTHORIZED").await;

    let (ok, _, _) = app.cli(&["user", "passwd", "alice"], "a-new-password\n");
    assert!(ok);
    assert_eq!(token_response(&app, Some(("alice", ALICE_PASSWORD)), &[]).await.0, 401);
    assert_eq!(
        token_response(&app, Some(("alice", "a-new-password")), &[]).await.0,
        200
    );
    let (ok, _, _) = app.cli(&["user", "disable", "alice"], "");
    assert!(ok);
    assert_eq!(
        token_response(&app, Some(("alice", "a-new-password")), &[]).await.0,
        401
    );
    let (ok, out, _) = app.cli(&["user", "list"], "");
    assert!(ok && out.contains("alice") && out.contains("true"), "{out}");
}

#[tokio::test]
async fn robot_tokens_work_with_any_login_until_revoked_or_expired() {
    let app = token_app("");
    let ci = robot(&app, "ci-deploy", &["team/*:push"], None);
    assert!(ci.starts_with("berth_rt_"));
    let tok = token(
        &app,
        Some(("whatever", &ci)),
        &[PUSH_SCOPE, "repository:other/app:pull"],
    )
    .await;
    assert_eq!(
        access_of(&tok),
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    Image::random(1)
        .push(&bearer_client(&tok), &app.base, "team/app", "ci")
        .await;
    let (_, out, _) = app.cli(&["token", "list"], "");
    let line = out.lines().find(|l| l.starts_with("ci-deploy")).expect("listed");
    assert!(line.contains("live") && line.contains("team/*:push"), "{line}");
    let last_used = line.split_whitespace().nth(3).unwrap();
    assert!(last_used.starts_with("20"), "last use is recorded: {line}");
    assert!(!out.contains(&ci), "the token itself is never shown again");

    // A token that does not exist, or is revoked, is refused.
    assert_eq!(token_response(&app, Some(("x", "berth_rt_forged")), &[]).await.0, 401);
    let (ok, _, _) = app.cli(&["token", "revoke", "ci-deploy"], "");
    assert!(ok);
    assert_eq!(token_response(&app, Some(("x", &ci)), &[PUSH_SCOPE]).await.0, 401);

    // Expiry.
    let short = robot(&app, "short", &["team/*:pull"], Some("1h"));
    assert_eq!(token_response(&app, Some(("x", &short)), &[]).await.0, 200);
    app.advance_clock(3_600_000);
    assert_eq!(token_response(&app, Some(("x", &short)), &[]).await.0, 401);

    // Creation and revocation are audited.
    let (_, audit, _) = app.cli(&["audit"], "");
    assert!(
        audit.contains("token.create") && audit.contains("token.revoke"),
        "{audit}"
    );
}

#[tokio::test]
async fn anonymous_pull_only_where_configured() {
    let app = token_app("anonymous = [\"public/**\"]");
    add_user(&app, "admin", "admin-secret-password", true);
    let admin = token(
        &app,
        Some(("admin", "admin-secret-password")),
        &["repository:public/base:pull,push", PUSH_SCOPE],
    )
    .await;
    let image = Image::random(1);
    image.push(&bearer_client(&admin), &app.base, "public/base", "1").await;
    image.push(&bearer_client(&admin), &app.base, "team/app", "1").await;

    let anon = token(
        &app,
        None,
        &["repository:public/base:pull,push", "repository:team/app:pull"],
    )
    .await;
    assert_eq!(
        access_of(&anon),
        json!([{"type": "repository", "name": "public/base", "actions": ["pull"]}])
    );
    let client = bearer_client(&anon);
    let resp = client.get(app.url("/v2/public/base/manifests/1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client.get(app.url("/v2/team/app/manifests/1")).send().await.unwrap();
    assert_error(resp, 401, "DENIED").await;
    let resp = client
        .post(app.url("/v2/public/base/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "DENIED").await;

    // The catalog lists only what the caller may pull.
    let anon = token(&app, None, &["registry:catalog:*"]).await;
    let listed: Value = bearer_client(&anon)
        .get(app.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!({"repositories": ["public/base"]}));
    let admin = token(&app, Some(("admin", "admin-secret-password")), &["registry:catalog:*"]).await;
    let listed: Value = bearer_client(&admin)
        .get(app.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!({"repositories": ["public/base", "team/app"]}));
    // Without the catalog scope the catalog is refused.
    let resp = bearer_client(&token(&app, None, &[]).await)
        .get(app.url("/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "DENIED").await;
}

#[tokio::test]
async fn catalog_pages_count_only_visible_repositories() {
    let app = token_app("");
    add_user(&app, "admin", "admin-secret-password", true);
    add_user(&app, "alice", ALICE_PASSWORD, false);
    grant(&app, "user:alice", "team/*", "pull");
    let admin = token(&app, Some(("admin", "admin-secret-password")), &["repository:*:*"]).await;
    assert_eq!(
        access_of(&admin),
        json!([{"type": "repository", "name": "*", "actions": ["pull", "push", "delete"]}])
    );
    let admin = bearer_client(&admin);
    for repo in ["a/x", "team/a", "team/b", "z/y", "team/c"] {
        push_blob(&admin, &app.base, repo, b"hello").await;
    }
    let alice = bearer_client(&token(&app, Some(("alice", ALICE_PASSWORD)), &["registry:catalog:*"]).await);
    let resp = alice.get(app.url("/v2/_catalog?n=2")).send().await.unwrap();
    assert_eq!(header(&resp, "link"), "</v2/_catalog?n=2&last=team%2Fb>; rel=\"next\"");
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page, json!({"repositories": ["team/a", "team/b"]}));
    let resp = alice
        .get(app.url("/v2/_catalog?n=2&last=team%2Fb"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("link").is_none());
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"repositories": ["team/c"]}));
}

#[tokio::test]
async fn a_mount_needs_pull_on_its_source() {
    let app = token_app("");
    add_user(&app, "admin", "admin-secret-password", true);
    add_user(&app, "alice", ALICE_PASSWORD, false);
    grant(&app, "user:alice", "team/*", "push");
    let admin = bearer_client(&token(&app, Some(("admin", "admin-secret-password")), &["repository:*:*"]).await);
    let secret = push_blob(&admin, &app.base, "secret/x", b"secret bytes").await;
    let shared = push_blob(&admin, &app.base, "team/a", b"shared bytes").await;

    let scopes = [
        "repository:team/b:pull,push",
        "repository:secret/x:pull",
        "repository:team/a:pull",
    ];
    let alice = bearer_client(&token(&app, Some(("alice", ALICE_PASSWORD)), &scopes).await);
    for path in [
        format!("/v2/team/b/blobs/uploads/?mount={secret}&from=secret/x"),
        format!("/v2/team/b/blobs/uploads/?mount={secret}"),
    ] {
        let resp = alice.post(app.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 202, "{path}: falls back to an upload session");
    }
    let resp = alice
        .get(app.url(&format!("/v2/team/b/blobs/{secret}")))
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, "BLOB_UNKNOWN").await;
    let resp = alice
        .post(app.url(&format!("/v2/team/b/blobs/uploads/?mount={shared}&from=team/a")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = alice
        .post(app.url(&format!("/v2/team/c/blobs/uploads/?mount={shared}")))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "DENIED").await;
}

#[tokio::test]
async fn failed_logins_are_limited_per_account_and_address() {
    let app = token_app("[auth.login_limit]\nfailures = 3\nwindow_secs = 60");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    for _ in 0..3 {
        assert_eq!(
            token_response(&app, Some(("alice", "wrong-password")), &[]).await.0,
            401
        );
    }
    let resp = app
        .client
        .get(app.url("/v2/token"))
        .header("authorization", basic("alice", ALICE_PASSWORD))
        .send()
        .await
        .unwrap();
    let retry: u64 = header(&resp, "retry-after").parse().expect("Retry-After seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_error(resp, 429, "TOOMANYREQUESTS").await;
    // The address is limited too, whatever account it tries next.
    assert_eq!(token_response(&app, Some(("bob", "anything-at-all")), &[]).await.0, 429);
    // Anonymous tokens need no login and are not limited.
    assert_eq!(token_response(&app, None, &[]).await.0, 200);
}

#[tokio::test]
async fn concurrent_failed_logins_cannot_overrun_the_limit() {
    let app = token_app("[auth.login_limit]\nfailures = 3\nwindow_secs = 3600");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    let attempts = (0..20).map(|i| {
        let app = &app;
        async move { token_response(app, Some(("alice", &format!("guess-{i}"))), &[]).await.0 }
    });
    let statuses = futures::future::join_all(attempts).await;
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((unauthorized, limited), (3, 17), "{statuses:?}");
}

#[tokio::test]
async fn the_oauth2_form_issues_and_honours_refresh_tokens() {
    let app = token_app("");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    grant(&app, "user:alice", "team/*", "push");
    let form = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    };
    let post = |body: String| {
        app.client
            .post(app.url("/v2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let resp = post(form(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", ALICE_PASSWORD),
        ("service", "berth"),
        ("client_id", "docker"),
        ("access_type", "offline"),
        ("scope", "repository:team/app:pull,push repository:team/b:pull"),
    ]))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    for key in ["token", "access_token", "expires_in", "issued_at", "refresh_token"] {
        assert!(!body[key].is_null(), "{key} in {body}");
    }
    assert_eq!(body["expires_in"], 900);
    assert_eq!(
        access_of(body["access_token"].as_str().unwrap())
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let refresh = body["refresh_token"].as_str().unwrap().to_string();

    let resp = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", "berth"),
        ("scope", "repository:team/app:push"),
    ]))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        access_of(body["token"].as_str().unwrap()),
        json!([{"type": "repository", "name": "team/app", "actions": ["push"]}])
    );
    // A refresh token is not an access token, and vice versa.
    let resp = bearer_client(&refresh).get(app.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let access = body["token"].as_str().unwrap().to_string();
    let resp = post(form(&[("grant_type", "refresh_token"), ("refresh_token", &access)]))
        .await
        .unwrap();
    assert_error(resp, 401, "UNAUTHORIZED").await;
    let resp = post(form(&[("grant_type", "client_credentials")])).await.unwrap();
    assert_error(resp, 400, "INVALID_REQUEST").await;

    // Credentials in a GET query are ignored: the answer is an anonymous token.
    let resp = app
        .client
        .get(app.url(&format!(
            "/v2/token?grant_type=password&username=alice&password={ALICE_PASSWORD}&scope=repository:team/app:pull"
        )))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(access_of(body["token"].as_str().unwrap()), json!([]));
    let resp = post(form(&[("username", "alice"), ("password", ALICE_PASSWORD)]))
        .await
        .unwrap();
    assert_error(resp, 400, "INVALID_REQUEST").await;

    // A refresh grant gives no new refresh token, so one lasts at most its lifetime.
    let resp = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("access_type", "offline"),
    ]))
    .await
    .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(body["refresh_token"].is_null(), "{body}");

    // A new password voids the refresh tokens of the old one.
    let (ok, _, _) = app.cli(&["user", "passwd", "alice"], "another-password\n");
    assert!(ok);
    let resp = post(form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]))
        .await
        .unwrap();
    assert_error(resp, 401, "UNAUTHORIZED").await;
    let resp = post(form(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "another-password"),
        ("access_type", "offline"),
    ]))
    .await
    .unwrap();
    let refresh = resp.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();

    // A robot's refresh token dies with the robot, even when its name is reused.
    let ci = robot(&app, "ci", &["team/*:push"], None);
    let resp = post(form(&[
        ("grant_type", "password"),
        ("username", "x"),
        ("password", &ci),
        ("access_type", "offline"),
    ]))
    .await
    .unwrap();
    let robot_refresh = resp.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let refreshed = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &robot_refresh),
    ]))
    .await
    .unwrap();
    assert_eq!(refreshed.status(), 200);
    assert!(app.cli(&["token", "revoke", "ci"], "").0);
    robot(&app, "ci", &["team/*:push"], None);
    let resp = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &robot_refresh),
    ]))
    .await
    .unwrap();
    assert_error(resp, 401, "UNAUTHORIZED").await;

    // Disabling the user ends the refresh token's use.
    let (ok, _, _) = app.cli(&["user", "disable", "alice"], "");
    assert!(ok);
    let resp = post(form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]))
        .await
        .unwrap();
    assert_error(resp, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn the_admin_api_is_for_administrators_and_audited() {
    let app = token_app("");
    add_user(&app, "root", "root-secret-password", true);
    add_user(&app, "alice", ALICE_PASSWORD, false);
    let root = authorized_client(&basic("root", "root-secret-password"));

    let resp = app.client.get(app.url("/api/v1/grants")).send().await.unwrap();
    assert_error(resp, 401, "UNAUTHORIZED").await;
    let resp = app
        .client
        .get(app.url("/api/v1/grants"))
        .header("authorization", basic("alice", ALICE_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "DENIED").await;

    let resp = root
        .post(app.url("/api/v1/grants"))
        .json(&json!({"subject": "user:alice", "pattern": "team/*", "role": "push"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let tok = token(&app, Some(("alice", ALICE_PASSWORD)), &[PUSH_SCOPE]).await;
    assert_eq!(access_of(&tok)[0]["actions"], json!(["pull", "push"]));

    for (body, code) in [
        (
            json!({"subject": "team:x", "pattern": "a", "role": "push"}),
            "INVALID_REQUEST",
        ),
        (
            json!({"subject": "user:alice", "pattern": "A/B", "role": "push"}),
            "INVALID_REQUEST",
        ),
        (
            json!({"subject": "user:alice", "pattern": "a", "role": "write"}),
            "INVALID_REQUEST",
        ),
        (
            json!({"subject": "user:alice", "pattern": "team/*", "role": "push"}),
            "CONFLICT",
        ),
        (json!({"nonsense": true}), "INVALID_REQUEST"),
    ] {
        let resp = root.post(app.url("/api/v1/grants")).json(&body).send().await.unwrap();
        let status = if code == "CONFLICT" { 409 } else { 400 };
        assert_error(resp, status, code).await;
    }

    // A bearer token of an administrator works too.
    let root_token = token(&app, Some(("root", "root-secret-password")), &[]).await;
    let resp = bearer_client(&root_token)
        .post(app.url("/api/v1/tokens"))
        .json(&json!({"name": "deploy", "grants": ["team/*:pull"], "expires": "30d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let robot_token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token_response(&app, Some(("x", &robot_token)), &[]).await.0, 200);
    let resp = bearer_client(&tok).get(app.url("/api/v1/tokens")).send().await.unwrap();
    assert_error(resp, 403, "DENIED").await;

    let resp = root
        .delete(app.url(&format!("/api/v1/grants/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = root.delete(app.url("/api/v1/tokens/deploy")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let resp = root
        .post(app.url("/api/v1/users"))
        .json(&json!({"name": "dave", "password": "dave-secret-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let users: Value = root
        .get(app.url("/api/v1/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 3);
    assert_eq!(
        token_response(&app, Some(("dave", "dave-secret-password")), &[])
            .await
            .0,
        200
    );
    for (action, status) in [("disable", 204), ("frobnicate", 404)] {
        let resp = root
            .post(app.url(&format!("/api/v1/users/dave/{action}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{action}");
    }
    assert_eq!(
        token_response(&app, Some(("dave", "dave-secret-password")), &[])
            .await
            .0,
        401
    );

    let audit: Value = root
        .get(app.url("/api/v1/audit?limit=7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("user:root", "user.disable"),
        ("user:root", "user.create"),
        ("user:root", "token.revoke"),
        ("user:root", "grant.remove"),
        ("user:root", "grant.add"),
        ("user:root", "token.create"),
        ("user:root", "grant.add"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn replicas_with_one_key_accept_each_others_tokens() {
    let key = "a shared secret of at least thirty-two bytes";
    let one = token_app(&format!("[auth.token]\nkey = \"{key}\""));
    let two = token_app(&format!("[auth.token]\nkey = \"{key}\""));
    let other = token_app("");
    add_user(&one, "alice", ALICE_PASSWORD, false);
    let tok = token(&one, Some(("alice", ALICE_PASSWORD)), &[]).await;
    let client = bearer_client(&tok);
    assert_eq!(client.get(two.url("/v2/")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(other.url("/v2/")).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn the_generated_key_survives_a_restart() {
    let mut app = token_app("");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    let tok = token(&app, Some(("alice", ALICE_PASSWORD)), &[]).await;
    let key = app.data_dir().join("token.key");
    if scaleout() {
        // Replicas without a configured key share one kept in the database.
        assert!(
            !key.exists(),
            "a scale-out server keeps its generated key in the database"
        );
    } else {
        assert!(key.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
    app.restart();
    assert_eq!(
        bearer_client(&tok).get(app.url("/v2/")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let app = token_app("");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    grant(&app, "user:alice", "team/*", "push");
    let ci = robot(&app, "ci", &["team/*:push"], None);
    let tok = token(&app, Some(("alice", ALICE_PASSWORD)), &[PUSH_SCOPE]).await;
    Image::random(1)
        .push(&bearer_client(&tok), &app.base, "team/app", "x")
        .await;
    token(&app, Some(("x", &ci)), &[PUSH_SCOPE]).await;
    token_response(&app, Some(("alice", "a-wrong-password")), &[]).await;
    // The log is read from the server's stderr by a thread; give it a moment.
    let mut log = app.log();
    for _ in 0..50 {
        if log.contains("login failed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        log = app.log();
    }
    assert!(
        log.contains("login failed"),
        "failures are logged (without the password)"
    );
    for secret in [ALICE_PASSWORD, "a-wrong-password", ci.as_str(), tok.as_str()] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
}
