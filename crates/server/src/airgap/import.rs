//! `berth import`: an archive of `berth export` read in one pass and stored
//! through the registry core, as images of provenance `snapshot`.
//!
//! 1. `oci-layout` and `index.json` come first; `index.json` announces the
//!    images and so the first manifests.
//! 2. Manifests follow, each kept in memory once its digest is checked; an
//!    index announces its children. The first entry that is no announced
//!    manifest is a config or layer: from then on every blob's repositories
//!    are known.
//! 3. Each config and layer streams into the registry, which verifies its
//!    digest on the way and stores nothing that does not match. A blob the
//!    registry holds already is not written again: its bytes in the archive
//!    are only hashed, then it is linked where it is needed.
//! 4. Once the archive has ended and every blob it needs has arrived, the
//!    manifests are stored, children (and subjects) first, then the tags.
//!    Until then no manifest or tag of the archive is visible, so a damaged
//!    or truncated archive leaves at most blobs that no manifest names, which
//!    garbage collection removes after its grace period.
//!
//! Importing the same archive again changes nothing: blobs held and linked
//! are left alone, manifests held and tags already naming their manifest
//! are not stored again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use berth_oci::{Algorithm, Digest, DigestHasher, Manifest, ManifestError, Reference, RepoName, Tag};
use berth_storage::ByteStream;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::layout::{self, EntryName, Root};
use super::tar_io::{Entry, Source, TarReader};
use super::{image, AirgapError, ArchivePath, ImportSummary, Result};
use crate::progress::{Phase, Unit};
use crate::registry::{Provenance, Registry, RegistryError};

/// The most bytes of `oci-layout` read.
const LAYOUT_MAX: u64 = 4 << 10;
/// The most bytes of `index.json` read: some 500,000 images.
const INDEX_MAX: u64 = 256 << 20;

/// A manifest of the archive, checked against its digest and parsed.
struct Archived {
    /// The Content-Type it is stored with: its descriptor's media type, or
    /// none when its own `mediaType` says otherwise (which then decides).
    content_type: Option<String>,
    body: Vec<u8>,
    parsed: Manifest,
}

/// A config or layer the archive's manifests need.
struct Needed {
    repos: BTreeSet<RepoName>,
    /// An image that needs it, for messages.
    needed_by: String,
    arrived: bool,
}

/// Where an import stands as the archive is read.
struct Importer<'r> {
    registry: &'r Registry,
    phase: Phase,
    layout_seen: bool,
    roots: Option<Vec<Root>>,
    /// Manifests announced so far (by `index.json`, then by the indexes
    /// read), with the media type their descriptor gives.
    announced: HashMap<Digest, String>,
    manifests: HashMap<Digest, Archived>,
    /// Known from the first config or layer on: what each blob is needed for.
    needed: Option<HashMap<Digest, Needed>>,
    /// Each repository's manifests in the order they are stored.
    order: Vec<(RepoName, Vec<Digest>)>,
    summary: ImportSummary,
}

