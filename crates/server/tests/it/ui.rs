//! The web UI over HTTP: pages render what the registry holds, escape what
//! clients pushed, carry the security headers, and sign-in, CSRF, sessions,
//! stars, tokens, retention and deletion work as a browser uses them. The
//! browser itself drives them in `tests/ui` (Playwright).

use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::auth_harness::*;
use crate::harness::*;
use crate::referrers::push_referrer;

/// The value of cookie `name` among a response's `Set-Cookie` headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.strip_prefix(&format!("{name}="))
                .map(|rest| rest.split(';').next().unwrap_or("").to_string())
        })
}

/// The value of the first hidden `csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

/// A browser with a session: the cookie and the session's CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

impl Browser {
    async fn sign_in(app: &TestApp, user: &str, password: &str) -> Browser {
        let form = app.client.get(app.url("/ui/login")).send().await.unwrap();
        assert_eq!(form.status(), 200);
        let login_cookie = set_cookie(&form, "berth_login").expect("the sign-in form's cookie");
        let token = csrf_of(&form.text().await.unwrap());
        let resp = app
            .client
            .post(app.url("/ui/login"))
            .header(COOKIE, format!("berth_login={login_cookie}"))
            .form(&[
                ("username", user),
                ("password", password),
                ("csrf", &token),
                ("next", "/ui/account"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::SEE_OTHER,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        assert_eq!(resp.headers()[LOCATION], "/ui/account");
        let raw = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|v| v.starts_with("berth_session="))
            .expect("a session cookie");
        assert!(raw.contains("HttpOnly") && raw.contains("SameSite=Lax"), "{raw}");
        let cookie = set_cookie(&resp, "berth_session").unwrap();
        let mut browser = Browser {
            cookie,
            csrf: String::new(),
        };
        let account = browser.get(app, "/ui/account").await;
        assert_eq!(account.status(), 200);
        browser.csrf = csrf_of(&account.text().await.unwrap());
        browser
    }

    async fn get(&self, app: &TestApp, path: &str) -> reqwest::Response {
        app.client
            .get(app.url(path))
            .header(COOKIE, format!("berth_session={}", self.cookie))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, app: &TestApp, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &self.csrf));
        app.client
            .post(app.url(path))
            .header(COOKIE, format!("berth_session={}", self.cookie))
            .form(&form)
            .send()
            .await
            .unwrap()
    }
}

/// A client with a token to push to `repo` as `login`.
async fn pusher(app: &TestApp, login: &str, password: &str, repo: &str) -> reqwest::Client {
    let scope = format!("repository:{repo}:pull,push");
    bearer_client(&token(app, Some((login, password)), &[scope.as_str()]).await)
}

async fn status_of(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.unwrap().status()
}

