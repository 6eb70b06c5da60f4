//! The operator subcommands (`berth user|token|grant|audit`): they open the
//! metadata store named by the configuration and make the same changes as
//! the admin API, recorded in the audit log as `cli:USER`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use berth_meta::{AccessStore, SqliteMeta};

use crate::app::{ensure_data_dir, open_meta};
use crate::auth::manage;
use crate::auth::rfc3339;
use crate::cli::{GrantCommand, StoreArgs, TokenCommand, UserCommand};
use crate::config::{Config, Overrides};

async fn open(args: &StoreArgs) -> anyhow::Result<SqliteMeta> {
    let overrides = Overrides {
        listen: None,
        data_dir: args.data_dir.clone(),
    };
    let config = Config::load(args.config.as_deref(), overrides)?;
    ensure_data_dir(&config.data_dir)?;
    open_meta(&config.data_dir).await
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
    let store = open(&args).await?;
    let actor = actor();
    match command {
        UserCommand::Add { name, admin } => {
            let password = read_password()?;
            manage::create_user(&store, &name, &password, admin, &actor).await?;
            eprintln!("user {name} added{}", if admin { " (administrator)" } else { "" });
        }
        UserCommand::Passwd { name } => {
            let password = read_password()?;
            manage::set_password(&store, &name, &password, &actor).await?;
            eprintln!("password of {name} changed");
        }
        UserCommand::Disable { name } => {
            manage::set_disabled(&store, &name, true, &actor).await?;
            eprintln!("user {name} disabled");
        }
        UserCommand::Enable { name } => {
            manage::set_disabled(&store, &name, false, &actor).await?;
            eprintln!("user {name} enabled");
        }
        UserCommand::List => {
            println!("{:<32} {:<6} {:<9} CREATED", "NAME", "ADMIN", "DISABLED");
            for u in store.list_users().await? {
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
    let store = open(&args).await?;
    let actor = actor();
    match command {
        TokenCommand::Create { name, grants, expires } => {
            let token = manage::create_token(&store, &name, &grants, expires.as_deref(), &actor).await?;
            eprintln!("token {name} created; it is shown this once, use it as the password with any login name:");
            println!("{token}");
        }
        TokenCommand::List => {
            let grants = store.list_grants().await?;
            println!(
                "{:<24} {:<8} {:<21} {:<21} GRANTS",
                "NAME", "STATE", "EXPIRES", "LAST USED"
            );
            let now = manage::now_ms();
            for r in store.list_robots().await? {
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
            manage::revoke_token(&store, &name, &actor).await?;
            eprintln!("token {name} revoked");
        }
    }
    Ok(())
}

pub async fn grant(args: StoreArgs, command: GrantCommand) -> anyhow::Result<()> {
    let store = open(&args).await?;
    let actor = actor();
    match command {
        GrantCommand::Add { subject, pattern, role } => {
            let id = manage::add_grant(&store, &subject, &pattern, &role, &actor).await?;
            println!("{id}");
            eprintln!("grant {id}: {subject} {role} on {pattern}");
        }
        GrantCommand::List => {
            println!("{:<6} {:<32} {:<32} ROLE", "ID", "SUBJECT", "PATTERN");
            for g in store.list_grants().await? {
                let subject = format!("{}:{}", g.subject_kind.as_str(), g.subject);
                println!("{:<6} {:<32} {:<32} {}", g.id, subject, g.pattern, g.role);
            }
        }
        GrantCommand::Remove { id } => {
            manage::remove_grant(&store, id, &actor).await?;
            eprintln!("grant {id} removed");
        }
    }
    Ok(())
}

pub async fn audit(args: StoreArgs, limit: u32) -> anyhow::Result<()> {
    let store = open(&args).await?;
    for e in store.audit_log(None, limit).await? {
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
