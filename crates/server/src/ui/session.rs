//! Who is looking: browser sessions, sign-in and sign-out, and the CSRF
//! token of every form.
//!
//! The cookie holds a random secret; the store keeps only its SHA-256, so a
//! copy of the database signs nobody in. The cookie is HttpOnly,
//! SameSite=Lax, and Secure when the UI is served over TLS (by Berth or by a
//! proxy that says `X-Forwarded-Proto: https`). Sessions end after
//! `ui.session_lifetime_secs`, after `ui.session_idle_secs` unused, at
//! sign-out, or when an administrator ends them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Query, RawForm, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::Form;
use berth_meta::ui::SessionRecord;
use maud::html;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::page::{self, Section};
use super::{Html, UiError, UiResult};
use crate::app::App;
use crate::auth::access::Action;
use crate::auth::manage::ManageError;
use crate::auth::{AuthError, Identity, ProviderSaid};
use crate::config::AuthMode;

const SESSION_COOKIE: &str = "berth_session";
/// The double-submit token of the sign-in form, which has no session yet.
const LOGIN_COOKIE: &str = "berth_login";
/// A session's last use is written at most this often.
const TOUCH_EVERY_MS: i64 = 60_000;

/// The visitor of a page: a signed-in session, or anonymous.
pub struct Viewer {
    identity: Identity,
    session: Option<SessionRecord>,
    /// `auth.mode = "none"`: everyone may do everything, as on `/v2/`.
    open: bool,
    /// Whether cookies must be Secure.
    pub secure: bool,
    /// The host the browser asked for, for `docker pull` lines.
    pub host: String,
}

impl Viewer {
    pub fn signed_in(&self) -> bool {
        self.session.is_some()
    }

    /// The signed-in name, as the header shows it.
    pub fn display_name(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.subject.as_str())
    }

    /// The user stars belong to.
    pub fn user(&self) -> Option<&str> {
        self.display_name()
    }

    pub fn may_sign_in(&self) -> bool {
        !self.open
    }

    pub fn is_admin(&self) -> bool {
        self.open || self.identity.permissions.admin
    }

    pub fn may(&self, repo: &str, action: Action) -> bool {
        self.is_admin() || self.identity.permissions.allowed(repo).contains(action)
    }

    pub fn may_pull(&self, repo: &str) -> bool {
        self.may(repo, Action::Pull)
    }

    /// The audit actor of what this visitor does.
    pub fn actor(&self) -> String {
        match &self.session {
            Some(s) => crate::auth::actor_of_subject(&s.subject),
            None => "anonymous".into(),
        }
    }

    pub fn csrf(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.csrf.as_str())
    }

    /// Refuses a form whose CSRF token is not the session's. Without a
    /// session there is nothing to protect but an open registry's admin
    /// pages, which the cross-site check in `guard` covers.
    pub fn check_csrf(&self, sent: Option<&str>) -> Result<(), UiError> {
        match (&self.session, sent) {
            (None, _) => Ok(()),
            (Some(s), Some(sent)) if bool::from(s.csrf.as_bytes().ct_eq(sent.as_bytes())) => Ok(()),
            _ => Err(UiError::Csrf),
        }
    }

    pub fn require_admin(&self) -> Result<(), UiError> {
        match (self.is_admin(), self.signed_in()) {
            (true, _) => Ok(()),
            (false, false) => Err(UiError::SignInRequired),
            (false, true) => Err(UiError::Forbidden),
        }
    }

    pub fn require_signed_in(&self) -> Result<&SessionRecord, UiError> {
        self.session.as_ref().ok_or(UiError::SignInRequired)
    }
}

pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

fn secure(app: &App, headers: &HeaderMap) -> bool {
    app.auth.scheme == "https"
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

pub(super) fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("berth_invalid=1"))
}

