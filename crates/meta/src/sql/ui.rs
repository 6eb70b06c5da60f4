//! [`UiStore`] on SQLite and PostgreSQL alike.
//!
//! A repository's summary is worked out when it is read, from indexes that
//! answer each part without reading manifest rows (which carry their
//! bodies): its tags from the tags' key, its latest push from `tags_by_push`,
//! its pulls from `manifests_pulled`. Lists pick their repositories first and
//! sum up only those.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::reads::REPOSITORY_EXISTS;
use super::{parse_digest, to_u64, Dialect};
use crate::ui::{DailyPulls, RegistryCounts, RepoListing, RepoSummary, SessionRecord, TagCursor, TagRow, UiStore};
use crate::Result;

/// The summaries of the repositories `source` selects (with columns `id`
/// and `name`, and whatever `order` sorts by), in that order.
///
/// Tags named `sha256-…` are counted out by their first seven characters
/// (`LIKE` would ignore case on SQLite); tags of a manifest with a subject
/// are few, found through `manifests_by_subject`, and subtracted.
fn summaries_sql(source: &str, order: &str) -> String {
    format!(
        "SELECT r.name, \
           (SELECT COUNT(*) FROM tags t WHERE t.repo_id = r.id AND substr(t.name, 1, 7) <> 'sha256-') \
           - (SELECT COUNT(*) FROM tags t WHERE t.repo_id = r.id AND substr(t.name, 1, 7) <> 'sha256-' \
              AND t.manifest_digest IN (SELECT m.digest FROM manifests m \
                WHERE m.repo_id = r.id AND m.subject IS NOT NULL)) AS tags, \
           (SELECT MAX(t.pushed_ms) FROM tags t WHERE t.repo_id = r.id) AS last_pushed_ms, \
           (SELECT CAST(COALESCE(SUM(m.pull_count), 0) AS BIGINT) FROM manifests m \
              WHERE m.repo_id = r.id AND m.pull_count > 0) AS pull_count, \
           (SELECT MAX(m.last_pulled_ms) FROM manifests m WHERE m.repo_id = r.id AND m.pull_count > 0) \
              AS last_pulled_ms \
         FROM ({source}) r ORDER BY {order}"
    )
}

/// Repositories in name order, those whose lowercased name is `LIKE` $1
/// (NULL: all), after the name $2, at most $3.
const LISTED: &str = "SELECT id, name FROM repositories \
     WHERE ($1 IS NULL OR lower(name) LIKE $1 ESCAPE '\\') AND name > $2 ORDER BY name LIMIT $3";

/// The latest push of each repository is the first entry of its range in
/// `tags_by_push`: one look-up per repository, where grouping the tags
/// would read them all.
const RECENTLY_PUSHED: &str = "SELECT id, name, last FROM \
     (SELECT r.id, r.name, (SELECT MAX(t.pushed_ms) FROM tags t WHERE t.repo_id = r.id) AS last \
      FROM repositories r) x \
     WHERE last IS NOT NULL ORDER BY last DESC, name LIMIT $1";

const MOST_PULLED: &str = "SELECT r.id, r.name, p.pulls FROM repositories r JOIN \
     (SELECT repo_id, SUM(pull_count) AS pulls FROM manifests WHERE pull_count > 0 GROUP BY repo_id) p \
     ON p.repo_id = r.id ORDER BY p.pulls DESC, r.name LIMIT $1";

const ONE: &str = "SELECT id, name FROM repositories WHERE name = $1";

const STARRED: &str = "SELECT r.id, r.name FROM stars s JOIN repositories r ON r.id = s.repo_id WHERE s.user_name = $1";

const REPO_ID: &str = "(SELECT id FROM repositories WHERE name = $1)";

/// The columns of a tag page's rows.
fn tag_columns<D: Dialect>() -> String {
    format!(
        "t.name, t.manifest_digest, m.media_type, m.artifact_type, m.subject, t.pushed_ms, t.last_pulled_ms, \
         t.pull_count, m.provenance, m.pushed_by, {} AS platforms, m.total_size",
        D::texts_as_json("m.platforms")
    )
}

/// The first page walks `tags_by_push` from its start; a later one from the
/// cursor: `pushed_ms <= $2` bounds the range, the rest skips the ties of
/// that push time already shown.
///
/// The page is chosen before the manifests are joined: joined directly,
/// PostgreSQL derives `m.repo_id = <the repository>` from the join and, as
/// a repository has 100 manifests on average, reads all of them for every
/// tag of the page (50 ms for a page of a 10,000-tag repository). A derived
/// table with a LIMIT is kept apart, so each tag finds its manifest by the
/// whole key.
pub(crate) fn tag_page_sql<D: Dialect>(cursor: bool) -> String {
    let after = if cursor {
        "AND pushed_ms <= $2 AND (pushed_ms < $2 OR name > $3) "
    } else {
        ""
    };
    let limit = if cursor { "$4" } else { "$2" };
    format!(
        "SELECT {} FROM \
           (SELECT repo_id, name, manifest_digest, pushed_ms, last_pulled_ms, pull_count FROM tags \
            WHERE repo_id = {REPO_ID} {after}ORDER BY pushed_ms DESC, name LIMIT {limit}) t \
         JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest \
         ORDER BY t.pushed_ms DESC, t.name",
        tag_columns::<D>()
    )
}

