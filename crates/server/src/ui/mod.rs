//! The web UI under `/ui/`: HTML rendered on the server from maud templates
//! compiled into the binary, one stylesheet and one small script embedded
//! beside them. Read-only pages work without JavaScript; the script only
//! adds copy buttons and confirmations.
//!
//! Every action a page offers calls the same core as the `/api/v1/` endpoint
//! that does it for scripts (the accounts, the lifecycle, the registry), so
//! the two cannot disagree. Browsers are known by a session cookie
//! ([`session`]); every form that changes something carries the session's
//! CSRF token, and a request from another site is refused before that.

mod admin;
mod assets;
mod browse;
mod page;
mod session;
mod sso;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;

use crate::app::App;

pub use session::Viewer;
pub use sso::Sso;

/// The UI's routes, when `ui.enabled`.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(browse::home))
        .route("/ui/repositories", get(browse::repositories))
        .route("/ui/starred", get(browse::starred))
        .route(
            "/ui/r/{*path}",
            get(browse::repository_get).post(browse::repository_post),
        )
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/sso/start", get(sso::start))
        .route("/ui/sso/callback", get(sso::callback))
        .route("/ui/account", get(session::account).post(session::account_post))
        .route("/ui/admin", get(admin::dashboard))
        .route("/ui/admin/{section}", get(admin::section_get).post(admin::section_post))
        .route("/ui/static/{hash}/{name}", get(assets::serve))
        .layer(middleware::from_fn(guard))
}

/// The Content-Security-Policy of every UI answer: no inline script or
/// style, nothing from other origins, no framing, forms only to us.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The Content-Security-Policy of a page with a form that leads to `origin`
/// as well (the single sign-on form, which `/ui/sso/start` redirects to the
/// provider: `form-action` applies to redirects too).
pub fn csp_with_form_target(origin: &str) -> HeaderValue {
    HeaderValue::from_str(&CSP.replace("form-action 'self'", &format!("form-action 'self' {origin}")))
        .unwrap_or(HeaderValue::from_static(CSP))
}

/// Refuses a state-changing request another site sent (its `Origin` or
/// `Sec-Fetch-Site` says so: SameSite cookies are not enough against a
/// sibling subdomain), and puts the security headers on every answer.
async fn guard(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD && from_another_site(&req) {
        return UiError::CrossSite.into_response();
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn from_another_site(req: &Request) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "cross-site" || site == "same-site" {
            return true;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // `Origin: null` (a sandboxed frame, a redirect across origins) is another site too.
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host)
}

/// Why a page could not be shown or an action not done; answered as a page
/// with the right status.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("There is no such page, or you may not see it.")]
    NotFound,
    #[error("Sign in to see this page.")]
    SignInRequired,
    #[error("Only administrators may do this.")]
    Forbidden,
    #[error("The form was too old or not sent by this site; reload the page and try again.")]
    Csrf,
    #[error("Requests from other sites may not change anything here.")]
    CrossSite,
    #[error("{0}")]
    BadRequest(String),
    #[error("The registry cannot answer this now; try again shortly.")]
    Unavailable,
}

impl UiError {
    fn status(&self) -> StatusCode {
        match self {
            UiError::NotFound => StatusCode::NOT_FOUND,
            UiError::SignInRequired => StatusCode::UNAUTHORIZED,
            UiError::Forbidden | UiError::Csrf | UiError::CrossSite => StatusCode::FORBIDDEN,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A failure of the store or a core operation that a visitor cannot mend:
    /// logged here, once, and shown without internals.
    pub fn internal(what: &str, error: impl std::fmt::Display) -> UiError {
        tracing::error!(error = %error, "{what} failed");
        UiError::Unavailable
    }
}

impl From<berth_meta::MetaError> for UiError {
    fn from(e: berth_meta::MetaError) -> Self {
        if e.is_bad_input() {
            return UiError::BadRequest("The request holds text the registry cannot keep.".into());
        }
        UiError::internal("reading the metadata store", e)
    }
}

impl From<crate::browse::BrowseError> for UiError {
    fn from(e: crate::browse::BrowseError) -> Self {
        match e {
            crate::browse::BrowseError::Meta(m) => m.into(),
            crate::browse::BrowseError::Lifecycle(l) => UiError::internal("planning a repository's lifecycle", l),
        }
    }
}

impl From<crate::registry::RegistryError> for UiError {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError as E;
        match e {
            E::ManifestUnknown | E::NameUnknown | E::BlobUnknown => UiError::NotFound,
            E::Meta(m) => m.into(),
            other => UiError::internal("a registry operation", other),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let sign_in = matches!(self, UiError::SignInRequired);
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (status.canonical_reason().unwrap_or("Error")) " · Berth" }
                    link rel="stylesheet" href=(assets::url(assets::CSS));
                }
                body {
                    header.top { a.brand href="/ui/" { "Berth" } }
                    main #main {
                        h1 { (status.canonical_reason().unwrap_or("Error")) }
                        (page::notice("error", &self.to_string()))
                        p {
                            @if sign_in { a href="/ui/login" { "Sign in" } " · " }
                            a href="/ui/" { "Home" }
                        }
                    }
                }
            }
        };
        (status, Html(body)).into_response()
    }
}

/// A rendered page as an HTML answer.
pub struct Html(pub maud::Markup);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            self.0.into_string(),
        )
            .into_response()
    }
}

pub type UiResult = Result<Response, UiError>;
