//! The frame every page shares, and small pieces of markup pages repeat.
//!
//! maud escapes every `(expression)` it renders, so text from requests,
//! manifests and the database can be placed anywhere in a page; nothing here
//! uses `PreEscaped` on such text.

use maud::{html, Markup, DOCTYPE};

use super::assets;
use super::session::Viewer;

/// Where a page belongs in the top navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Home,
    Repositories,
    Starred,
    Account,
    Admin,
    None,
}

/// A whole HTML document around `body`.
pub fn layout(title: &str, viewer: &Viewer, section: Section, body: Markup) -> Markup {
    let nav_item = |href: &str, label: &str, item: Section| {
        html! {
            li { a href=(href) aria-current=[(section == item).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Berth" }
                link rel="stylesheet" href=(assets::url(assets::CSS));
                script src=(assets::url(assets::JS)) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "Berth" }
                    nav aria-label="Main" {
                        ul {
                            (nav_item("/ui/", "Home", Section::Home))
                            (nav_item("/ui/repositories", "Repositories", Section::Repositories))
                            @if viewer.signed_in() {
                                (nav_item("/ui/starred", "Starred", Section::Starred))
                                (nav_item("/ui/account", "Account", Section::Account))
                            }
                            @if viewer.is_admin() {
                                (nav_item("/ui/admin", "Admin", Section::Admin))
                            }
                        }
                    }
                    div.who {
                        @if let Some(name) = viewer.display_name() {
                            span { "Signed in as " strong { (name) } }
                            form method="post" action="/ui/logout" {
                                (csrf_field(viewer))
                                button type="submit" { "Sign out" }
                            }
                        } @else if viewer.may_sign_in() {
                            a href="/ui/login" { "Sign in" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every state-changing form of a session carries.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! {
        @if let Some(token) = viewer.csrf() {
            input type="hidden" name="csrf" value=(token);
        }
    }
}

/// A read-only command line with a copy button (shown by the script).
pub fn copy_line(id: &str, label: &str, text: &str) -> Markup {
    html! {
        div.pull {
            label for=(id) .muted { (label) }
            input type="text" id=(id) readonly value=(text);
            button type="button" .secondary data-copy=(id) hidden { "Copy" }
        }
    }
}

/// A notice box; `kind` is `ok`, `error` or empty.
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { div.notice.(kind) role=(if kind == "error" { "alert" } else { "status" }) { (text) } }
}

/// Bytes as people read them (1,000-based, as registries show sizes).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A time as UTC text, to the minute.
pub fn time(ms: i64) -> String {
    let text = crate::clock::rfc3339(ms.max(0) as u64 / 1000);
    // 2026-12-05T21:09:21Z → 2026-12-05 21:09 UTC
    match text.get(..16) {
        Some(head) => format!("{} UTC", head.replacen('T', " ", 1)),
        None => text,
    }
}

/// An optional time, or a dash.
pub fn maybe_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_else(|| "—".into())
}

/// The first 12 hex digits of a digest, as short digests are shown.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// What [`encode`] escapes: all but RFC 3986's unreserved characters.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment or query value, percent-encoded for a URL in a page.
pub fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, ESCAPED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_digests_read_as_people_expect() {
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1_500), "1.5 kB");
        assert_eq!(size(2_000_000_000), "2.0 GB");
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("x"), "x");
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(encode("pr-7--ttl-7d"), "pr-7--ttl-7d");
        assert_eq!(encode("a/b c?d&e"), "a%2Fb%20c%3Fd%26e");
    }
}