/// Reads the archive at `input` and stores what it holds.
pub async fn import(registry: &Registry, input: &ArchivePath) -> Result<ImportSummary> {
    let started = Instant::now();
    let source = Source::open(input)?;
    let phase = Phase::start("import", "reading", source.len, Unit::Bytes);
    let mut reader = TarReader::start(source, phase.bar.clone());
    let mut importer = Importer {
        registry,
        phase,
        layout_seen: false,
        roots: None,
        announced: HashMap::new(),
        manifests: HashMap::new(),
        needed: None,
        order: Vec::new(),
        summary: ImportSummary::default(),
    };
    let read = importer.read(&mut reader).await;
    importer.summary.bytes = importer.phase.bar.position();
    if read.is_ok() {
        reader.close().await;
    }
    read?;
    importer.finish_blobs().await?;
    let Importer { phase, mut summary, .. } = importer.store_manifests().await?;
    phase.finish(format!("{} bytes of the archive read", summary.bytes));
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

impl<'r> Importer<'r> {
    /// Reads every entry of the archive.
    async fn read(&mut self, reader: &mut TarReader) -> Result<()> {
        while let Some(entry) = reader.next().await {
            let entry = entry.map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => AirgapError::Incomplete(e.to_string()),
                _ => AirgapError::Read(e.to_string()),
            })?;
            match entry {
                Entry::Special { path, kind } => {
                    return Err(AirgapError::Format(format!(
                        "{path} is an entry of type {kind}; an export holds only files"
                    )))
                }
                Entry::File { path, size, data } => self.entry(path, size, data).await?,
            }
        }
        Ok(())
    }

    async fn entry(&mut self, path: String, size: u64, data: mpsc::Receiver<io::Result<Bytes>>) -> Result<()> {
        match EntryName::of(&path).map_err(AirgapError::Format)? {
            EntryName::Layout => {
                let bytes = read_whole(data, size, LAYOUT_MAX, &path).await?;
                layout::check_layout_file(&bytes).map_err(AirgapError::Format)?;
                self.layout_seen = true;
            }
            EntryName::Index => {
                if self.roots.is_some() {
                    return Err(AirgapError::Format(format!("it holds two {path}")));
                }
                let bytes = read_whole(data, size, INDEX_MAX, &path).await?;
                let roots = layout::parse_index_file(&bytes).map_err(AirgapError::Format)?;
                for root in &roots {
                    self.announced
                        .entry(root.digest.clone())
                        .or_insert_with(|| root.media_type.clone());
                }
                self.summary.repositories = roots.iter().map(|r| &r.repository).collect::<HashSet<_>>().len() as u64;
                self.roots = Some(roots);
            }
            EntryName::Blob(digest) => self.blob(path, digest, size, data).await?,
            // Not part of a layout: passed over.
            EntryName::Other => self
                .phase
                .note(&format!("passing over {path}, which is not part of an image layout")),
        }
        Ok(())
    }

    async fn blob(
        &mut self,
        path: String,
        digest: Digest,
        size: u64,
        data: mpsc::Receiver<io::Result<Bytes>>,
    ) -> Result<()> {
        if !self.layout_seen || self.roots.is_none() {
            let missing = if self.layout_seen {
                layout::INDEX_FILE
            } else {
                layout::LAYOUT_FILE
            };
            return Err(AirgapError::Format(format!(
                "{path} comes before {missing}; berth import reads an archive in one pass and needs oci-layout and \
                 index.json first, as berth export writes them"
            )));
        }
        if self.needed.is_none() {
            if self.manifests.contains_key(&digest) {
                // The same manifest again.
                return Ok(());
            }
            if let Some(media_type) = self.announced.get(&digest).cloned() {
                return self.read_manifest(path, digest, &media_type, size, data).await;
            }
            self.plan()?;
        }
        self.store_blob(path, digest, size, data).await
    }

    async fn read_manifest(
        &mut self,
        path: String,
        digest: Digest,
        media_type: &str,
        size: u64,
        data: mpsc::Receiver<io::Result<Bytes>>,
    ) -> Result<()> {
        let limit = self.registry.manifest_limit();
        if size > limit as u64 {
            return Err(AirgapError::Registry {
                what: format!("the manifest {path} ({size} bytes)"),
                error: RegistryError::ManifestTooLarge { limit },
            });
        }
        let body = read_whole(data, size, size, &path).await?;
        let actual = Digest::of(digest.algorithm(), &body);
        if actual != digest {
            return Err(AirgapError::Damaged {
                entry: path,
                problem: format!("its bytes have the digest {actual}"),
            });
        }
        let (parsed, content_type) = match Manifest::parse(&body, Some(media_type)) {
            Ok(parsed) => (parsed, Some(media_type.to_string())),
            // Its own mediaType decides, as it did when it was pushed.
            Err(ManifestError::MediaTypeMismatch { .. }) => (parse(&body, None, &path)?, None),
            Err(e) => return Err(damaged_manifest(&path, e)),
        };
        for child in &parsed.manifests {
            self.announced
                .entry(child.digest.clone())
                .or_insert_with(|| child.media_type.clone());
        }
        self.manifests.insert(
            digest,
            Archived {
                content_type,
                body,
                parsed,
            },
        );
        Ok(())
    }

    /// Ends the manifests: checks that every image is whole, decides the
    /// order manifests are stored in and which repositories need each blob.
    fn plan(&mut self) -> Result<()> {
        let Some(roots) = &self.roots else {
            return Err(AirgapError::Format(format!("it holds no {}", layout::INDEX_FILE)));
        };
        let mut by_repo: BTreeMap<&RepoName, Vec<&Root>> = BTreeMap::new();
        for root in roots {
            if !self.manifests.contains_key(&root.digest) {
                return Err(AirgapError::Incomplete(format!(
                    "{} names {} as {}, but no such manifest comes before the first layer",
                    layout::INDEX_FILE,
                    root.digest,
                    root.name()
                )));
            }
            if root.tag.is_some() && root.digest.algorithm() != Algorithm::Sha256 {
                return Err(AirgapError::Format(format!(
                    "{} is tagged, but it is not a sha256 manifest (a tag names the sha256 digest of its manifest)",
                    root.name()
                )));
            }
            by_repo.entry(&root.repository).or_default().push(root);
        }
        let mut needed: HashMap<Digest, Needed> = HashMap::new();
        let mut order = Vec::with_capacity(by_repo.len());
        let mut total = 0u64;
        for (repo, roots) in by_repo {
            let digests = store_order(&self.manifests, repo, &roots)?;
            for digest in &digests {
                let Some(archived) = self.manifests.get(digest) else {
                    continue;
                };
                for blob in archived.parsed.required_blobs() {
                    let need = needed.entry(blob.digest.clone()).or_insert_with(|| {
                        total += u64::try_from(blob.size).unwrap_or(0);
                        Needed {
                            repos: BTreeSet::new(),
                            needed_by: format!("{repo}@{digest}"),
                            arrived: false,
                        }
                    });
                    need.repos.insert(repo.clone());
                }
            }
            order.push((repo.clone(), digests));
        }
        self.phase.bar.set_message(format!(
            "{} manifests read, {} blobs to go",
            self.manifests.len(),
            needed.len()
        ));
        self.needed = Some(needed);
        self.order = order;
        Ok(())
    }

    /// Stores or verifies one config or layer and links it where it is needed.
    async fn store_blob(
        &mut self,
        path: String,
        digest: Digest,
        size: u64,
        data: mpsc::Receiver<io::Result<Bytes>>,
    ) -> Result<()> {
        let registry = self.registry;
        let Some(need) = self.needed.as_mut().and_then(|n| n.get_mut(&digest)) else {
            self.phase
                .note(&format!("passing over {path}, which no manifest of the archive needs"));
            return Ok(());
        };
        if need.arrived {
            return Ok(());
        }
        let repos: Vec<RepoName> = need.repos.iter().cloned().collect();
        let Some((first, others)) = repos.split_first() else {
            return Ok(());
        };
        let held = registry
            .blob_size(&digest)
            .await
            .map_err(AirgapError::registry(&path))?;
        let link_in: &[RepoName] = if held.is_some() {
            verify(data, &digest, size, &path).await?;
            self.summary.blobs_present += 1;
            &repos
        } else {
            let ended = Arc::new(Mutex::new(None));
            let body = entry_stream(data, ended.clone());
            if let Err(e) = registry.push_blob(first, &digest, body, Some(size)).await {
                let ended = ended.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(match (ended, e) {
                    (Some(ended), _) => AirgapError::Incomplete(ended),
                    (None, RegistryError::DigestInvalid(problem) | RegistryError::SizeInvalid(problem)) => {
                        AirgapError::Damaged {
                            entry: path,
                            problem: format!("its bytes do not match its digest, so it was not stored ({problem})"),
                        }
                    }
                    (None, error) => AirgapError::Registry {
                        what: format!("storing {path} in {first}"),
                        error,
                    },
                });
            }
            self.summary.blobs_stored += 1;
            others
        };
        for repo in link_in {
            self.link(repo, &digest).await?;
        }
        if let Some(need) = self.needed.as_mut().and_then(|n| n.get_mut(&digest)) {
            need.arrived = true;
        }
        Ok(())
    }

    /// Links a blob the registry holds into `repo`, unless it is there.
    async fn link(&mut self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let what = format!("linking {digest} into {repo}");
        if self
            .registry
            .has_blob(repo, digest)
            .await
            .map_err(AirgapError::registry(&what))?
        {
            return Ok(());
        }
        let mounted = self
            .registry
            .mount_blob(repo, digest, None)
            .await
            .map_err(AirgapError::registry(&what))?;
        if !mounted {
            return Err(AirgapError::Inconsistent(format!(
                "{what}: the registry no longer holds it (removed while the import ran?)"
            )));
        }
        self.summary.blobs_linked += 1;
        Ok(())
    }

    /// After the archive's end: every blob needed must have arrived (a
    /// manifest's bytes that a manifest names as a blob are stored from
    /// memory).
    async fn finish_blobs(&mut self) -> Result<()> {
        if !self.layout_seen {
            return Err(AirgapError::Format(format!("it holds no {}", layout::LAYOUT_FILE)));
        }
        if self.needed.is_none() {
            self.plan()?;
        }
        let missing: Vec<Digest> = self
            .needed
            .iter()
            .flatten()
            .filter(|(_, need)| !need.arrived)
            .map(|(digest, _)| digest.clone())
            .collect();
        let mut absent = Vec::new();
        for digest in missing {
            let Some(body) = self.manifests.get(&digest).map(|m| Bytes::from(m.body.clone())) else {
                absent.push(digest);
                continue;
            };
            let (tx, rx) = mpsc::channel(1);
            let size = body.len() as u64;
            // Cannot fail: the channel has room and its receiver is here.
            let _ = tx.try_send(Ok(body));
            drop(tx);
            self.store_blob(layout::blob_path(&digest), digest, size, rx).await?;
        }
        absent.sort();
        if let Some(first) = absent.first() {
            let needed_by = self
                .needed
                .as_ref()
                .and_then(|n| n.get(first))
                .map(|n| n.needed_by.clone())
                .unwrap_or_default();
            let more = match absent.len() {
                1 => String::new(),
                n => format!(" (and {} more blobs)", n - 1),
            };
            return Err(AirgapError::Incomplete(format!(
                "it holds no blob {first}, which {needed_by} needs{more}; no manifest or tag of the archive was \
                 stored"
            )));
        }
        Ok(())
    }

    /// Stores every repository's manifests and tags.
    async fn store_manifests(mut self) -> Result<Importer<'r>> {
        let registry = self.registry;
        let roots = self.roots.take().unwrap_or_default();
        let order = std::mem::take(&mut self.order);
        for (repo, digests) in &order {
            let mut tags: HashMap<&Digest, Vec<&Tag>> = HashMap::new();
            // The upstream an image came from stays recorded as who put it there.
            let mut upstreams: HashMap<&Digest, &str> = HashMap::new();
            for root in roots.iter().filter(|r| &r.repository == repo) {
                if let Some(tag) = &root.tag {
                    tags.entry(&root.digest).or_default().push(tag);
                }
                if let Some(upstream) = &root.upstream {
                    upstreams.insert(&root.digest, upstream);
                }
            }
            for digest in digests {
                let Some(archived) = self.manifests.get(digest) else {
                    continue;
                };
                let held = held_manifest(registry, repo, &Reference::Digest(digest.clone()))
                    .await?
                    .is_some_and(|d| &d == digest);
                if !held {
                    // By digest first: a tag is then only moved.
                    let upstream = upstreams.get(digest).copied();
                    store(registry, repo, &Reference::Digest(digest.clone()), archived, upstream).await?;
                    self.summary.manifests_stored += 1;
                } else {
                    self.summary.manifests_unchanged += 1;
                }
                for tag in tags.get(digest).into_iter().flatten() {
                    let reference = Reference::Tag((*tag).clone());
                    if held_manifest(registry, repo, &reference).await?.as_ref() == Some(digest) {
                        self.summary.tags_unchanged += 1;
                    } else {
                        store(registry, repo, &reference, archived, upstreams.get(digest).copied()).await?;
                        self.summary.tags_set += 1;
                    }
                }
            }
        }
        Ok(self)
    }
}

