//! The image inventory: every image of the repositories a caller may see,
//! with what a lifecycle run would now decide for it, a page at a time.
//!
//! A page bounds its work, not only its answer: one request plans at most
//! [`REPOSITORIES_PER_PAGE`] repositories (fewer when they hold more than
//! [`ROWS_PER_PAGE`] tags and manifests) and looks at most at
//! [`NAMES_PER_PAGE`] names of repositories the caller may see. Where the
//! work stops before the page is full, the page ends early with a cursor to
//! resume from, so a filter that matches nothing costs each request the same
//! bounded work. Who may see what is the caller's business (`may_see`); how
//! a cursor is written on the wire is the HTTP layer's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use berth_meta::lifecycle::{ManifestState, RepoState};

use super::plan::{self, RepoPlan};
use super::{Lifecycle, Result, Scope};
use crate::pattern::Pattern;

/// Most repositories one page plans.
pub const REPOSITORIES_PER_PAGE: usize = 50;
/// Most tags and manifests one page plans (but always one repository).
pub const ROWS_PER_PAGE: usize = 50_000;
/// Most names of repositories the caller may see that one page looks at,
/// whether the `repository` filter keeps them or not.
pub const NAMES_PER_PAGE: usize = 5_000;

/// A position in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// After this row (a tag, or `@digest` for an untagged image) of this
    /// repository.
    Within { repo: String, item: String },
    /// After everything of this repository.
    After { repo: String },
}

impl Cursor {
    fn repo(&self) -> &str {
        match self {
            Cursor::Within { repo, .. } | Cursor::After { repo } => repo,
        }
    }
}

/// What a page asks for.
pub struct InventoryQuery<'a> {
    /// Only repositories matching this.
    pub repositories: Option<&'a Pattern>,
    /// Only images of this provenance (`pushed`, `mirrored`, `snapshot`).
    pub provenance: Option<&'a str>,
    /// Only images whose deciding rule ends before this time (Unix ms).
    pub expiring_before_ms: Option<i64>,
    /// Most images in the page.
    pub limit: usize,
    pub cursor: Option<Cursor>,
    /// Whether the caller may see a repository.
    pub may_see: &'a (dyn Fn(&str) -> bool + Send + Sync),
}

/// What a lifecycle run would now do with an image, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub rule: &'static str,
    pub keep: bool,
    pub reason: String,
    pub expires_ms: Option<i64>,
}

/// One image: a tag, or an untagged top-level manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryImage {
    pub repository: String,
    /// Its place in the repository's listing: the tag, or `@digest`.
    pub key: String,
    pub tag: Option<String>,
    pub manifest: ManifestState,
    /// The tag's push and pulls, or the manifest's when untagged.
    pub pushed_ms: i64,
    pub last_pulled_ms: Option<i64>,
    pub pull_count: u64,
    pub lifecycle: Verdict,
}

/// One page of the inventory.
#[derive(Debug, Default)]
pub struct InventoryPage {
    pub images: Vec<InventoryImage>,
    /// Where the next page starts; `None` at the end. Present whenever the
    /// work stopped early, even on a page with fewer images than asked for.
    pub next: Option<Cursor>,
}

/// How many repository names are read from the store at a time.
const NAME_BATCH: u32 = 500;

