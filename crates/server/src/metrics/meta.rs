//! A metadata store that times every operation of the store it wraps,
//! into `berth_db_operation_duration_seconds{operation, result}`.
//!
//! The operation label is the method's name: a closed set of about ninety.
//! Every method is forwarded, the traits' defaults included, because a
//! default left to the trait would run in place of the backend's own
//! version (PostgreSQL's upload claims and job leases, say); the
//! `missing_trait_methods` lint turns a method added to a trait and not
//! forwarded here into a build failure under `-D warnings`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use berth_meta::access::{AccessStore, Audit, AuditEntry, GrantRecord, NewGrant, RobotRecord, SubjectKind, UserRecord};
use berth_meta::lifecycle::{
    BlobSweep, FileRemover, LifecycleStore, LinkKey, OrphanedReferrerTag, PlannedRemoval, PolicyRecord, Pretend,
    RecordedBlob, RepoState, UntaggedManifest, UnusedBlob,
};
use berth_meta::ui::{DailyPulls, RegistryCounts, RepoListing, RepoSummary, SessionRecord, TagCursor, TagRow, UiStore};
use berth_meta::webhooks::{EndpointRecord, NewEvent, QueuedEvent, WebhookStore};
use berth_meta::{
    BlobRecord, JobLease, LinkTouch, LinkedBlob, ManifestFacts, MetaStore, NewManifest, PlacedBlob, Placement,
    PullRecord, Referrer, RepoUsage, Result, StoreSet, StoredManifest, TagFacts, UploadClaim, UploadRecord,
};
use berth_oci::{Digest, UploadId};
use prometheus::HistogramVec;

use crate::app::Meta;

/// `inner`, timed.
pub struct TimedMeta {
    inner: Arc<dyn Meta>,
    histogram: HistogramVec,
}

impl TimedMeta {
    pub fn wrap(inner: Arc<dyn Meta>, histogram: HistogramVec) -> Arc<dyn Meta> {
        Arc::new(TimedMeta { inner, histogram })
    }

    fn observe<T>(&self, operation: &str, started: Instant, result: &Result<T>) {
        self.histogram
            .with_label_values(&[operation, if result.is_ok() { "ok" } else { "error" }])
            .observe(started.elapsed().as_secs_f64());
    }
}

macro_rules! timed {
    ($self:ident, $operation:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self.observe($operation, started, &result);
        result
    }};
}

