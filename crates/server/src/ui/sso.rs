//! Single sign-on: the OpenID Connect authorization code flow with PKCE
//! (RFC 7636, S256), for browsers.
//!
//! The state, nonce and PKCE verifier of a sign-in in progress travel in a
//! short-lived HttpOnly cookie scoped to `/ui/sso/`, so any replica can take
//! the provider's answer. The ID token that comes back is verified by the
//! same code as ID tokens given to the token endpoint (`auth.oidc`: keys by
//! discovery, `iss`, `aud` = the client id, lifetimes, claim rules); the
//! nonce ties it to this sign-in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use super::session::{self, safe_next, set_cookie, Viewer};
use super::{UiError, UiResult};
use crate::app::App;
use crate::auth::manage::SsoAccount;
use crate::auth::ProviderSaid;
use crate::config::{Config, SsoConfig};

const FLOW_COOKIE: &str = "berth_sso";
/// How long a sign-in may stay at the provider.
const FLOW_SECS: u64 = 600;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the sign-in page waits for the provider's discovery document.
const DISCOVERY_WAIT: Duration = Duration::from_secs(2);

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
}

/// Single sign-on against one provider.
pub struct Sso {
    config: SsoConfig,
    client: reqwest::Client,
    endpoints: OnceCell<Endpoints>,
}

impl Sso {
    /// What `berth config check` can tell of `[ui.sso]`: its issuer must be
    /// an `[[auth.oidc]]` issuer whose audience is the client id.
    pub fn check_config(config: &Config) -> Result<(), String> {
        let Some(sso) = &config.ui.sso else {
            return Ok(());
        };
        if sso.client_id.is_empty() {
            return Err("client_id is empty".into());
        }
        let issuer = config
            .auth
            .oidc
            .iter()
            .find(|i| i.issuer == sso.issuer)
            .ok_or_else(|| format!("issuer {} is not configured under [[auth.oidc]]", sso.issuer))?;
        if issuer.audience != sso.client_id {
            return Err(format!(
                "the [[auth.oidc]] entry of {} has audience {:?}; single sign-on needs it to be the client id {:?}",
                sso.issuer, issuer.audience, sso.client_id
            ));
        }
        if let Some(url) = &sso.redirect_url {
            reqwest::Url::parse(url).map_err(|e| format!("redirect_url: {e}"))?;
        }
        Ok(())
    }

    pub fn new(config: &Config) -> anyhow::Result<Option<Sso>> {
        let Some(sso) = &config.ui.sso else {
            return Ok(None);
        };
        Sso::check_config(config).map_err(|e| anyhow::anyhow!("ui.sso: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(Sso {
            config: sso.clone(),
            client,
            endpoints: OnceCell::new(),
        }))
    }

    pub fn label(&self) -> &str {
        &self.config.label
    }

    async fn endpoints(&self) -> Result<&Endpoints, UiError> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let fetched: Result<Endpoints, reqwest::Error> =
                    async { self.client.get(&url).send().await?.error_for_status()?.json().await }.await;
                fetched.map_err(|e| {
                    tracing::warn!(issuer = %self.config.issuer, error = %e, "single sign-on discovery failed");
                    UiError::Unavailable
                })
            })
            .await
    }

    /// The origin the sign-in page's single sign-on form leads to, through
    /// the redirect of `/ui/sso/start`: its Content-Security-Policy must
    /// allow it under `form-action`, or browsers stop the redirect. The
    /// authorization endpoint's origin once discovered (waiting for the
    /// discovery at most `DISCOVERY_WAIT` on a page view), else the issuer's.
    pub async fn form_origin(&self) -> Option<String> {
        let endpoint = match self.endpoints.get() {
            Some(e) => Some(e.authorization_endpoint.clone()),
            None => tokio::time::timeout(DISCOVERY_WAIT, self.endpoints())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|e| e.authorization_endpoint.clone()),
        };
        let url = reqwest::Url::parse(endpoint.as_deref().unwrap_or(&self.config.issuer)).ok()?;
        let origin = url.origin();
        origin.is_tuple().then(|| origin.ascii_serialization())
    }

    fn redirect_url(&self, viewer: &Viewer) -> String {
        match &self.config.redirect_url {
            Some(url) => url.clone(),
            None => format!(
                "{}://{}/ui/sso/callback",
                if viewer.secure { "https" } else { "http" },
                viewer.host
            ),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    b64(&bytes)
}

fn sso(app: &App) -> Result<&Sso, UiError> {
    app.sso.as_ref().ok_or(UiError::NotFound)
}

#[derive(Deserialize, Default)]
pub struct StartQuery {
    login_hint: Option<String>,
    next: Option<String>,
}

/// `GET /ui/sso/start`: sends the browser to the provider.
pub async fn start(State(app): State<Arc<App>>, viewer: Viewer, Query(q): Query<StartQuery>) -> UiResult {
    let sso = sso(&app)?;
    let endpoints = sso.endpoints().await?;
    let (state, nonce, verifier) = (random(), random(), random());
    let challenge = b64(&Sha256::digest(verifier.as_bytes()));
    let mut scopes = sso.config.scopes.clone();
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let mut url = reqwest::Url::parse(&endpoints.authorization_endpoint).map_err(|e| {
        tracing::warn!(error = %e, "the provider's authorization_endpoint is no URL");
        UiError::Unavailable
    })?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &sso.config.client_id)
            .append_pair("redirect_uri", &sso.redirect_url(&viewer))
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(hint) = q.login_hint.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
            query.append_pair("login_hint", hint);
        }
    }
    let next = safe_next(q.next.as_deref());
    let flow = format!("{state}.{nonce}.{verifier}.{}", b64(next.as_bytes()));
    let mut response = Redirect::to(url.as_str()).into_response();
    let cookie = set_cookie(FLOW_COOKIE, &flow, FLOW_SECS, viewer.secure)
        .to_str()
        .unwrap_or_default()
        .replace("Path=/;", "Path=/ui/sso/;");
    if let Ok(value) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Deserialize, Default)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// `GET /ui/sso/callback`: takes the provider's answer, checks it, and