impl Lifecycle {
    /// One page of the inventory.
    pub async fn inventory(&self, q: &InventoryQuery<'_>) -> Result<InventoryPage> {
        self.flush_pulls().await?;
        let policies = self.policies().await?;
        let now = self.now_ms();
        let mut page = InventoryPage::default();
        let (mut planned, mut rows_planned, mut names_seen) = (0usize, 0usize, 0usize);
        // Where the work done so far ends: after the last repository looked at.
        let mut done: Option<Cursor> = None;
        // Listing is exclusive of its start: a cursor within a repository
        // starts just before it, and what sorts between is skipped.
        let mut after: Option<String> = q.cursor.as_ref().map(|c| match c {
            Cursor::Within { repo, .. } => {
                let mut before = repo.clone();
                before.pop();
                before
            }
            Cursor::After { repo } => repo.clone(),
        });
        loop {
            let names = self.store.list_repositories(after.as_deref(), NAME_BATCH).await?;
            let exhausted = names.len() < NAME_BATCH as usize;
            after = names.last().cloned();
            // Names the caller may not see are passed over as the catalog
            // does, and never named in a cursor.
            for repo in names.iter().filter(|name| (q.may_see)(name.as_str())) {
                let resume = match &q.cursor {
                    Some(Cursor::Within { repo: at, item }) if repo == at => Some(item.as_str()),
                    Some(c) if repo.as_str() <= c.repo() => continue,
                    _ => None,
                };
                if names_seen >= NAMES_PER_PAGE
                    || planned >= REPOSITORIES_PER_PAGE
                    || (planned > 0 && rows_planned >= ROWS_PER_PAGE)
                {
                    // At least one name was looked at, so `done` is set.
                    page.next = done;
                    return Ok(page);
                }
                names_seen += 1;
                done = Some(Cursor::After { repo: repo.clone() });
                if q.repositories.is_some_and(|f| !f.matches(repo)) {
                    continue;
                }
                let Some(state) = self.store.repository_state(repo).await? else {
                    continue;
                };
                planned += 1;
                rows_planned += state.tags.len() + state.manifests.len();
                let plan = plan::plan(&state, self.settings(repo, &policies, Scope::Retention, now));
                for image in images(&state, &plan) {
                    if resume.is_some_and(|item| row_order(&image.key) <= row_order(item)) {
                        continue;
                    }
                    if q.provenance.is_some_and(|p| p != image.manifest.provenance) {
                        continue;
                    }
                    if q.expiring_before_ms
                        .is_some_and(|before| image.lifecycle.expires_ms.is_none_or(|e| e >= before))
                    {
                        continue;
                    }
                    if page.images.len() == q.limit {
                        page.next = page.images.last().map(|last| Cursor::Within {
                            repo: last.repository.clone(),
                            item: last.key.clone(),
                        });
                        return Ok(page);
                    }
                    page.images.push(image);
                }
            }
            if exhausted {
                return Ok(page);
            }
        }
    }
}

/// Repositories with fewer tags are planned on every page view (about 1 ms
/// per 100 tags); bigger ones have their verdicts kept for a while.
const VERDICTS_CACHED_FROM: u64 = 1_000;
/// How long kept verdicts are shown: they may lag a pull (an idle rule), the
/// passing of an expiry time, or another replica's change by this much.
const VERDICTS_KEPT_MS: i64 = 30_000;
const VERDICTS_KEPT_REPOSITORIES: usize = 64;

/// The verdicts of big repositories, by repository, each with the state it
/// was planned on: the number of tags and the latest push, so that a push or
/// a deletion plans again at once.
#[derive(Default)]
pub(super) struct VerdictCache(std::sync::Mutex<HashMap<String, KeptVerdicts>>);

struct KeptVerdicts {
    state: (u64, Option<i64>),
    at_ms: i64,
    verdicts: Arc<HashMap<String, Verdict>>,
}