#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl MetaStore for TimedMeta {
    async fn repository_exists(&self, repo: &str) -> Result<bool> {
        timed!(self, "repository_exists", self.inner.repository_exists(repo))
    }

    async fn linked_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        timed!(self, "linked_blob_size", self.inner.linked_blob_size(repo, digest))
    }

    async fn linked_blob(&self, repo: &str, digest: &Digest) -> Result<Option<LinkedBlob>> {
        timed!(self, "linked_blob", self.inner.linked_blob(repo, digest))
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        timed!(self, "blob_size", self.inner.blob_size(digest))
    }

    async fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        timed!(self, "blob_record", self.inner.blob_record(digest))
    }

    async fn add_blob(&self, repo: &str, digest: &Digest, size: u64, now_ms: i64) -> Result<()> {
        timed!(self, "add_blob", self.inner.add_blob(repo, digest, size, now_ms))
    }

    async fn link_blob(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<Option<u64>> {
        timed!(self, "link_blob", self.inner.link_blob(repo, digest, now_ms))
    }

    async fn touch_link(&self, repo: &str, digest: &Digest, at_ms: i64) -> Result<bool> {
        timed!(self, "touch_link", self.inner.touch_link(repo, digest, at_ms))
    }

    async fn record_touches(&self, touches: &[LinkTouch]) -> Result<()> {
        timed!(self, "record_touches", self.inner.record_touches(touches))
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        timed!(self, "unlink_blob", self.inner.unlink_blob(repo, digest))
    }

    async fn put_manifest(&self, repo: &str, manifest: &NewManifest, tag: Option<&str>, now_ms: i64) -> Result<()> {
        timed!(
            self,
            "put_manifest",
            self.inner.put_manifest(repo, manifest, tag, now_ms)
        )
    }

    async fn manifest_by_digest(&self, repo: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        timed!(self, "manifest_by_digest", self.inner.manifest_by_digest(repo, digest))
    }

    async fn manifest_by_tag(&self, repo: &str, tag: &str) -> Result<Option<StoredManifest>> {
        timed!(self, "manifest_by_tag", self.inner.manifest_by_tag(repo, tag))
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest, now_ms: i64) -> Result<bool> {
        timed!(
            self,
            "delete_manifest",
            self.inner.delete_manifest(repo, digest, now_ms)
        )
    }

    async fn delete_tag(&self, repo: &str, tag: &str, now_ms: i64) -> Result<bool> {
        timed!(self, "delete_tag", self.inner.delete_tag(repo, tag, now_ms))
    }

    async fn list_tags(&self, repo: &str, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        timed!(self, "list_tags", self.inner.list_tags(repo, last, limit))
    }

    async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        timed!(self, "list_repositories", self.inner.list_repositories(last, limit))
    }

    async fn repositories_linking(&self, digest: &Digest, limit: u32) -> Result<Vec<String>> {
        timed!(
            self,
            "repositories_linking",
            self.inner.repositories_linking(digest, limit)
        )
    }

    async fn repository_usage(&self) -> Result<Vec<RepoUsage>> {
        timed!(self, "repository_usage", self.inner.repository_usage())
    }

    async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<Referrer>> {
        timed!(
            self,
            "referrers",
            self.inner.referrers(repo, subject, artifact_type, after, limit)
        )
    }

    async fn record_pulls(&self, pulls: &[PullRecord]) -> Result<()> {
        timed!(self, "record_pulls", self.inner.record_pulls(pulls))
    }

    async fn manifest_facts(&self, repo: &str, digest: &Digest) -> Result<Option<ManifestFacts>> {
        timed!(self, "manifest_facts", self.inner.manifest_facts(repo, digest))
    }

    async fn tag_facts(&self, repo: &str, tag: &str) -> Result<Option<TagFacts>> {
        timed!(self, "tag_facts", self.inner.tag_facts(repo, tag))
    }

    async fn create_upload(&self, upload: &UploadRecord) -> Result<()> {
        timed!(self, "create_upload", self.inner.create_upload(upload))
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>> {
        timed!(self, "get_upload", self.inner.get_upload(id))
    }

    async fn advance_upload(
        &self,
        id: &UploadId,
        from_offset: u64,
        to_offset: u64,
        hash_state: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<bool> {
        timed!(
            self,
            "advance_upload",
            self.inner
                .advance_upload(id, from_offset, to_offset, hash_state, now_ms)
        )
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<()> {
        timed!(self, "delete_upload", self.inner.delete_upload(id))
    }

    async fn open_uploads_of(&self, owner: &str) -> Result<u64> {
        timed!(self, "open_uploads_of", self.inner.open_uploads_of(owner))
    }

    async fn claim_upload(&self, id: &UploadId, token: &str, now_ms: i64, until_ms: i64) -> Result<UploadClaim> {
        timed!(
            self,
            "claim_upload",
            self.inner.claim_upload(id, token, now_ms, until_ms)
        )
    }

    async fn renew_upload_claim(&self, id: &UploadId, token: &str, now_ms: i64, until_ms: i64) -> Result<bool> {
        timed!(
            self,
            "renew_upload_claim",
            self.inner.renew_upload_claim(id, token, now_ms, until_ms)
        )
    }

    async fn release_upload_claim(&self, id: &UploadId, token: &str) -> Result<()> {
        timed!(self, "release_upload_claim", self.inner.release_upload_claim(id, token))
    }

    async fn complete_upload(
        &self,
        id: &UploadId,
        repo: &str,
        digest: &Digest,
        size: u64,
        store: &str,
        now_ms: i64,
        place: Placement<'_>,
    ) -> Result<()> {
        timed!(
            self,
            "complete_upload",
            self.inner.complete_upload(id, repo, digest, size, store, now_ms, place)
        )
    }

    async fn place_blobs(&self, blobs: &[PlacedBlob], now_ms: i64, place: Placement<'_>) -> Result<()> {
        timed!(self, "place_blobs", self.inner.place_blobs(blobs, now_ms, place))
    }

    async fn stale_uploads(&self, before_ms: i64, limit: u32) -> Result<Vec<UploadRecord>> {
        timed!(self, "stale_uploads", self.inner.stale_uploads(before_ms, limit))
    }

    async fn lead_job(&self, job: &str) -> Result<Option<JobLease>> {
        timed!(self, "lead_job", self.inner.lead_job(job))
    }
}

#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl LifecycleStore for TimedMeta {
    async fn repository_state(&self, repo: &str) -> Result<Option<RepoState>> {
        timed!(self, "repository_state", self.inner.repository_state(repo))
    }

    async fn remove(&self, repo: &str, removals: &[PlannedRemoval], audit: &Audit) -> Result<Vec<bool>> {
        timed!(self, "remove", self.inner.remove(repo, removals, audit))
    }

    async fn policies(&self) -> Result<Vec<PolicyRecord>> {
        timed!(self, "policies", self.inner.policies())
    }

    async fn put_policy(&self, policy: &PolicyRecord, audit: &Audit) -> Result<()> {
        timed!(self, "put_policy", self.inner.put_policy(policy, audit))
    }

    async fn delete_policy(&self, pattern: &str, audit: &Audit) -> Result<bool> {
        timed!(self, "delete_policy", self.inner.delete_policy(pattern, audit))
    }

    async fn sync_config_policies(&self, policies: &[PolicyRecord], audit: &Audit) -> Result<()> {
        timed!(
            self,
            "sync_config_policies",
            self.inner.sync_config_policies(policies, audit)
        )
    }

    async fn stale_links(
        &self,
        cutoff_ms: i64,
        after: Option<&LinkKey>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<LinkKey>> {
        timed!(
            self,
            "stale_links",
            self.inner.stale_links(cutoff_ms, after, limit, gone)
        )
    }

    async fn remove_links(&self, links: &[LinkKey], cutoff_ms: i64) -> Result<u64> {
        timed!(self, "remove_links", self.inner.remove_links(links, cutoff_ms))
    }

    async fn unreferenced_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&Digest>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<UnusedBlob>> {
        timed!(
            self,
            "unreferenced_blobs",
            self.inner.unreferenced_blobs(cutoff_ms, after, limit, gone)
        )
    }

    async fn remove_blobs(
        &self,
        digests: &[Digest],
        cutoff_ms: i64,
        files: &dyn FileRemover,
    ) -> Result<Vec<UnusedBlob>> {
        timed!(self, "remove_blobs", self.inner.remove_blobs(digests, cutoff_ms, files))
    }

    async fn sweep_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&Digest>,
        limit: u32,
        removable: &(dyn for<'s> Fn(&'s StoreSet) -> bool + Sync),
        files: &dyn FileRemover,
    ) -> Result<BlobSweep> {
        timed!(
            self,
            "sweep_blobs",
            self.inner.sweep_blobs(cutoff_ms, after, limit, removable, files)
        )
    }

    async fn untagged_manifests(
        &self,
        cutoff_ms: i64,
        after: Option<(i64, &Digest)>,
        limit: u32,
        gone: Pretend<'_>,
    ) -> Result<Vec<UntaggedManifest>> {
        timed!(
            self,
            "untagged_manifests",
            self.inner.untagged_manifests(cutoff_ms, after, limit, gone)
        )
    }

    async fn orphaned_referrer_tags(
        &self,
        cutoff_ms: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<OrphanedReferrerTag>> {
        timed!(
            self,
            "orphaned_referrer_tags",
            self.inner.orphaned_referrer_tags(cutoff_ms, after, limit)
        )
    }

    async fn blobs_with_prefix(&self, algorithm: &str, hex_prefix: &str) -> Result<Vec<RecordedBlob>> {
        timed!(
            self,
            "blobs_with_prefix",
            self.inner.blobs_with_prefix(algorithm, hex_prefix)
        )
    }

    async fn remove_orphan_files(
        &self,
        store: &str,
        digests: &[Digest],
        files: &dyn FileRemover,
    ) -> Result<Vec<Digest>> {
        timed!(
            self,
            "remove_orphan_files",
            self.inner.remove_orphan_files(store, digests, files)
        )
    }

    async fn blob_users(&self, digest: &Digest) -> Result<Vec<(String, Digest)>> {
        timed!(self, "blob_users", self.inner.blob_users(digest))
    }

    async fn forget_unreferenced_blob(&self, digest: &Digest) -> Result<bool> {
        timed!(
            self,
            "forget_unreferenced_blob",
            self.inner.forget_unreferenced_blob(digest)
        )
    }

    async fn upload_ids(&self) -> Result<Vec<String>> {
        timed!(self, "upload_ids", self.inner.upload_ids())
    }
}

#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl AccessStore for TimedMeta {
    async fn create_user(&self, user: &UserRecord, audit: &Audit) -> Result<bool> {
        timed!(self, "create_user", self.inner.create_user(user, audit))
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        timed!(self, "user", self.inner.user(name))
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        timed!(self, "list_users", self.inner.list_users())
    }

    async fn set_password(&self, name: &str, password_hash: &str, audit: &Audit) -> Result<bool> {
        timed!(
            self,
            "set_password",
            self.inner.set_password(name, password_hash, audit)
        )
    }

    async fn set_disabled(&self, name: &str, disabled: bool, audit: &Audit) -> Result<bool> {
        timed!(self, "set_disabled", self.inner.set_disabled(name, disabled, audit))
    }

    async fn create_robot(&self, robot: &RobotRecord, grants: &[NewGrant], audit: &Audit) -> Result<bool> {
        timed!(self, "create_robot", self.inner.create_robot(robot, grants, audit))
    }

    async fn robot_by_token_hash(&self, token_hash: &str) -> Result<Option<RobotRecord>> {
        timed!(self, "robot_by_token_hash", self.inner.robot_by_token_hash(token_hash))
    }

    async fn robot(&self, name: &str) -> Result<Option<RobotRecord>> {
        timed!(self, "robot", self.inner.robot(name))
    }

    async fn list_robots(&self) -> Result<Vec<RobotRecord>> {
        timed!(self, "list_robots", self.inner.list_robots())
    }

    async fn revoke_robot(&self, name: &str, audit: &Audit) -> Result<bool> {
        timed!(self, "revoke_robot", self.inner.revoke_robot(name, audit))
    }

    async fn touch_robot(&self, name: &str, at_ms: i64) -> Result<()> {
        timed!(self, "touch_robot", self.inner.touch_robot(name, at_ms))
    }

    async fn add_grant(&self, grant: &NewGrant, audit: &Audit) -> Result<Option<i64>> {
        timed!(self, "add_grant", self.inner.add_grant(grant, audit))
    }

    async fn remove_grant(&self, id: i64, audit: &Audit) -> Result<bool> {
        timed!(self, "remove_grant", self.inner.remove_grant(id, audit))
    }

    async fn grants_for(&self, subjects: &[(SubjectKind, String)]) -> Result<Vec<GrantRecord>> {
        timed!(self, "grants_for", self.inner.grants_for(subjects))
    }

    async fn list_grants(&self) -> Result<Vec<GrantRecord>> {
        timed!(self, "list_grants", self.inner.list_grants())
    }

    async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        timed!(self, "audit_log", self.inner.audit_log(before, limit))
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<Option<String>> {
        timed!(self, "shared_secret", self.inner.shared_secret(name, candidate))
    }
}

