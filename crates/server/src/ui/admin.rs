//! The administrator's pages: a dashboard, users, robot tokens, grants,
//! browser sessions, retention policies with a preview, and garbage
//! collection. Each action calls what the `/api/v1/` endpoint for it calls.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawForm, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::{html, Markup};

use super::page::{self, Section};
use super::{Html, UiError, UiResult, Viewer};
use crate::app::App;
use crate::auth::manage::ManageError;
use crate::lifecycle::plan::Entry;
use crate::lifecycle::Rules;

/// Entries of the audit log the dashboard shows.
const RECENT_ACTIVITY: u32 = 20;
/// Lines of a retention preview shown, at most.
const PREVIEW_LINES: usize = 500;

fn form_map(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map(String::as_str).unwrap_or("").trim()
}

fn admin_nav(current: &str) -> Markup {
    let items = [
        ("", "Dashboard"),
        ("users", "Users"),
        ("tokens", "Robot tokens"),
        ("grants", "Grants"),
        ("sessions", "Sessions"),
        ("retention", "Retention"),
        ("gc", "Garbage collection"),
    ];
    html! {
        nav aria-label="Administration" {
            p {
                @for (i, (slug, label)) in items.iter().enumerate() {
                    @if i > 0 { " · " }
                    @let href = if slug.is_empty() { "/ui/admin".to_string() } else { format!("/ui/admin/{slug}") };
                    a href=(href) aria-current=[(*slug == current).then_some("page")] { (label) }
                }
            }
        }
    }
}