/// starts a session for the user it names (created on first sign-in).
pub async fn callback(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> UiResult {
    let sso = sso(&app)?;
    if let Some(error) = &q.error {
        let detail = q.error_description.as_deref().unwrap_or("");
        tracing::info!(error = %error, detail = %detail, "single sign-on refused by the provider");
        return Err(UiError::BadRequest(format!(
            "The identity provider refused the sign-in: {error}."
        )));
    }
    let flow = session::cookie(&headers, FLOW_COOKIE).unwrap_or_default().to_string();
    let mut parts = flow.split('.');
    let (Some(state), Some(nonce), Some(verifier), Some(next)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(UiError::BadRequest(
            "This sign-in was not started here, or took too long; sign in again.".into(),
        ));
    };
    let sent_state = q.state.as_deref().unwrap_or_default();
    if state.is_empty() || !bool::from(state.as_bytes().ct_eq(sent_state.as_bytes())) {
        return Err(UiError::Csrf);
    }
    let code = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| UiError::BadRequest("The identity provider sent no code.".into()))?;
    let next = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(next)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let next = safe_next(Some(&next)).to_string();

    let endpoints = sso.endpoints().await?;
    let redirect_uri = sso.redirect_url(&viewer);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", sso.config.client_id.as_str()),
        ("code_verifier", verifier),
    ];
    if let Some(secret) = &sso.config.client_secret {
        form.push(("client_secret", secret.as_str()));
    }
    let answer = sso.client.post(&endpoints.token_endpoint).form(&form).send().await;
    let answer: TokenAnswer = match answer {
        Ok(r) if r.status().is_success() => r
            .json()
            .await
            .map_err(|e| UiError::internal("reading the provider's token answer", e))?,
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            tracing::info!(%status, body = %body.chars().take(300).collect::<String>(), "single sign-on: the code was refused");
            return Err(UiError::BadRequest(
                "The identity provider did not accept the sign-in; sign in again.".into(),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "single sign-on: the token endpoint is unreachable");
            return Err(UiError::Unavailable);
        }
    };
    let id_token = answer
        .id_token
        .ok_or_else(|| UiError::BadRequest("The identity provider sent no ID token.".into()))?;
    let who = match app.auth.verify_sso(&id_token).await {
        Ok(who) => who,
        Err(crate::auth::AuthError::Unavailable(_)) => return Err(UiError::Unavailable),
        Err(_) => {
            return Err(UiError::BadRequest(
                "The identity provider's answer was not accepted (no claim rule allows this account).".into(),
            ))
        }
    };
    if !who
        .nonce
        .as_deref()
        .is_some_and(|n| bool::from(n.as_bytes().ct_eq(nonce.as_bytes())))
    {
        return Err(UiError::Csrf);
    }
    match app.auth.accounts().sso_account(&who.name).await {
        Ok(SsoAccount::Provisioned) => tracing::info!(user = %who.name, "user created by single sign-on"),
        Ok(SsoAccount::Existing) => {}
        Ok(SsoAccount::TakenByLocalUser) => {
            tracing::warn!(user = %who.name, "single sign-on refused: a local user has this name");
            return Err(UiError::BadRequest(
                "A local user has this name; single sign-on cannot sign in as them.".into(),
            ));
        }
        Ok(SsoAccount::Disabled) => return Err(UiError::Forbidden),
        Err(crate::auth::manage::ManageError::Store(e)) => return Err(e.into()),
        Err(e) => {
            return Err(UiError::BadRequest(format!(
                "The identity provider's user name cannot be used: {e}."
            )))
        }
    }
    let said = ProviderSaid {
        admin: who.admin,
        groups: who.groups.clone(),
        grants: who.grants.iter().map(|g| g.to_string()).collect(),
    };
    let mut response = session::start_session(&app, &viewer, &headers, peer.ip(), &who.name, &said, &next).await?;
    let clear = set_cookie(FLOW_COOKIE, "", 0, viewer.secure)
        .to_str()
        .unwrap_or_default()
        .replace("Path=/;", "Path=/ui/sso/;");
    if let Ok(value) = header::HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    tracing::info!(user = %who.name, "signed in to the web UI by single sign-on");
    Ok(response)
}
