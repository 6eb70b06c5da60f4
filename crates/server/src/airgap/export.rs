//! `berth export`: the content of the chosen repositories, written as an
//! archive (see [`super::layout`]).
//!
//! What goes: every tag of a chosen repository, the children of each index
//! (reached through the index), and every referrer (signature, SBOM,
//! attestation: a manifest whose subject goes), recursively, as untagged
//! images of `index.json`. Untagged manifests that nothing exported
//! references stay behind, as garbage collection would remove them.
//!
//! The manifests are read first, in one pass over the repositories, and kept
//! in memory; then the archive is written: its `index.json`, every manifest
//! (a parent before its children), and every config and layer once, however
//! many repositories share it, streamed from the blob store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::time::Instant;

use berth_meta::StoredManifest;
use berth_oci::{Digest, Manifest, Reference, RepoName, Tag};
use bytes::Bytes;
use futures::StreamExt;

use super::layout::{self, Root};
use super::tar_io::TarWriter;
use super::{image, AirgapError, ArchivePath, ExportSummary, Result};
use crate::pattern::Pattern;
use crate::progress::{Phase, Unit};
use crate::registry::{Provenance, Registry, RegistryError};

/// Names listed from the registry at a time.
const PAGE: u32 = 1000;

/// Which repositories an export takes.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    /// Those matching any of these patterns.
    Matching(Vec<Pattern>),
}

impl Selection {
    fn takes(&self, repo: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Matching(patterns) => patterns.iter().any(|p| p.matches(repo)),
        }
    }
}

/// A config or layer to write, and a repository it can be read through.
struct BlobToWrite {
    digest: Digest,
    repo: RepoName,
    /// What the manifest that names it says its size is (for the progress
    /// bar; the entry's size is the stored blob's).
    size_hint: u64,
}

/// Everything an export writes, read from the registry before writing.
#[derive(Default)]
struct Plan {
    roots: Vec<Root>,
    /// Manifests in the order they are written: each after one that names it.
    manifest_order: Vec<Digest>,
    manifests: HashMap<Digest, StoredManifest>,
    blobs: Vec<BlobToWrite>,
    blobs_seen: HashSet<Digest>,
    repositories: u64,
    tags: u64,
}

impl Plan {
    /// Keeps a manifest's bytes for writing (once, whatever the repository).
    fn keep_manifest(&mut self, manifest: StoredManifest) {
        if !self.manifests.contains_key(&manifest.digest) {
            self.manifest_order.push(manifest.digest.clone());
            self.manifests.insert(manifest.digest.clone(), manifest);
        }
    }
}

/// Writes the content of the repositories `selection` takes to `out`.
pub async fn export(registry: &Registry, selection: &Selection, out: &ArchivePath) -> Result<ExportSummary> {
    let started = Instant::now();
    let plan = read_plan(registry, selection).await?;
    let mut writer = TarWriter::create(out)?;
    let summary = write_archive(registry, &plan, &mut writer).await;
    match summary {
        Ok(mut summary) => {
            writer.finish().await?;
            summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            Ok(summary)
        }
        Err(e) => {
            writer.abandon().await;
            Err(e)
        }
    }
}

/// Reads what the export takes: each chosen repository's tags, manifests and
/// the blobs they name.
async fn read_plan(registry: &Registry, selection: &Selection) -> Result<Plan> {
    let mut plan = Plan::default();
    let phase = Phase::start("export", "reading", None, Unit::Items("repositories"));
    let mut last: Option<String> = None;
    loop {
        let page = registry
            .list_repositories_where(last.as_deref(), PAGE, |name| selection.takes(name))
            .await
            .map_err(AirgapError::registry("listing the repositories"))?;
        last = page.items.last().cloned();
        for name in &page.items {
            let repo = RepoName::from_str(name).map_err(|e| {
                AirgapError::Inconsistent(format!("the registry holds a repository named {name:?}: {e}"))
            })?;
            read_repository(registry, &repo, &mut plan).await?;
            phase.bar.inc(1);
        }
        if !page.more {
            break;
        }
    }
    phase.finish(format!(
        "{} repositories, {} tags, {} manifests, {} blobs",
        plan.repositories,
        plan.tags,
        plan.manifests.len(),
        plan.blobs.len()
    ));
    Ok(plan)
}

