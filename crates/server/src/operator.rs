//! The operator subcommands (`berth user|token|grant|audit|retention|gc|fsck|
//! export|import`): they open the stores named by the configuration and make
//! the same changes as the admin API, recorded in the audit log as `cli:USER`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;

use berth_meta::AccessStore;

use crate::airgap::{self, ArchivePath, Selection};
use crate::app::{ensure_data_dir, open_meta, open_stores, registry_limits};
use crate::auth::manage::Accounts;
use crate::cli::{
    CacheCommand, ExportArgs, GrantCommand, ImportArgs, RetentionCommand, StoreArgs, TokenCommand, UserCommand,
};
use crate::clock;
use crate::clock::rfc3339;
use crate::config::{Config, Overrides};
use crate::lifecycle::{Lifecycle, Rules, Scope};
use crate::pattern::Pattern;
use crate::registry::Registry;

fn load(args: &StoreArgs) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen: None,
        data_dir: args.data_dir.clone(),
    };
    Ok(Config::load(args.config.as_deref(), overrides)?)
}

/// The accounts of the configuration's metadata store.
async fn open_accounts(args: &StoreArgs) -> anyhow::Result<Accounts> {
    let config = load(args)?;
    ensure_data_dir(&config.data_dir)?;
    let meta: Arc<dyn AccessStore> = open_meta(&config).await?;
    Ok(Accounts::new(meta, clock::from_env()?))
}

/// `cli:` and the operating-system user running the command.
fn actor() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        // SAFETY: getuid cannot fail.
        .unwrap_or_else(|| format!("uid{}", unsafe { libc::getuid() }));
    format!("cli:{user}")
}

fn ms_text(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => rfc3339(u64::try_from(ms / 1000).unwrap_or(0)),
        None => "-".into(),
    }
}

/// A password from standard input: one line, prompted for (without echo) on a terminal.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("Password: ");
        std::io::stderr().flush()?;
    }
    let echo = terminal.then(EchoOff::new).flatten();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    drop(echo);
    if terminal {
        eprintln!();
    }
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    Ok(password)
}

/// Turns terminal echo off until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut term) != 0 {
                return None;
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &term) == 0).then_some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `new`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

pub async fn user(args: StoreArgs, command: UserCommand) -> anyhow::Result<()> {
    let accounts = open_accounts(&args).await?;
    let actor = actor();
    match command {
        UserCommand::Add { name, admin } => {
            let password = read_password()?;
            accounts.create_user(&name, &password, admin, &actor).await?;
            eprintln!("user {name} added{}", if admin { " (administrator)" } else { "" });
        }
        UserCommand::Passwd { name } => {
            let password = read_password()?;
            accounts.set_password(&name, &password, &actor).await?;
            eprintln!("password of {name} changed");
        }
        UserCommand::Disable { name } => {
            accounts.set_disabled(&name, true, &actor).await?;
            eprintln!("user {name} disabled");
        }
        UserCommand::Enable { name } => {
            accounts.set_disabled(&name, false, &actor).await?;
            eprintln!("user {name} enabled");
        }
        UserCommand::List => {
            println!("{:<32} {:<6} {:<9} CREATED", "NAME", "ADMIN", "DISABLED");
            for u in accounts.list_users().await? {
                println!(
                    "{:<32} {:<6} {:<9} {}",
                    u.name,
                    u.admin,
                    u.disabled,
                    ms_text(Some(u.created_ms))
                );
            }
        }
    }
    Ok(())
}

