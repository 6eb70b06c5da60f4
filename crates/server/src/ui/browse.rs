//! The pages anyone who may pull can read: home, the repository list and
//! search, a repository's tags, a manifest, and the starred list; and the
//! actions on a repository (star, delete a tag or the repository).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, RawForm, State};
use axum::response::{IntoResponse, Redirect};
use berth_meta::ui::{DailyPulls, RepoSummary, TagCursor, TagRow};
use berth_oci::{Digest, RepoName, Tag};
use futures::TryStreamExt;
use maud::{html, Markup};
use serde::Deserialize;

use super::page::{self, encode, Section};
use super::{Html, UiError, UiResult, Viewer};
use crate::app::App;
use crate::auth::access::Action;
use crate::lifecycle::inventory::Verdict;

/// Rows of a list page.
const PAGE_ROWS: u32 = 50;
/// Rows of each list of the home page.
const HOME_ROWS: u32 = 10;
/// Repositories read for the home page's lists when some may not be shown.
const HOME_SCAN: u32 = 200;
/// Days the pull chart shows.
const CHART_DAYS: i64 = 30;
/// Bytes of a config blob shown on a manifest page.
const CONFIG_SHOWN_BYTES: u64 = 256 * 1024;

/// The summaries of `list` that `viewer` may see, at most `limit`.
fn visible(viewer: &Viewer, list: Vec<RepoSummary>, limit: usize) -> Vec<RepoSummary> {
    list.into_iter()
        .filter(|r| viewer.may_pull(&r.name))
        .take(limit)
        .collect()
}

fn repo_link(name: &str) -> String {
    // Repository names are paths of lower-case letters, digits and `._-/`;
    // only `/` must stay as it is.
    format!("/ui/r/{}", name.split('/').map(encode).collect::<Vec<_>>().join("/"))
}

fn repo_table(list: &[RepoSummary], caption: &str) -> Markup {
    html! {
        table {
            caption.muted { (caption) }
            thead {
                tr {
                    th scope="col" { "Repository" }
                    th scope="col" .num { "Tags" }
                    th scope="col" { "Last push" }
                    th scope="col" .num { "Pulls" }
                    th scope="col" { "Last pull" }
                }
            }
            tbody {
                @for r in list {
                    tr {
                        td { a href=(repo_link(&r.name)) { (r.name) } }
                        td.num { (r.tags) }
                        td { (page::maybe_time(r.last_pushed_ms)) }
                        td.num { (r.pull_count) }
                        td { (page::maybe_time(r.last_pulled_ms)) }
                    }
                }
            }
        }
    }
}

fn search_form(q: &str) -> Markup {
    html! {
        form.row role="search" method="get" action="/ui/repositories" {
            div {
                label for="q" { "Search repositories" } br;
                input type="search" id="q" name="q" value=(q) placeholder="name or part of one";
            }
            button type="submit" { "Search" }
        }
    }
}

/// `GET /ui/`: recently pushed and most pulled repositories.
pub async fn home(State(app): State<Arc<App>>, viewer: Viewer) -> UiResult {
    let (mut recent, mut pulled) = tokio::try_join!(app.ui.recently_pushed(HOME_ROWS), app.ui.most_pulled(HOME_ROWS))?;
    // A visitor who may not see them all gets a longer read to choose from.
    if recent.iter().any(|r| !viewer.may_pull(&r.name)) {
        recent = app.ui.recently_pushed(HOME_SCAN).await?;
    }
    if pulled.iter().any(|r| !viewer.may_pull(&r.name)) {
        pulled = app.ui.most_pulled(HOME_SCAN).await?;
    }
    let recent = visible(&viewer, recent, HOME_ROWS as usize);
    let pulled = visible(&viewer, pulled, HOME_ROWS as usize);
    Ok(Html(page::layout(
        "Home",
        &viewer,
        Section::Home,
        html! {
            h1 { "Registry" }
            (search_form(""))
            div.grid {
                section aria-labelledby="recent" {
                    h2 #recent { "Recently pushed" }
                    @if recent.is_empty() { p.muted { "Nothing pushed yet that you may see." } }
                    @else { (repo_table(&recent, "Latest pushes first")) }
                }
                section aria-labelledby="pulled" {
                    h2 #pulled { "Most pulled" }
                    @if pulled.is_empty() { p.muted { "Nothing pulled yet that you may see." } }
                    @else { (repo_table(&pulled, "Most pulls first")) }
                }
            }
        },
    ))
    .into_response())
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    q: Option<String>,
    after: Option<String>,
}