impl VerdictCache {
    fn get(&self, repo: &str, state: (u64, Option<i64>), now_ms: i64) -> Option<Arc<HashMap<String, Verdict>>> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(repo)
            .filter(|k| k.state == state && now_ms - k.at_ms < VERDICTS_KEPT_MS && now_ms >= k.at_ms)
            .map(|k| k.verdicts.clone())
    }

    fn put(&self, repo: &str, state: (u64, Option<i64>), now_ms: i64, verdicts: Arc<HashMap<String, Verdict>>) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= VERDICTS_KEPT_REPOSITORIES && !kept.contains_key(repo) {
            if let Some(oldest) = kept.iter().min_by_key(|(_, k)| k.at_ms).map(|(r, _)| r.clone()) {
                kept.remove(&oldest);
            }
        }
        kept.insert(
            repo.to_string(),
            KeptVerdicts {
                state,
                at_ms: now_ms,
                verdicts,
            },
        );
    }

    /// Forgets everything: the policies changed.
    pub(super) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Lifecycle {
    /// What a lifecycle run would now do with each tag of `repo`, by tag:
    /// the same verdicts as the inventory, for one repository's page.
    /// `tags` and `last_push` are the repository's state as the caller read
    /// it: a big repository's verdicts are planned again when they change,
    /// or after [`VERDICTS_KEPT_MS`].
    pub async fn tag_verdicts(
        &self,
        repo: &str,
        tags: u64,
        last_push: Option<i64>,
    ) -> Result<Arc<HashMap<String, Verdict>>> {
        let now = self.now_ms();
        let state = (tags, last_push);
        let cached = tags >= VERDICTS_CACHED_FROM;
        if cached {
            if let Some(kept) = self.verdicts.get(repo, state, now) {
                return Ok(kept);
            }
        }
        let policies = self.policies().await?;
        let Some(repo_state) = self.store.repository_state(repo).await? else {
            return Ok(Arc::default());
        };
        let plan = plan::plan(&repo_state, self.settings(repo, &policies, Scope::Retention, now));
        let verdicts: Arc<HashMap<String, Verdict>> = Arc::new(
            images(&repo_state, &plan)
                .into_iter()
                .filter_map(|image| Some((image.tag?, image.lifecycle)))
                .collect(),
        );
        if cached {
            self.verdicts.put(repo, state, now, verdicts.clone());
        }
        Ok(verdicts)
    }
}

/// Where a row key sorts in a repository's listing: tags by name, then the
/// untagged `@digest` rows (a tag never starts with `@`).
fn row_order(key: &str) -> (bool, &str) {
    (key.starts_with('@'), key)
}

/// The images of one repository in cursor order: tags by name, then untagged
/// top-level manifests as `@digest`.
fn images(state: &RepoState, plan: &RepoPlan) -> Vec<InventoryImage> {
    let by_digest: HashMap<_, _> = state.manifests.iter().map(|m| (&m.digest, m)).collect();
    let mut tagged: Vec<InventoryImage> = plan
        .tags
        .iter()
        .filter_map(|t| {
            let manifest = by_digest.get(&t.tag.digest)?;
            Some(InventoryImage {
                repository: state.name.clone(),
                key: t.tag.name.clone(),
                tag: Some(t.tag.name.clone()),
                manifest: (*manifest).clone(),
                pushed_ms: t.tag.pushed_ms,
                last_pulled_ms: t.tag.last_pulled_ms,
                pull_count: t.tag.pull_count,
                lifecycle: Verdict {
                    rule: t.rule,
                    keep: t.keep,
                    reason: t.reason.clone(),
                    expires_ms: t.expires_ms,
                },
            })
        })
        .collect();
    let has_tag: HashSet<_> = state.tags.iter().map(|t| &t.digest).collect();
    let listed: HashSet<_> = state.manifests.iter().flat_map(|m| m.children.iter()).collect();
    let going: HashMap<_, _> = plan.manifests.iter().map(|m| (&m.digest, m)).collect();
    // Referrers (signatures, SBOMs, attestations) pushed by digest are not
    // images; they are shown with their subject by the referrers API.
    let mut untagged: Vec<InventoryImage> = state
        .manifests
        .iter()
        .filter(|m| !has_tag.contains(&m.digest) && !listed.contains(&m.digest) && m.subject.is_none())
        .map(|m| InventoryImage {
            repository: state.name.clone(),
            key: format!("@{}", m.digest),
            tag: None,
            manifest: m.clone(),
            pushed_ms: m.pushed_ms,
            last_pulled_ms: m.last_pulled_ms,
            pull_count: m.pull_count,
            lifecycle: match going.get(&m.digest) {
                Some(d) => Verdict {
                    rule: d.rule,
                    keep: false,
                    reason: d.reason.clone(),
                    expires_ms: None,
                },
                None => Verdict {
                    rule: "gc",
                    keep: true,
                    reason: "untagged: garbage collection removes it once the grace period has passed".into(),
                    expires_ms: None,
                },
            },
        })
        .collect();
    tagged.sort_by(|a, b| a.key.cmp(&b.key));
    untagged.sort_by(|a, b| a.key.cmp(&b.key));
    tagged.extend(untagged);
    tagged
}
