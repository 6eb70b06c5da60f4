//! What browsing reads, for the web UI and the `/api/v1/` endpoints alike:
//! pages of the repositories a visitor may see, and pages of a repository's
//! tags with what the lifecycle would do with each.

use std::collections::HashMap;
use std::sync::Arc;

use berth_meta::ui::{RepoListing, RepoSummary, TagCursor, TagRow};
use berth_meta::MetaError;

use crate::app::App;
use crate::lifecycle::inventory::Verdict;
use crate::lifecycle::LifecycleError;

/// Repository names read from the store for one visibility-filtered page, at most.
const SCAN_LIMIT: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

/// A page of repositories, and where the next one starts.
pub struct RepoPage {
    pub repositories: Vec<RepoSummary>,
    /// The name the next page lists after, when there may be more.
    pub next_after: Option<String>,
}

/// Up to `limit` repositories after `after` (in name order) whose names
/// contain `contains` and that `may_see` lets through. Names the visitor may
/// not see are passed over, so a page may take several reads; after
/// [`SCAN_LIMIT`] names the page ends early and says where to go on.
pub async fn repositories(
    app: &App,
    contains: Option<&str>,
    after: Option<&str>,
    limit: u32,
    may_see: impl Fn(&str) -> bool,
) -> Result<RepoPage, BrowseError> {
    let mut after = after.map(str::to_string);
    let mut shown = Vec::new();
    let mut scanned = 0usize;
    loop {
        let batch = app
            .ui
            .list_repository_summaries(&RepoListing {
                contains,
                after: after.as_deref(),
                limit: limit + 1,
            })
            .await?;
        let exhausted = batch.len() <= limit as usize;
        for r in batch {
            if may_see(&r.name) {
                if shown.len() == limit as usize {
                    // `after` is the last name shown or passed over.
                    return Ok(RepoPage {
                        repositories: shown,
                        next_after: after,
                    });
                }
                shown.push(r.clone());
            }
            scanned += 1;
            after = Some(r.name);
        }
        if exhausted {
            return Ok(RepoPage {
                repositories: shown,
                next_after: None,
            });
        }
        if scanned >= SCAN_LIMIT {
            return Ok(RepoPage {
                repositories: shown,
                next_after: after,
            });
        }
    }
}

/// A page of a repository's tags, newest push first.
pub struct TagPage {
    pub rows: Vec<TagRow>,
    /// Tags the repository has in all.
    pub total: u64,
    pub next: Option<TagCursor>,
    /// What a lifecycle run would now do with each tag, by tag.
    pub verdicts: Arc<HashMap<String, Verdict>>,
}

/// Up to `limit` tags of `repo` (whose `summary` the caller read) after `after`.
pub async fn tags(
    app: &App,
    summary: &RepoSummary,
    after: Option<&TagCursor>,
    limit: u32,
) -> Result<TagPage, BrowseError> {
    let repo = summary.name.as_str();
    let (page, verdicts) = tokio::try_join!(
        async { Ok::<_, BrowseError>(app.ui.tag_page(repo, after, limit + 1).await?) },
        async {
            Ok(app
                .lifecycle
                .tag_verdicts(repo, summary.tags, summary.last_pushed_ms)
                .await?)
        },
    )?;
    let (mut rows, total) = page;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|last| TagCursor {
            pushed_ms: last.pushed_ms,
            name: last.name.clone(),
        })
    } else {
        None
    };
    Ok(TagPage {
        rows,
        total,
        next,
        verdicts,
    })
}
