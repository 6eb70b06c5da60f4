//! Lifecycle: tag-suffix expiry, keep-latest, retention policies, garbage
//! collection and the consistency check, on top of the same stores the
//! registry core uses.
//!
//! Deciding is separate from doing: [`plan`] decides for one repository from a
//! snapshot; [`Lifecycle::run`] applies the plan through removals that the
//! metadata store re-checks in the deleting transaction, so a push or pull
//! made after the snapshot wins.

pub mod fsck;
pub mod gc;
pub mod inventory;
pub mod plan;
pub mod policy;

use std::sync::Arc;

use berth_meta::access::Audit;
use berth_meta::lifecycle::{LifecycleStore, PolicyRecord};
use berth_meta::{JobLease, MetaError};
use futures::StreamExt;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::Config;
use crate::namespaces::NamespaceRules;
use crate::pattern::Pattern;
use crate::registry::events::{Action, Event, EventSink, NoEvents, Target};
use crate::registry::{BlobStores, PullRecorder, TouchRecorder};

pub use plan::{RepoPlan, Settings};
pub use policy::{Policies, Policy, Rules};

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Storage(#[from] berth_storage::StorageError),
}

pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// Which rules a run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Tag suffixes and keep-latest only (the frequent expiry job).
    Expiry,
    /// Those and the retention policies.
    Retention,
}

/// What a preview or a run decided and did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub repositories: u64,
    pub tags_kept: u64,
    pub tags_deleted: u64,
    pub manifests_deleted: u64,
    /// Removals skipped because the tag or manifest changed (pushed, pulled,
    /// re-tagged) after it was decided on.
    pub skipped_changed: u64,
}

/// The lifecycle jobs over the registry's stores.
pub struct Lifecycle {
    store: Arc<dyn LifecycleStore>,
    stores: Arc<BlobStores>,
    clock: Arc<dyn Clock>,
    pub namespaces: NamespaceRules,
    /// Policies from the configuration file, applied by [`Lifecycle::sync_config_policies`].
    config_policies: Vec<(String, Rules)>,
    grace_ms: i64,
    /// Runs and collections of this process take turns.
    busy: tokio::sync::Mutex<()>,
    /// When this process last collected garbage (not a dry run), and what it found.
    last_gc: std::sync::Mutex<Option<(i64, gc::GcReport)>>,
    /// The web UI's verdicts of big repositories (see `Lifecycle::tag_verdicts`).
    verdicts: inventory::VerdictCache,
    /// Pulls the server holds in memory, written before each repository's
    /// removals so that a pull just made keeps what it pulled.
    pulls: Option<Arc<PullRecorder>>,
    /// Blob reads the server holds in memory, written before a collection
    /// decides, so that a blob just read stays for a grace period.
    touches: Option<Arc<TouchRecorder>>,
    /// Where the removals that were applied are announced.
    events: Arc<dyn EventSink>,
}

/// How many repository names are read at a time.
const REPO_BATCH: u32 = 500;
/// How many repositories are read ahead of the one being decided.
const PREFETCH: usize = 4;
/// How many removals one transaction applies.
const REMOVAL_BATCH: usize = 500;

