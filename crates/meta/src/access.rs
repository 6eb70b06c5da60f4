//! Identity and access facts: local users, robot tokens, role grants and the
//! audit log. The store keeps them; what they mean (which role allows which
//! action, how a pattern matches) is the server's `auth` module's business.
//!
//! Every change takes an [`Audit`] and writes its audit row in the same
//! transaction as the change, so the log can never miss one.

use async_trait::async_trait;

use crate::{MetaError, Result};

/// Who makes a change, and when.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Such as `user:alice` or `cli:root`.
    pub actor: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRecord {
    pub name: String,
    /// An argon2id PHC string.
    pub password_hash: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RobotRecord {
    pub name: String,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    pub created_by: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

/// Who a grant is given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    User,
    Group,
    Robot,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "user",
            SubjectKind::Group => "group",
            SubjectKind::Robot => "robot",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(SubjectKind::User),
            "group" => Some(SubjectKind::Group),
            "robot" => Some(SubjectKind::Robot),
            _ => None,
        }
    }
}

/// A subject kind as stored; another text means the row is damaged.
impl TryFrom<String> for SubjectKind {
    type Error = MetaError;

    fn try_from(stored: String) -> Result<Self> {
        SubjectKind::parse(&stored).ok_or_else(|| MetaError::Corrupt(format!("grant subject kind {stored:?}")))
    }
}

/// A grant to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGrant {
    pub subject_kind: SubjectKind,
    pub subject: String,
    /// A repository name pattern such as `team/*`.
    pub pattern: String,
    /// `pull`, `push`, `delete` or `admin`.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GrantRecord {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub subject_kind: SubjectKind,
    pub subject: String,
    pub pattern: String,
    pub role: String,
    pub created_by: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: Option<String>,
}

/// The access facts the server's `auth` module talks to.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Adds a user; false when the name is taken.
    async fn create_user(&self, user: &UserRecord, audit: &Audit) -> Result<bool>;

    async fn user(&self, name: &str) -> Result<Option<UserRecord>>;

    async fn list_users(&self) -> Result<Vec<UserRecord>>;

    /// Replaces a user's password hash; false when there is no such user.
    async fn set_password(&self, name: &str, password_hash: &str, audit: &Audit) -> Result<bool>;

    /// Disables or re-enables a user; false when there is no such user.
    async fn set_disabled(&self, name: &str, disabled: bool, audit: &Audit) -> Result<bool>;

    /// Adds a robot with its grants in one transaction; false when the name is taken.
    async fn create_robot(&self, robot: &RobotRecord, grants: &[NewGrant], audit: &Audit) -> Result<bool>;

    async fn robot_by_token_hash(&self, token_hash: &str) -> Result<Option<RobotRecord>>;

    async fn robot(&self, name: &str) -> Result<Option<RobotRecord>>;

    async fn list_robots(&self) -> Result<Vec<RobotRecord>>;

    /// Marks a robot revoked and drops its grants; false when there is no such live robot.
    async fn revoke_robot(&self, name: &str, audit: &Audit) -> Result<bool>;

    /// Records a robot's last use (not audited: it is not a change of access).
    async fn touch_robot(&self, name: &str, at_ms: i64) -> Result<()>;

    /// Records a grant; returns its id, or `None` when the same grant exists.
    async fn add_grant(&self, grant: &NewGrant, audit: &Audit) -> Result<Option<i64>>;

    /// Removes a grant; false when there is no such grant.
    async fn remove_grant(&self, id: i64, audit: &Audit) -> Result<bool>;

    /// Grants of the given subjects.
    async fn grants_for(&self, subjects: &[(SubjectKind, String)]) -> Result<Vec<GrantRecord>>;

    async fn list_grants(&self) -> Result<Vec<GrantRecord>>;

    /// Audit entries newest first, with ids below `before` when given.
    async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>>;

    /// The secret stored under `name`, storing `candidate` first when there
    /// is none, so that every process sharing the store ends up with the
    /// same one (the token signing key of replicas). `None` when the store
    /// keeps no secrets (the embedded store, whose key is a file).
    async fn shared_secret(&self, _name: &str, _candidate: &str) -> Result<Option<String>> {
        Ok(None)
    }
}
