//! What the web UI reads and keeps beyond the registry's own facts: pages of
//! repositories and tags shaped for browsing, browser sessions, stars, and
//! pulls counted per day.
//!
//! Which repositories a visitor may see is the server's business (grants are
//! patterns the store cannot evaluate); the store lists in a stable order and
//! the server filters, asking for more when a page comes back thin.

use async_trait::async_trait;
use berth_oci::Digest;

use crate::Result;

/// A repository as a list of repositories shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoSummary {
    pub name: String,
    /// Tags a person would call the repository's images: leaves out tags
    /// named `sha256-…` (cosign's signatures, attestations and SBOMs, and
    /// referrer fallback tags) and tags of a manifest that has a subject (an
    /// attestation or signature pushed under an ordinary tag). Index children
    /// are never tagged by themselves, so they are not counted either.
    pub tags: u64,
    /// The latest push of a tag, if the repository has one.
    pub last_pushed_ms: Option<i64>,
    /// Pulls of all the repository's manifests.
    pub pull_count: u64,
    pub last_pulled_ms: Option<i64>,
}

/// Which repositories to list, in name order.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepoListing<'a> {
    /// Only names containing this text (ASCII case-insensitive); a prefix is
    /// a substring too. `%`, `_` and `\` in it match themselves.
    pub contains: Option<&'a str>,
    /// Only names after this one.
    pub after: Option<&'a str>,
    pub limit: u32,
}

/// A tag as a repository page shows it, with its manifest's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct TagRow {
    pub name: String,
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// When the tag was last pushed (moved to this manifest).
    pub pushed_ms: i64,
    /// The tag's own pulls.
    pub last_pulled_ms: Option<i64>,
    pub pull_count: u64,
    /// `pushed`, `mirrored` or `snapshot`.
    pub provenance: String,
    pub pushed_by: Option<String>,
    /// `os/architecture[/variant]` of an index's children or an image's config, when known.
    pub platforms: Vec<String>,
    /// The manifest, its blobs and an index's children's, in bytes, when known.
    pub total_size: Option<u64>,
}

/// Where a page of tags, newest push first, starts: after the tag `name`
/// pushed at `pushed_ms` (ties in push time go in name order).
#[derive(Debug, Clone, PartialEq)]
pub struct TagCursor {
    pub pushed_ms: i64,
    pub name: String,
}

/// A browser session. Only a SHA-256 of the cookie's secret is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// Hex SHA-256 of the session secret.
    pub id_hash: String,
    /// The user the session stands for (local, single sign-on or externally
    /// validated).
    pub subject: String,
    /// What the identity provider said at sign-in, for subjects the store
    /// cannot check again by itself (single sign-on, external validation):
    /// administrator, and (as JSON the server writes and reads; the store
    /// keeps it as text) groups and grants.
    pub admin: bool,
    pub groups_json: String,
    /// The CSRF token every form of the session carries.
    pub csrf: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    pub expires_ms: i64,
    /// The browser and the address it signed in from, for the admin list.
    pub user_agent: String,
    pub addr: String,
}

/// A day's pulls of a repository; `day` counts days since 1970-01-01 (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyPulls {
    pub day: i64,
    pub pulls: u64,
}

/// Totals for the admin dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryCounts {
    pub users: u64,
    pub repositories: u64,
    pub tags: u64,
    /// Bytes of all recorded blobs, each counted once.
    pub stored_bytes: u64,
}

/// The UI's view of the metadata store.
#[async_trait]
pub trait UiStore: Send + Sync {
    /// Repositories in name order (byte order, as `/v2/_catalog`).
    async fn list_repository_summaries(&self, q: &RepoListing<'_>) -> Result<Vec<RepoSummary>>;

    /// The repositories of the latest pushes, latest first.
    async fn recently_pushed(&self, limit: u32) -> Result<Vec<RepoSummary>>;

    /// The repositories pulled most, most first; never-pulled ones are left out.
    async fn most_pulled(&self, limit: u32) -> Result<Vec<RepoSummary>>;

    /// One repository's summary, if it exists.
    async fn repository_summary(&self, repo: &str) -> Result<Option<RepoSummary>>;

    /// A page of `repo`'s tags, newest push first, and the number of tags
    /// the repository has in all (every tag, as [`TagRow`]s list them).
    async fn tag_page(&self, repo: &str, after: Option<&TagCursor>, limit: u32) -> Result<(Vec<TagRow>, u64)>;

    async fn registry_counts(&self) -> Result<RegistryCounts>;

    /// Keeps a new session.
    async fn create_session(&self, session: &SessionRecord) -> Result<()>;

    /// The session whose secret hashes to `id_hash`, if it has not expired by `now_ms`.
    async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<SessionRecord>>;

    /// Records that the session was used at `now_ms`.
    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<()>;

    /// Ends a session; false when there was none.
    async fn delete_session(&self, id_hash: &str) -> Result<bool>;

    /// Ends every session of `subject`; returns how many there were.
    async fn delete_sessions_of(&self, subject: &str) -> Result<u64>;

    /// Sessions not expired by `now_ms`, latest use first.
    async fn sessions(&self, now_ms: i64) -> Result<Vec<SessionRecord>>;

    /// Forgets sessions expired by `now_ms`; returns how many.
    async fn purge_sessions(&self, now_ms: i64) -> Result<u64>;

    /// Stars `repo` for `user` (again is no change); false when the repository does not exist.
    async fn star(&self, user: &str, repo: &str, now_ms: i64) -> Result<bool>;

    /// Takes a star away; false when there was none.
    async fn unstar(&self, user: &str, repo: &str) -> Result<bool>;

    /// The repositories `user` starred, in name order.
    async fn starred(&self, user: &str) -> Result<Vec<RepoSummary>>;

    /// Whether `user` starred `repo`, and how many users did.
    async fn stars_of(&self, user: Option<&str>, repo: &str) -> Result<(bool, u64)>;

    /// `repo`'s pulls per day from `since_day` on, days without pulls left
    /// out. [`crate::MetaStore::record_pulls`] counts them, by the day of
    /// each record's `last_ms`.
    async fn daily_pulls(&self, repo: &str, since_day: i64) -> Result<Vec<DailyPulls>>;
}