/// The manifest at `reference` of `repo`, or `None` when it is gone (deleted
/// since it was listed). Not a pull.
async fn manifest(registry: &Registry, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>> {
    match registry.get_manifest(repo, reference, &[], false).await {
        Ok(m) => Ok(Some(m)),
        Err(RegistryError::ManifestUnknown | RegistryError::NameUnknown) => Ok(None),
        Err(error) => Err(AirgapError::Registry {
            what: image(repo, reference),
            error,
        }),
    }
}

/// Adds one repository to the plan: its tags, then everything they reach.
async fn read_repository(registry: &Registry, repo: &RepoName, plan: &mut Plan) -> Result<()> {
    let mut queue: VecDeque<Digest> = VecDeque::new();
    // Manifests of this repository queued so far, and those tagged.
    let mut queued: HashSet<Digest> = HashSet::new();
    let mut tagged: HashSet<Digest> = HashSet::new();
    let mut roots: Vec<Root> = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let page = match registry.list_tags(repo, last.as_deref(), PAGE).await {
            Ok(page) => page,
            // Deleted since it was listed.
            Err(RegistryError::NameUnknown) => return Ok(()),
            Err(e) => return Err(AirgapError::registry(format!("listing the tags of {repo}"))(e)),
        };
        last = page.items.last().cloned();
        for name in &page.items {
            let tag = Tag::from_str(name)
                .map_err(|e| AirgapError::Inconsistent(format!("{repo} has a tag named {name:?}: {e}")))?;
            let Some(m) = manifest(registry, repo, &Reference::Tag(tag.clone())).await? else {
                continue;
            };
            roots.push(root(registry, repo, Some(tag), &m).await?);
            tagged.insert(m.digest.clone());
            if queued.insert(m.digest.clone()) {
                queue.push_back(m.digest.clone());
            }
            plan.keep_manifest(m);
        }
        if !page.more {
            break;
        }
    }
    plan.tags += roots.len() as u64;
    while let Some(digest) = queue.pop_front() {
        let Some(stored) = plan.manifests.get(&digest) else {
            continue;
        };
        let what = format!("{repo}@{digest}");
        let parsed = Manifest::parse(&stored.body, Some(&stored.media_type)).map_err(|e| {
            AirgapError::Inconsistent(format!(
                "{what} as stored does not parse ({e}); berth fsck may tell why"
            ))
        })?;
        for child in &parsed.manifests {
            if !queued.insert(child.digest.clone()) {
                continue;
            }
            let Some(m) = manifest(registry, repo, &Reference::Digest(child.digest.clone())).await? else {
                return Err(AirgapError::Inconsistent(format!(
                    "{what} lists {}, which {repo} does not hold",
                    child.digest
                )));
            };
            queue.push_back(m.digest.clone());
            plan.keep_manifest(m);
        }
        for blob in parsed.required_blobs() {
            if plan.blobs_seen.insert(blob.digest.clone()) {
                plan.blobs.push(BlobToWrite {
                    digest: blob.digest.clone(),
                    repo: repo.clone(),
                    size_hint: u64::try_from(blob.size).unwrap_or(0),
                });
            }
        }
        let mut after: Option<Digest> = None;
        loop {
            let page = registry
                .referrers(repo, &digest, None, after.as_ref(), PAGE)
                .await
                .map_err(AirgapError::registry(format!("the referrers of {what}")))?;
            for referrer in page.referrers {
                if !queued.insert(referrer.digest.clone()) {
                    continue;
                }
                let Some(m) = manifest(registry, repo, &Reference::Digest(referrer.digest.clone())).await? else {
                    continue;
                };
                if !tagged.contains(&m.digest) {
                    roots.push(root(registry, repo, None, &m).await?);
                }
                queue.push_back(m.digest.clone());
                plan.keep_manifest(m);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    if !roots.is_empty() {
        plan.repositories += 1;
    }
    plan.roots.extend(roots);
    Ok(())
}

/// The image of `index.json` for a manifest of `repo`.
async fn root(registry: &Registry, repo: &RepoName, tag: Option<Tag>, m: &StoredManifest) -> Result<Root> {
    let facts = registry
        .manifest_facts(repo, &m.digest)
        .await
        .map_err(AirgapError::registry(format!("{repo}@{}", m.digest)))?;
    Ok(Root {
        repository: repo.clone(),
        tag,
        digest: m.digest.clone(),
        media_type: m.media_type.clone(),
        size: m.body.len() as u64,
        // What came from an upstream records it as who put it there.
        upstream: facts
            .as_ref()
            .filter(|f| f.provenance != Provenance::Pushed.as_str())
            .and_then(|f| f.pushed_by.clone()),
        provenance: facts.and_then(|f| Provenance::from_str(&f.provenance).ok()),
    })
}

/// Writes the planned archive.
async fn write_archive(registry: &Registry, plan: &Plan, writer: &mut TarWriter) -> Result<ExportSummary> {
    let manifest_bytes: u64 = plan.manifests.values().map(|m| m.body.len() as u64).sum();
    let blob_bytes: u64 = plan.blobs.iter().map(|b| b.size_hint).sum();
    let phase = Phase::start("export", "writing", Some(manifest_bytes + blob_bytes), Unit::Bytes);
    let mut summary = ExportSummary {
        repositories: plan.repositories,
        tags: plan.tags,
        ..ExportSummary::default()
    };
    writer
        .file(layout::LAYOUT_FILE.into(), Bytes::from(layout::layout_file()))
        .await?;
    writer
        .file(layout::INDEX_FILE.into(), Bytes::from(layout::index_file(&plan.roots)))
        .await?;
    for digest in &plan.manifest_order {
        let Some(m) = plan.manifests.get(digest) else {
            continue;
        };
        writer
            .file(layout::blob_path(digest), Bytes::from(m.body.clone()))
            .await?;
        summary.manifests += 1;
        summary.bytes += m.body.len() as u64;
        phase.bar.inc(m.body.len() as u64);
    }
    for blob in &plan.blobs {
        // A manifest's bytes named as a blob too: written once, as a manifest.
        if plan.manifests.contains_key(&blob.digest) {
            continue;
        }
        let written = write_blob(registry, blob, writer, &phase).await?;
        summary.blobs += 1;
        summary.bytes += written;
    }
    phase.finish(format!("{} bytes written", summary.bytes));
    Ok(summary)
}

/// Streams one blob from the registry into the archive; returns its size.
async fn write_blob(registry: &Registry, blob: &BlobToWrite, writer: &mut TarWriter, phase: &Phase) -> Result<u64> {
    let what = format!("blob {} of {}", blob.digest, blob.repo);
    let content = registry
        .open_blob(&blob.repo, &blob.digest, None)
        .await
        .map_err(AirgapError::registry(&what))?;
    let size = content.size;
    writer.begin(layout::blob_path(&blob.digest), size).await?;
    let mut body = content.body;
    let mut seen = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| AirgapError::Inconsistent(format!("reading {what}: {e}")))?;
        seen += chunk.len() as u64;
        if seen > size {
            return Err(AirgapError::Inconsistent(format!(
                "{what} holds more than the {size} bytes recorded; berth fsck --verify tells more"
            )));
        }
        phase.bar.inc(chunk.len() as u64);
        writer.chunk(chunk).await?;
    }
    if seen != size {
        return Err(AirgapError::Inconsistent(format!(
            "{what} holds {seen} bytes, not the {size} recorded; berth fsck --verify tells more"
        )));
    }
    // The bar's length counted what the manifest said; it shows what was written.
    if size != blob.size_hint {
        let len = phase.bar.length().unwrap_or(0);
        phase.bar.set_length((len + size).saturating_sub(blob.size_hint));
    }
    Ok(size)
}