fn admin_page(viewer: &Viewer, title: &str, current: &str, message: Option<(&str, String)>, body: Markup) -> UiResult {
    let status = match &message {
        Some(("error", _)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    let markup = page::layout(
        title,
        viewer,
        Section::Admin,
        html! {
            (admin_nav(current))
            h1 { (title) }
            @if let Some((kind, text)) = &message { (page::notice(kind, text)) }
            (body)
        },
    );
    Ok((status, Html(markup)).into_response())
}

/// `GET /ui/admin`: counts and recent activity.
pub async fn dashboard(State(app): State<Arc<App>>, viewer: Viewer) -> UiResult {
    viewer.require_admin()?;
    let (counts, audit) = tokio::try_join!(async { Ok::<_, UiError>(app.ui.registry_counts().await?) }, async {
        app.auth
            .accounts()
            .audit_log(None, RECENT_ACTIVITY)
            .await
            .map_err(|e| UiError::internal("reading the audit log", e))
    },)?;
    let last_gc = app.lifecycle.last_gc();
    admin_page(
        &viewer,
        "Administration",
        "",
        None,
        html! {
            div.grid {
                div.card { div.big { (counts.users) } "users" }
                div.card { div.big { (counts.repositories) } "repositories" }
                div.card { div.big { (counts.tags) } "tags" }
                div.card { div.big { (page::size(counts.stored_bytes)) } "stored" }
                div.card {
                    div.big { (last_gc.as_ref().map(|(_, r)| page::size(r.bytes_reclaimed + r.orphan_bytes_reclaimed)).unwrap_or_else(|| "—".into())) }
                    "reclaimed by the last garbage collection"
                }
            }
            h2 { "Recent activity" }
            (audit_table(&audit))
        },
    )
}

fn audit_table(entries: &[berth_meta::access::AuditEntry]) -> Markup {
    html! {
        @if entries.is_empty() { p.muted { "Nothing recorded yet." } }
        @else {
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Target" } th scope="col" { "Detail" } } }
                tbody {
                    @for e in entries {
                        tr {
                            td { (page::time(e.at_ms)) }
                            td { (e.actor) }
                            td { (e.action) }
                            td.mono { (e.target) }
                            td.mono { (e.detail.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/admin/{section}`.
pub async fn section_get(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(section): Path<String>,
    RawQuery(query): RawQuery,
) -> UiResult {
    viewer.require_admin()?;
    let query = form_map(query.unwrap_or_default().as_bytes());
    render(&app, &viewer, &section, &query, None).await
}

async fn render(
    app: &App,
    viewer: &Viewer,
    section: &str,
    query: &HashMap<String, String>,
    message: Option<(&str, String)>,
) -> UiResult {
    match section {
        "users" => users_page(app, viewer, message).await,
        "tokens" => tokens_page(app, viewer, message, None).await,
        "grants" => grants_page(app, viewer, message).await,
        "sessions" => sessions_page(app, viewer, message).await,
        "retention" => retention_page(app, viewer, query, message).await,
        "gc" => gc_page(app, viewer, message),
        _ => Err(UiError::NotFound),
    }
}

fn manage_message(e: ManageError) -> Result<(&'static str, String), UiError> {
    match e {
        ManageError::Store(e) => Err(e.into()),
        other => Ok(("error", other.to_string())),
    }
}

/// `POST /ui/admin/{section}`: the section's form, by its `action` field.
pub async fn section_post(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(section): Path<String>,
    RawForm(body): RawForm,
) -> UiResult {
    viewer.require_admin()?;
    let form = form_map(&body);
    viewer.check_csrf(form.get("csrf").map(String::as_str))?;
    let accounts = app.auth.accounts();
    let actor = viewer.actor();
    let action = field(&form, "action");
    let outcome: Result<String, ManageError> = match (section.as_str(), action) {
        ("users", "create") => {
            let name = field(&form, "name");
            accounts
                .create_user(name, field(&form, "password"), form.contains_key("admin"), &actor)
                .await
                .map(|()| format!("User {name} created."))
        }
        ("users", "password") => {
            let name = field(&form, "name");
            match accounts.set_password(name, field(&form, "password"), &actor).await {
                Ok(()) => {
                    let ended = app.ui.delete_sessions_of(name).await?;
                    Ok(format!("Password of {name} reset; {ended} of their sessions ended."))
                }
                Err(e) => Err(e),
            }
        }
        ("users", "disable" | "enable") => {
            let name = field(&form, "name");
            let disable = action == "disable";
            match accounts.set_disabled(name, disable, &actor).await {
                Ok(()) if disable => {
                    app.ui.delete_sessions_of(name).await?;
                    Ok(format!("User {name} disabled and signed out."))
                }
                Ok(()) => Ok(format!("User {name} enabled.")),
                Err(e) => Err(e),
            }
        }
        ("tokens", "create") => {
            let name = field(&form, "name");
            let grants: Vec<String> = field(&form, "grants")
                .split([',', '\n', ' '])
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect();
            let expires = Some(field(&form, "expires")).filter(|e| !e.is_empty());
            return match accounts.create_token(name, &grants, expires, &actor).await {
                Ok(secret) => {
                    tokens_page(
                        &app,
                        &viewer,
                        Some(("ok", format!("Robot token {name} created."))),
                        Some((name, &secret)),
                    )
                    .await
                }
                Err(e) => tokens_page(&app, &viewer, Some(manage_message(e)?), None).await,
            };
        }
        ("tokens", "revoke") => {
            let name = field(&form, "name");
            accounts
                .revoke_token(name, &actor)
                .await
                .map(|()| format!("Robot token {name} revoked."))
        }
        ("grants", "add") => {
            let (subject, pattern, role) = (field(&form, "subject"), field(&form, "pattern"), field(&form, "role"));
            accounts
                .add_grant(subject, pattern, role, &actor)
                .await
                .map(|id| format!("Grant {id} added: {subject} may {role} {pattern}."))
        }
        ("grants", "remove") => {
            let id: i64 = field(&form, "id")
                .parse()
                .map_err(|_| UiError::BadRequest("No such grant.".into()))?;
            accounts
                .remove_grant(id, &actor)
                .await
                .map(|()| format!("Grant {id} removed."))
        }
        ("sessions", "end") => {
            let ended = app.ui.delete_session(field(&form, "id")).await?;
            Ok(if ended {
                "Session ended.".into()
            } else {
                "That session had already ended.".into()
            })
        }
        ("sessions", "end-all") => {
            let subject = field(&form, "subject");
            let ended = app.ui.delete_sessions_of(subject).await?;
            Ok(format!("{ended} sessions of {subject} ended."))
        }
        ("retention", "save") => return save_policy(&app, &viewer, &form).await,
        ("retention", "delete") => {
            let pattern = field(&form, "pattern");
            let done = match app.lifecycle.delete_policy(pattern, &actor).await {
                Ok(true) => ("ok", format!("Policy for {pattern} deleted.")),
                Ok(false) => ("error", format!("There is no policy for {pattern}.")),
                Err(e) => ("error", e.to_string()),
            };
            return render(&app, &viewer, "retention", &HashMap::new(), Some(done)).await;
        }
        ("retention", "run") => {
            if field(&form, "confirm") != "yes" {
                return Err(UiError::BadRequest(
                    "Running retention needs its confirmation box ticked.".into(),
                ));
            }
            let pattern = field(&form, "pattern");
            let filter = crate::pattern::Pattern::parse(pattern).map_err(|e| UiError::BadRequest(e.to_string()))?;
            let done = match app
                .lifecycle
                .run(Some(&filter), crate::lifecycle::Scope::Retention, &actor)
                .await
            {
                Ok(s) => (
                    "ok",
                    format!(
                        "Retention ran on {pattern}: {} repositories, {} tags deleted, {} kept, {} manifests deleted.",
                        s.repositories, s.tags_deleted, s.tags_kept, s.manifests_deleted
                    ),
                ),
                Err(e) => ("error", e.to_string()),
            };
            return render(&app, &viewer, "retention", &HashMap::new(), Some(done)).await;
        }
        ("gc", "run") => {
            let dry_run = field(&form, "dry_run") == "yes";
            let done = match app
                .lifecycle
                .collect_garbage(dry_run, |line| tracing::info!("gc: {line}"))
                .await
            {
                Ok(r) => (
                    "ok",
                    format!(
                        "{}{} manifests, {} blobs and {} removed in {} ms.",
                        if dry_run { "Dry run: " } else { "" },
                        r.manifests_removed,
                        r.blobs_removed,
                        page::size(r.bytes_reclaimed + r.orphan_bytes_reclaimed),
                        r.elapsed_ms
                    ),
                ),
                Err(e) => ("error", e.to_string()),
            };
            return gc_page(&app, &viewer, Some(done));
        }
        _ => return Err(UiError::NotFound),
    };
    let message = match outcome {
        Ok(text) => {
            tracing::info!(by = %actor, section = %section, action, "admin action from the web UI");
            ("ok", text)
        }
        Err(e) => manage_message(e)?,
    };
    render(&app, &viewer, &section, &HashMap::new(), Some(message)).await
}

async fn users_page(app: &App, viewer: &Viewer, message: Option<(&str, String)>) -> UiResult {
    let users = app
        .auth
        .accounts()
        .list_users()
        .await
        .map_err(|e| UiError::internal("listing users", e))?;
    admin_page(
        viewer,
        "Users",
        "users",
        message,
        html! {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "State" } th scope="col" { "Created" } th scope="col" { "Actions" } } }
                tbody {
                    @for u in &users {
                        tr {
                            td { (u.name) }
                            td {
                                @if u.admin { "administrator" } @else { "user" }
                                @if u.password_hash == crate::auth::secrets::SSO_PASSWORD_HASH { " " span.badge { "single sign-on" } }
                            }
                            td { @if u.disabled { span.badge.delete { "disabled" } } @else { "active" } }
                            td { (page::time(u.created_ms)) }
                            td {
                                form.inline method="post" action="/ui/admin/users" {
                                    (page::csrf_field(viewer))
                                    input type="hidden" name="name" value=(u.name);
                                    input type="hidden" name="action" value=(if u.disabled { "enable" } else { "disable" });
                                    button.secondary type="submit" aria-label=(format!("{} {}", if u.disabled { "Enable" } else { "Disable" }, u.name)) {
                                        @if u.disabled { "Enable" } @else { "Disable" }
                                    }
                                }
                                @if u.password_hash != crate::auth::secrets::SSO_PASSWORD_HASH {
                                " "
                                form.inline method="post" action="/ui/admin/users" {
                                    (page::csrf_field(viewer))
                                    input type="hidden" name="name" value=(u.name);
                                    input type="hidden" name="action" value="password";
                                    label for=(format!("pw-{}", u.name)) .muted { "New password " }
                                    input type="password" id=(format!("pw-{}", u.name)) name="password" autocomplete="new-password" required;
                                    button.secondary type="submit" aria-label=(format!("Reset the password of {}", u.name)) { "Reset" }
                                }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "New local user" }
            form.stack method="post" action="/ui/admin/users" {
                (page::csrf_field(viewer))
                input type="hidden" name="action" value="create";
                label for="new-name" { "Name" }
                input type="text" id="new-name" name="name" required autocomplete="off";
                label for="new-password" { "Password" }
                input type="password" id="new-password" name="password" required autocomplete="new-password";
                div { input type="checkbox" id="new-admin" name="admin" value="yes"; " " label for="new-admin" { "Administrator" } }
                button type="submit" { "Create user" }
            }
        },
    )
}

async fn tokens_page(
    app: &App,
    viewer: &Viewer,
    message: Option<(&str, String)>,
    secret: Option<(&str, &str)>,
) -> UiResult {
    let robots = app
        .auth
        .accounts()
        .list_robots()
        .await
        .map_err(|e| UiError::internal("listing robot tokens", e))?;
    admin_page(
        viewer,
        "Robot tokens",
        "tokens",
        message,
        html! {
            @if let Some((name, secret)) = secret {
                section aria-labelledby="secret-heading" {
                    h2 #secret-heading { "The token of " (name) }
                    p { "Copy it now: it is shown only this once. Use it as the password of " code { "docker login" } " with any username." }
                    (page::copy_line("new-secret", "token", secret))
                }
            }
            @if robots.is_empty() { p.muted { "No robot tokens yet." } }
            @else {
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Last used" } th scope="col" { "State" } th scope="col" { "Actions" } } }
                    tbody {
                        @for r in &robots {
                            tr {
                                td { (r.name) }
                                td { (page::time(r.created_ms)) " by " (r.created_by) }
                                td { (page::maybe_time(r.expires_ms)) }
                                td { (page::maybe_time(r.last_used_ms)) }
                                td { @if r.revoked_ms.is_some() { span.badge.delete { "revoked" } } @else { "live" } }
                                td {
                                    @if r.revoked_ms.is_none() {
                                        form.inline method="post" action="/ui/admin/tokens" data-confirm=(format!("Revoke {}? Clients using it will fail.", r.name)) {
                                            (page::csrf_field(viewer))
                                            input type="hidden" name="action" value="revoke";
                                            input type="hidden" name="name" value=(r.name);
                                            button.danger type="submit" aria-label=(format!("Revoke {}", r.name)) { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
            }
            }
            h2 { "New robot token" }
            form.stack method="post" action="/ui/admin/tokens" {
                (page::csrf_field(viewer))
                input type="hidden" name="action" value="create";
                label for="token-name" { "Name" }
                input type="text" id="token-name" name="name" required autocomplete="off";
                label for="token-grants" { "Grants, " code { "PATTERN:ROLE" } " separated by commas (roles: pull, push, delete, admin)" }
                input type="text" id="token-grants" name="grants" required placeholder="team/*:push";
                label for="token-expires" { "Expires after (optional, such as 30d)" }
                input type="text" id="token-expires" name="expires";
                button type="submit" { "Create token" }
            }
        },
    )
}

async fn grants_page(app: &App, viewer: &Viewer, message: Option<(&str, String)>) -> UiResult {
    let grants = app
        .auth
        .accounts()
        .list_grants()
        .await
        .map_err(|e| UiError::internal("listing grants", e))?;
    admin_page(
        viewer,
        "Grants",
        "grants",
        message,
        html! {
            @if grants.is_empty() { p.muted { "No grants yet." } }
            @else {
                table {
                    thead { tr { th scope="col" { "Subject" } th scope="col" { "Repositories" } th scope="col" { "Role" } th scope="col" { "Added" } th scope="col" { "Actions" } } }
                    tbody {
                        @for g in &grants {
                            tr {
                                td { (g.subject_kind.as_str()) ":" (g.subject) }
                                td.mono { (g.pattern) }
                                td { (g.role) }
                                td { (page::time(g.created_ms)) " by " (g.created_by) }
                                td {
                                    form.inline method="post" action="/ui/admin/grants" {
                                        (page::csrf_field(viewer))
                                        input type="hidden" name="action" value="remove";
                                        input type="hidden" name="id" value=(g.id);
                                        button.danger type="submit" aria-label=(format!("Remove grant {}", g.id)) { "Remove" }
                                    }
                                }
                            }
                        }
                    }
            }
            }
            h2 { "New grant" }
            form.stack method="post" action="/ui/admin/grants" {
                (page::csrf_field(viewer))
                input type="hidden" name="action" value="add";
                label for="grant-subject" { "Subject (" code { "user:NAME" } ", " code { "group:NAME" } " or " code { "robot:NAME" } ")" }
                input type="text" id="grant-subject" name="subject" required;
                label for="grant-pattern" { "Repositories (a pattern such as " code { "team/**" } ")" }
                input type="text" id="grant-pattern" name="pattern" required;
                label for="grant-role" { "Role" }
                select id="grant-role" name="role" {
                    option value="pull" { "pull" }
                    option value="push" { "push" }
                    option value="delete" { "delete" }
                    option value="admin" { "admin" }
                }
                button type="submit" { "Add grant" }
            }
        },
    )
}

async fn sessions_page(app: &App, viewer: &Viewer, message: Option<(&str, String)>) -> UiResult {
    let sessions = app.ui.sessions(app.now_ms()).await?;
    admin_page(
        viewer,
        "Sessions",
        "sessions",
        message,
        html! {
            p.muted { "Browser sessions of the web UI, latest use first." }
            table {
                thead { tr { th scope="col" { "Who" } th scope="col" { "Signed in" } th scope="col" { "Last seen" } th scope="col" { "Expires" } th scope="col" { "From" } th scope="col" { "Actions" } } }
                tbody {
                    @for s in &sessions {
                        tr {
                            td { (s.subject) }
                            td { (page::time(s.created_ms)) }
                            td { (page::time(s.last_seen_ms)) }
                            td { (page::time(s.expires_ms)) }
                            td { (s.addr) br; span.muted { (s.user_agent) } }
                            td {
                                form.inline method="post" action="/ui/admin/sessions" {
                                    (page::csrf_field(viewer))
                                    input type="hidden" name="action" value="end";
                                    input type="hidden" name="id" value=(s.id_hash);
                                    button.danger type="submit" aria-label=(format!("End this session of {}", s.subject)) { "End" }
                                }
                                " "
                                form.inline method="post" action="/ui/admin/sessions" {
                                    (page::csrf_field(viewer))
                                    input type="hidden" name="action" value="end-all";
                                    input type="hidden" name="subject" value=(s.subject);
                                    button.secondary type="submit" aria-label=(format!("End every session of {}", s.subject)) { "End all of this user" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The rules of a policy as the editor shows them: indented JSON.
fn rules_text(rules_json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(rules_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| rules_json.to_string())
}

async fn retention_page(
    app: &App,
    viewer: &Viewer,
    query: &HashMap<String, String>,
    message: Option<(&str, String)>,
) -> UiResult {
    let policies = app
        .lifecycle
        .stored_policies()
        .await
        .map_err(|e| UiError::internal("reading retention policies", e))?;
    let pattern = query.get("pattern").cloned().unwrap_or_default();
    let draft = query.get("rules").cloned().or_else(|| {
        policies
            .iter()
            .find(|p| p.pattern == pattern)
            .map(|p| rules_text(&p.rules_json))
    });
    let mut preview_error = None;
    let mut entries: Vec<Entry> = Vec::new();
    let mut summary = None;
    if let (false, Some(draft)) = (pattern.is_empty(), &draft) {
        match serde_json::from_str::<Rules>(draft) {
            Ok(rules) => match app
                .lifecycle
                .preview_draft(&pattern, rules, |plan| entries.extend(plan.entries(false)))
                .await
            {
                Ok(s) => summary = Some(s),
                Err(e) => preview_error = Some(e.to_string()),
            },
            Err(e) => preview_error = Some(format!("The rules are not valid: {e}")),
        }
    }
    entries.sort_by_key(|e| e.action != "delete");
    let shown = entries.len().min(PREVIEW_LINES);
    admin_page(
        viewer,
        "Retention policies",
        "retention",
        message,
        html! {
            @if policies.is_empty() { p.muted { "No retention policies yet." } }
            @else {
                table {
                    thead { tr { th scope="col" { "Repositories" } th scope="col" { "Rules" } th scope="col" { "Source" } th scope="col" { "Updated" } th scope="col" { "Actions" } } }
                    tbody {
                        @for p in &policies {
                            tr {
                                td.mono { a href=(format!("/ui/admin/retention?pattern={}", page::encode(&p.pattern))) { (p.pattern) } }
                                td.mono { (p.rules_json) }
                                td { (p.source) }
                                td { (page::time(p.updated_ms)) " by " (p.updated_by) }
                                td {
                                    form.inline method="post" action="/ui/admin/retention" {
                                        (page::csrf_field(viewer))
                                        input type="hidden" name="action" value="delete";
                                        input type="hidden" name="pattern" value=(p.pattern);
                                        button.danger type="submit" aria-label=(format!("Delete the policy for {}", p.pattern)) { "Delete" }
                                    }
                                }
                            }
                        }
                    }
            }
            }
            h2 #editor { "Edit a policy" }
            p.muted {
                "Rules are JSON: " code { "keep_last" } ", " code { "keep_days" } ", " code { "keep_pulled_within" } ", "
                code { "keep_patterns" } ", " code { "keep_min" } ", " code { "untagged" } ". Preview shows what a run would delete under the draft, and why; nothing is saved until you save."
            }
            form.stack method="get" action="/ui/admin/retention#preview" {
                label for="policy-pattern" { "Repositories (pattern)" }
                input type="text" id="policy-pattern" name="pattern" value=(pattern) required placeholder="team/**";
                label for="policy-rules" { "Rules" }
                textarea id="policy-rules" name="rules" required { (draft.clone().unwrap_or_else(|| "{\n  \"keep_last\": 10\n}".into())) }
                div {
                    button type="submit" { "Preview" }
                    " "
                    button type="submit" formmethod="post" formaction="/ui/admin/retention" name="action" value="save" .secondary { "Save policy" }
                }
                (page::csrf_field(viewer))
            }
            @if let Some(e) = &preview_error { (page::notice("error", e)) }
            @if let Some(s) = &summary {
                h2 #preview { "Preview for " (pattern) }
                p { (s.repositories) " repositories: " strong { (s.tags_deleted) @if s.tags_deleted == 1 { " tag" } @else { " tags" } " to delete" } ", " (s.tags_kept) " tags kept, " (s.manifests_deleted) " untagged manifests deleted." }
                @if shown < entries.len() { p.muted { "The first " (shown) " of " (entries.len()) " lines, deletions first." } }
                table #preview-table {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "Tag or manifest" } th scope="col" { "Action" } th scope="col" { "Rule" } th scope="col" { "Why" } } }
                    tbody {
                        @for e in entries.iter().take(shown) {
                            tr {
                                td { (e.repository) }
                                td.mono { (e.tag.clone().unwrap_or_else(|| e.digest.clone())) }
                                td { span.badge.delete[e.action == "delete"] { (e.action) } }
                                td { (e.rule) }
                                td { (e.reason) }
                            }
                        }
                    }
                }
                form.row method="post" action="/ui/admin/retention" {
                    (page::csrf_field(viewer))
                    input type="hidden" name="action" value="run";
                    input type="hidden" name="pattern" value=(pattern);
                    div { input type="checkbox" id="run-confirm" name="confirm" value="yes" required; " " label for="run-confirm" { "I understand that this deletes the tags above under the saved policies" } }
                    button.danger type="submit" { "Run retention on " (pattern) }
                }
            }
        },
    )
}

async fn save_policy(app: &App, viewer: &Viewer, form: &HashMap<String, String>) -> UiResult {
    let pattern = field(form, "pattern");
    let rules_text = form.get("rules").cloned().unwrap_or_default();
    let mut query = HashMap::new();
    query.insert("pattern".to_string(), pattern.to_string());
    query.insert("rules".to_string(), rules_text.clone());
    let message = match serde_json::from_str::<Rules>(&rules_text) {
        Ok(rules) => match app.lifecycle.set_policy(pattern, rules, &viewer.actor()).await {
            Ok(()) => ("ok", format!("Policy for {pattern} saved.")),
            Err(e) => ("error", e.to_string()),
        },
        Err(e) => ("error", format!("The rules are not valid: {e}")),
    };
    if message.0 == "ok" {
        return Ok(Redirect::to(&format!("/ui/admin/retention?pattern={}", page::encode(pattern))).into_response());
    }
    retention_page(app, viewer, &query, Some(message)).await
}

fn gc_page(app: &App, viewer: &Viewer, message: Option<(&str, String)>) -> UiResult {
    let last = app.lifecycle.last_gc();
    let interval = app.config.gc.interval_secs;
    admin_page(
        viewer,
        "Garbage collection",
        "gc",
        message,
        html! {
            p {
                @if interval == 0 { "No schedule: collections run only when asked." }
                @else { "Runs every " (humantime::format_duration(std::time::Duration::from_secs(interval))) " on the replica that leads it" }
                " Grace period: " (humantime::format_duration(std::time::Duration::from_secs(app.config.gc.grace_secs))) "."
            }
            h2 { "Last collection by this replica" }
            @match &last {
                None => p.muted { "None since this process started." },
                Some((at, r)) => table {
                    tbody {
                        tr { th scope="row" { "Finished" } td { (page::time(*at)) " in " (r.elapsed_ms) " ms" } }
                        tr { th scope="row" { "Manifests removed" } td { (r.manifests_removed) } }
                        tr { th scope="row" { "Blobs removed" } td { (r.blobs_removed) } }
                        tr { th scope="row" { "Bytes reclaimed" } td { (page::size(r.bytes_reclaimed + r.orphan_bytes_reclaimed)) } }
                        tr { th scope="row" { "Signature tags of deleted images" } td { (r.signature_tags_removed) } }
                    }
                },
            }
            h2 { "Run now" }
            form.row method="post" action="/ui/admin/gc" {
                (page::csrf_field(viewer))
                input type="hidden" name="action" value="run";
                div { input type="checkbox" id="gc-dry" name="dry_run" value="yes" checked; " " label for="gc-dry" { "Dry run (count only)" } }
                button type="submit" { "Collect garbage" }
            }
        },
    )
}
