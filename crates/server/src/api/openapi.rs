//! Berth's own JSON API (`/api/v1/…` and `/v1/images`) and its OpenAPI 3
//! document, served at `GET /api/v1/openapi.json`.
//!
//! The document is generated from the handlers, and every route of these
//! APIs is registered together with its documentation, so that the two
//! cannot drift. To add an endpoint:
//!
//! 1. Write the handler with typed bodies: a `#[derive(Deserialize, ToSchema)]`
//!    struct taken through [`JsonBody`](super::admin::JsonBody), a
//!    `#[derive(Deserialize, IntoParams)]` struct through
//!    [`Params`](super::query::Params), and a `#[derive(Serialize, ToSchema)]`
//!    struct answered as `Json(..)` — never a `json!` value.
//! 2. Annotate it with `#[utoipa::path(method, path = "/relative", tag = "…",
//!    params(…), request_body = …, responses((status = 200, body = …),
//!    NotFound, CommonErrors))]`; the path is relative to where its router
//!    is nested. Errors are [`ErrorBody`] (`ApiError` writes nothing else).
//!    Operations need an administrator's credentials unless they say
//!    otherwise with `security((), …)`.
//! 3. Register it with `.routes(routes!(handler, other_method_same_path))` on
//!    an [`OpenApiRouter`] merged into [`routes`] below — never with
//!    `.route(…)`, which would route without documenting (a test fails on
//!    `.route(` in these modules).
//!
//! The document itself needs no credentials: it describes the API, which is
//! the same for every Berth of this version, and holds nothing of the
//! registry's data; it is also outside the client-certificate requirement of
//! the admin API, so that tools can fetch it to build a client.

use std::sync::{Arc, OnceLock};

use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{admin, lifecycle, ui, ErrorBody};
use crate::app::App;

/// Where the admin API is nested.
const ADMIN_PREFIX: &str = "/api/v1";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Berth admin API",
        description = "Berth's own JSON API: users, robot tokens, grants, the audit log, the \
                       pull-through cache, log level, webhooks, retention and garbage collection \
                       under /api/v1 (administrators only), and the image inventory at /v1/images. \
                       Errors are OCI error bodies. The OCI distribution API under /v2/ is \
                       not described here.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    security(("basic" = []), ("bearer" = [])),
    components(schemas(ErrorBody)),
)]
struct ApiDoc;

/// HTTP Basic (an administrator's password) and bearer (a token from
/// `/v2/token`) authentication, as the operations' `security` names them.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("basic", SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)));
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The errors any operation can answer. `INVALID_REQUEST` for a parameter
/// or body that does not parse; the authentication ones where credentials
/// are needed; 503 when the metadata database cannot be reached.
#[derive(IntoResponses)]
#[allow(dead_code)] // Only its documentation is used: ApiError writes the bodies.
pub(super) enum CommonErrors {
    /// A parameter, the body or a value in it is invalid (`INVALID_REQUEST`).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No credentials, or wrong ones (`UNAUTHORIZED`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The credentials are not an administrator's, or the client certificate
    /// that `tls.client_ca_file` requires is missing (`DENIED`).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Too many failed logins from this client (`TOO_MANY_REQUESTS`).
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// An unexpected failure, logged (`UNKNOWN`).
    #[response(status = 500)]
    Internal(ErrorBody),
    /// A store cannot be reached; retry (`UNKNOWN` or `UNAVAILABLE`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The thing named does not exist (`NOT_FOUND` and the OCI `*_UNKNOWN` codes).
#[derive(IntoResponses)]
#[response(status = 404)]
#[allow(dead_code)]
pub(super) struct NotFound(ErrorBody);

/// The name is taken (`CONFLICT`).
#[derive(IntoResponses)]
#[response(status = 409)]
#[allow(dead_code)]
pub(super) struct Conflict(ErrorBody);

/// The routes of Berth's own JSON API with their document; `guard` wraps
/// the admin routes (and only those) in a layer.
fn api(guard: impl FnOnce(OpenApiRouter<Arc<App>>) -> OpenApiRouter<Arc<App>>) -> OpenApiRouter<Arc<App>> {
    let admin = admin::router()
        .merge(lifecycle::admin_router())
        .merge(ui::admin_router());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(ADMIN_PREFIX, guard(admin))
        .merge(lifecycle::inventory_router())
        .merge(ui::router())
        .routes(routes!(openapi_document))
}

/// The routes of Berth's own JSON API, for [`super::router`]; the admin ones
/// behind the client-certificate check (see
/// [`admin::require_client_certificate`]).
pub(super) fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    let app = app.clone();
    let guard = move |admin: OpenApiRouter<Arc<App>>| {
        admin.route_layer(middleware::from_fn_with_state(app, admin::require_client_certificate))
    };
    api(guard).split_for_parts().0
}