impl FromRequestParts<Arc<App>> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, UiError> {
        let open = app.auth.mode == AuthMode::None;
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let secure = secure(app, &parts.headers);
        let anonymous = |open| Viewer {
            identity: app.auth.anonymous(),
            session: None,
            open,
            secure,
            host: host.clone(),
        };
        if open {
            return Ok(anonymous(true));
        }
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Ok(anonymous(false));
        };
        let now = app.now_ms();
        let Some(session) = app.ui.session(&hash(secret), now).await? else {
            return Ok(anonymous(false));
        };
        let idle_ms = (app.config.ui.session_idle_secs as i64).saturating_mul(1000);
        if session.last_seen_ms.saturating_add(idle_ms) <= now {
            return Ok(anonymous(false));
        }
        let mut said: ProviderSaid = serde_json::from_str(&session.groups_json).unwrap_or_default();
        said.admin = session.admin;
        let identity = match app.auth.session_identity(&session.subject, &said).await {
            Ok(Some(identity)) => identity,
            Ok(None) => return Ok(anonymous(false)),
            Err(AuthError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(UiError::internal("checking a session", e)),
        };
        if now - session.last_seen_ms >= TOUCH_EVERY_MS {
            if let Err(e) = app.ui.touch_session(&session.id_hash, now).await {
                tracing::warn!(error = %e, "recording a session's use failed");
            }
        }
        Ok(Viewer {
            identity,
            session: Some(session),
            open: false,
            secure,
            host,
        })
    }
}

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Where to go after signing in: only a page of the UI, never another site
/// (`//host` and `/\host` are other sites to a browser).
pub(super) fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') && !n.contains("/..") => n,
        _ => "/ui/",
    }
}

fn login_page(viewer: &Viewer, sso: Option<&str>, token: &str, next: &str, message: Option<&str>) -> maud::Markup {
    page::layout(
        "Sign in",
        viewer,
        Section::None,
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message { (page::notice("error", m)) }
            form.stack method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                label for="username" { "Username" }
                input type="text" id="username" name="username" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input type="password" id="password" name="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            @if let Some(label) = sso {
                h2 { "Single sign-on" }
                form.row method="get" action="/ui/sso/start" {
                    input type="hidden" name="next" value=(next);
                    div {
                        label for="login_hint" { "Account (optional)" } br;
                        input type="text" id="login_hint" name="login_hint" autocomplete="username";
                    }
                    button type="submit" { (label) }
                }
            }
        },
    )
}

/// The Content-Security-Policy of the sign-in page when it offers single
/// sign-on: its form may lead to the provider.
async fn sso_csp(app: &App) -> Option<HeaderValue> {
    let origin = app.sso.as_ref()?.form_origin().await?;
    Some(super::csp_with_form_target(&origin))
}

/// The sign-in form, with a fresh double-submit token in a cookie.
pub async fn login_form(State(app): State<Arc<App>>, viewer: Viewer, Query(q): Query<LoginQuery>) -> UiResult {
    if !viewer.may_sign_in() || viewer.signed_in() {
        return Ok(Redirect::to(safe_next(q.next.as_deref())).into_response());
    }
    let token = random_token();
    let mut response = Html(login_page(
        &viewer,
        app.sso.as_ref().map(|s| s.label()),
        &token,
        safe_next(q.next.as_deref()),
        None,
    ))
    .into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, 3600, viewer.secure),
    );
    if let Some(csp) = sso_csp(&app).await {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

/// Signs in with a local (or externally validated) user's password, counted
/// against the same failure limits as the token endpoint.
pub async fn login(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    ConnectInfo(connect): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> UiResult {
    if !viewer.may_sign_in() {
        return Ok(Redirect::to("/ui/").into_response());
    }
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return Err(UiError::Csrf);
    }
    let next = safe_next(form.next.as_deref()).to_string();
    let csp = sso_csp(&app).await;
    let retry = |status: StatusCode, message: &str| -> UiResult {
        let mut response = (
            status,
            Html(login_page(
                &viewer,
                app.sso.as_ref().map(|s| s.label()),
                &form.csrf,
                &next,
                Some(message),
            )),
        )
            .into_response();
        if let Some(csp) = &csp {
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, csp.clone());
        }
        Ok(response)
    };
    let peer = connect.ip();
    let identity = match app.auth.login(peer, &form.username, &form.password).await {
        Ok(identity) => identity,
        Err(AuthError::InvalidCredentials) => {
            app.metrics.auth_failure(crate::metrics::AuthFailure::BadCredentials);
            return retry(StatusCode::UNAUTHORIZED, "Wrong username or password.");
        }
        Err(AuthError::TooManyAttempts(wait)) => {
            app.metrics.rate_limited("login");
            return retry(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed sign-ins; try again in {} s.", wait.as_secs().max(1)),
            );
        }
        Err(AuthError::Unavailable(why)) => return retry(StatusCode::SERVICE_UNAVAILABLE, &why),
        Err(e) => return Err(UiError::internal("signing in", e)),
    };
    // Robot tokens and ID tokens are for clients, not for browsers.
    if identity.subject.starts_with("robot:") || identity.subject.starts_with("oidc:") {
        return retry(StatusCode::UNAUTHORIZED, "Sign in with a user account.");
    }
    // A local user's facts are read again on every request; an externally
    // validated user's administrator flag is all its provider said.
    let said = ProviderSaid {
        admin: identity.permissions.admin,
        ..ProviderSaid::default()
    };
    let response = start_session(&app, &viewer, &headers, peer, &identity.subject, &said, &next).await?;
    tracing::info!(user = %identity.subject, "signed in to the web UI");
    Ok(response)
}