const SESSION_COLUMNS: &str =
    "id_hash, subject, admin, groups_json, csrf, created_ms, last_seen_ms, expires_ms, user_agent, addr";

/// The columns of [`summaries_sql`].
type SummaryRow = (String, i64, Option<i64>, i64, Option<i64>);

/// The columns of [`tag_columns`].
type TagColumns = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// The columns of [`SESSION_COLUMNS`].
type SessionRow = (String, String, bool, String, String, i64, i64, i64, String, String);

fn summary((name, tags, last_pushed_ms, pull_count, last_pulled_ms): SummaryRow) -> RepoSummary {
    RepoSummary {
        name,
        tags: to_u64(tags),
        last_pushed_ms,
        pull_count: to_u64(pull_count),
        last_pulled_ms,
    }
}

fn tag_row(r: TagColumns) -> Result<TagRow> {
    // An unreadable list shows as no platforms, as the lifecycle reads it.
    let platforms =
        r.10.as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
    Ok(TagRow {
        name: r.0,
        digest: parse_digest(&r.1)?,
        media_type: r.2,
        artifact_type: r.3,
        subject: r.4.as_deref().map(parse_digest).transpose()?,
        pushed_ms: r.5,
        last_pulled_ms: r.6,
        pull_count: to_u64(r.7),
        provenance: r.8,
        pushed_by: r.9,
        platforms,
        total_size: r.11.and_then(|n| u64::try_from(n).ok()),
    })
}

fn session(r: SessionRow) -> SessionRecord {
    SessionRecord {
        id_hash: r.0,
        subject: r.1,
        admin: r.2,
        groups_json: r.3,
        csrf: r.4,
        created_ms: r.5,
        last_seen_ms: r.6,
        expires_ms: r.7,
        user_agent: r.8,
        addr: r.9,
    }
}

/// `text` as a `LIKE … ESCAPE '\'` pattern of names containing it, ASCII
/// lowercased as the names it is matched with are.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c.to_ascii_lowercase());
    }
    pattern.push('%');
    pattern
}