/// `GET /ui/repositories?q=&after=`: repositories in name order, searched
/// by a part of the name, a page at a time.
pub async fn repositories(State(app): State<Arc<App>>, viewer: Viewer, Query(query): Query<ListQuery>) -> UiResult {
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if let Some(q) = q {
        crate::text::printable(q, 256).map_err(|e| UiError::BadRequest(format!("The search text {e}.")))?;
    }
    let after = query.after.clone().filter(|a| !a.is_empty());
    if let Some(a) = &after {
        crate::text::printable(a, 512).map_err(|e| UiError::BadRequest(format!("The page position {e}.")))?;
    }
    let page = crate::browse::repositories(&app, q, after.as_deref(), PAGE_ROWS, |name| viewer.may_pull(name)).await?;
    let shown = page.repositories;
    let next = page.next_after.map(|last| {
        let mut href = format!("/ui/repositories?after={}", encode(&last));
        if let Some(q) = q {
            href.push_str(&format!("&q={}", encode(q)));
        }
        href
    });
    Ok(Html(page::layout(
        "Repositories",
        &viewer,
        Section::Repositories,
        html! {
            h1 { "Repositories" }
            (search_form(q.unwrap_or("")))
            @if shown.is_empty() {
                p.muted { @if q.is_some() { "No repository you may see matches." } @else { "No repositories." } }
            } @else {
                (repo_table(&shown, if q.is_some() { "Matching repositories, by name" } else { "All repositories you may see, by name" }))
            }
            nav.pager aria-label="Pages" {
                @if query.after.is_some() {
                    a href=(match q { Some(q) => format!("/ui/repositories?q={}", encode(q)), None => "/ui/repositories".into() }) { "First page" }
                }
                @if let Some(next) = &next { a href=(next) rel="next" { "Next page" } }
            }
        },
    ))
    .into_response())
}

/// `GET /ui/starred`: the signed-in user's starred repositories.
pub async fn starred(State(app): State<Arc<App>>, viewer: Viewer) -> UiResult {
    let user = viewer.require_signed_in()?.subject.clone();
    let list = app.ui.starred(&user).await?;
    let list = visible(&viewer, list, usize::MAX);
    Ok(Html(page::layout(
        "Starred",
        &viewer,
        Section::Starred,
        html! {
            h1 { "Starred repositories" }
            @if list.is_empty() { p.muted { "You have starred no repository yet; a repository's page has the star button." } }
            @else { (repo_table(&list, "By name")) }
        },
    ))
    .into_response())
}

/// What a `/ui/r/…` path names.
enum Target {
    Repository(RepoName),
    Manifest(RepoName, Digest),
    Action(RepoName, String),
}

fn parse_target(path: &str) -> Result<Target, UiError> {
    let (repo, rest) = match path.split_once("/-/") {
        Some((repo, rest)) => (repo, Some(rest)),
        None => (path.trim_end_matches('/'), None),
    };
    let repo: RepoName = repo.parse().map_err(|_| UiError::NotFound)?;
    Ok(match rest {
        None => Target::Repository(repo),
        Some(rest) => match rest.split_once('/') {
            Some(("manifest", digest)) => Target::Manifest(repo, digest.parse().map_err(|_| UiError::NotFound)?),
            None => Target::Action(repo, rest.to_string()),
            Some(_) => return Err(UiError::NotFound),
        },
    })
}

