//! Changes to users, robot tokens and grants, shared by the CLI and the admin
//! API so both check the same rules and write the same audit entries.

use std::sync::Arc;
use std::time::Duration;

use berth_meta::access::{Audit, AuditEntry, GrantRecord, NewGrant, RobotRecord, SubjectKind, UserRecord};
use berth_meta::{AccessStore, MetaError};

use super::access::Grant;
use super::secrets;
use crate::clock::Clock;
use crate::text;

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] MetaError),
}

type Result<T> = std::result::Result<T, ManageError>;

/// The `created_by` of a personal access token begins with this, followed by
/// the user it stands for.
pub const PERSONAL_TOKEN_MARK: &str = "pat:";

/// What a single sign-on found of the user it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsoAccount {
    Provisioned,
    Existing,
    /// A local user (with a password) has the name: never taken over.
    TakenByLocalUser,
    Disabled,
}

/// The users, robot tokens and grants of a registry and its audit log, as
/// the CLI and the admin API read and change them.
pub struct Accounts {
    store: Arc<dyn AccessStore>,
    clock: Arc<dyn Clock>,
}

/// User and robot names: letters, digits and `._@-`, up to 128 characters
/// (emails are valid user names, as external identities use them).
fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ManageError::Invalid(format!(
            "{kind} name {name:?}: use 1 to 128 letters, digits, '.', '_', '@' or '-'"
        )))
    }
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < secrets::MIN_PASSWORD_CHARS {
        return Err(ManageError::Invalid(format!(
            "passwords need at least {} characters",
            secrets::MIN_PASSWORD_CHARS
        )));
    }
    Ok(())
}

async fn hash(password: &str) -> Result<String> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(|e| ManageError::Invalid(e.to_string()))?
        .map_err(|e| ManageError::Invalid(e.to_string()))
}

/// `90s`, `90m`, `12h`, `30d` or `2w`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let invalid = || {
        ManageError::Invalid(format!(
            "duration {text:?}: write a number and s, m, h, d or w, such as 30d"
        ))
    };
    let (split, _) = text.char_indices().last().ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid()),
    };
    if n == 0 {
        return Err(invalid());
    }
    n.checked_mul(unit_secs).map(Duration::from_secs).ok_or_else(invalid)
}

/// `user:NAME`, `group:NAME` or `robot:NAME`.
pub fn parse_subject(text: &str) -> Result<(SubjectKind, String)> {
    let (kind, name) = text
        .split_once(':')
        .and_then(|(k, n)| SubjectKind::parse(k).map(|k| (k, n)))
        .ok_or_else(|| ManageError::Invalid(format!("subject {text:?}: write user:NAME, group:NAME or robot:NAME")))?;
    // Not the local name rule: a grant may name an external account or a
    // group of an identity provider, whose names are theirs to choose.
    text::name(name).map_err(|e| ManageError::Invalid(format!("subject {text:?}: its name {e}")))?;
    Ok((kind, name.to_string()))
}

impl Accounts {
    pub fn new(store: Arc<dyn AccessStore>, clock: Arc<dyn Clock>) -> Accounts {
        Accounts { store, clock }
    }

    /// The current time of this registry's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn audit(&self, actor: &str) -> Audit {
        Audit {
            actor: actor.to_string(),
            at_ms: self.clock.now_ms(),
        }
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>> {
        Ok(self.store.list_users().await?)
    }

    pub async fn list_robots(&self) -> Result<Vec<RobotRecord>> {
        Ok(self.store.list_robots().await?)
    }

    pub async fn list_grants(&self) -> Result<Vec<GrantRecord>> {
        Ok(self.store.list_grants().await?)
    }

    /// Audit entries before `before_ms` (all when `None`), newest first, at most `limit`.
    pub async fn audit_log(&self, before_ms: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(self.store.audit_log(before_ms, limit).await?)
    }

    pub async fn create_user(&self, name: &str, password: &str, admin: bool, actor: &str) -> Result<()> {
        check_name("user", name)?;
        check_password(password)?;
        let user = UserRecord {
            name: name.to_string(),
            password_hash: hash(password).await?,
            admin,
            disabled: false,
            created_ms: self.clock.now_ms(),
        };
        if self.store.create_user(&user, &self.audit(actor)).await? {
            Ok(())
        } else {
            Err(ManageError::Conflict(format!("user {name} exists")))
        }
    }

    /// The user `name` signing in through single sign-on: created on first
    /// sign-in (without a password), refused when a local user has the name
    /// or the account was disabled.
    pub async fn sso_account(&self, name: &str) -> Result<SsoAccount> {
        check_name("user", name)?;
        Ok(match self.store.user(name).await? {
            Some(u) if u.password_hash != secrets::SSO_PASSWORD_HASH => SsoAccount::TakenByLocalUser,
            Some(u) if u.disabled => SsoAccount::Disabled,
            Some(_) => SsoAccount::Existing,
            None => {
                let user = UserRecord {
                    name: name.to_string(),
                    password_hash: secrets::SSO_PASSWORD_HASH.to_string(),
                    admin: false,
                    disabled: false,
                    created_ms: self.clock.now_ms(),
                };
                if self.store.create_user(&user, &self.audit("sso")).await? {
                    SsoAccount::Provisioned
                } else {
                    // Made by a sign-in of the same person a moment ago.
                    SsoAccount::Existing
                }
            }
        })
    }

    pub async fn set_password(&self, name: &str, password: &str, actor: &str) -> Result<()> {
        check_name("user", name)?;
        check_password(password)?;
        if self
            .store
            .set_password(name, &hash(password).await?, &self.audit(actor))
            .await?
        {
            Ok(())
        } else {
            Err(ManageError::NotFound(format!("no user {name}")))
        }
    }