#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl WebhookStore for TimedMeta {
    async fn enqueue_events(&self, events: &[NewEvent], max_queued: u64) -> Result<u64> {
        timed!(self, "enqueue_events", self.inner.enqueue_events(events, max_queued))
    }

    async fn queued_events(&self, endpoint: &str, limit: u32) -> Result<Vec<QueuedEvent>> {
        timed!(self, "queued_events", self.inner.queued_events(endpoint, limit))
    }

    async fn events_delivered(&self, endpoint: &str, ids: &[i64], now_ms: i64) -> Result<()> {
        timed!(
            self,
            "events_delivered",
            self.inner.events_delivered(endpoint, ids, now_ms)
        )
    }

    async fn delivery_failed(&self, endpoint: &str, error: &str, now_ms: i64, next_attempt_ms: i64) -> Result<i64> {
        timed!(
            self,
            "delivery_failed",
            self.inner.delivery_failed(endpoint, error, now_ms, next_attempt_ms)
        )
    }

    async fn events_failed(&self, endpoint: &str, ids: &[i64]) -> Result<()> {
        timed!(self, "events_failed", self.inner.events_failed(endpoint, ids))
    }

    async fn webhook_endpoints(&self) -> Result<Vec<EndpointRecord>> {
        timed!(self, "webhook_endpoints", self.inner.webhook_endpoints())
    }

    async fn webhook_endpoint(&self, endpoint: &str) -> Result<EndpointRecord> {
        timed!(self, "webhook_endpoint", self.inner.webhook_endpoint(endpoint))
    }
}