#[derive(Deserialize, Default)]
pub struct RepoQuery {
    after_ms: Option<i64>,
    after_tag: Option<String>,
    tag: Option<String>,
}

/// `GET /ui/r/{repository}[/-/manifest/{digest}|/-/delete]`.
pub async fn repository_get(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(path): Path<String>,
    Query(query): Query<RepoQuery>,
) -> UiResult {
    match parse_target(&path)? {
        Target::Repository(repo) => repository_page(&app, &viewer, &repo, &query).await,
        Target::Manifest(repo, digest) => manifest_page(&app, &viewer, &repo, &digest, query.tag.as_deref()).await,
        Target::Action(repo, action) if action == "delete" => confirm_delete(&app, &viewer, &repo, query.tag).await,
        Target::Action(..) => Err(UiError::NotFound),
    }
}

/// A repository's tag the visitor may see, or not found (a repository the
/// visitor may not pull is not there, as on `/v2/`).
async fn visible_summary(app: &App, viewer: &Viewer, repo: &RepoName) -> Result<RepoSummary, UiError> {
    if !viewer.may_pull(repo.as_str()) {
        return Err(if viewer.signed_in() {
            UiError::NotFound
        } else {
            UiError::SignInRequired
        });
    }
    app.ui.repository_summary(repo.as_str()).await?.ok_or(UiError::NotFound)
}

/// A referrer tag's subject: `sha256-<hex>` with any suffix (`.sig`, `.att`, `.sbom`).
fn tag_subject(tag: &str) -> Option<&str> {
    let hex = tag.strip_prefix("sha256-")?;
    let hex = hex.get(..64)?;
    hex.bytes().all(|b| b.is_ascii_hexdigit()).then_some(hex)
}

async fn repository_page(app: &App, viewer: &Viewer, repo: &RepoName, query: &RepoQuery) -> UiResult {
    let summary = visible_summary(app, viewer, repo).await?;
    let cursor = match (&query.after_ms, &query.after_tag) {
        (Some(ms), Some(tag)) => {
            tag.parse::<Tag>()
                .map_err(|_| UiError::BadRequest("The page position names no tag.".into()))?;
            Some(TagCursor {
                pushed_ms: *ms,
                name: tag.clone(),
            })
        }
        _ => None,
    };
    let today = app.now_ms().div_euclid(86_400_000);
    let (tag_page, stars, pulls) = tokio::try_join!(
        async { Ok::<_, UiError>(crate::browse::tags(app, &summary, cursor.as_ref(), PAGE_ROWS).await?) },
        async { Ok(app.ui.stars_of(viewer.user(), repo.as_str()).await?) },
        async { Ok(app.ui.daily_pulls(repo.as_str(), today - CHART_DAYS + 1).await?) },
    )?;
    let crate::browse::TagPage {
        rows,
        total,
        next,
        verdicts,
    } = tag_page;
    let next = next.map(|c| {
        format!(
            "{}?after_ms={}&after_tag={}",
            repo_link(repo.as_str()),
            c.pushed_ms,
            encode(&c.name)
        )
    });
    let (starred, star_count) = stars;
    let newest = rows
        .iter()
        .find(|r| tag_subject(&r.name).is_none() && r.subject.is_none());
    // Signatures, attestations and SBOMs are shown under what they are about
    // when it is on this page.
    let mut under: HashMap<String, Vec<&TagRow>> = HashMap::new();
    let on_page: std::collections::HashSet<String> = rows.iter().map(|r| r.digest.to_string()).collect();
    let mut top: Vec<&TagRow> = Vec::new();
    for row in &rows {
        let subject = tag_subject(&row.name)
            .map(|hex| format!("sha256:{hex}"))
            .or_else(|| row.subject.as_ref().map(|s| s.to_string()));
        match subject.filter(|s| on_page.contains(s)) {
            Some(s) => under.entry(s).or_default().push(row),
            None => top.push(row),
        }
    }
    let may_delete = viewer.may(repo.as_str(), Action::Delete);
    let name = repo.as_str();
    Ok(Html(page::layout(
        name,
        viewer,
        Section::Repositories,
        html! {
            h1 { (name) }
            p {
                (plural(summary.tags, "tag")) " · " (plural(summary.pull_count, "pull")) " · " (plural(star_count, "star"))
            }
            @if viewer.signed_in() {
                form.inline method="post" action=(format!("{}/-/{}", repo_link(name), if starred { "unstar" } else { "star" })) {
                    (page::csrf_field(viewer))
                    button type="submit" .secondary aria-pressed=(if starred { "true" } else { "false" }) {
                        @if starred { "Unstar" } @else { "Star" }
                    }
                }
            }
            @if let Some(newest) = newest {
                h2 { "Pull" }
                (pull_lines(viewer, name, Some(&newest.name), &newest.digest))
            }
            h2 { "Pulls, last " (CHART_DAYS) " days" }
            (pull_chart(&pulls, today))
            h2 #tags { "Tags" }
            p.muted { (total) " in all, latest push first." }
            (tag_table(name, &top, &under, &verdicts, may_delete))
            nav.pager aria-label="Pages of tags" {
                @if cursor.is_some() { a href=(repo_link(name)) { "Latest tags" } }
                @if let Some(next) = &next { a href=(next) rel="next" { "Older tags" } }
            }
            @if may_delete {
                h2 { "Danger zone" }
                p { a.button href=(format!("{}/-/delete", repo_link(name))) { "Delete repository…" } }
            }
        },
    ))
    .into_response())
}