/// The manifests of `repo` that `roots` reach, each after its children
/// and (when it is there) its subject.
fn store_order(manifests: &HashMap<Digest, Archived>, repo: &RepoName, roots: &[&Root]) -> Result<Vec<Digest>> {
    // Every manifest the roots reach through indexes.
    let mut reached: HashSet<Digest> = HashSet::new();
    let mut todo: Vec<Digest> = roots.iter().map(|r| r.digest.clone()).collect();
    while let Some(digest) = todo.pop() {
        if !reached.insert(digest.clone()) {
            continue;
        }
        let archived = manifests.get(&digest).ok_or_else(|| {
            AirgapError::Incomplete(format!(
                "an index of {repo} lists {digest}, but no such manifest comes before the first layer"
            ))
        })?;
        todo.extend(archived.parsed.manifests.iter().map(|c| c.digest.clone()));
    }
    // Depth first, each manifest after what it depends on: an index's
    // children must be there before it; a subject is stored first where
    // it can be (a referrer may also come first, as a push may).
    let depends = |digest: &Digest| -> Vec<Digest> {
        let Some(archived) = manifests.get(digest) else {
            return Vec::new();
        };
        let subject = archived.parsed.subject.as_ref().map(|s| &s.digest);
        archived
            .parsed
            .manifests
            .iter()
            .map(|c| &c.digest)
            .chain(subject.filter(|s| reached.contains(*s)))
            .cloned()
            .collect()
    };
    let mut order = Vec::with_capacity(reached.len());
    let mut done: HashSet<Digest> = HashSet::new();
    let mut entered: HashSet<Digest> = HashSet::new();
    for root in roots {
        let mut stack = vec![(root.digest.clone(), false)];
        while let Some((digest, expanded)) = stack.pop() {
            if expanded {
                if done.insert(digest.clone()) {
                    order.push(digest);
                }
                continue;
            }
            if done.contains(&digest) || !entered.insert(digest.clone()) {
                continue;
            }
            let deps = depends(&digest);
            stack.push((digest, true));
            stack.extend(deps.into_iter().filter(|d| !done.contains(d)).map(|d| (d, false)));
        }
    }
    Ok(order)
}