/// The OpenAPI document of [`routes`].
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = api(|admin| admin).into_openapi();
    unwildcard(&mut doc);
    doc
}

/// The document's JSON, made once.
fn document_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec_pretty(&document()).unwrap_or_default())
}

/// axum writes a path's last segment that takes the rest, slashes and all,
/// as `{*name}`; OpenAPI has no such thing and names it `{name}` (a client
/// sends the slashes as they are).
fn unwildcard(doc: &mut utoipa::openapi::OpenApi) {
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI document of this API", content_type = "application/json",
        body = serde_json::Value)))]
async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document_json()).into_response()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;

    fn document_value() -> Value {
        serde_json::from_slice(document_json()).expect("the document is JSON")
    }

    #[test]
    fn the_document_is_openapi_3_and_every_reference_resolves() {
        let doc = document_value();
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{path}");
            for (method, operation) in item.as_object().expect("a path item") {
                assert!(
                    ["get", "put", "post", "delete"].contains(&method.as_str()),
                    "{method} {path}"
                );
                let responses = operation["responses"].as_object().expect("responses");
                assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}");
                for name in path.split('{').skip(1).filter_map(|p| p.split_once('}')).map(|p| p.0) {
                    let declared = operation["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                    assert!(declared, "{method} {path}: path parameter {name} not declared");
                }
            }
        }
        let schemas = doc["components"]["schemas"].as_object().expect("component schemas");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(schemas.contains_key(name), "{r} is referenced but not in components");
        }
        for scheme in ["basic", "bearer"] {
            assert!(doc["components"]["securitySchemes"][scheme].is_object(), "{scheme}");
        }
    }

    fn collect_refs(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => refs.push(r.clone()),
                        _ => collect_refs(v, refs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }

    #[test]
    fn the_admin_and_inventory_operations_are_in_the_document() {
        let doc = document_value();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/v1/users", "post"),
            ("/api/v1/users/{name}/disable", "post"),
            ("/api/v1/proxy/cache/{image}", "delete"),
            ("/api/v1/retention/policies", "put"),
            ("/api/v1/gc", "post"),
            ("/api/v1/openapi.json", "get"),
            ("/v1/images", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
        assert!(paths.keys().all(|p| !p.contains('*')), "a wildcard left: {paths:?}");
        // Admin operations inherit the document's security; the public ones
        // say that no credentials are needed.
        assert_eq!(doc["security"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            paths["/api/v1/openapi.json"]["get"]["security"][0],
            serde_json::json!({})
        );
        assert_eq!(paths["/v1/images"]["get"]["security"][0], serde_json::json!({}));
    }

    /// Routing with `.route(…)` in a module of an `OpenApiRouter` would
    /// serve an endpoint the document leaves out; and a route of
    /// `/api/v1/…` or `/v1/…` added to the plain router of `api/mod.rs`
    /// would too. `routes!` is the only way in.
    #[test]
    fn every_route_of_the_json_api_is_registered_with_its_documentation() {
        let mut files = Vec::new();
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        assert!(files.len() > 10);
        let mut offences = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            // Tests (this one among them) may name anything.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
            let documented = code.iter().any(|l| l.contains("OpenApiRouter"));
            for line in &code {
                let routes = [".route(", ".route_service(", ".nest(", ".nest_service("]
                    .iter()
                    .any(|m| line.contains(m));
                let plain_route = line.contains(".route(") || line.contains(".route_service(");
                let ours = line.contains("\"/api/") || line.contains("\"/v1/");
                if (documented && plain_route) || (!documented && routes && ours) {
                    offences.push(format!("{}: {}", file.display(), line.trim()));
                }
            }
        }
        assert!(
            offences.is_empty(),
            "routes of the JSON API outside `routes!` (see the api::openapi module doc): {offences:#?}"
        );
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
}