fn tag_table(
    repo: &str,
    top: &[&TagRow],
    under: &HashMap<String, Vec<&TagRow>>,
    verdicts: &HashMap<String, Verdict>,
    may_delete: bool,
) -> Markup {
    let row = |t: &TagRow, nested: bool| {
        let verdict = verdicts.get(&t.name);
        let manifest = format!(
            "{}/-/manifest/{}?tag={}",
            repo_link(repo),
            encode(&t.digest.to_string()),
            encode(&t.name)
        );
        html! {
            tr.nested[nested] {
                td {
                    a href=(manifest) { (t.name) }
                    @if let Some(kind) = referrer_kind(t) { " " span.badge { (kind) } }
                }
                td.mono title=(t.digest.to_string()) { (page::short_digest(t.digest.hex())) }
                td.num { (t.total_size.map(page::size).unwrap_or_else(|| "—".into())) }
                td { (t.platforms.join(", ")) }
                td { span.badge.(t.provenance) { (t.provenance) } }
                td { (page::time(t.pushed_ms)) }
                td { (page::maybe_time(t.last_pulled_ms)) }
                td.num { (t.pull_count) }
                td {
                    @if let Some(v) = verdict {
                        span.badge.delete[!v.keep] title=(v.reason) { (v.rule) }
                        @if let Some(e) = v.expires_ms { br; span.muted { "expires " (page::time(e)) } }
                    }
                }
                @if may_delete {
                    td { a href=(format!("{}/-/delete?tag={}", repo_link(repo), encode(&t.name))) aria-label=(format!("Delete tag {}", t.name)) { "Delete…" } }
                }
            }
        }
    };
    html! {
        table {
            thead {
                tr {
                    th scope="col" { "Tag" }
                    th scope="col" { "Digest" }
                    th scope="col" .num { "Size" }
                    th scope="col" { "Platforms" }
                    th scope="col" { "Provenance" }
                    th scope="col" { "Pushed" }
                    th scope="col" { "Last pull" }
                    th scope="col" .num { "Pulls" }
                    th scope="col" { "Lifecycle" }
                    @if may_delete { th scope="col" { span.muted { "Actions" } } }
                }
            }
            tbody {
                @for t in top {
                    (row(t, false))
                    @if let Some(children) = under.get(&t.digest.to_string()) {
                        @for c in children { (row(c, true)) }
                    }
                }
            }
        }
    }
}

