//! The token endpoint (`/v2/token`), the `401` challenges of the Docker token
//! flow, and the check of every `/v2/` request against its token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Endpoint, ErrorCode, Intent};

use super::credentials::{basic_credentials, bearer};
use super::{header_str, ApiError};
use crate::app::App;
use crate::auth::access::{Access, Action, Scope};
use crate::auth::{Auth, AuthError, Identity};
use crate::config::AuthMode;
use crate::metrics::{AuthFailure, Metrics};
use crate::observe::RequestContext;

/// Largest token request body read (a form with credentials and scopes).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// What an endpoint needs.
enum Needs<'a> {
    Token,
    Catalog,
    Repo(&'a str, Action),
}

fn needs(endpoint: &Endpoint) -> Needs<'_> {
    use Endpoint as E;
    match endpoint {
        E::Base => Needs::Token,
        E::Catalog => Needs::Catalog,
        E::ListTags { repo }
        | E::ListReferrers { repo, .. }
        | E::GetManifest { repo, .. }
        | E::GetBlob { repo, .. } => Needs::Repo(repo.as_str(), Action::Pull),
        E::PutManifest { repo, .. }
        | E::StartUpload { repo }
        | E::GetUpload { repo, .. }
        | E::PatchUpload { repo, .. }
        | E::FinishUpload { repo, .. }
        | E::CancelUpload { repo, .. } => Needs::Repo(repo.as_str(), Action::Push),
        E::DeleteManifest { repo, .. } | E::DeleteBlob { repo, .. } => Needs::Repo(repo.as_str(), Action::Delete),
        // Answered as the missing thing it would be, after the same check.
        E::Nameless(n) => Needs::Repo(
            n.repo.as_str(),
            match n.intent {
                Intent::Read => Action::Pull,
                Intent::Write => Action::Push,
                Intent::Delete => Action::Delete,
            },
        ),
    }
}

/// The token endpoint's URL as announced in challenges.
fn realm(auth: &Auth, headers: &HeaderMap) -> String {
    if let Some(realm) = &auth.realm {
        return realm.clone();
    }
    let host = header_str(headers, "host").unwrap_or("localhost");
    let scheme = header_str(headers, "x-forwarded-proto").unwrap_or(auth.scheme);
    format!("{scheme}://{host}/v2/token")
}

/// A 401 with the challenge that sends the client to the token endpoint.
fn challenge(auth: &Auth, headers: &HeaderMap, needs: &Needs, bad_token: bool, denied: bool) -> ApiError {
    let scope = match needs {
        Needs::Token => None,
        Needs::Catalog => Some("registry:catalog:*".to_string()),
        Needs::Repo(repo, Action::Push) => Some(format!("repository:{repo}:pull,push")),
        Needs::Repo(repo, action) => Some(format!("repository:{repo}:{}", action.as_str())),
    };
    let mut value = format!("Bearer realm=\"{}\",service=\"{}\"", realm(auth, headers), auth.service);
    if let Some(scope) = &scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if denied {
        value.push_str(",error=\"insufficient_scope\"");
    } else if bad_token {
        value.push_str(",error=\"invalid_token\"");
    }
    let error = if denied {
        ApiError::new(ErrorCode::Denied, ErrorCode::Denied.default_message()).with_status(StatusCode::UNAUTHORIZED)
    } else {
        ApiError::new(ErrorCode::Unauthorized, ErrorCode::Unauthorized.default_message())
    };
    error.with_header(header::WWW_AUTHENTICATE, value)
}

/// The 401 for a bad token on an endpoint outside `/v2/` that lists across
/// repositories (the inventory): it asks for the catalog scope, as `/v2/_catalog` does.
pub(super) fn catalog_challenge(auth: &Auth, headers: &HeaderMap) -> ApiError {
    challenge(auth, headers, &Needs::Catalog, true, false)
}

/// Checks a `/v2/` request's token against what its endpoint needs.
/// A refusal is counted in `metrics` by its reason.
pub fn authorize(auth: &Auth, endpoint: &Endpoint, headers: &HeaderMap, metrics: &Metrics) -> Result<Access, ApiError> {
    if auth.mode == AuthMode::None {
        return Ok(Access::Open);
    }
    let needs = needs(endpoint);
    let presented = bearer(headers);
    let Some(claims) = presented.and_then(|t| auth.verify(t)) else {
        metrics.auth_failure(if presented.is_some() {
            AuthFailure::BadToken
        } else {
            AuthFailure::Missing
        });
        return Err(challenge(auth, headers, &needs, presented.is_some(), false));
    };
    let allowed = match &needs {
        Needs::Token => true,
        Needs::Catalog => claims.allows_catalog(),
        Needs::Repo(repo, action) => claims.allows(repo, action.as_str()),
    };
    if allowed {
        Ok(Access::Token(claims))
    } else {
        metrics.auth_failure(AuthFailure::Denied);
        Err(challenge(auth, headers, &needs, false, true))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::InvalidCredentials | AuthError::InvalidRefreshToken => {
                ApiError::new(ErrorCode::Unauthorized, message)
            }
            AuthError::TooManyAttempts(wait) => ApiError::new(ErrorCode::TooManyRequests, message)
                .with_header(header::RETRY_AFTER, wait.as_secs().max(1).to_string()),
            AuthError::Unavailable(_) => ApiError::new(ErrorCode::Unavailable, message),
            AuthError::Store(ref inner) => ApiError::meta(inner),
            AuthError::Internal(_) => ApiError::internal(&e),
        }
    }
}