impl Lifecycle {
    pub fn new(
        store: Arc<dyn LifecycleStore>,
        stores: Arc<BlobStores>,
        clock: Arc<dyn Clock>,
        config: &Config,
    ) -> Result<Lifecycle, String> {
        for (pattern, rules) in &config.retention.policies {
            Policy::new(pattern, rules.clone()).map_err(|e| format!("retention.policies: {e}"))?;
        }
        Ok(Lifecycle {
            store,
            stores,
            clock,
            namespaces: NamespaceRules::from_config(&config.lifecycle).map_err(|e| format!("lifecycle: {e}"))?,
            config_policies: config
                .retention
                .policies
                .iter()
                .map(|(p, r)| (p.clone(), r.clone()))
                .collect(),
            grace_ms: i64::try_from(config.gc.grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            busy: tokio::sync::Mutex::new(()),
            last_gc: std::sync::Mutex::new(None),
            verdicts: inventory::VerdictCache::default(),
            pulls: None,
            touches: None,
            events: Arc::new(NoEvents),
        })
    }

    /// Has runs and collections publish what they removed to `sink`.
    pub fn notifying(mut self, sink: Arc<dyn EventSink>) -> Lifecycle {
        self.events = sink;
        self
    }

    /// Has runs record the server's in-memory pulls before they remove anything.
    pub fn seeing_pulls_of(mut self, pulls: Arc<PullRecorder>) -> Lifecycle {
        self.pulls = Some(pulls);
        self
    }

    /// Has collections record the server's in-memory blob reads first.
    pub fn seeing_touches_of(mut self, touches: Arc<TouchRecorder>) -> Lifecycle {
        self.touches = Some(touches);
        self
    }

    /// Writes the blob reads held in memory, so that a collection sees every
    /// read made before it.
    async fn flush_touches(&self) -> Result<()> {
        if let Some(touches) = &self.touches {
            touches.flush(self.store.as_ref()).await?;
        }
        Ok(())
    }

    /// Writes the pulls held in memory, so that a decision sees every pull made
    /// before it.
    async fn flush_pulls(&self) -> Result<()> {
        if let Some(pulls) = &self.pulls {
            pulls.flush(self.store.as_ref()).await?;
        }
        Ok(())
    }

    /// When this process last collected garbage, and what that found.
    pub fn last_gc(&self) -> Option<(i64, gc::GcReport)> {
        self.last_gc
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Leads the periodic job named `job` among the replicas sharing the
    /// metadata store, or `None` while another one leads it.
    pub async fn lead_job(&self, job: &str) -> Result<Option<JobLease>> {
        Ok(self.store.lead_job(job).await?)
    }

    /// The retention policies as stored, with who set them and when.
    pub async fn stored_policies(&self) -> Result<Vec<PolicyRecord>> {
        Ok(self.store.policies().await?)
    }

    /// Makes the database's `config` policies those of the configuration file.
    pub async fn sync_config_policies(&self) -> Result<()> {
        let now = self.now_ms();
        let records = self
            .config_policies
            .iter()
            .map(|(pattern, rules)| PolicyRecord {
                pattern: pattern.clone(),
                rules_json: serde_json::to_string(rules).unwrap_or_default(),
                source: "config".into(),
                updated_by: "config".into(),
                updated_ms: now,
            })
            .collect::<Vec<_>>();
        let audit = Audit {
            actor: "config".into(),
            at_ms: now,
        };
        self.store.sync_config_policies(&records, &audit).await?;
        Ok(())
    }

    pub async fn policies(&self) -> Result<Policies> {
        Ok(Policies::from_records(&self.store.policies().await?))
    }

    /// Creates or replaces a policy (from the CLI or the admin API).
    pub async fn set_policy(&self, pattern: &str, rules: Rules, actor: &str) -> Result<()> {
        Policy::new(pattern, rules.clone()).map_err(LifecycleError::Invalid)?;
        let now = self.now_ms();
        let record = PolicyRecord {
            pattern: pattern.to_string(),
            rules_json: serde_json::to_string(&rules).unwrap_or_default(),
            source: "api".into(),
            updated_by: actor.to_string(),
            updated_ms: now,
        };
        let audit = Audit {
            actor: actor.to_string(),
            at_ms: now,
        };
        self.store.put_policy(&record, &audit).await?;
        self.verdicts.clear();
        Ok(())
    }

    pub async fn delete_policy(&self, pattern: &str, actor: &str) -> Result<bool> {
        // Only a pattern a policy can have is looked up.
        Pattern::parse(pattern).map_err(LifecycleError::Invalid)?;
        let audit = Audit {
            actor: actor.to_string(),
            at_ms: self.now_ms(),
        };
        let deleted = self.store.delete_policy(pattern, &audit).await?;
        self.verdicts.clear();
        Ok(deleted)
    }

    /// The settings for one repository.
    fn settings<'a>(&self, repo: &str, policies: &'a Policies, scope: Scope, now_ms: i64) -> Settings<'a> {
        Settings {
            now_ms,
            suffix_rules: self.namespaces.suffix_rules(repo),
            keep_latest: self.namespaces.keep_latest(repo),
            policy: match scope {
                Scope::Retention => policies.for_repository(repo),
                Scope::Expiry => None,
            },
        }
    }

    /// Decides every repository matching `filter` and hands each plan to
    /// `each`, deleting nothing.
    pub async fn preview(
        &self,
        filter: Option<&Pattern>,
        scope: Scope,
        mut each: impl FnMut(&RepoPlan),
    ) -> Result<RunSummary> {
        self.flush_pulls().await?;
        self.for_each_plan(filter, scope, |_, plan| {
            each(plan);
            async { Ok(0) }
        })
        .await
    }

    /// Decides and applies, repository by repository, recording every removal
    /// in the audit log as `actor` with its rule and reason.
    pub async fn run(&self, filter: Option<&Pattern>, scope: Scope, actor: &str) -> Result<RunSummary> {
        let _turn = self.busy.lock().await;
        // Pulls made before the plan keep what they pulled in the plan itself;
        // those made while it is decided are written before each repository's
        // removals, which re-check them.
        self.flush_pulls().await?;
        let store = self.store.clone();
        let clock = self.clock.clone();
        self.for_each_plan(filter, scope, |state, plan| {
            let removals = plan.removals(&state);
            let repo = plan.repo.clone();
            let store = store.clone();
            let clock = clock.clone();
            let actor = actor.to_string();
            let pulls = self.pulls.clone();
            let events = self.events.clone();
            async move {
                if removals.is_empty() {
                    return Ok(0);
                }
                if let Some(pulls) = pulls {
                    pulls.flush(store.as_ref()).await?;
                }
                let mut skipped = 0;
                for batch in removals.chunks(REMOVAL_BATCH) {
                    let audit = Audit {
                        actor: actor.clone(),
                        at_ms: clock.now_ms(),
                    };
                    let applied = store.remove(&repo, batch, &audit).await?;
                    publish_removals(
                        events.as_ref(),
                        &repo,
                        batch,
                        &applied,
                        &actor,
                        audit.at_ms,
                        |rule| match (scope, rule) {
                            (Scope::Expiry, _) | (_, "ttl" | "idle" | "keep_latest") => Action::Expire,
                            _ => Action::Retention,
                        },
                    )
                    .await;
                    for (removal, done) in batch.iter().zip(applied) {
                        if !done {
                            skipped += 1;
                            tracing::info!(repository = %repo, rule = %removal.rule, removal = ?removal.removal,
                                "left in place: it changed after the plan was made");
                        }
                    }
                }
                Ok(skipped)
            }
        })
        .await
    }