/// `1 tag`, `2 tags`.
fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// What a tag that refers to another manifest is, by cosign's tag suffix or
/// the artifact type.
fn referrer_kind(t: &TagRow) -> Option<&'static str> {
    if let Some(hex) = tag_subject(&t.name) {
        let suffix = &t.name["sha256-".len() + hex.len()..];
        return Some(match suffix {
            ".sig" => "signature",
            ".att" => "attestation",
            ".sbom" => "SBOM",
            _ => "referrer",
        });
    }
    t.subject.as_ref()?;
    Some(artifact_kind(t.artifact_type.as_deref()))
}

fn artifact_kind(artifact_type: Option<&str>) -> &'static str {
    match artifact_type.unwrap_or_default() {
        t if t.contains("signature") || t.contains("cosign") || t.contains("notary") => "signature",
        t if t.contains("spdx") || t.contains("cyclonedx") || t.contains("sbom") => "SBOM",
        t if t.contains("in-toto") || t.contains("attestation") || t.contains("provenance") => "attestation",
        _ => "referrer",
    }
}

fn pull_lines(viewer: &Viewer, repo: &str, tag: Option<&str>, digest: &Digest) -> Markup {
    let host = &viewer.host;
    let reference = match tag {
        Some(t) => format!("{host}/{repo}:{t}"),
        None => format!("{host}/{repo}@{digest}"),
    };
    html! {
        (page::copy_line("pull-docker", "docker", &format!("docker pull {reference}")))
        (page::copy_line("pull-podman", "podman", &format!("podman pull {reference}")))
        (page::copy_line("pull-digest", "pinned", &format!("docker pull {host}/{repo}@{digest}")))
    }
}

/// The daily pulls as bars, drawn on the server (no script), with the
/// numbers in the accessible name.
fn pull_chart(days: &[DailyPulls], today: i64) -> Markup {
    let by_day: HashMap<i64, u64> = days.iter().map(|d| (d.day, d.pulls)).collect();
    let counts: Vec<u64> = (today - CHART_DAYS + 1..=today)
        .map(|d| by_day.get(&d).copied().unwrap_or(0))
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = counts.iter().sum();
    let (width, height, bar) = (CHART_DAYS as u64 * 12, 100u64, 10u64);
    let label = format!("{total} pulls in the last {CHART_DAYS} days; at most {max} in a day");
    html! {
        svg.chart viewBox=(format!("0 0 {width} {}", height + 14)) role="img" aria-label=(label) {
            title { (label) }
            @for (i, count) in counts.iter().enumerate() {
                @let h = count * height / max;
                rect x=(i as u64 * 12) y=(height - h) width=(bar) height=(h) {
                    title { (count) " pulls" }
                }
            }
            text x="0" y=(height + 12) { (CHART_DAYS) " days ago" }
            text x=(width - 30) y=(height + 12) { "today" }
        }
    }
}