pub async fn token(args: StoreArgs, command: TokenCommand) -> anyhow::Result<()> {
    let accounts = open_accounts(&args).await?;
    let actor = actor();
    match command {
        TokenCommand::Create { name, grants, expires } => {
            let token = accounts
                .create_token(&name, &grants, expires.as_deref(), &actor)
                .await?;
            eprintln!("token {name} created; it is shown this once, use it as the password with any login name:");
            println!("{token}");
        }
        TokenCommand::List => {
            let grants = accounts.list_grants().await?;
            println!(
                "{:<24} {:<8} {:<21} {:<21} GRANTS",
                "NAME", "STATE", "EXPIRES", "LAST USED"
            );
            let now = accounts.now_ms();
            for r in accounts.list_robots().await? {
                let state = if r.revoked_ms.is_some() {
                    "revoked"
                } else if r.expires_ms.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "live"
                };
                let own: Vec<String> = grants
                    .iter()
                    .filter(|g| g.subject_kind.as_str() == "robot" && g.subject == r.name)
                    .map(|g| format!("{}:{}", g.pattern, g.role))
                    .collect();
                println!(
                    "{:<24} {:<8} {:<21} {:<21} {}",
                    r.name,
                    state,
                    ms_text(r.expires_ms),
                    ms_text(r.last_used_ms),
                    own.join(" ")
                );
            }
        }
        TokenCommand::Revoke { name } => {
            accounts.revoke_token(&name, &actor).await?;
            eprintln!("token {name} revoked");
        }
    }
    Ok(())
}

pub async fn grant(args: StoreArgs, command: GrantCommand) -> anyhow::Result<()> {
    let accounts = open_accounts(&args).await?;
    let actor = actor();
    match command {
        GrantCommand::Add { subject, pattern, role } => {
            let id = accounts.add_grant(&subject, &pattern, &role, &actor).await?;
            println!("{id}");
            eprintln!("grant {id}: {subject} {role} on {pattern}");
        }
        GrantCommand::List => {
            println!("{:<6} {:<32} {:<32} ROLE", "ID", "SUBJECT", "PATTERN");
            for g in accounts.list_grants().await? {
                let subject = format!("{}:{}", g.subject_kind.as_str(), g.subject);
                println!("{:<6} {:<32} {:<32} {}", g.id, subject, g.pattern, g.role);
            }
        }
        GrantCommand::Remove { id } => {
            accounts.remove_grant(id, &actor).await?;
            eprintln!("grant {id} removed");
        }
    }
    Ok(())
}

pub async fn audit(args: StoreArgs, limit: u32) -> anyhow::Result<()> {
    let accounts = open_accounts(&args).await?;
    for e in accounts.audit_log(None, limit).await? {
        println!(
            "{}  {:<20} {:<14} {:<28} {}",
            ms_text(Some(e.at_ms)),
            e.actor,
            e.action,
            e.target,
            e.detail.unwrap_or_default()
        );
    }
    Ok(())
}

/// The lifecycle jobs over the stores of the configuration, with the
/// configuration's policies written to the database first.
async fn open_lifecycle(args: &StoreArgs) -> anyhow::Result<Lifecycle> {
    let config = load(args)?;
    ensure_data_dir(&config.data_dir)?;
    let (meta, stores) = open_stores(&config, None).await?;
    let clock = clock::from_env()?;
    // What a run from the command line removes is announced like a server's
    // run: queued here, delivered by the server that leads delivery.
    let webhooks = crate::app::open_webhooks(&config, meta.clone(), clock.clone())?;
    let mut lifecycle = Lifecycle::new(meta, stores, clock, &config)
        .map_err(|e| anyhow::anyhow!("invalid lifecycle configuration: {e}"))?;
    if webhooks.active() {
        lifecycle = lifecycle.notifying(webhooks);
    }
    lifecycle.sync_config_policies().await?;
    Ok(lifecycle)
}

fn repo_filter(repo: Option<&str>) -> anyhow::Result<Option<Pattern>> {
    repo.map(Pattern::parse).transpose().map_err(|e| anyhow::anyhow!(e))
}