    async fn for_each_plan<F, Fut>(&self, filter: Option<&Pattern>, scope: Scope, apply: F) -> Result<RunSummary>
    where
        F: FnMut(berth_meta::lifecycle::RepoState, &RepoPlan) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let policies = self.policies().await?;
        self.for_each_plan_under(&policies, filter, scope, apply).await
    }

    /// What retention would do to the repositories `pattern` matches if its
    /// policy were `rules` (the other stored policies as they are): the
    /// preview of a policy being edited, deleting nothing.
    pub async fn preview_draft(
        &self,
        pattern: &str,
        rules: Rules,
        mut each: impl FnMut(&RepoPlan),
    ) -> Result<RunSummary> {
        let draft = Policy::new(pattern, rules).map_err(LifecycleError::Invalid)?;
        let filter = Pattern::parse(pattern).map_err(LifecycleError::Invalid)?;
        let mut policies: Vec<Policy> = self
            .store
            .policies()
            .await?
            .iter()
            .filter(|r| r.pattern != pattern)
            .filter_map(|r| Policy::from_record(r).ok())
            .collect();
        policies.push(draft);
        self.flush_pulls().await?;
        self.for_each_plan_under(&Policies::new(policies), Some(&filter), Scope::Retention, |_, plan| {
            each(plan);
            async { Ok(0) }
        })
        .await
    }

    async fn for_each_plan_under<F, Fut>(
        &self,
        policies: &Policies,
        filter: Option<&Pattern>,
        scope: Scope,
        mut apply: F,
    ) -> Result<RunSummary>
    where
        F: FnMut(berth_meta::lifecycle::RepoState, &RepoPlan) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let mut summary = RunSummary::default();
        let mut after: Option<String> = None;
        loop {
            let names = self.store.list_repositories(after.as_deref(), REPO_BATCH).await?;
            let done = names.len() < REPO_BATCH as usize;
            after = names.last().cloned();
            // The next repositories are read while this one is decided and applied.
            let wanted = names.into_iter().filter(|repo| filter.is_none_or(|f| f.matches(repo)));
            let mut states = futures::stream::iter(wanted)
                .map(|repo| {
                    let store = self.store.clone();
                    async move { store.repository_state(&repo).await }
                })
                .buffered(PREFETCH);
            while let Some(state) = states.next().await {
                let Some(state) = state? else {
                    continue;
                };
                let repo = state.name.clone();
                let plan = plan::plan(&state, self.settings(&repo, policies, scope, self.now_ms()));
                summary.repositories += 1;
                let deleted = plan.tags.iter().filter(|t| !t.keep).count() as u64;
                summary.tags_deleted += deleted;
                summary.tags_kept += plan.tags.len() as u64 - deleted;
                summary.manifests_deleted += plan.manifests.len() as u64;
                summary.skipped_changed += apply(state, &plan).await?;
            }
            if done {
                return Ok(summary);
            }
        }
    }

    pub(crate) async fn take_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.busy.lock().await
    }

    /// The grace period of garbage collection.
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    /// Every configured blob store.
    pub fn stores(&self) -> &BlobStores {
        &self.stores
    }
}

/// Publishes an event for each removal that was applied, with the action
/// its rule stands for, and makes them durable before the job goes on.
async fn publish_removals(
    events: &dyn EventSink,
    repo: &str,
    removals: &[berth_meta::lifecycle::PlannedRemoval],
    applied: &[bool],
    actor: &str,
    at_ms: i64,
    action_of: impl Fn(&str) -> Action,
) {
    use berth_meta::lifecycle::Removal;
    for (planned, _) in removals.iter().zip(applied).filter(|(_, done)| **done) {
        let (digest, tag) = match &planned.removal {
            Removal::Tag { name, digest, .. } => (digest.clone(), Some(name.clone())),
            Removal::Manifest { digest, .. } => (digest.clone(), None),
        };
        events.publish(Event {
            action: action_of(&planned.rule),
            target: Target {
                repository: repo.to_string(),
                digest,
                media_type: None,
                size: None,
                tag,
            },
            actor: Some(actor.to_string()),
            request: None,
            at_ms,
        });
    }
    if applied.iter().any(|done| *done) {
        events.settle().await;
    }
}
