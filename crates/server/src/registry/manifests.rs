//! Manifests, tags, listings and referrers.

use berth_meta::{NewManifest, Referrer, StoredManifest};
use berth_oci::{headers, media_type, Algorithm, Digest, Manifest, Reference, RepoName, Resource};

use super::{Registry, RegistryError, Result};

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
            provenance: "pushed".into(),
            platforms,
            blob_bytes,
        };
        self.meta
            .put_manifest(repo.as_str(), &record, tag, self.now_ms())
            .await?;
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
        }
        Ok(manifest)
    }

    /// Deletes a manifest and its tags (by digest) or only a tag (by tag).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let deleted = match reference {
            Reference::Tag(t) => self.meta.delete_tag(repo.as_str(), t.as_str(), self.now_ms()).await?,
            Reference::Digest(d) => self.meta.delete_manifest(repo.as_str(), d, self.now_ms()).await?,
        };
        if deleted {
            Ok(())
        } else {
            Err(self.unknown_manifest_or_name(repo).await)
        }
    }

    /// The platforms an image or index is for, as `os/architecture[/variant]`:
    /// from an index's descriptors, or from an image's config blob. Unknown
    /// (not an error) when the config is not an image config or is unreadable.
    async fn platforms(&self, repo: &RepoName, manifest: &Manifest) -> Vec<String> {
        fn describe(p: &serde_json::Value) -> Option<String> {
            let os = p.get("os")?.as_str()?;
            let arch = p.get("architecture")?.as_str()?;
            Some(match p.get("variant").and_then(|v| v.as_str()) {
                Some(variant) => format!("{os}/{arch}/{variant}"),
                None => format!("{os}/{arch}"),
            })
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

    /// Tags of `repo` after `last`, at most `limit` of them.
    pub async fn list_tags(&self, repo: &RepoName, last: Option<&str>, limit: u32) -> Result<ManifestPage> {
        if !self.meta.repository_exists(repo.as_str()).await? {
            return Err(RegistryError::NameUnknown);
        }
        let items = self
            .meta
            .list_tags(repo.as_str(), last, limit.saturating_add(1))
            .await?;
        Ok(page(items, limit))
    }

    /// Repository names after `last`, at most `limit` of them.
    pub async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<ManifestPage> {
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
        let mut cursor = last.map(str::to_string);
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

    /// Manifests of `repo` whose subject is `subject`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        // distribution-spec: a registry that supports referrers MUST NOT answer 404,
        // or clients fall back to the tag schema; an unknown repository has none.
        Ok(self.meta.referrers(repo.as_str(), subject, artifact_type).await?)
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