pub async fn retention(args: StoreArgs, command: RetentionCommand) -> anyhow::Result<()> {
    let lifecycle = open_lifecycle(&args).await?;
    let actor = actor();
    match command {
        RetentionCommand::Set { pattern, rules } => {
            let rules = Rules {
                keep_last: rules.keep_last,
                keep_days: rules.keep_days,
                keep_pulled_within: rules.keep_pulled_within,
                keep_patterns: rules.keep_patterns,
                keep_min: rules.keep_min,
                untagged: rules.untagged,
                keep_by_age: rules.max_age_days.map(|max_age_days| crate::config::KeepByAge {
                    max_age_days,
                    match_pulled_in_last_days: rules.match_pulled_in_last_days,
                }),
            };
            lifecycle.set_policy(&pattern, rules, &actor).await?;
            eprintln!("retention policy for {pattern} set");
        }
        RetentionCommand::Show => {
            println!("{:<32} {:<7} {:<21} RULES", "PATTERN", "SOURCE", "UPDATED");
            for p in lifecycle.stored_policies().await? {
                println!(
                    "{:<32} {:<7} {:<21} {}",
                    p.pattern,
                    p.source,
                    ms_text(Some(p.updated_ms)),
                    p.rules_json
                );
            }
        }
        RetentionCommand::Delete { pattern } => {
            anyhow::ensure!(
                lifecycle.delete_policy(&pattern, &actor).await?,
                "there is no retention policy for {pattern}"
            );
            eprintln!("retention policy for {pattern} deleted");
        }
        RetentionCommand::Preview {
            repo,
            deleted_only,
            json,
        } => {
            let filter = repo_filter(repo.as_deref())?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut failed = None;
            if !json {
                writeln!(out, "{:<7} {:<19} {:<60} REASON", "ACTION", "RULE", "WHAT")?;
            }
            let summary = lifecycle
                .preview(filter.as_ref(), Scope::Retention, |plan| {
                    for e in plan.entries(deleted_only) {
                        let written = if json {
                            writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default())
                        } else {
                            let what = match &e.tag {
                                Some(tag) => format!("{}:{tag}", e.repository),
                                None => format!("{}@{}", e.repository, e.digest),
                            };
                            writeln!(out, "{:<7} {:<19} {what:<60} {}", e.action, e.rule, e.reason)
                        };
                        if let Err(err) = written {
                            failed.get_or_insert(err);
                        }
                    }
                })
                .await?;
            out.flush()?;
            if let Some(err) = failed {
                return Err(err.into());
            }
            eprintln!(
                "{} repositories: {} tags kept, {} tags and {} manifests would be deleted",
                summary.repositories, summary.tags_kept, summary.tags_deleted, summary.manifests_deleted
            );
        }
        RetentionCommand::Run { repo } => {
            let filter = repo_filter(repo.as_deref())?;
            let summary = lifecycle.run(filter.as_ref(), Scope::Retention, &actor).await?;
            eprintln!(
                "{} repositories: {} tags kept, {} tags and {} manifests deleted, {} left because they changed \
                 during the run",
                summary.repositories,
                summary.tags_kept,
                summary.tags_deleted,
                summary.manifests_deleted,
                summary.skipped_changed
            );
        }
    }
    Ok(())
}

pub async fn gc(args: StoreArgs, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let lifecycle = open_lifecycle(&args).await?;
    let report = lifecycle
        .collect_garbage(dry_run, |line| eprintln!("gc: {line}"))
        .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "gc {verb} {} blobs ({} bytes), {} orphaned files ({} bytes), {} untagged manifests, {} signature \
             tags, {} unused links, {} stray upload files in {} ms",
            report.blobs_removed,
            report.bytes_reclaimed,
            report.orphan_files_removed,
            report.orphan_bytes_reclaimed,
            report.manifests_removed,
            report.signature_tags_removed,
            report.links_removed,
            report.upload_files_removed,
            report.elapsed_ms
        );
    }
    Ok(())
}