async fn page(app: &TestApp, path: &str) -> (StatusCode, String) {
    let resp = app.get(path).await;
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn pages_show_a_multi_arch_image_its_signature_and_escape_what_was_pushed() {
    let app = TestApp::start();
    let amd = Image::random(1);
    let arm = Image::random(2);
    let platforms = [
        json!({ "os": "linux", "architecture": "amd64" }),
        json!({ "os": "linux", "architecture": "arm64", "variant": "v8" }),
    ];
    let index = app
        .push_index("team/app", "v1", &[amd.clone(), arm.clone()], &platforms)
        .await;
    let index_digest = sha256(&index);
    let subject = json!({ "mediaType": OCI_INDEX, "digest": index_digest, "size": index.len() });
    let hostile = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    let (sig, _) = push_referrer(
        &app,
        "team/app",
        &subject,
        Some("application/vnd.dev.cosign.artifact.sig.v1+json"),
        json!({ "note": hostile }),
    )
    .await;
    app.push_image("team/other", "latest", 1).await;
    app.push_image("zeta/tool", "1.0", 1).await;

    let resp = app.get("/ui/").await;
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let home = resp.text().await.unwrap();
    assert!(home.contains("team/app") && home.contains("zeta/tool"), "{home}");
    assert!(
        !home.contains("<script>") && !home.contains("style="),
        "inline script or style on the home page"
    );

    // Search by prefix and substring, case-insensitive; a hostile query is escaped.
    let (_, found) = page(&app, "/ui/repositories?q=TEAM").await;
    assert!(found.contains("team/app") && found.contains("team/other") && !found.contains("zeta/tool"));
    let (_, found) = page(&app, "/ui/repositories?q=ool").await;
    assert!(found.contains("zeta/tool") && !found.contains("team/app"));
    let (status, found) = page(&app, "/ui/repositories?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(status, 200);
    assert!(found.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !found.contains("<script>alert"));

    // The repository page: the tag with its platforms and size, the signature under it.
    let (status, repo) = page(&app, "/ui/r/team/app").await;
    assert_eq!(status, 200, "{repo}");
    assert!(repo.contains(">v1<"), "{repo}");
    assert!(repo.contains("linux/amd64, linux/arm64/v8"), "{repo}");
    assert!(repo.contains("docker pull 127.0.0.1"), "{repo}");
    assert!(repo.contains("pushed"));

    // The manifest page: children by platform, the signature, the JSON escaped.
    let (status, manifest) = page(&app, &format!("/ui/r/team/app/-/manifest/{index_digest}?tag=v1")).await;
    assert_eq!(status, 200, "{manifest}");
    assert!(manifest.contains(&amd.digest) && manifest.contains(&arm.digest));
    assert!(manifest.contains("linux/arm64/v8"));
    assert!(manifest.contains("signature"), "{manifest}");
    assert!(manifest.contains(&sig[7..19]), "the signature's short digest");
    assert!(
        manifest.contains(&format!("@{index_digest}")),
        "a digest-pinned pull line"
    );
    let (status, signature) = page(&app, &format!("/ui/r/team/app/-/manifest/{sig}")).await;
    assert_eq!(status, 200);
    assert!(
        !signature.contains("<script>alert") && !signature.contains("<img src=x"),
        "{signature}"
    );
    assert!(
        signature.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{signature}"
    );

    // The child's config is shown.
    let (_, child) = page(&app, &format!("/ui/r/team/app/-/manifest/{}", amd.digest)).await;
    assert!(child.contains("rootfs"), "{child}");

    // Names that are not repositories, and digests that are not digests, are 404 pages without echo.
    for path in [
        "/ui/r/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/ui/r/team/app/-/manifest/sha256:%3Cb%3E",
        "/ui/r/nope/nope",
        "/ui/r/team/app/-/nothing",
    ] {
        let (status, body) = page(&app, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            !body.contains("<script>alert") && !body.contains("<b>"),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn tag_counts_leave_out_signatures_and_pages_go_by_push_time() {
    let app = TestApp::start_with_clock("");
    let image = app.push_image("lib/app", "a", 1).await;
    for tag in ["b", "c"] {
        app.advance_clock(1000);
        let resp = app.put_manifest("lib/app", tag, OCI_MANIFEST, &image.manifest).await;
        assert_eq!(resp.status(), 201);
    }
    // cosign's tag scheme: not an image of the repository.
    let hex = &image.digest[7..];
    let sig = app
        .put_manifest("lib/app", &format!("sha256-{hex}.sig"), OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(sig.status(), 201);
    let (_, list) = page(&app, "/ui/repositories").await;
    let row = list.split("lib/app").nth(2).expect("a row for lib/app");
    assert!(row.contains(">3<"), "three tags, not four: {row}");
    let (_, repo) = page(&app, "/ui/r/lib/app").await;
    let (c, a) = (repo.find(">c<").unwrap(), repo.find(">a<").unwrap());
    assert!(c < a, "latest push first");
    assert!(repo.contains("signature"), "the .sig tag is marked");

    // A tag-suffix rule shows with its expiry.
    let resp = app
        .put_manifest("lib/app", "pr-7--ttl-7d", OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(resp.status(), 201);
    let (_, repo) = page(&app, "/ui/r/lib/app").await;
    let row = repo.split("tag=pr-7--ttl-7d\">").nth(1).expect("the ttl tag's row");
    let row = row.split("</tr>").next().unwrap();
    assert!(row.contains(">ttl<") && row.contains("expires"), "{row}");
}

#[tokio::test]
async fn sign_in_sessions_csrf_and_stars() {
    let app = token_app("anonymous = [\"public/**\"]");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    add_user(&app, "root", "root-password-long", true);
    grant(&app, "user:alice", "team/**", "push");
    for repo in ["team/app", "public/base", "secret/thing"] {
        let push = pusher(&app, "root", "root-password-long", repo).await;
        Image::random(1).push(&push, &app.base, repo, "latest").await;
    }

    // Anonymous: only what anonymous pull allows; admin pages ask for a sign-in.
    let (_, list) = page(&app, "/ui/repositories").await;
    assert!(list.contains("public/base") && !list.contains("team/app") && !list.contains("secret/thing"));
    assert_eq!(page(&app, "/ui/r/team/app").await.0, 401);
    assert_eq!(page(&app, "/ui/admin").await.0, 401);

    // A wrong password is refused on the form, without a session.
    let form = app.client.get(app.url("/ui/login")).send().await.unwrap();
    let login_cookie = set_cookie(&form, "berth_login").unwrap();
    let token = csrf_of(&form.text().await.unwrap());
    let wrong = app
        .client
        .post(app.url("/ui/login"))
        .header(COOKIE, format!("berth_login={login_cookie}"))
        .form(&[("username", "alice"), ("password", "nope"), ("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(set_cookie(&wrong, "berth_session").is_none());
    // Without the form's cookie (a form posted from elsewhere) nothing is checked.
    let forged = app
        .client
        .post(app.url("/ui/login"))
        .form(&[("username", "alice"), ("password", ALICE_PASSWORD), ("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    let alice = Browser::sign_in(&app, "alice", ALICE_PASSWORD).await;
    let (resp, list) = {
        let r = alice.get(&app, "/ui/repositories").await;
        (r.status(), r.text().await.unwrap())
    };
    assert_eq!(resp, 200);
    assert!(list.contains("team/app") && list.contains("public/base") && !list.contains("secret/thing"));
    assert_eq!(alice.get(&app, "/ui/admin").await.status(), 403);
    assert_eq!(alice.get(&app, "/ui/r/secret/thing").await.status(), 404);

    // Stars: CSRF required, cross-site refused, then starred and listed.
    let no_csrf = app
        .client
        .post(app.url("/ui/r/team/app/-/star"))
        .header(COOKIE, format!("berth_session={}", alice.cookie))
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
    let cross = app
        .client
        .post(app.url("/ui/r/team/app/-/star"))
        .header(COOKIE, format!("berth_session={}", alice.cookie))
        .header("origin", "http://evil.example")
        .form(&[("csrf", alice.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let starred = alice.post(&app, "/ui/r/team/app/-/star", &[]).await;
    assert_eq!(starred.status(), StatusCode::SEE_OTHER);
    let list = alice.get(&app, "/ui/starred").await.text().await.unwrap();
    assert!(list.contains("team/app"), "{list}");
    let repo = alice.get(&app, "/ui/r/team/app").await.text().await.unwrap();
    assert!(repo.contains("1 star") && repo.contains("Unstar"), "{repo}");
    assert_eq!(
        alice.post(&app, "/ui/r/team/app/-/unstar", &[]).await.status(),
        StatusCode::SEE_OTHER
    );
    let list = alice.get(&app, "/ui/starred").await.text().await.unwrap();
    assert!(!list.contains("team/app"));

    // The administrator sees alice's session and ends it.
    let root = Browser::sign_in(&app, "root", "root-password-long").await;
    let sessions = root.get(&app, "/ui/admin/sessions").await.text().await.unwrap();
    assert!(sessions.contains("alice"), "{sessions}");
    let ended = root
        .post(
            &app,
            "/ui/admin/sessions",
            &[("action", "end-all"), ("subject", "alice")],
        )
        .await;
    assert_eq!(ended.status(), 200);
    assert!(ended.text().await.unwrap().contains("1 sessions of alice ended"));
    assert_eq!(
        alice.get(&app, "/ui/r/team/app").await.status(),
        401,
        "the session is over"
    );

    // Sign-out ends the session too.
    let out = root.post(&app, "/ui/logout", &[]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.get(&app, "/ui/admin").await.status(), 401);
}

#[tokio::test]
async fn a_robot_token_made_in_the_ui_pushes_until_it_is_revoked() {
    let app = token_app("");
    add_user(&app, "root", "root-password-long", true);
    let root = Browser::sign_in(&app, "root", "root-password-long").await;
    let resp = root
        .post(
            &app,
            "/ui/admin/tokens",
            &[("action", "create"), ("name", "ci"), ("grants", "ci/*:push")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    let at = page
        .find("id=\"new-secret\" readonly value=\"")
        .expect("the secret, once")
        + 32;
    let secret = page[at..].split('"').next().unwrap().to_string();
    assert!(secret.len() > 20);
    let tokens = root.get(&app, "/ui/admin/tokens").await.text().await.unwrap();
    assert!(
        tokens.contains(">ci<") && !tokens.contains(&secret),
        "the secret is shown only once"
    );

    let client = pusher(&app, "anything", &secret, "ci/app").await;
    let image = Image::random(1);
    image.push(&client, &app.base, "ci/app", "1").await;

    let revoked = root
        .post(&app, "/ui/admin/tokens", &[("action", "revoke"), ("name", "ci")])
        .await;
    assert_eq!(revoked.status(), 200);
    let (status, _) = token_response(&app, Some(("anything", &secret)), &["repository:ci/app:push"]).await;
    assert_eq!(status, 401, "a revoked token gets no token");
}

#[tokio::test]
async fn the_retention_preview_follows_the_draft_and_deletion_asks_first() {
    let app = TestApp::start_with_clock("");
    for i in 0..5 {
        app.push_image("keep/app", &format!("t{i}"), 1).await;
        app.advance_clock(1000);
    }
    let preview = |rules: &str| format!("/ui/admin/retention?pattern=keep%2F**&rules={}", percent_encode(rules));
    let (status, two) = page(&app, &preview(r#"{"keep_last": 2}"#)).await;
    assert_eq!(status, 200, "{two}");
    assert!(two.contains("3 tags to delete"), "{two}");
    let (_, four) = page(&app, &preview(r#"{"keep_last": 4}"#)).await;
    assert!(four.contains("1 tag to delete"), "{four}");
    let (_, bad) = page(&app, &preview(r#"{"keep_lats": 4}"#)).await;
    assert!(bad.contains("not valid"), "{bad}");
    // Nothing was saved or deleted by previews.
    let tags: Value = app.get("/v2/keep/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"].as_array().unwrap().len(), 5);

    // Deleting a tag: a GET shows the confirmation, the POST needs it.
    let (status, confirm) = page(&app, "/ui/r/keep/app/-/delete?tag=t0").await;
    assert_eq!(status, 200);
    assert!(confirm.contains("keep/app:t0"));
    let unconfirmed = app
        .client
        .post(app.url("/ui/r/keep/app/-/delete"))
        .form(&[("tag", "t0")])
        .send()
        .await
        .unwrap();
    assert_eq!(unconfirmed.status(), 400);
    let done = app
        .client
        .post(app.url("/ui/r/keep/app/-/delete"))
        .form(&[("tag", "t0"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.get("/v2/keep/app/manifests/t0").await.status(), 404);
    assert_eq!(app.get("/v2/keep/app/manifests/t1").await.status(), 200);

    // The whole repository.
    let done = app
        .client
        .post(app.url("/ui/r/keep/app/-/delete"))
        .form(&[("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    for i in 1..5 {
        assert_eq!(app.get(&format!("/v2/keep/app/manifests/t{i}")).await.status(), 404);
    }
}

/// Follows the identity provider's redirects as a browser would, keeping
/// its cookies, until one leads back to `base`; returns that URL.
async fn through_the_provider(client: &reqwest::Client, start: &str, base: &str) -> String {
    let mut cookies: Vec<(String, String)> = Vec::new();
    let mut url = start.to_string();
    for _ in 0..20 {
        if url.starts_with(base) {
            return url;
        }
        let jar = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let resp = client.get(&url).header(COOKIE, jar).send().await.unwrap();
        for value in resp.headers().get_all(SET_COOKIE) {
            let pair = value.to_str().unwrap().split(';').next().unwrap().to_string();
            if let Some((k, v)) = pair.split_once('=') {
                cookies.retain(|(name, _)| name != k);
                cookies.push((k.to_string(), v.to_string()));
            }
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .unwrap_or_else(|| panic!("the provider stopped at {url}: {}", resp.status()))
            .to_str()
            .unwrap()
            .to_string();
        url = resolve(&url, &location);
    }
    panic!("too many redirects at the provider");
}

fn sso_provider() -> Helper {
    crate::auth_oidc::provider(&[
        "--redirect-uri",
        "http://127.0.0.1/ui/sso/callback",
        "--extra-claims",
        r#"{"groups":["devs"]}"#,
    ])
}

/// Signs in through the provider as `account`; returns the final answer of Berth's callback.
async fn sso_sign_in(app: &TestApp, account: &str) -> reqwest::Response {
    let start = app
        .client
        .get(app.url(&format!("/ui/sso/start?login_hint={account}&next=/ui/account")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        start.status(),
        StatusCode::SEE_OTHER,
        "{}",
        start.text().await.unwrap_or_default()
    );
    let flow = set_cookie(&start, "berth_sso").expect("the sign-in's cookie");
    let authorize = start.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(
        authorize.contains("code_challenge_method=S256") && authorize.contains("nonce="),
        "{authorize}"
    );
    let callback = through_the_provider(&app.client, &authorize, &app.base).await;
    app.client
        .get(&callback)
        .header(COOKIE, format!("berth_sso={flow}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn single_sign_on_provisions_users_maps_groups_and_never_takes_a_local_name() {
    let idp = sso_provider();
    let app = token_app(&format!(
        r#"
[[auth.oidc]]
issuer = "{issuer}"
audience = "berth"
groups_claim = "groups"
[[auth.oidc.rules]]
claims = {{ sub = "*" }}
grants = ["home/{{sub}}/**:push"]

[ui.sso]
issuer = "{issuer}"
client_id = "berth"
"#,
        issuer = idp.url
    ));
    add_user(&app, "root", "root-password-long", true);
    grant(&app, "group:devs", "shared/**", "pull");
    for repo in ["shared/base", "secret/x"] {
        let push = pusher(&app, "root", "root-password-long", repo).await;
        Image::random(1).push(&push, &app.base, repo, "1").await;
    }

    let resp = app.get("/ui/login").await;
    // Its form is redirected to the provider: the page's form-action allows
    // the provider's origin (browsers apply form-action to redirects), and
    // nothing more is loosened.
    let csp = resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
    assert!(csp.contains(&format!("form-action 'self' {};", idp.url)), "{csp}");
    assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe"), "{csp}");
    let login = resp.text().await.unwrap();
    assert!(
        login.contains("/ui/sso/start"),
        "the sign-in page offers single sign-on"
    );
    let home = app.get("/ui/").await;
    let csp = home.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("form-action 'self';"),
        "other pages keep form-action 'self': {csp}"
    );

    let done = sso_sign_in(&app, "carol").await;
    assert_eq!(
        done.status(),
        StatusCode::SEE_OTHER,
        "{}",
        done.text().await.unwrap_or_default()
    );
    assert_eq!(done.headers()[LOCATION], "/ui/account");
    let carol = Browser {
        cookie: set_cookie(&done, "berth_session").expect("a session"),
        csrf: String::new(),
    };
    let account = carol.get(&app, "/ui/account").await.text().await.unwrap();
    assert!(account.contains("carol"), "{account}");
    assert!(account.contains("home/carol/**"), "the claim rule's grant: {account}");
    assert!(account.contains("shared/**"), "the group's grant: {account}");
    let list = carol.get(&app, "/ui/repositories").await.text().await.unwrap();
    assert!(list.contains("shared/base") && !list.contains("secret/x"), "{list}");

    // Provisioned: the administrator sees carol, and disabling her ends her session.
    let root = Browser::sign_in(&app, "root", "root-password-long").await;
    let users = root.get(&app, "/ui/admin/users").await.text().await.unwrap();
    assert!(users.contains("carol") && users.contains("single sign-on"), "{users}");
    let off = root
        .post(&app, "/ui/admin/users", &[("action", "disable"), ("name", "carol")])
        .await;
    assert_eq!(off.status(), 200);
    assert_eq!(carol.get(&app, "/ui/account").await.status(), 401);
    assert_eq!(
        sso_sign_in(&app, "carol").await.status(),
        403,
        "a disabled user cannot sign in again"
    );

    // A local user's name is not taken over by the provider's account of the same name.
    let refused = sso_sign_in(&app, "root").await;
    assert_eq!(refused.status(), 400);
    assert!(set_cookie(&refused, "berth_session").is_none());

    // An answer without the sign-in's cookie (a forged callback) is refused.
    let start = app
        .client
        .get(app.url("/ui/sso/start?login_hint=dave"))
        .send()
        .await
        .unwrap();
    let authorize = start.headers()[LOCATION].to_str().unwrap().to_string();
    let callback = through_the_provider(&app.client, &authorize, &app.base).await;
    let forged = app.client.get(&callback).send().await.unwrap();
    assert_eq!(forged.status(), 400);
}

#[tokio::test]
async fn a_personal_access_token_acts_as_its_user_until_revoked() {
    let app = token_app("");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    grant(&app, "user:alice", "team/**", "push");
    let alice = Browser::sign_in(&app, "alice", ALICE_PASSWORD).await;
    let resp = alice
        .post(&app, "/ui/account", &[("action", "create"), ("label", "laptop")])
        .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let at = body.find("id=\"new-secret\" readonly value=\"").expect("the secret") + 32;
    let secret = body[at..].split('"').next().unwrap().to_string();

    let client = pusher(&app, "alice", &secret, "team/app").await;
    Image::random(1).push(&client, &app.base, "team/app", "1").await;
    let (status, _) = token_response(&app, Some(("alice", &secret)), &["repository:other/x:push"]).await;
    assert_eq!(status, 200, "a token is issued, without other/x");

    // Another user cannot revoke it; alice can.
    let (_, tokens) = {
        let r = alice.get(&app, "/ui/account").await;
        (r.status(), r.text().await.unwrap())
    };
    assert!(tokens.contains("alice.laptop") && !tokens.contains(&secret));
    let revoked = alice
        .post(&app, "/ui/account", &[("action", "revoke"), ("name", "alice.laptop")])
        .await;
    assert_eq!(revoked.status(), 200);
    let (status, _) = token_response(&app, Some(("alice", &secret)), &["repository:team/app:pull"]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn failed_sign_ins_share_the_token_endpoints_limit() {
    let app = token_app("[auth.login_limit]\nfailures = 2\nwindow_secs = 600");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    let attempt = |password: &'static str| {
        let app = &app;
        async move {
            let form = app.client.get(app.url("/ui/login")).send().await.unwrap();
            let cookie = set_cookie(&form, "berth_login").unwrap();
            let token = csrf_of(&form.text().await.unwrap());
            app.client
                .post(app.url("/ui/login"))
                .header(COOKIE, format!("berth_login={cookie}"))
                .form(&[("username", "alice"), ("password", password), ("csrf", &token)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(attempt("wrong-1").await, 401);
    assert_eq!(attempt("wrong-2").await, 401);
    assert_eq!(attempt(ALICE_PASSWORD).await, 429, "the form is limited");
    let (status, _) = token_response(&app, Some(("alice", ALICE_PASSWORD)), &[]).await;
    assert_eq!(status, 429, "and so is the token endpoint, by the same count");
}

#[tokio::test]
async fn the_api_does_what_the_ui_does() {
    let app = token_app("");
    add_user(&app, "alice", ALICE_PASSWORD, false);
    add_user(&app, "root", "root-password-long", true);
    grant(&app, "user:alice", "team/**", "push");
    for (repo, tags) in [("team/app", 3), ("secret/x", 1)] {
        let push = pusher(&app, "root", "root-password-long", repo).await;
        for t in 0..tags {
            Image::random(1).push(&push, &app.base, repo, &format!("v{t}")).await;
        }
    }
    let alice = authorized_client(&basic("alice", ALICE_PASSWORD));
    let root = authorized_client(&basic("root", "root-password-long"));
    let json = |resp: reqwest::Response| async move {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    };

    // Browsing: what each may pull.
    let (status, anon) = json(app.get("/api/v1/repositories").await).await;
    assert_eq!(status, 200);
    assert_eq!(anon["repositories"], json!([]));
    let (_, list) = json(alice.get(app.url("/api/v1/repositories")).send().await.unwrap()).await;
    let names: Vec<&str> = list["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team/app"]);
    assert_eq!(list["repositories"][0]["tags"], 3);
    let (status, _) = json(
        alice
            .get(app.url("/api/v1/repositories/secret/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "a repository alice may not pull is unknown to her");

    // Tags by pages, newest first, with the lifecycle verdict.
    let (_, first) = json(alice.get(app.url("/api/v1/tags/team/app?n=2")).send().await.unwrap()).await;
    assert_eq!(first["total"], 3);
    assert_eq!(first["tags"][0]["name"], "v2");
    assert_eq!(first["tags"][0]["lifecycle"]["action"], "keep");
    let next = &first["next"];
    let url = format!(
        "/api/v1/tags/team/app?n=2&after_ms={}&after_tag={}",
        next["after_ms"],
        next["after_tag"].as_str().unwrap()
    );
    let (_, second) = json(alice.get(app.url(&url)).send().await.unwrap()).await;
    assert_eq!(second["tags"].as_array().unwrap().len(), 1);
    assert_eq!(second["tags"][0]["name"], "v0");
    assert!(second["next"].is_null());

    // Stars.
    assert_eq!(status_of(alice.put(app.url("/api/v1/stars/team/app"))).await, 204);
    let (_, detail) = json(
        alice
            .get(app.url("/api/v1/repositories/team/app"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (detail["stars"].clone(), detail["starred"].clone()),
        (json!(1), json!(true))
    );
    let (_, stars) = json(alice.get(app.url("/api/v1/stars")).send().await.unwrap()).await;
    assert_eq!(stars["repositories"][0]["name"], "team/app");
    assert_eq!(status_of(alice.delete(app.url("/api/v1/stars/team/app"))).await, 204);
    assert_eq!(status_of(alice.delete(app.url("/api/v1/stars/team/app"))).await, 404);
    assert_eq!(status_of(app.client.put(app.url("/api/v1/stars/team/app"))).await, 401);

    // A personal access token, made and revoked through the API.
    let (status, made) = json(
        alice
            .post(app.url("/api/v1/account/tokens"))
            .body(r#"{"label": "ci"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["name"], "alice.ci");
    let secret = made["token"].as_str().unwrap().to_string();
    let (status, _) = token_response(&app, Some(("alice", &secret)), &["repository:team/app:pull"]).await;
    assert_eq!(status, 200);
    let (_, mine) = json(alice.get(app.url("/api/v1/account/tokens")).send().await.unwrap()).await;
    assert_eq!(mine["tokens"][0]["name"], "alice.ci");
    assert_eq!(
        status_of(alice.delete(app.url("/api/v1/account/tokens/alice.ci"))).await,
        204
    );
    let (status, _) = token_response(&app, Some(("alice", &secret)), &["repository:team/app:pull"]).await;
    assert_eq!(status, 401);

    // Sessions, for administrators.
    let _browser = Browser::sign_in(&app, "alice", ALICE_PASSWORD).await;
    assert_eq!(status_of(alice.get(app.url("/api/v1/sessions"))).await, 403);
    let (_, sessions) = json(root.get(app.url("/api/v1/sessions")).send().await.unwrap()).await;
    assert_eq!(sessions["sessions"][0]["subject"], "alice");
    let (_, ended) = json(
        root.delete(app.url("/api/v1/users/alice/sessions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ended["ended"], 1);

    // A draft retention policy's preview, the totals and the last collection.
    let (status, draft) = json(
        root.post(app.url("/api/v1/retention/draft"))
            .body(r#"{"pattern": "team/**", "rules": {"keep_last": 1}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{draft}");
    assert_eq!(draft["summary"]["tags_deleted"], 2);
    let (_, totals) = json(root.get(app.url("/api/v1/summary")).send().await.unwrap()).await;
    assert_eq!(
        (totals["users"].clone(), totals["repositories"].clone()),
        (json!(2), json!(2))
    );
    let (_, gc) = json(root.get(app.url("/api/v1/gc")).send().await.unwrap()).await;
    assert!(gc["finished_at"].is_null());
    assert_eq!(status_of(root.post(app.url("/api/v1/gc"))).await, 200);
    let (_, gc) = json(root.get(app.url("/api/v1/gc")).send().await.unwrap()).await;
    assert!(
        gc["finished_at"].is_string() && gc["report"]["dry_run"] == json!(false),
        "{gc}"
    );

    // Deleting a tag, then the repository, needs the delete role.
    assert_eq!(
        status_of(alice.delete(app.url("/api/v1/tags/team/app?tag=v0"))).await,
        403
    );
    assert_eq!(
        status_of(root.delete(app.url("/api/v1/tags/team/app?tag=v0"))).await,
        204
    );
    let (_, left) = json(root.get(app.url("/api/v1/tags/team/app")).send().await.unwrap()).await;
    assert_eq!(left["total"], 2);
    assert_eq!(
        status_of(alice.delete(app.url("/api/v1/repositories/team/app"))).await,
        403
    );
    let (status, deleted) = json(
        root.delete(app.url("/api/v1/repositories/team/app"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["manifests_deleted"], 2);
    let tags: Value = app
        .client
        .get(app.url("/v2/team/app/tags/list"))
        .header(
            "authorization",
            format!(
                "Bearer {}",
                token(
                    &app,
                    Some(("root", "root-password-long")),
                    &["repository:team/app:pull"]
                )
                .await
            ),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tags["tags"].as_array().is_none_or(|t| t.is_empty()), "{tags}");
}