/// The digest of the manifest at `reference` of `repo`, if there is one.
async fn held_manifest(registry: &Registry, repo: &RepoName, reference: &Reference) -> Result<Option<Digest>> {
    match registry.get_manifest(repo, reference, &[], false).await {
        Ok(m) => Ok(Some(m.digest)),
        Err(RegistryError::ManifestUnknown | RegistryError::NameUnknown) => Ok(None),
        Err(error) => Err(AirgapError::Registry {
            what: image(repo, reference),
            error,
        }),
    }
}

/// Stores an archived manifest at `reference` of `repo`, recording the
/// upstream it came from, when the archive says.
async fn store(
    registry: &Registry,
    repo: &RepoName,
    reference: &Reference,
    archived: &Archived,
    upstream: Option<&str>,
) -> Result<()> {
    registry
        .store_manifest(
            repo,
            reference,
            archived.content_type.as_deref(),
            archived.body.clone(),
            upstream,
            Provenance::Snapshot,
        )
        .await
        .map_err(AirgapError::registry(image(repo, reference)))?;
    Ok(())
}

fn parse(body: &[u8], content_type: Option<&str>, path: &str) -> Result<Manifest> {
    Manifest::parse(body, content_type).map_err(|e| damaged_manifest(path, e))
}

fn damaged_manifest(path: &str, e: ManifestError) -> AirgapError {
    AirgapError::Damaged {
        entry: path.to_string(),
        problem: format!("the manifest does not parse: {e}"),
    }
}