pub async fn fsck(args: StoreArgs, verify: bool, repair: bool, json: bool) -> anyhow::Result<()> {
    let lifecycle = open_lifecycle(&args).await?;
    let report = lifecycle.fsck(verify, repair, |line| eprintln!("fsck: {line}")).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for p in &report.problems {
            println!("{}", serde_json::to_string(p)?);
        }
        println!(
            "fsck: {} blobs recorded, {} files, {} problems, {} unrepaired",
            report.blobs_checked,
            report.files_checked,
            report.problems.len(),
            report.unrepaired
        );
    }
    anyhow::ensure!(
        report.unrepaired == 0,
        "{} inconsistencies remain{}",
        report.unrepaired,
        if repair {
            ""
        } else {
            " (run with --repair to fix what is safe to fix)"
        }
    );
    Ok(())
}

/// `berth cache preload`: pulls a list of images into the cache.
pub async fn cache(args: StoreArgs, command: CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Preload { file, concurrency } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the list from standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let items =
                crate::proxy::preload::parse_list(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let app = crate::app::App::open(load(&args)?).await?;
            let started = std::time::Instant::now();
            let bar = indicatif::ProgressBar::new(items.len() as u64);
            if !std::io::stderr().is_terminal() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let summary = app
                .proxy
                .preload(items, concurrency, |line, error| {
                    bar.inc(1);
                    match error {
                        Some(e) => bar.suspend(|| eprintln!("berth: {line}: {e}")),
                        None => bar.set_message(line.to_string()),
                    }
                })
                .await;
            bar.finish_and_clear();
            // What was pulled must be counted before the process ends.
            app.registry.flush_pulls().await.ok();
            app.registry.flush_touches().await.ok();
            let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "preloaded {} images ({} failed): {} manifests, {} blobs fetched ({} bytes), {} blobs already cached, in {:.1}s",
                n(&summary.images),
                n(&summary.failed),
                n(&summary.manifests),
                n(&summary.blobs_fetched),
                n(&summary.bytes_fetched),
                n(&summary.blobs_cached),
                started.elapsed().as_secs_f64()
            );
            anyhow::ensure!(
                n(&summary.failed) == 0,
                "{} images could not be preloaded",
                n(&summary.failed)
            );
            Ok(())
        }
    }
}

/// The registry core over the stores of the configuration.
async fn open_registry(args: &StoreArgs) -> anyhow::Result<Registry> {
    let config = load(args)?;
    ensure_data_dir(&config.data_dir)?;
    let (meta, stores) = open_stores(&config, None).await?;
    Ok(Registry::new(
        meta,
        stores,
        clock::from_env()?,
        registry_limits(&config)?,
    ))
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let output = ArchivePath::from_arg(args.output);
    anyhow::ensure!(
        !(args.json && output == ArchivePath::Stdio),
        "--json prints the summary on standard output, where - writes the archive; write the archive to a file"
    );
    let selection = if args.all {
        Selection::All
    } else {
        let patterns = args
            .repos
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!(e))?;
        Selection::Matching(patterns)
    };
    let registry = open_registry(&args.store).await?;
    let summary = airgap::export(&registry, &selection, &output).await?;
    registry.flush_touches().await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "export: {} repositories, {} tags, {} manifests, {} blobs, {} bytes written to {output} in {:.1} s",
            summary.repositories,
            summary.tags,
            summary.manifests,
            summary.blobs,
            summary.bytes,
            summary.elapsed_ms as f64 / 1000.0
        );
    }
    Ok(())
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let input = ArchivePath::from_arg(args.input);
    let registry = open_registry(&args.store).await?;
    let summary = airgap::import(&registry, &input).await?;
    registry.flush_touches().await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "import: {} repositories; tags: {} set, {} unchanged; manifests: {} stored, {} unchanged; blobs: {} \
             stored, {} already held, {} linked; {} bytes read from {input} in {:.1} s",
            summary.repositories,
            summary.tags_set,
            summary.tags_unchanged,
            summary.manifests_stored,
            summary.manifests_unchanged,
            summary.blobs_stored,
            summary.blobs_present,
            summary.blobs_linked,
            summary.bytes,
            summary.elapsed_ms as f64 / 1000.0
        );
    }
    Ok(())
}
