//! The stylesheet and script, compiled into the binary. Their URLs carry a
//! hash of their content, so browsers may keep them for a year and still
//! never use an old one after an upgrade.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

pub const CSS: &Asset = &Asset {
    name: "berth.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("static/berth.css"),
};

pub const JS: &Asset = &Asset {
    name: "berth.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("static/berth.js"),
};

const ALL: [&Asset; 2] = [CSS, JS];

/// Each asset's content hash, in the order of `ALL`.
static HASHES: LazyLock<[String; 2]> = LazyLock::new(|| ALL.map(|a| hex::encode(&Sha256::digest(a.body)[..6])));

fn hash_of(asset: &Asset) -> &'static str {
    let i = ALL.iter().position(|a| a.name == asset.name).unwrap_or(0);
    &HASHES[i]
}

/// The URL a page links the asset by.
pub fn url(asset: &Asset) -> String {
    format!("/ui/static/{}/{}", hash_of(asset), asset.name)
}

/// `GET /ui/static/{hash}/{name}`: an asset; a hash that is not the current
/// one still gets the current content, but is not kept for long.
pub async fn serve(Path((hash, name)): Path<(String, String)>) -> Response {
    let Some(asset) = ALL.iter().find(|a| a.name == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cache = if hash == hash_of(asset) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        asset.body,
    )
        .into_response()
}
