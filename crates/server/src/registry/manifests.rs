//! Manifests, tags, listings and referrers.

use berth_meta::{ManifestFacts, NewManifest, Referrer, StoredManifest};
use berth_oci::{
    headers, media_type, Algorithm, Digest, Manifest, Reference, RepoName, Resource, MAX_NAME_LEN, MAX_TAG_LEN,
};

use super::events::{Action, Target};
use super::{Registry, RegistryError, Result};
use crate::text;

/// How a manifest arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Pushed by a client.
    Pushed,
    /// Pulled through from an upstream registry.
    Mirrored,
    /// Imported from an archive or preloaded.
    Snapshot,
}

impl Provenance {
    /// The name recorded in the metadata store.
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::Pushed => "pushed",
            Provenance::Mirrored => "mirrored",
            Provenance::Snapshot => "snapshot",
        }
    }
}

impl std::str::FromStr for Provenance {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Provenance, String> {
        match s {
            "pushed" => Ok(Provenance::Pushed),
            "mirrored" => Ok(Provenance::Mirrored),
            "snapshot" => Ok(Provenance::Snapshot),
            other => Err(format!(
                "provenance {other:?}: expected \"pushed\", \"mirrored\" or \"snapshot\""
            )),
        }
    }
}

/// A manifest on its way into the store, with how it came.
struct IncomingManifest<'a> {
    content_type: Option<&'a str>,
    body: Vec<u8>,
    pushed_by: Option<&'a str>,
    provenance: Provenance,
    fetched_on_demand: bool,
}

/// The result of a manifest push.
#[derive(Debug)]
pub struct PushedManifest {
    pub digest: Digest,
    /// The manifest's subject, announced back with `OCI-Subject`.
    pub subject: Option<Digest>,
}

/// One page of a lexically ordered listing.
#[derive(Debug)]
pub struct ManifestPage {
    pub items: Vec<String>,
    /// Whether more items follow the last one.
    pub more: bool,
}