#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl UiStore for TimedMeta {
    async fn list_repository_summaries(&self, q: &RepoListing<'_>) -> Result<Vec<RepoSummary>> {
        timed!(
            self,
            "list_repository_summaries",
            self.inner.list_repository_summaries(q)
        )
    }

    async fn recently_pushed(&self, limit: u32) -> Result<Vec<RepoSummary>> {
        timed!(self, "recently_pushed", self.inner.recently_pushed(limit))
    }

    async fn most_pulled(&self, limit: u32) -> Result<Vec<RepoSummary>> {
        timed!(self, "most_pulled", self.inner.most_pulled(limit))
    }

    async fn repository_summary(&self, repo: &str) -> Result<Option<RepoSummary>> {
        timed!(self, "repository_summary", self.inner.repository_summary(repo))
    }

    async fn tag_page(&self, repo: &str, after: Option<&TagCursor>, limit: u32) -> Result<(Vec<TagRow>, u64)> {
        timed!(self, "tag_page", self.inner.tag_page(repo, after, limit))
    }

    async fn registry_counts(&self) -> Result<RegistryCounts> {
        timed!(self, "registry_counts", self.inner.registry_counts())
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<()> {
        timed!(self, "create_session", self.inner.create_session(session))
    }

    async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<SessionRecord>> {
        timed!(self, "session", self.inner.session(id_hash, now_ms))
    }

    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<()> {
        timed!(self, "touch_session", self.inner.touch_session(id_hash, now_ms))
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        timed!(self, "delete_session", self.inner.delete_session(id_hash))
    }

    async fn delete_sessions_of(&self, subject: &str) -> Result<u64> {
        timed!(self, "delete_sessions_of", self.inner.delete_sessions_of(subject))
    }

    async fn sessions(&self, now_ms: i64) -> Result<Vec<SessionRecord>> {
        timed!(self, "sessions", self.inner.sessions(now_ms))
    }

    async fn purge_sessions(&self, now_ms: i64) -> Result<u64> {
        timed!(self, "purge_sessions", self.inner.purge_sessions(now_ms))
    }

    async fn star(&self, user: &str, repo: &str, now_ms: i64) -> Result<bool> {
        timed!(self, "star", self.inner.star(user, repo, now_ms))
    }

    async fn unstar(&self, user: &str, repo: &str) -> Result<bool> {
        timed!(self, "unstar", self.inner.unstar(user, repo))
    }

    async fn starred(&self, user: &str) -> Result<Vec<RepoSummary>> {
        timed!(self, "starred", self.inner.starred(user))
    }

    async fn stars_of(&self, user: Option<&str>, repo: &str) -> Result<(bool, u64)> {
        timed!(self, "stars_of", self.inner.stars_of(user, repo))
    }

    async fn daily_pulls(&self, repo: &str, since_day: i64) -> Result<Vec<DailyPulls>> {
        timed!(self, "daily_pulls", self.inner.daily_pulls(repo, since_day))
    }
}