/// Keeps a new session for `subject` and answers with its cookie and a
/// redirect to `next`.
pub async fn start_session(
    app: &App,
    viewer: &Viewer,
    headers: &HeaderMap,
    peer: IpAddr,
    subject: &str,
    said: &ProviderSaid,
    next: &str,
) -> UiResult {
    let secret = random_token();
    let now = app.now_ms();
    let lifetime = app.config.ui.session_lifetime_secs.max(60);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let record = SessionRecord {
        id_hash: hash(&secret),
        subject: subject.to_string(),
        admin: said.admin,
        groups_json: serde_json::to_string(said).unwrap_or_else(|_| "{}".into()),
        csrf: random_token(),
        created_ms: now,
        last_seen_ms: now,
        expires_ms: now.saturating_add((lifetime as i64).saturating_mul(1000)),
        user_agent: crate::text::printable(user_agent, 200)
            .map(str::to_string)
            .unwrap_or_default(),
        addr: peer.to_string(),
    };
    app.ui.create_session(&record).await?;
    let mut response = Redirect::to(next).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &secret, lifetime, viewer.secure),
    );
    headers.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0, viewer.secure));
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// Ends the session and forgets its cookie.
pub async fn logout(State(app): State<Arc<App>>, viewer: Viewer, Form(form): Form<CsrfForm>) -> UiResult {
    viewer.check_csrf(form.csrf.as_deref())?;
    if let Some(session) = &viewer.session {
        app.ui.delete_session(&session.id_hash).await?;
    }
    let mut response = Redirect::to("/ui/").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, viewer.secure));
    Ok(response)
}

/// The signed-in user's own page: who they are, what they may do, and their
/// personal access tokens for `docker login`.
pub async fn account(State(app): State<Arc<App>>, viewer: Viewer) -> UiResult {
    account_page(&app, &viewer, None, None).await
}