impl Registry {
    /// Validates and stores a manifest under `reference` (a tag or its digest),
    /// recording `pushed_by` (a token subject) when known.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Vec<u8>,
        pushed_by: Option<&str>,
    ) -> Result<PushedManifest> {
        self.store_manifest(repo, reference, content_type, body, pushed_by, Provenance::Pushed)
            .await
    }

    /// Validates and stores a manifest that arrived as `provenance` says
    /// (a push, an import): the same rules apply whatever its source.
    pub async fn store_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Vec<u8>,
        pushed_by: Option<&str>,
        provenance: Provenance,
    ) -> Result<PushedManifest> {
        let manifest = IncomingManifest {
            content_type,
            body,
            pushed_by,
            provenance,
            fetched_on_demand: false,
        };
        self.store(repo, reference, manifest).await
    }

    /// Stores a manifest fetched from `upstream` for a pull-through cache:
    /// validated like any other, but its blobs and children are fetched
    /// when a client asks for them, so they need not be present yet.
    pub async fn store_fetched_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Vec<u8>,
        upstream: &str,
        provenance: Provenance,
    ) -> Result<PushedManifest> {
        let manifest = IncomingManifest {
            content_type,
            body,
            pushed_by: Some(upstream),
            provenance,
            fetched_on_demand: true,
        };
        self.store(repo, reference, manifest).await
    }

    async fn store(
        &self,
        repo: &RepoName,
        reference: &Reference,
        incoming: IncomingManifest<'_>,
    ) -> Result<PushedManifest> {
        let IncomingManifest {
            content_type,
            body,
            pushed_by,
            provenance,
            fetched_on_demand,
        } = incoming;
        if body.len() > self.limits.manifest_max_bytes {
            return Err(RegistryError::ManifestTooLarge {
                limit: self.limits.manifest_max_bytes,
            });
        }
        let digest = match reference {
            Reference::Digest(wanted) => {
                let actual = Digest::of(wanted.algorithm(), &body);
                if &actual != wanted {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest digest is {actual}, not the {wanted} in the URL"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &body),
        };
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        if let Some(tag) = tag {
            self.limits
                .namespaces
                .check_push(repo.as_str(), tag)
                .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        }
        let manifest =
            Manifest::parse(&body, content_type).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let blobs = dedup(manifest.required_blobs().map(|d| d.digest.clone()));
        let blob_bytes = manifest
            .required_blobs()
            .filter(|d| blobs.binary_search(&d.digest).is_ok())
            .map(|d| (d.digest.clone(), u64::try_from(d.size).unwrap_or(0)))
            .collect::<std::collections::BTreeMap<_, _>>()
            .values()
            .sum();
        let platforms = self.platforms(repo, &manifest).await;
        let annotations_json = manifest
            .annotations
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default());
        let record = NewManifest {
            digest: digest.clone(),
            media_type: manifest.media_type.clone(),
            artifact_type: manifest.referrer_artifact_type(),
            subject: manifest.subject.as_ref().map(|s| s.digest.clone()),
            annotations_json,
            body,
            blobs,
            children: dedup(manifest.manifests.iter().map(|d| d.digest.clone())),
            pushed_by: pushed_by.map(str::to_string),
            provenance: provenance.as_str().into(),
            platforms,
            blob_bytes,
            fetched_on_demand,
        };
        self.meta
            .put_manifest(repo.as_str(), &record, tag, self.now_ms())
            .await?;
        // A copy fetched for a pull-through cache is no push of anyone's.
        if !fetched_on_demand {
            self.publish(
                Action::Push,
                Target {
                    repository: repo.to_string(),
                    digest: digest.clone(),
                    media_type: Some(record.media_type.clone()),
                    size: Some(record.body.len() as u64),
                    tag: tag.map(str::to_string),
                },
            );
            self.events.settle().await;
        }
        Ok(PushedManifest {
            digest,
            subject: record.subject,
        })
    }

    /// The manifest at `reference`, if the `Accept` header allows its type.
    /// A `pull` (a GET, not a HEAD) is counted for the manifest and the tag.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[String],
        pull: bool,
    ) -> Result<StoredManifest> {
        let found = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo.as_str(), t.as_str()).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo.as_str(), d).await?,
        };
        let Some(manifest) = found else {
            return Err(self.unknown_manifest_or_name(repo).await);
        };
        self.serve_manifest(repo, reference, manifest, accept, pull)
    }

    /// [`Registry::get_manifest`] for a manifest the caller has just read
    /// from `repo` at `reference` (the pull-through cache, which looks before
    /// it fills): checked against `accept` and counted as a pull.
    pub fn serve_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        manifest: StoredManifest,
        accept: &[String],
        pull: bool,
    ) -> Result<StoredManifest> {
        if !headers::accepts(accept, &manifest.media_type) {
            return Err(RegistryError::ManifestNotAcceptable {
                stored: manifest.media_type,
            });
        }
        if pull {
            let tag = match reference {
                Reference::Tag(t) => Some(t.as_str()),
                Reference::Digest(_) => None,
            };
            self.pulls.record(repo.as_str(), &manifest.digest, tag, self.now_ms());
            self.publish(
                Action::Pull,
                Target {
                    repository: repo.to_string(),
                    digest: manifest.digest.clone(),
                    media_type: Some(manifest.media_type.clone()),
                    size: Some(manifest.body.len() as u64),
                    tag: tag.map(str::to_string),
                },
            );
        }
        Ok(manifest)
    }

    /// The manifest at `reference`, if stored, without counting a pull.
    pub async fn find_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>> {
        Ok(match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo.as_str(), t.as_str()).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo.as_str(), d).await?,
        })
    }

    /// How a manifest of `repo` arrived and how it has been used, when the
    /// repository holds it.
    pub async fn manifest_facts(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestFacts>> {
        Ok(self.meta.manifest_facts(repo.as_str(), digest).await?)
    }

    /// Deletes a manifest and its tags (by digest) or only a tag (by tag).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let (deleted, target) = match reference {
            Reference::Tag(t) => {
                // The event names the manifest the tag pointed at.
                let pointed = self.meta.manifest_by_tag(repo.as_str(), t.as_str()).await?;
                let deleted = self.meta.delete_tag(repo.as_str(), t.as_str(), self.now_ms()).await?;
                let target = pointed.map(|m| Target {
                    repository: repo.to_string(),
                    digest: m.digest,
                    media_type: Some(m.media_type),
                    size: Some(m.body.len() as u64),
                    tag: Some(t.as_str().to_string()),
                });
                (deleted, target)
            }
            Reference::Digest(d) => {
                let deleted = self.meta.delete_manifest(repo.as_str(), d, self.now_ms()).await?;
                let target = Target {
                    repository: repo.to_string(),
                    digest: d.clone(),
                    media_type: None,
                    size: None,
                    tag: None,
                };
                (deleted, Some(target))
            }
        };
        if deleted {
            if let Some(target) = target {
                self.publish(Action::Delete, target);
                self.events.settle().await;
            }
            Ok(())
        } else {
            Err(self.unknown_manifest_or_name(repo).await)
        }
    }

    /// The platforms an image or index is for, as `os/architecture[/variant]`:
    /// from an index's descriptors, or from an image's config blob. Unknown
    /// (not an error) when the config is not an image config or is unreadable,
    /// and for a platform that is not printable text (the manifest is still
    /// stored as pushed; only this fact about it is not recorded).
    async fn platforms(&self, repo: &RepoName, manifest: &Manifest) -> Vec<String> {
        fn describe(p: &serde_json::Value) -> Option<String> {
            let os = p.get("os")?.as_str()?;
            let arch = p.get("architecture")?.as_str()?;
            let platform = match p.get("variant").and_then(|v| v.as_str()) {
                Some(variant) => format!("{os}/{arch}/{variant}"),
                None => format!("{os}/{arch}"),
            };
            text::name(&platform).is_ok().then_some(platform)
        }
        if !manifest.manifests.is_empty() {
            let mut all: Vec<String> = manifest
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().and_then(describe))
                .collect();
            all.dedup();
            return all;
        }
        const CONFIG_MAX: i64 = 1 << 20;
        let Some(config) = manifest.config.as_ref().filter(|c| {
            (c.media_type == media_type::OCI_IMAGE_CONFIG || c.media_type == media_type::DOCKER_IMAGE_CONFIG)
                && c.size <= CONFIG_MAX
        }) else {
            return Vec::new();
        };
        let Ok(content) = self.open_blob(repo, &config.digest, None).await else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        let mut body = content.body;
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as i64 > CONFIG_MAX {
                return Vec::new();
            }
        }
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .as_ref()
            .and_then(describe)
            .into_iter()
            .collect()
    }

    /// What a request for a `resource` of `repo` that is not there is
    /// answered with (the same whether the name of it fits a grammar or not).
    pub async fn absent(&self, repo: &RepoName, resource: Resource) -> RegistryError {
        match resource {
            Resource::Manifest => self.unknown_manifest_or_name(repo).await,
            Resource::Blob => RegistryError::BlobUnknown,
            Resource::Upload => RegistryError::UploadUnknown,
        }
    }

    async fn unknown_manifest_or_name(&self, repo: &RepoName) -> RegistryError {
        match self.meta.repository_exists(repo.as_str()).await {
            Ok(true) => RegistryError::ManifestUnknown,
            Ok(false) => RegistryError::NameUnknown,
            Err(e) => e.into(),
        }
    }

    /// Tags of `repo` after `last` (any text), at most `limit` of them.
    pub async fn list_tags(&self, repo: &RepoName, last: Option<&str>, limit: u32) -> Result<ManifestPage> {
        if !self.meta.repository_exists(repo.as_str()).await? {
            return Err(RegistryError::NameUnknown);
        }
        let last = last.map(|l| start_after(l, MAX_TAG_LEN));
        let items = self
            .meta
            .list_tags(repo.as_str(), last, limit.saturating_add(1))
            .await?;
        Ok(page(items, limit))
    }

    /// Deletes every tag of `repo` and the manifest each names, by digest as
    /// a `DELETE` by digest does (events included). What is left untagged
    /// (index children, referrers) goes with the next garbage collection.
    /// Returns how many manifests were deleted.
    pub async fn delete_repository(&self, repo: &RepoName) -> Result<usize> {
        let mut digests: Vec<Digest> = Vec::new();
        for tag in self.all_tags(repo).await? {
            if let Some(m) = self.meta.manifest_by_tag(repo.as_str(), &tag).await? {
                if !digests.contains(&m.digest) {
                    digests.push(m.digest);
                }
            }
        }
        let mut deleted = 0;
        for digest in digests {
            match self.delete_manifest(repo, &Reference::Digest(digest)).await {
                Ok(()) => deleted += 1,
                // Deleted meanwhile by another request.
                Err(RegistryError::ManifestUnknown) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Every tag of `repo`, in lexical order.
    pub async fn all_tags(&self, repo: &RepoName) -> Result<Vec<String>> {
        let mut all = Vec::new();
        loop {
            let page = self.list_tags(repo, all.last().map(String::as_str), 1000).await?;
            all.extend(page.items);
            if !page.more {
                return Ok(all);
            }
        }
    }

    /// Repository names after `last` (any text), at most `limit` of them.
    pub async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<ManifestPage> {
        let last = last.map(|l| start_after(l, MAX_NAME_LEN));
        let items = self.meta.list_repositories(last, limit.saturating_add(1)).await?;
        Ok(page(items, limit))
    }

    /// Like [`Registry::list_repositories`], counting only names `keep` accepts.
    pub async fn list_repositories_where(
        &self,
        last: Option<&str>,
        limit: u32,
        keep: impl Fn(&str) -> bool,
    ) -> Result<ManifestPage> {
        const BATCH: u32 = 1000;
        let mut kept = Vec::new();
        let mut cursor = last.map(|l| start_after(l, MAX_NAME_LEN).to_string());
        loop {
            let batch = self.meta.list_repositories(cursor.as_deref(), BATCH).await?;
            let exhausted = batch.len() < BATCH as usize;
            cursor = batch.last().cloned();
            kept.extend(batch.into_iter().filter(|name| keep(name)));
            if kept.len() > limit as usize || exhausted {
                return Ok(page(kept, limit));
            }
        }
    }

    /// One page of the manifests of `repo` whose subject is `subject`: those
    /// after `after` in digest order, at most `limit` of them and, past the
    /// first, no more than [`REFERRERS_PAGE_BYTES`] of descriptors.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<ReferrerPage> {
        // distribution-spec: a registry that supports referrers MUST NOT answer 404,
        // or clients fall back to the tag schema; an unknown repository has none.
        // Nor has a filter that no manifest can name (pushes refuse such media types).
        if artifact_type.is_some_and(|t| !media_type::is_plausible(t)) {
            return Ok(ReferrerPage {
                referrers: Vec::new(),
                next: None,
            });
        }
        let found = self
            .meta
            .referrers(repo.as_str(), subject, artifact_type, after, limit.saturating_add(1))
            .await?;
        Ok(ReferrerPage::of(found, limit))
    }
}

/// About the most bytes of descriptors one page of referrers holds: a page
/// stops before the descriptor that would pass it (a single larger one is
/// still served alone). Annotations make descriptors of any size, so a count
/// alone does not bound an answer; 1 MiB stays far below the 4 MiB that ORAS
/// clients accept for one page.
pub const REFERRERS_PAGE_BYTES: usize = 1 << 20;

/// One page of a subject's referrers.
#[derive(Debug)]
pub struct ReferrerPage {
    pub referrers: Vec<Referrer>,
    /// Where the next page starts (this page's last digest), when more follow.
    pub next: Option<Digest>,
}

impl ReferrerPage {
    /// The page of `found` (up to `limit + 1` referrers in digest order) that
    /// fits `limit` and [`REFERRERS_PAGE_BYTES`].
    fn of(mut found: Vec<Referrer>, limit: u32) -> ReferrerPage {
        let mut more = found.len() > limit as usize;
        found.truncate(limit as usize);
        let mut bytes = 0;
        let fitting = found
            .iter()
            .take_while(|r| {
                bytes += descriptor_bytes(r);
                bytes <= REFERRERS_PAGE_BYTES
            })
            .count()
            .max(1);
        if fitting < found.len() {
            found.truncate(fitting);
            more = true;
        }
        let next = if more {
            found.last().map(|r| r.digest.clone())
        } else {
            None
        };
        ReferrerPage { referrers: found, next }
    }
}

/// About the length of a referrer's descriptor in the JSON index: its
/// strings plus the keys, quotes and the size.
fn descriptor_bytes(r: &Referrer) -> usize {
    const FRAME: usize = 96;
    FRAME
        + r.media_type.len()
        + r.digest.hex().len()
        + r.artifact_type.as_ref().map_or(0, String::len)
        + r.annotations_json.as_ref().map_or(0, String::len)
}

/// Where a listing starts: the shortest prefix of `last` that every item of
/// at most `longest` bytes and without a NUL compares with as with `last`.
///
/// distribution-spec: a listing (of tags, of repositories) holds the items
/// after `last` in lexical order, whatever text `last` is; Berth's order is
/// byte order on both backends. PostgreSQL text cannot hold a NUL, so `last`
/// is cut at its first NUL: an item (which has none) sorts after `p\0…`
/// exactly when it sorts after `p`, as an item starting with `p` and longer
/// is greater than both, and `p` itself is smaller than both. It is also cut
/// to `longest + 1` bytes (at a character boundary), which changes no
/// comparison with an item of at most `longest` bytes: the first byte where
/// they differ, or the item's end, comes before the cut. So SQLite and
/// PostgreSQL answer the same, and the store gets a short key.
fn start_after(last: &str, longest: usize) -> &str {
    let last = last.split('\0').next().unwrap_or_default();
    match last.char_indices().map(|(i, _)| i).find(|&i| i > longest) {
        Some(cut) => &last[..cut],
        None => last,
    }
}

fn page(mut items: Vec<String>, limit: u32) -> ManifestPage {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    ManifestPage { items, more }
}

fn dedup(digests: impl Iterator<Item = Digest>) -> Vec<Digest> {
    let mut v: Vec<Digest> = digests.collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn referrer(i: u32, annotations: usize) -> Referrer {
        Referrer {
            digest: Digest::sha256_of(&i.to_be_bytes()),
            media_type: media_type::OCI_MANIFEST.into(),
            size: 100,
            artifact_type: Some("application/example".into()),
            annotations_json: Some(format!(r#"{{"a":"{}"}}"#, "x".repeat(annotations))),
        }
    }

    fn digests(page: &ReferrerPage) -> Vec<Digest> {
        page.referrers.iter().map(|r| r.digest.clone()).collect()
    }

    #[test]
    fn a_referrer_page_ends_at_its_limit() {
        let found: Vec<Referrer> = (0..4).map(|i| referrer(i, 10)).collect();
        let page = ReferrerPage::of(found.clone(), 3);
        assert_eq!(page.referrers, found[..3]);
        assert_eq!(page.next.as_ref(), Some(&found[2].digest));
        let page = ReferrerPage::of(found[..3].to_vec(), 3);
        assert_eq!(page.referrers.len(), 3);
        assert_eq!(page.next, None, "nothing after the last");
        assert!(ReferrerPage::of(Vec::new(), 3).next.is_none());
    }

    #[test]
    fn a_referrer_page_ends_before_its_byte_budget() {
        // Four descriptors of about 300 KiB: three fit in 1 MiB.
        let found: Vec<Referrer> = (0..5).map(|i| referrer(i, 300 << 10)).collect();
        let page = ReferrerPage::of(found.clone(), 1000);
        assert_eq!(
            digests(&page),
            found[..3].iter().map(|r| r.digest.clone()).collect::<Vec<_>>()
        );
        assert_eq!(page.next.as_ref(), Some(&found[2].digest));
        // One descriptor larger than the budget is still served, alone.
        let huge: Vec<Referrer> = (0..2).map(|i| referrer(i, REFERRERS_PAGE_BYTES)).collect();
        let page = ReferrerPage::of(huge.clone(), 1000);
        assert_eq!(page.referrers, huge[..1]);
        assert_eq!(page.next.as_ref(), Some(&huge[0].digest));
    }

    proptest! {
        /// An item (no NUL, at most `longest` bytes) follows the start of a
        /// listing exactly when it follows `last` in byte order.
        #[test]
        fn a_listing_starts_where_last_puts_it(
            items in proptest::collection::vec("[a-c_.-]{0,6}", 1..20),
            last in "(\\PC|\u{0}|[a-c_.-]){0,12}",
        ) {
            let start = start_after(&last, 6);
            prop_assert!(!start.contains('\0') && start.len() <= 7 + 3);
            for item in &items {
                prop_assert_eq!(item.as_bytes() > last.as_bytes(), item.as_bytes() > start.as_bytes(), "{:?}", item);
            }
        }
    }

    #[test]
    fn a_listing_start_is_cut_at_a_nul_and_after_the_longest_item() {
        assert_eq!(start_after("v1\0zzz", 128), "v1");
        assert_eq!(start_after("\0\u{fffd}", 128), "");
        assert_eq!(start_after("' OR 1=1 --", 128), "' OR 1=1 --");
        assert_eq!(start_after(&"a".repeat(1000), 128), "a".repeat(129));
        // Cut at a character boundary: 'é' is two bytes.
        assert_eq!(start_after("aé", 1), "aé");
        assert_eq!(start_after("aéb", 1), "aé");
    }
}
