//! Retention policies, the same on SQLite and PostgreSQL: each backend's
//! [`LifecycleStore`](crate::LifecycleStore) hands these calls to
//! [`Policies`].
//!
//! Every change takes the policies' lock for its transaction, so replicas
//! starting together and syncing the same configuration write (and audit) it
//! once: the second finds the first one's result.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Transaction, Type};

use super::access::write_audit;
use super::Dialect;
use crate::access::Audit;
use crate::lifecycle::PolicyRecord;
use crate::postgres::LockKey;
use crate::Result;

/// The retention policies of the store `D`.
pub(crate) struct Policies<'a, D>(pub &'a D);

// The bounds say that the dialect's database runs statements on its
// connections and knows the types bound and read here.
impl<D> Policies<'_, D>
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<String>: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> PolicyRecord: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> (String, String, String): FromRow<'r, <D::Db as Database>::Row>,
{
    pub(crate) async fn all(&self) -> Result<Vec<PolicyRecord>> {
        Ok(sqlx::query_as(
            "SELECT pattern, rules, source, updated_by, updated_ms FROM retention_policies ORDER BY pattern",
        )
        .fetch_all(self.0.reader())
        .await?)
    }

    /// Creates or replaces the policy of `policy.pattern`.
    pub(crate) async fn put(&self, policy: &PolicyRecord, audit: &Audit) -> Result<()> {
        let mut tx = self.begin().await?;
        Self::upsert(&mut tx, policy, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// False when there was no policy for `pattern`.
    pub(crate) async fn delete(&self, pattern: &str, audit: &Audit) -> Result<bool> {
        let mut tx = self.begin().await?;
        if !Self::remove(&mut tx, pattern, audit).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Makes the `config` policies exactly `policies`, leaving `api` ones
    /// alone unless a config policy has the same pattern.
    pub(crate) async fn sync_config(&self, policies: &[PolicyRecord], audit: &Audit) -> Result<()> {
        let mut tx = self.begin().await?;
        let existing: Vec<(String, String, String)> =
            sqlx::query_as("SELECT pattern, rules, source FROM retention_policies")
                .fetch_all(&mut *tx)
                .await?;
        for (pattern, _, source) in &existing {
            if source == "config" && !policies.iter().any(|p| &p.pattern == pattern) {
                Self::remove(&mut tx, pattern, audit).await?;
            }
        }
        for policy in policies {
            let same = existing.iter().any(|(pattern, rules, source)| {
                *pattern == policy.pattern && *rules == policy.rules_json && source == "config"
            });
            if !same {
                Self::upsert(&mut tx, policy, audit).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A write transaction holding the policies' lock.
    async fn begin(&self) -> Result<Transaction<'static, D::Db>> {
        let mut tx = self.0.begin_write().await?;
        D::lock_exclusive(&mut tx, LockKey::policies()).await?;
        Ok(tx)
    }

    /// Writes `policy` over the one of its pattern, and its audit entry.
    async fn upsert(tx: &mut Transaction<'static, D::Db>, policy: &PolicyRecord, audit: &Audit) -> Result<()> {
        sqlx::query(
            "INSERT INTO retention_policies (pattern, rules, source, updated_by, updated_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (pattern) DO UPDATE SET rules = excluded.rules, source = excluded.source, \
             updated_by = excluded.updated_by, updated_ms = excluded.updated_ms",
        )
        .bind(policy.pattern.as_str())
        .bind(policy.rules_json.as_str())
        .bind(policy.source.as_str())
        .bind(policy.updated_by.as_str())
        .bind(policy.updated_ms)
        .execute(&mut **tx)
        .await?;
        let target = format!("policy:{}", policy.pattern);
        write_audit(tx, audit, "retention.set", &target, Some(policy.rules_json.clone())).await
    }

    /// Deletes the policy of `pattern` and writes its audit entry; false when
    /// there was none.
    async fn remove(tx: &mut Transaction<'static, D::Db>, pattern: &str, audit: &Audit) -> Result<bool> {
        let done = sqlx::query("DELETE FROM retention_policies WHERE pattern = $1")
            .bind(pattern)
            .execute(&mut **tx)
            .await?;
        if D::rows_affected(&done) == 0 {
            return Ok(false);
        }
        write_audit(tx, audit, "retention.delete", &format!("policy:{pattern}"), None).await?;
        Ok(true)
    }
}