async fn manifest_page(app: &App, viewer: &Viewer, repo: &RepoName, digest: &Digest, tag: Option<&str>) -> UiResult {
    visible_summary(app, viewer, repo).await?;
    let reference = berth_oci::Reference::Digest(digest.clone());
    let manifest = app
        .registry
        .find_manifest(repo, &reference)
        .await?
        .ok_or(UiError::NotFound)?;
    let tag = tag.filter(|t| t.parse::<Tag>().is_ok());
    let hex = digest.hex();
    let (facts, referrers, tagged) = tokio::try_join!(
        async { Ok::<_, UiError>(app.registry.manifest_facts(repo, digest).await?) },
        async { Ok(app.registry.referrers(repo, digest, None, None, 200).await?) },
        async {
            // cosign's tag scheme: `sha256-<hex>.sig` etc., right after `sha256-<hex>` in name order.
            let prefix = format!("sha256-{hex}");
            let page = app.registry.list_tags(repo, Some(&prefix), 100).await?;
            Ok(page
                .items
                .into_iter()
                .filter(|t| t.starts_with(&prefix))
                .collect::<Vec<_>>())
        },
    )?;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&manifest.body).ok();
    let pretty = parsed
        .as_ref()
        .and_then(|v| serde_json::to_string_pretty(v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&manifest.body).into_owned());
    let children: Vec<(String, String)> = parsed
        .as_ref()
        .and_then(|v| v.get("manifests"))
        .and_then(|m| m.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|d| {
                    let digest = d.get("digest")?.as_str()?.to_string();
                    let p = d.get("platform");
                    let field = |k: &str| p.and_then(|p| p.get(k)).and_then(|v| v.as_str()).unwrap_or("");
                    let mut platform = format!("{}/{}", field("os"), field("architecture"));
                    if !field("variant").is_empty() {
                        platform.push('/');
                        platform.push_str(field("variant"));
                    }
                    Some((digest, platform))
                })
                .collect()
        })
        .unwrap_or_default();
    let config = config_text(app, repo, parsed.as_ref()).await;
    let name = repo.as_str();
    Ok(Html(page::layout(
        &format!("{name}@{}", page::short_digest(digest.hex())),
        viewer,
        Section::Repositories,
        html! {
            p { a href=(repo_link(name)) { "← " (name) } }
            h1 { (name) @if let Some(t) = tag { ":" (t) } }
            table {
                tbody {
                    tr { th scope="row" { "Digest" } td.mono { (digest.to_string()) } }
                    tr { th scope="row" { "Media type" } td.mono { (manifest.media_type) } }
                    tr { th scope="row" { "Size" } td { (page::size(manifest.body.len() as u64)) } }
                    @if let Some(f) = &facts {
                        tr { th scope="row" { "Provenance" } td { span.badge.(f.provenance) { (f.provenance) } @if let Some(by) = &f.pushed_by { " by " (by) } } }
                        tr { th scope="row" { "Pushed" } td { (page::time(f.pushed_ms)) } }
                        tr { th scope="row" { "Pulls" } td { (f.pull_count) " · last " (page::maybe_time(f.last_pulled_ms)) } }
                    }
                }
            }
            h2 { "Pull" }
            (pull_lines(viewer, name, tag, digest))
            @if !children.is_empty() {
                h2 { "Platforms" }
                table {
                    thead { tr { th scope="col" { "Platform" } th scope="col" { "Digest" } } }
                    tbody {
                        @for (child, platform) in &children {
                            tr {
                                td { (platform) }
                                td.mono { a href=(format!("{}/-/manifest/{}", repo_link(name), encode(child))) { (child) } }
                            }
                        }
                    }
                }
            }
            h2 { "Signatures, SBOMs and attestations" }
            @if referrers.referrers.is_empty() && tagged.is_empty() {
                p.muted { "None." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Kind" } th scope="col" { "Artifact type" } th scope="col" { "Digest or tag" } th scope="col" .num { "Size" } } }
                    tbody {
                        @for r in &referrers.referrers {
                            tr {
                                td { span.badge { (artifact_kind(r.artifact_type.as_deref())) } }
                                td.mono { (r.artifact_type.as_deref().unwrap_or(&r.media_type)) }
                                td.mono { a href=(format!("{}/-/manifest/{}", repo_link(name), encode(&r.digest.to_string()))) { (page::short_digest(r.digest.hex())) } }
                                td.num { (page::size(r.size)) }
                            }
                        }
                        @for t in &tagged {
                            tr {
                                td { span.badge { (match &t[t.len().min(71)..] { ".sig" => "signature", ".att" => "attestation", ".sbom" => "SBOM", _ => "referrer" }) } }
                                td.muted { "tag scheme" }
                                td.mono { (t) }
                                td.num { "—" }
                            }
                        }
                    }
                }
            }
            h2 { "Manifest" }
            pre tabindex="0" role="region" aria-label="Manifest JSON" { code { (pretty) } }
            @if let Some(config) = config {
                h2 { "Configuration" }
                pre tabindex="0" role="region" aria-label="Configuration JSON" { code { (config) } }
            }
        },
    ))
    .into_response())
}