/// Parameters of a token request, from the query (GET) or the form (POST).
/// (No `Debug`: it holds a password.)
#[derive(Default)]
pub struct TokenRequest {
    scopes: Vec<Scope>,
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    offline: bool,
}

impl TokenRequest {
    /// Parses a query (`form = false`) or an OAuth2 form body. Credentials are
    /// taken from the body only: a query ends up in proxy and access logs.
    pub fn parse(pairs: &[u8], form: bool) -> TokenRequest {
        let mut request = TokenRequest::default();
        for (key, value) in form_urlencoded::parse(pairs) {
            match key.as_ref() {
                // GET repeats `scope`; the OAuth2 form separates scopes by spaces.
                "scope" => request.scopes.extend(value.split(' ').filter_map(Scope::parse)),
                "grant_type" if form => request.grant_type = Some(value.into_owned()),
                "username" if form => request.username = Some(value.into_owned()),
                "password" if form => request.password = Some(value.into_owned()),
                "refresh_token" if form => request.refresh_token = Some(value.into_owned()),
                "offline_token" => request.offline = value == "true",
                "access_type" => request.offline = value == "offline",
                _ => {}
            }
        }
        request
    }
}

/// `GET|POST /v2/token`.
pub async fn token_endpoint(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let context = req.extensions().get::<RequestContext>().cloned();
    let mut response = match token(&app, peer, req, context.as_ref()).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    match response.status() {
        StatusCode::UNAUTHORIZED => app.metrics.auth_failure(AuthFailure::BadCredentials),
        StatusCode::TOO_MANY_REQUESTS => app.metrics.rate_limited("login"),
        _ => {}
    }
    // Tokens must not be kept by caches between client and registry.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    // RFC 9110: a 401 carries a challenge; here, for the credentials of the token endpoint.
    if response.status() == StatusCode::UNAUTHORIZED {
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("Basic realm=\"{}\"", app.auth.service)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    response
}

async fn token(
    app: &App,
    peer: SocketAddr,
    req: Request,
    context: Option<&RequestContext>,
) -> Result<Response, ApiError> {
    let auth = &app.auth;
    if auth.mode == AuthMode::None {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "token authentication is off (auth.mode = \"none\"); no token is needed",
        )
        .with_status(StatusCode::NOT_FOUND));
    }
    let headers = req.headers().clone();
    let request = match *req.method() {
        Method::GET => TokenRequest::parse(req.uri().query().unwrap_or("").as_bytes(), false),
        Method::POST => {
            let body = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
                .await
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "token request form too large or unreadable"))?;
            let request = TokenRequest::parse(&body, true);
            if request.grant_type.is_none() {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "grant_type is missing; use password or refresh_token",
                ));
            }
            request
        }
        _ => {
            return Err(
                ApiError::new(ErrorCode::Unsupported, "use GET or POST").with_header(header::ALLOW, "GET, POST".into())
            )
        }
    };
    let identity = identify(auth, peer, &headers, &request).await?;
    if let Some(context) = context {
        if !identity.subject.is_empty() {
            context.set_identity(&identity.subject);
        }
    }
    // A refresh grant never yields a new refresh token (see `Auth::issue`).
    let offline = request.offline && request.grant_type.as_deref() != Some("refresh_token");
    let issued = auth.issue(&identity, &request.scopes, offline)?;
    Ok((StatusCode::OK, axum::Json(issued)).into_response())
}

async fn identify(
    auth: &Auth,
    peer: SocketAddr,
    headers: &HeaderMap,
    request: &TokenRequest,
) -> Result<Identity, ApiError> {
    match request.grant_type.as_deref() {
        Some("refresh_token") => {
            let token = request
                .refresh_token
                .as_deref()
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "refresh_token is missing"))?;
            Ok(auth.refresh(token).await?)
        }
        Some("password") => {
            let (login, password) = match (&request.username, &request.password) {
                (Some(u), Some(p)) => (u.clone(), p.clone()),
                _ => basic_credentials(headers)?
                    .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "username and password are missing"))?,
            };
            Ok(auth.login(peer.ip(), &login, &password).await?)
        }
        Some(other) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("grant_type {other:?} is not supported; use password or refresh_token"),
        )),
        None => match basic_credentials(headers)? {
            Some((login, password)) => Ok(auth.login(peer.ip(), &login, &password).await?),
            None => Ok(auth.anonymous()),
        },
    }
}
