//! [`AccessStore`] on PostgreSQL.
//!
//! Each change and its audit row are one transaction. Concurrent changes need
//! no locks of their own: the unique keys decide which of two creations wins,
//! and the rest are single-row updates that PostgreSQL serializes.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::access::{AccessStore, Audit, AuditEntry, GrantRecord, NewGrant, RobotRecord, SubjectKind, UserRecord};
use crate::postgres::PgTx;
use crate::{MetaError, PgMeta, Result};

pub(crate) async fn write_audit(
    tx: &mut PgTx,
    audit: &Audit,
    action: &str,
    target: &str,
    detail: Option<String>,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(audit.at_ms)
        .bind(&audit.actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn user_record(row: &PgRow) -> Result<UserRecord> {
    Ok(UserRecord {
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        admin: row.try_get("admin")?,
        disabled: row.try_get("disabled")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn robot_record(row: &PgRow) -> Result<RobotRecord> {
    Ok(RobotRecord {
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        last_used_ms: row.try_get("last_used_ms")?,
    })
}

fn grant_record(row: &PgRow) -> Result<GrantRecord> {
    let kind: String = row.try_get("subject_kind")?;
    Ok(GrantRecord {
        id: row.try_get("id")?,
        subject_kind: SubjectKind::parse(&kind)
            .ok_or_else(|| MetaError::Corrupt(format!("grant subject kind {kind:?}")))?,
        subject: row.try_get("subject")?,
        pattern: row.try_get("pattern")?,
        role: row.try_get("role")?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn describe(grant: &NewGrant) -> String {
    format!(
        "{}:{} {} on {}",
        grant.subject_kind.as_str(),
        grant.subject,
        grant.role,
        grant.pattern
    )
}

async fn insert_grant(tx: &mut PgTx, grant: &NewGrant, audit: &Audit) -> Result<Option<i64>> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO grants (subject_kind, subject, pattern, role, created_by, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(grant.subject_kind.as_str())
    .bind(&grant.subject)
    .bind(&grant.pattern)
    .bind(&grant.role)
    .bind(&audit.actor)
    .bind(audit.at_ms)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(id) = id {
        write_audit(tx, audit, "grant.add", &format!("grant:{id}"), Some(describe(grant))).await?;
    }
    Ok(id)
}

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_ms";
const ROBOT_COLUMNS: &str = "name, token_hash, created_by, created_ms, expires_ms, revoked_ms, last_used_ms";
const GRANT_COLUMNS: &str = "id, subject_kind, subject, pattern, role, created_by, created_ms";

#[async_trait]
impl AccessStore for PgMeta {
    async fn create_user(&self, user: &UserRecord, audit: &Audit) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, admin, disabled, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.admin)
        .bind(user.disabled)
        .bind(user.created_ms)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let detail = user.admin.then(|| "admin".to_string());
        write_audit(&mut tx, audit, "user.create", &format!("user:{}", user.name), detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_record).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_record).collect()
    }

    async fn set_password(&self, name: &str, password_hash: &str, audit: &Audit) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
            .bind(name)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        write_audit(&mut tx, audit, "user.password", &format!("user:{name}"), None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_disabled(&self, name: &str, disabled: bool, audit: &Audit) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE users SET disabled = $2 WHERE name = $1")
            .bind(name)
            .bind(disabled)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let action = if disabled { "user.disable" } else { "user.enable" };
        write_audit(&mut tx, audit, action, &format!("user:{name}"), None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_robot(&self, robot: &RobotRecord, grants: &[NewGrant], audit: &Audit) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // A revoked robot's name may be reused; its row only documents the past.
        sqlx::query("DELETE FROM robots WHERE name = $1 AND revoked_ms IS NOT NULL")
            .bind(&robot.name)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO robots (name, token_hash, created_by, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&robot.name)
        .bind(&robot.token_hash)
        .bind(&robot.created_by)
        .bind(robot.created_ms)
        .bind(robot.expires_ms)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
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
        let row = sqlx::query(&format!("SELECT {ROBOT_COLUMNS} FROM robots WHERE token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(robot_record).transpose()
    }

    async fn robot(&self, name: &str) -> Result<Option<RobotRecord>> {
        let row = sqlx::query(&format!("SELECT {ROBOT_COLUMNS} FROM robots WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(robot_record).transpose()
    }

    async fn list_robots(&self) -> Result<Vec<RobotRecord>> {
        let rows = sqlx::query(&format!("SELECT {ROBOT_COLUMNS} FROM robots ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(robot_record).collect()
    }

    async fn revoke_robot(&self, name: &str, audit: &Audit) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE robots SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL")
            .bind(name)
            .bind(audit.at_ms)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
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
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_grant(&self, grant: &NewGrant, audit: &Audit) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let id = insert_grant(&mut tx, grant, audit).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn remove_grant(&self, id: i64, audit: &Audit) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!("DELETE FROM grants WHERE id = $1 RETURNING {GRANT_COLUMNS}"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let g = grant_record(&row)?;
        let detail = format!("{}:{} {} on {}", g.subject_kind.as_str(), g.subject, g.role, g.pattern);
        write_audit(&mut tx, audit, "grant.remove", &format!("grant:{id}"), Some(detail)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn grants_for(&self, subjects: &[(SubjectKind, String)]) -> Result<Vec<GrantRecord>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let (kinds, names): (Vec<&str>, Vec<&str>) = subjects.iter().map(|(k, n)| (k.as_str(), n.as_str())).unzip();
        let rows = sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE (subject_kind, subject) IN \
             (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY id"
        ))
        .bind(kinds)
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(grant_record).collect()
    }

    async fn list_grants(&self) -> Result<Vec<GrantRecord>> {
        let rows = sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM grants ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(grant_record).collect()
    }

    async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, target, detail FROM audit_log \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at_ms: row.try_get("at_ms")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<Option<String>> {
        // The first replica to ask stores its candidate; the rest read it.
        sqlx::query(
            "INSERT INTO secrets (name, value, created_ms) \
             VALUES ($1, $2, (extract(epoch FROM now()) * 1000)::bigint) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.pool)
        .await?;
        let stored: String = sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(stored))
    }
}
