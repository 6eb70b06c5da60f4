//! [`AccessStore`] on SQLite and PostgreSQL alike.
//!
//! Each change and its audit row are one transaction. Concurrent changes
//! need no locks of their own: the unique keys decide which of two creations
//! wins, and the rest are single-row updates that the database serializes.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Transaction, Type};

use super::Dialect;
use crate::access::{AccessStore, Audit, AuditEntry, GrantRecord, NewGrant, RobotRecord, SubjectKind, UserRecord};
use crate::Result;

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_ms";
const ROBOT_COLUMNS: &str = "name, token_hash, created_by, created_ms, expires_ms, revoked_ms, last_used_ms";
const GRANT_COLUMNS: &str = "id, subject_kind, subject, pattern, role, created_by, created_ms";

// The bounds say that the dialect's database runs statements on its
// connections and knows the types bound and read here; SQLite and PostgreSQL
// both do, so each of them is an access store.
#[async_trait]
impl<D> AccessStore for D
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<i64>: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<String>: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> bool: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> String: Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
    for<'r> UserRecord: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> RobotRecord: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> GrantRecord: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> AuditEntry: FromRow<'r, <D::Db as Database>::Row>,
{
    async fn create_user(&self, user: &UserRecord, audit: &Audit) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, admin, disabled, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(user.name.as_str())
        .bind(user.password_hash.as_str())
        .bind(user.admin)
        .bind(user.disabled)
        .bind(user.created_ms)
        .execute(&mut *tx)
        .await?;
        if D::rows_affected(&done) == 0 {
            return Ok(false);
        }
        let detail = user.admin.then(|| "admin".to_string());
        write_audit(&mut tx, audit, "user.create", &format!("user:{}", user.name), detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        Ok(
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
                .bind(name)
                .fetch_optional(self.reader())
                .await?,
        )
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        Ok(
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
                .fetch_all(self.reader())
                .await?,
        )
    }

    async fn set_password(&self, name: &str, password_hash: &str, audit: &Audit) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
            .bind(name)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        if D::rows_affected(&done) == 0 {
            return Ok(false);
        }
        write_audit(&mut tx, audit, "user.password", &format!("user:{name}"), None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_disabled(&self, name: &str, disabled: bool, audit: &Audit) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE users SET disabled = $2 WHERE name = $1")
            .bind(name)
            .bind(disabled)
            .execute(&mut *tx)
            .await?;
        if D::rows_affected(&done) == 0 {
            return Ok(false);
        }
        let action = if disabled { "user.disable" } else { "user.enable" };
        write_audit(&mut tx, audit, action, &format!("user:{name}"), None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_robot(&self, robot: &RobotRecord, grants: &[NewGrant], audit: &Audit) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // A revoked robot's name may be reused; its row only documents the past.
        sqlx::query("DELETE FROM robots WHERE name = $1 AND revoked_ms IS NOT NULL")
            .bind(robot.name.as_str())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO robots (name, token_hash, created_by, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(robot.name.as_str())
        .bind(robot.token_hash.as_str())
        .bind(robot.created_by.as_str())
        .bind(robot.created_ms)
        .bind(robot.expires_ms)
        .execute(&mut *tx)
        .await?;
        if D::rows_affected(&done) == 0 {
            return Ok(false);
        }
        let expiry = robot
            .expires_ms
            .map(|ms| format!(", expires_ms {ms}"))
            .unwrap_or_default();
        let summary: Vec<String> = grants.iter().map(|g| format!("{} on {}", g.role, g.pattern)).collect();
        let detail = format!("grants [{}]{expiry}", summary.join(", "));
        write_audit(
            &mut tx,
            audit,
            "token.create",
            &format!("robot:{}", robot.name),
            Some(detail),
        )
        .await?;
        for grant in grants {
            insert_grant(&mut tx, grant, audit).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn robot_by_token_hash(&self, token_hash: &str) -> Result<Option<RobotRecord>> {
        Ok(
            sqlx::query_as(&format!("SELECT {ROBOT_COLUMNS} FROM robots WHERE token_hash = $1"))
                .bind(token_hash)
                .fetch_optional(self.reader())
                .await?,
        )
    }

    async fn robot(&self, name: &str) -> Result<Option<RobotRecord>> {
        Ok(
            sqlx::query_as(&format!("SELECT {ROBOT_COLUMNS} FROM robots WHERE name = $1"))
                .bind(name)
                .fetch_optional(self.reader())
                .await?,
        )
    }

    async fn list_robots(&self) -> Result<Vec<RobotRecord>> {
        Ok(
            sqlx::query_as(&format!("SELECT {ROBOT_COLUMNS} FROM robots ORDER BY name"))
                .fetch_all(self.reader())
                .await?,
        )
    }

    async fn revoke_robot(&self, name: &str, audit: &Audit) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE robots SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL")
            .bind(name)
            .bind(audit.at_ms)
            .execute(&mut *tx)
            .await?;
        if D::rows_affected(&done) == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM grants WHERE subject_kind = 'robot' AND subject = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        write_audit(&mut tx, audit, "token.revoke", &format!("robot:{name}"), None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn touch_robot(&self, name: &str, at_ms: i64) -> Result<()> {
        sqlx::query("UPDATE robots SET last_used_ms = $2 WHERE name = $1")
            .bind(name)
            .bind(at_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn add_grant(&self, grant: &NewGrant, audit: &Audit) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let id = insert_grant(&mut tx, grant, audit).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn remove_grant(&self, id: i64, audit: &Audit) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let removed: Option<GrantRecord> =
            sqlx::query_as(&format!("DELETE FROM grants WHERE id = $1 RETURNING {GRANT_COLUMNS}"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(g) = removed else {
            return Ok(false);
        };
        let detail = describe(g.subject_kind, &g.subject, &g.role, &g.pattern);
        write_audit(&mut tx, audit, "grant.remove", &format!("grant:{id}"), Some(detail)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn grants_for(&self, subjects: &[(SubjectKind, String)]) -> Result<Vec<GrantRecord>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let (kinds, names): (Vec<String>, Vec<String>) = subjects
            .iter()
            .map(|(kind, name)| (kind.as_str().to_string(), name.clone()))
            .unzip();
        let query = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE (subject_kind, subject) IN (SELECT a, b FROM {}) ORDER BY id",
            D::text_pairs(1)
        );
        let query = D::bind_texts(sqlx::query(&query), kinds);
        let rows = D::bind_texts(query, names).fetch_all(self.reader()).await?;
        rows.iter().map(|row| Ok(GrantRecord::from_row(row)?)).collect()
    }

    async fn list_grants(&self) -> Result<Vec<GrantRecord>> {
        Ok(
            sqlx::query_as(&format!("SELECT {GRANT_COLUMNS} FROM grants ORDER BY id"))
                .fetch_all(self.reader())
                .await?,
        )
    }

    async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as(
            "SELECT id, at_ms, actor, action, target, detail FROM audit_log \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?)
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<Option<String>> {
        if !D::SHARED {
            return Ok(None);
        }
        // The first process to ask stores its candidate; the rest read it.
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        sqlx::query("INSERT INTO secrets (name, value, created_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate)
            .bind(created_ms)
            .execute(self.writer())
            .await?;
        let stored: String = sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(self.writer())
            .await?;
        Ok(Some(stored))
    }
}

/// How an audit entry describes a grant.
fn describe(kind: SubjectKind, subject: &str, role: &str, pattern: &str) -> String {
    format!("{}:{subject} {role} on {pattern}", kind.as_str())
}

/// Writes the audit row of a change, in the change's transaction.
pub(crate) async fn write_audit<Db>(
    tx: &mut Transaction<'static, Db>,
    audit: &Audit,
    action: &str,
    target: &str,
    detail: Option<String>,
) -> Result<()>
where
    Db: Database,
    for<'c> &'c mut Db::Connection: Executor<'c, Database = Db>,
    for<'q> Db::Arguments<'q>: IntoArguments<'q, Db>,
    for<'q> &'q str: Encode<'q, Db> + Type<Db>,
    for<'q> Option<String>: Encode<'q, Db> + Type<Db>,
    for<'q> i64: Encode<'q, Db> + Type<Db>,
{
    sqlx::query("INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(audit.at_ms)
        .bind(audit.actor.as_str())
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records a grant and its audit row; its id, or `None` when it exists.
async fn insert_grant<Db>(tx: &mut Transaction<'static, Db>, grant: &NewGrant, audit: &Audit) -> Result<Option<i64>>
where
    Db: Database,
    for<'c> &'c mut Db::Connection: Executor<'c, Database = Db>,
    for<'q> Db::Arguments<'q>: IntoArguments<'q, Db>,
    for<'q> &'q str: Encode<'q, Db> + Type<Db>,
    for<'q> Option<String>: Encode<'q, Db> + Type<Db>,
    for<'q> i64: Encode<'q, Db> + Decode<'q, Db> + Type<Db>,
    usize: ColumnIndex<Db::Row>,
{
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO grants (subject_kind, subject, pattern, role, created_by, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(grant.subject_kind.as_str())
    .bind(grant.subject.as_str())
    .bind(grant.pattern.as_str())
    .bind(grant.role.as_str())
    .bind(audit.actor.as_str())
    .bind(audit.at_ms)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(id) = id {
        let detail = describe(grant.subject_kind, &grant.subject, &grant.role, &grant.pattern);
        write_audit(tx, audit, "grant.add", &format!("grant:{id}"), Some(detail)).await?;
    }
    Ok(id)
}