async fn account_page(
    app: &App,
    viewer: &Viewer,
    message: Option<(&str, String)>,
    secret: Option<(&str, &str)>,
) -> UiResult {
    let session = viewer.require_signed_in()?;
    let grants: Vec<(String, &'static str)> = viewer
        .identity
        .permissions
        .grants
        .iter()
        .map(|g| (g.pattern.to_string(), g.role.as_str()))
        .collect();
    let tokens = app
        .auth
        .accounts()
        .personal_tokens(&session.subject)
        .await
        .map_err(|e| UiError::internal("listing personal tokens", e))?;
    let status = if matches!(message, Some(("error", _))) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let markup = page::layout(
        "Account",
        viewer,
        Section::Account,
        html! {
            h1 { "Account" }
            @if let Some((kind, text)) = &message { (page::notice(kind, text)) }
            p { "Signed in as " strong { (session.subject) } " since " (page::time(session.created_ms)) "." }
            @if viewer.is_admin() { p { span.badge { "administrator" } } }
            @if let Some((name, secret)) = secret {
                section aria-labelledby="secret-heading" {
                    h2 #secret-heading { "Your new token " (name) }
                    p { "Copy it now: it is shown only this once." }
                    (page::copy_line("new-secret", "token", secret))
                    (page::copy_line("login-line", "login", &format!("docker login {} -u {}", viewer.host, session.subject)))
                }
            }
            h2 { "Personal access tokens" }
            p.muted { "A token signs in as you, with what you may do at the time of each use, for " code { "docker login" } " and other clients." }
            @if tokens.is_empty() { p.muted { "No tokens yet." } }
            @else {
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Last used" } th scope="col" { "State" } th scope="col" { "Actions" } } }
                    tbody {
                        @for t in &tokens {
                            tr {
                                td { (t.name) }
                                td { (page::time(t.created_ms)) }
                                td { (page::maybe_time(t.expires_ms)) }
                                td { (page::maybe_time(t.last_used_ms)) }
                                td { @if t.revoked_ms.is_some() { span.badge.delete { "revoked" } } @else { "live" } }
                                td {
                                    @if t.revoked_ms.is_none() {
                                        form.inline method="post" action="/ui/account" {
                                            (page::csrf_field(viewer))
                                            input type="hidden" name="action" value="revoke";
                                            input type="hidden" name="name" value=(t.name);
                                            button.danger type="submit" aria-label=(format!("Revoke {}", t.name)) { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form.stack method="post" action="/ui/account" {
                (page::csrf_field(viewer))
                input type="hidden" name="action" value="create";
                label for="token-label" { "Token name" }
                input type="text" id="token-label" name="label" required placeholder="laptop" autocomplete="off";
                label for="token-expires" { "Expires after (optional, such as 90d)" }
                input type="text" id="token-expires" name="expires";
                button type="submit" { "Create token" }
            }
            h2 { "What you may do" }
            @if grants.is_empty() {
                p.muted { "No grants." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Repositories" } th scope="col" { "Role" } } }
                    tbody {
                        @for (pattern, role) in &grants {
                            tr { td.mono { (pattern) } td { (role) } }
                        }
                    }
                }
            }
        },
    );
    Ok((status, Html(markup)).into_response())
}

/// `POST /ui/account`: creates or revokes a personal access token.
pub async fn account_post(State(app): State<Arc<App>>, viewer: Viewer, RawForm(body): RawForm) -> UiResult {
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    viewer.check_csrf(form.get("csrf").map(String::as_str))?;
    let user = viewer.require_signed_in()?.subject.clone();
    let field = |k: &str| form.get(k).map(|v| v.trim()).unwrap_or("");
    let accounts = app.auth.accounts();
    match field("action") {
        "create" => {
            let expires = Some(field("expires")).filter(|e| !e.is_empty());
            match accounts.create_personal_token(&user, field("label"), expires).await {
                Ok(secret) => {
                    let name = format!("{user}.{}", field("label"));
                    account_page(
                        &app,
                        &viewer,
                        Some(("ok", format!("Token {name} created."))),
                        Some((&name, &secret)),
                    )
                    .await
                }
                Err(ManageError::Store(e)) => Err(e.into()),
                Err(e) => account_page(&app, &viewer, Some(("error", e.to_string())), None).await,
            }
        }
        "revoke" => match accounts.revoke_personal_token(&user, field("name")).await {
            Ok(()) => {
                account_page(
                    &app,
                    &viewer,
                    Some(("ok", format!("Token {} revoked.", field("name")))),
                    None,
                )
                .await
            }
            Err(ManageError::Store(e)) => Err(e.into()),
            Err(e) => account_page(&app, &viewer, Some(("error", e.to_string())), None).await,
        },
        _ => Err(UiError::NotFound),
    }
}