// The bounds say that the dialect's database runs statements on its
// connections and knows the types bound and read here (rows are read as
// tuples of them).
#[async_trait]
impl<D> UiStore for D
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<String>: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> bool: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'r> String: Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
{
    async fn list_repository_summaries(&self, q: &RepoListing<'_>) -> Result<Vec<RepoSummary>> {
        let rows: Vec<SummaryRow> = sqlx::query_as(&summaries_sql(LISTED, "r.name"))
            .bind(q.contains.map(contains_pattern))
            .bind(q.after.unwrap_or(""))
            .bind(i64::from(q.limit))
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(summary).collect())
    }

    async fn recently_pushed(&self, limit: u32) -> Result<Vec<RepoSummary>> {
        let rows: Vec<SummaryRow> = sqlx::query_as(&summaries_sql(RECENTLY_PUSHED, "r.last DESC, r.name"))
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(summary).collect())
    }

    async fn most_pulled(&self, limit: u32) -> Result<Vec<RepoSummary>> {
        let rows: Vec<SummaryRow> = sqlx::query_as(&summaries_sql(MOST_PULLED, "r.pulls DESC, r.name"))
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(summary).collect())
    }

    async fn repository_summary(&self, repo: &str) -> Result<Option<RepoSummary>> {
        let row: Option<SummaryRow> = sqlx::query_as(&summaries_sql(ONE, "r.name"))
            .bind(repo)
            .fetch_optional(self.reader())
            .await?;
        Ok(row.map(summary))
    }

    async fn tag_page(&self, repo: &str, after: Option<&TagCursor>, limit: u32) -> Result<(Vec<TagRow>, u64)> {
        // One read transaction: the page and the total as of one commit.
        let mut tx = self.reader().begin().await?;
        let sql = tag_page_sql::<D>(after.is_some());
        let query = sqlx::query_as(&sql).bind(repo);
        let query = match after {
            Some(cursor) => query.bind(cursor.pushed_ms).bind(cursor.name.as_str()),
            None => query,
        };
        let rows: Vec<TagColumns> = query.bind(i64::from(limit)).fetch_all(&mut *tx).await?;
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM tags WHERE repo_id = {REPO_ID}"))
            .bind(repo)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let rows = rows.into_iter().map(tag_row).collect::<Result<Vec<_>>>()?;
        Ok((rows, to_u64(total)))
    }

    async fn registry_counts(&self) -> Result<RegistryCounts> {
        let (users, repositories, tags, stored_bytes): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM repositories), \
             (SELECT COUNT(*) FROM tags), (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs)",
        )
        .fetch_one(self.reader())
        .await?;
        Ok(RegistryCounts {
            users: to_u64(users),
            repositories: to_u64(repositories),
            tags: to_u64(tags),
            stored_bytes: to_u64(stored_bytes),
        })
    }

    async fn create_session(&self, s: &SessionRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO ui_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(s.id_hash.as_str())
        .bind(s.subject.as_str())
        .bind(s.admin)
        .bind(s.groups_json.as_str())
        .bind(s.csrf.as_str())
        .bind(s.created_ms)
        .bind(s.last_seen_ms)
        .bind(s.expires_ms)
        .bind(s.user_agent.as_str())
        .bind(s.addr.as_str())
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<SessionRecord>> {
        let row: Option<SessionRow> = sqlx::query_as(&format!(
            "SELECT {SESSION_COLUMNS} FROM ui_sessions WHERE id_hash = $1 AND expires_ms > $2"
        ))
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(session))
    }

    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<()> {
        // Forward only: requests of one session finish in any order.
        sqlx::query("UPDATE ui_sessions SET last_seen_ms = $2 WHERE id_hash = $1 AND last_seen_ms < $2")
            .bind(id_hash)
            .bind(now_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.writer())
            .await?;
        Ok(D::rows_affected(&done) > 0)
    }

    async fn delete_sessions_of(&self, subject: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM ui_sessions WHERE subject = $1")
            .bind(subject)
            .execute(self.writer())
            .await?;
        Ok(D::rows_affected(&done))
    }

    async fn sessions(&self, now_ms: i64) -> Result<Vec<SessionRecord>> {
        let rows: Vec<SessionRow> = sqlx::query_as(&format!(
            "SELECT {SESSION_COLUMNS} FROM ui_sessions WHERE expires_ms > $1 ORDER BY last_seen_ms DESC, id_hash"
        ))
        .bind(now_ms)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(session).collect())
    }

    async fn purge_sessions(&self, now_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM ui_sessions WHERE expires_ms <= $1")
            .bind(now_ms)
            .execute(self.writer())
            .await?;
        Ok(D::rows_affected(&done))
    }

    async fn star(&self, user: &str, repo: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let repo_id: Option<i64> = sqlx::query_scalar(REPOSITORY_EXISTS)
            .bind(repo)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(repo_id) = repo_id else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO stars (user_name, repo_id, created_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (user_name, repo_id) DO NOTHING",
        )
        .bind(user)
        .bind(repo_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn unstar(&self, user: &str, repo: &str) -> Result<bool> {
        let done = sqlx::query(&format!(
            "DELETE FROM stars WHERE repo_id = {REPO_ID} AND user_name = $2"
        ))
        .bind(repo)
        .bind(user)
        .execute(self.writer())
        .await?;
        Ok(D::rows_affected(&done) > 0)
    }

    async fn starred(&self, user: &str) -> Result<Vec<RepoSummary>> {
        let rows: Vec<SummaryRow> = sqlx::query_as(&summaries_sql(STARRED, "r.name"))
            .bind(user)
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(summary).collect())
    }

    async fn stars_of(&self, user: Option<&str>, repo: &str) -> Result<(bool, u64)> {
        let (mine, count): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT COUNT(*) FROM stars WHERE repo_id = {REPO_ID} AND user_name = $2), \
             (SELECT COUNT(*) FROM stars WHERE repo_id = {REPO_ID})"
        ))
        .bind(repo)
        .bind(user.map(str::to_string))
        .fetch_one(self.reader())
        .await?;
        Ok((mine > 0, to_u64(count)))
    }

    async fn daily_pulls(&self, repo: &str, since_day: i64) -> Result<Vec<DailyPulls>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT day, pulls FROM daily_pulls WHERE repo_id = {REPO_ID} AND day >= $2 ORDER BY day"
        ))
        .bind(repo)
        .bind(since_day)
        .fetch_all(self.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(day, pulls)| DailyPulls {
                day,
                pulls: to_u64(pulls),
            })
            .collect())
    }
}

/// The day `daily_pulls` counts a pull at `ms` (Unix milliseconds) in.
pub(crate) fn pull_day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// The statement of [`UiStore::repository_summary`], for PostgreSQL's test of plans.
#[cfg(test)]
pub(crate) fn repository_summary_sql() -> String {
    summaries_sql(ONE, "r.name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_matches_itself_only() {
        assert_eq!(contains_pattern("Team/App"), "%team/app%");
        assert_eq!(contains_pattern(r"a%b_c\d"), r"%a\%b\_c\\d%");
    }

    #[test]
    fn pulls_count_on_the_utc_day() {
        assert_eq!(pull_day(0), 0);
        assert_eq!(pull_day(86_399_999), 0);
        assert_eq!(pull_day(86_400_000), 1);
        assert_eq!(pull_day(-1), -1);
    }
}