    pub async fn set_disabled(&self, name: &str, disabled: bool, actor: &str) -> Result<()> {
        check_name("user", name)?;
        if self.store.set_disabled(name, disabled, &self.audit(actor)).await? {
            Ok(())
        } else {
            Err(ManageError::NotFound(format!("no user {name}")))
        }
    }

    /// A new robot token with the given `PATTERN:ROLE` grants; returns the token,
    /// which is not stored and cannot be shown again.
    pub async fn create_token(
        &self,
        name: &str,
        grants: &[String],
        expires: Option<&str>,
        actor: &str,
    ) -> Result<String> {
        check_name("token", name)?;
        if grants.is_empty() {
            return Err(ManageError::Invalid(
                "a token needs at least one grant, such as team/*:push".into(),
            ));
        }
        let mut new_grants = Vec::new();
        for spec in grants {
            let grant = Grant::parse(spec).map_err(ManageError::Invalid)?;
            new_grants.push(NewGrant {
                subject_kind: SubjectKind::Robot,
                subject: name.to_string(),
                pattern: grant.pattern.as_str().to_string(),
                role: grant.role.as_str().to_string(),
            });
        }
        let token = self.store_robot(name, &new_grants, actor, expires, actor).await?;
        token.ok_or_else(|| ManageError::Conflict(format!("token {name} exists; revoke it first")))
    }

    /// Keeps a new robot token named `name` with `grants`, made by
    /// `created_by` and expiring after `expires`; the token, or `None` when
    /// the name is taken.
    async fn store_robot(
        &self,
        name: &str,
        grants: &[NewGrant],
        created_by: &str,
        expires: Option<&str>,
        actor: &str,
    ) -> Result<Option<String>> {
        let now = self.clock.now_ms();
        let expires_ms = match expires {
            Some(text) => {
                let ms = i64::try_from(parse_duration(text)?.as_millis()).unwrap_or(i64::MAX);
                Some(now.saturating_add(ms))
            }
            None => None,
        };
        let token = secrets::new_robot_token();
        let robot = RobotRecord {
            name: name.to_string(),
            token_hash: secrets::robot_token_hash(&token),
            created_by: created_by.to_string(),
            created_ms: now,
            expires_ms,
            revoked_ms: None,
            last_used_ms: None,
        };
        let created = self.store.create_robot(&robot, grants, &self.audit(actor)).await?;
        Ok(created.then_some(token))
    }

    /// A personal access token of `user`: a robot token that stands for the
    /// user (their grants, checked on every use; nothing once they are
    /// disabled), named `USER.LABEL` and marked by `created_by` =
    /// `pat:USER`. Returns the token, shown once.
    pub async fn create_personal_token(&self, user: &str, label: &str, expires: Option<&str>) -> Result<String> {
        check_name("token", label)?;
        let name = format!("{user}.{label}");
        check_name("token", &name)?;
        let created_by = format!("{PERSONAL_TOKEN_MARK}{user}");
        let actor = crate::auth::actor_of_subject(user);
        let token = self.store_robot(&name, &[], &created_by, expires, &actor).await?;
        token.ok_or_else(|| ManageError::Conflict(format!("a token named {name} exists")))
    }

    /// The personal access tokens of `user`.
    pub async fn personal_tokens(&self, user: &str) -> Result<Vec<RobotRecord>> {
        let mark = format!("{PERSONAL_TOKEN_MARK}{user}");
        Ok(self
            .list_robots()
            .await?
            .into_iter()
            .filter(|r| r.created_by == mark)
            .collect())
    }

    /// Revokes one of `user`'s personal access tokens (by its full name).
    pub async fn revoke_personal_token(&self, user: &str, name: &str) -> Result<()> {
        if !self.personal_tokens(user).await?.iter().any(|r| r.name == name) {
            return Err(ManageError::NotFound(format!("you have no token {name}")));
        }
        self.revoke_token(name, &crate::auth::actor_of_subject(user)).await
    }

    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<()> {
        check_name("token", name)?;
        if self.store.revoke_robot(name, &self.audit(actor)).await? {
            Ok(())
        } else {
            Err(ManageError::NotFound(format!("no live token {name}")))
        }
    }

    /// Records a grant; returns its id.
    pub async fn add_grant(&self, subject: &str, pattern: &str, role: &str, actor: &str) -> Result<i64> {
        let (kind, name) = parse_subject(subject)?;
        let grant = Grant::new(pattern, role).map_err(ManageError::Invalid)?;
        let new = NewGrant {
            subject_kind: kind,
            subject: name,
            pattern: grant.pattern.as_str().to_string(),
            role: grant.role.as_str().to_string(),
        };
        self.store
            .add_grant(&new, &self.audit(actor))
            .await?
            .ok_or_else(|| ManageError::Conflict(format!("{subject} already has {role} on {pattern}")))
    }

    pub async fn remove_grant(&self, id: i64, actor: &str) -> Result<()> {
        if self.store.remove_grant(id, &self.audit(actor)).await? {
            Ok(())
        } else {
            Err(ManageError::NotFound(format!("no grant {id}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_duration("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "d", "30", "0d", "-1d", "1y", "1é", "é", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subjects_name_their_kind() {
        assert_eq!(parse_subject("group:dev").unwrap(), (SubjectKind::Group, "dev".into()));
        assert!(parse_subject("team:dev").is_err());
        assert!(parse_subject("user:").is_err());
        assert!(parse_subject("group:dev\0").is_err());
        assert!(parse_subject(&format!("group:{}", "x".repeat(300))).is_err());
        assert_eq!(
            parse_subject("group:Développeurs Team").unwrap(),
            (SubjectKind::Group, "Développeurs Team".into())
        );
    }
}