/// An image manifest's config blob as indented JSON, when it is small and
/// JSON; a missing or large one is left out.
async fn config_text(app: &App, repo: &RepoName, manifest: Option<&serde_json::Value>) -> Option<String> {
    let config = manifest?.get("config")?;
    let size = config.get("size")?.as_u64()?;
    if size > CONFIG_SHOWN_BYTES {
        return None;
    }
    let digest: Digest = config.get("digest")?.as_str()?.parse().ok()?;
    let blob = app.registry.open_blob(repo, &digest, None).await.ok()?;
    let mut bytes = Vec::with_capacity(size as usize);
    let mut body = blob.body;
    while let Ok(Some(chunk)) = body.try_next().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > CONFIG_SHOWN_BYTES {
            return None;
        }
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    serde_json::to_string_pretty(&value).ok()
}

async fn confirm_delete(app: &App, viewer: &Viewer, repo: &RepoName, tag: Option<String>) -> UiResult {
    visible_summary(app, viewer, repo).await?;
    if !viewer.may(repo.as_str(), Action::Delete) {
        return Err(UiError::Forbidden);
    }
    let tag = tag.filter(|t| !t.is_empty());
    if let Some(t) = &tag {
        t.parse::<Tag>().map_err(|_| UiError::NotFound)?;
    }
    let name = repo.as_str();
    let what = match &tag {
        Some(t) => format!("the tag {name}:{t}"),
        None => format!("the repository {name} with all its tags and manifests"),
    };
    Ok(Html(page::layout(
        "Confirm deletion",
        viewer,
        Section::Repositories,
        html! {
            h1 { "Delete?" }
            p { "This deletes " strong { (what) } ". Clients pulling it will fail. The garbage collector frees the space later." }
            form.row method="post" action=(format!("{}/-/delete", repo_link(name))) {
                (page::csrf_field(viewer))
                @if let Some(t) = &tag { input type="hidden" name="tag" value=(t); }
                input type="hidden" name="confirm" value="yes";
                button.danger type="submit" { "Delete" }
                a href=(repo_link(name)) { "Cancel" }
            }
        },
    ))
    .into_response())
}

/// `POST /ui/r/{repository}/-/{star|unstar|delete}`.
pub async fn repository_post(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(path): Path<String>,
    RawForm(body): RawForm,
) -> UiResult {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    viewer.check_csrf(form.get("csrf").map(String::as_str))?;
    let Target::Action(repo, action) = parse_target(&path)? else {
        return Err(UiError::NotFound);
    };
    visible_summary(&app, &viewer, &repo).await?;
    let back = repo_link(repo.as_str());
    match action.as_str() {
        "star" | "unstar" => {
            let user = viewer.require_signed_in()?.subject.clone();
            if action == "star" {
                app.ui.star(&user, repo.as_str(), app.now_ms()).await?;
            } else {
                app.ui.unstar(&user, repo.as_str()).await?;
            }
            Ok(Redirect::to(&back).into_response())
        }
        "delete" => {
            if !viewer.may(repo.as_str(), Action::Delete) {
                return Err(UiError::Forbidden);
            }
            if form.get("confirm").map(String::as_str) != Some("yes") {
                return Err(UiError::BadRequest("Deleting needs the confirmation page.".into()));
            }
            match form.get("tag").filter(|t| !t.is_empty()) {
                Some(tag) => {
                    let tag: Tag = tag.parse().map_err(|_| UiError::NotFound)?;
                    app.registry
                        .delete_manifest(&repo, &berth_oci::Reference::Tag(tag.clone()))
                        .await?;
                    tracing::info!(repository = %repo, tag = %tag.as_str(), by = %viewer.actor(), "tag deleted from the web UI");
                    Ok(Redirect::to(&back).into_response())
                }
                None => {
                    let removed = app.registry.delete_repository(&repo).await?;
                    tracing::info!(repository = %repo, manifests = removed, by = %viewer.actor(), "repository deleted from the web UI");
                    Ok(Redirect::to("/ui/repositories").into_response())
                }
            }
        }
        _ => Err(UiError::NotFound),
    }
}