/// An entry's bytes, when they are few: at most `max`, else the entry is refused.
async fn read_whole(mut data: mpsc::Receiver<io::Result<Bytes>>, size: u64, max: u64, path: &str) -> Result<Vec<u8>> {
    if size > max {
        return Err(AirgapError::Format(format!(
            "{path} is {size} bytes, more than the {max} it may be"
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = data.recv().await {
        let chunk = chunk.map_err(|e| AirgapError::Incomplete(e.to_string()))?;
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != size {
        return Err(AirgapError::Incomplete(format!(
            "{path}: the archive ends after {} of its {size} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Hashes an entry's bytes and checks them against the blob it names.
async fn verify(mut data: mpsc::Receiver<io::Result<Bytes>>, digest: &Digest, size: u64, path: &str) -> Result<()> {
    let mut hasher = DigestHasher::new(digest.algorithm());
    let mut seen = 0u64;
    while let Some(chunk) = data.recv().await {
        let chunk = chunk.map_err(|e| AirgapError::Incomplete(e.to_string()))?;
        seen += chunk.len() as u64;
        hasher.update(&chunk);
    }
    if seen != size {
        return Err(AirgapError::Incomplete(format!(
            "{path}: the archive ends after {seen} of its {size} bytes"
        )));
    }
    let actual = hasher.finish();
    if &actual != digest {
        return Err(AirgapError::Damaged {
            entry: path.to_string(),
            problem: format!("its bytes have the digest {actual}"),
        });
    }
    Ok(())
}

/// An entry's bytes as a blob body; a read error (the archive ended inside
/// the entry) is also kept in `ended`, so it is told as such.
fn entry_stream(mut data: mpsc::Receiver<io::Result<Bytes>>, ended: Arc<Mutex<Option<String>>>) -> ByteStream {
    Box::pin(
        futures::stream::poll_fn(move |cx| data.poll_recv(cx)).inspect(move |chunk| {
            if let Err(e) = chunk {
                *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use berth_oci::media_type;
    use serde_json::json;

    use super::*;

    /// An archived manifest from JSON, and its digest.
    fn archived(value: serde_json::Value) -> (Digest, Archived) {
        let body = serde_json::to_vec(&value).unwrap();
        let parsed = Manifest::parse(&body, None).unwrap();
        (
            Digest::sha256_of(&body),
            Archived {
                content_type: None,
                body,
                parsed,
            },
        )
    }

    fn descriptor(media_type: &str, digest: &Digest) -> serde_json::Value {
        json!({ "mediaType": media_type, "digest": digest.to_string(), "size": 1 })
    }

    fn image(layer: &[u8], subject: Option<&Digest>) -> (Digest, Archived) {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": descriptor(media_type::OCI_IMAGE_CONFIG, &Digest::sha256_of(b"config")),
            "layers": [descriptor("application/octet-stream", &Digest::sha256_of(layer))],
        });
        if let Some(subject) = subject {
            m["subject"] = descriptor(media_type::OCI_MANIFEST, subject);
        }
        archived(m)
    }

    fn root(repo: &RepoName, digest: &Digest, tag: Option<&str>) -> Root {
        Root {
            repository: repo.clone(),
            tag: tag.map(|t| Tag::from_str(t).unwrap()),
            digest: digest.clone(),
            media_type: media_type::OCI_MANIFEST.into(),
            size: 1,
            provenance: None,
            upstream: None,
        }
    }

    #[test]
    fn children_and_subjects_are_stored_before_what_depends_on_them() {
        let repo = RepoName::from_str("team/app").unwrap();
        let (a, child_a) = image(b"a", None);
        let (b, child_b) = image(b"b", None);
        let (index, index_m) = archived(json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [descriptor(media_type::OCI_MANIFEST, &a), descriptor(media_type::OCI_MANIFEST, &b)],
        }));
        // A signature of the index, and a signature of that signature.
        let (sig, sig_m) = image(b"sig", Some(&index));
        let (sig2, sig2_m) = image(b"sig2", Some(&sig));
        let manifests: HashMap<Digest, Archived> = [
            (a.clone(), child_a),
            (b.clone(), child_b),
            (index.clone(), index_m),
            (sig.clone(), sig_m),
            (sig2.clone(), sig2_m),
        ]
        .into_iter()
        .collect();
        // The referrers come first in index.json; the order still puts them last.
        let roots = [
            root(&repo, &sig2, None),
            root(&repo, &sig, None),
            root(&repo, &index, Some("v1")),
        ];
        let roots: Vec<&Root> = roots.iter().collect();
        let order = store_order(&manifests, &repo, &roots).unwrap();
        assert_eq!(order.len(), 5, "each once: {order:?}");
        let at = |d: &Digest| order.iter().position(|o| o == d).unwrap();
        assert!(at(&a) < at(&index) && at(&b) < at(&index));
        assert!(at(&index) < at(&sig) && at(&sig) < at(&sig2));
    }

    #[test]
    fn an_index_whose_child_is_not_in_the_archive_is_incomplete() {
        let repo = RepoName::from_str("team/app").unwrap();
        let (missing, _) = image(b"gone", None);
        let (index, index_m) = archived(json!({
            "schemaVersion": 2,
            "manifests": [descriptor(media_type::OCI_MANIFEST, &missing)],
        }));
        let manifests: HashMap<Digest, Archived> = [(index.clone(), index_m)].into_iter().collect();
        let roots = [root(&repo, &index, Some("v1"))];
        let err = store_order(&manifests, &repo, &roots.iter().collect::<Vec<_>>()).unwrap_err();
        assert!(
            matches!(&err, AirgapError::Incomplete(m) if m.contains(&missing.to_string())),
            "{err}"
        );
    }
}
