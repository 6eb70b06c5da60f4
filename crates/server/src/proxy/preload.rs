//! `berth cache preload FILE`: pulls a list of images into the cache ahead
//! of need (an edge site before it goes offline), through the same fill and
//! fetch paths as a client's pull, so what is cached already is skipped.
//!
//! A list has one image per line: `NAME[:TAG|@DIGEST] [PLATFORM]`, such as
//! `hub/library/alpine:3.20 linux/arm64` or
//! `registry.k8s.io/kube-scheduler@sha256:…`; `#` starts a comment. The
//! platform picks one child of a multi-platform index (`os/arch[/variant]`);
//! without one, every child is pulled.

use std::sync::atomic::{AtomicU64, Ordering};

use berth_oci::{Digest, Manifest, Reference, RepoName};
use futures::StreamExt as _;

use super::routes::Route;
use super::{BlobAnswer, Proxy, ProxyError};
use crate::registry::{Provenance, RegistryError};

/// One line of a preload list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadItem {
    /// The line as written, for messages.
    pub line: String,
    pub name: RepoName,
    pub reference: Reference,
    pub platform: Option<String>,
}

/// Parses a preload list; a line that is not an image reference is an
/// error naming its number.
pub fn parse_list(text: &str) -> Result<Vec<PreloadItem>, String> {
    let mut items = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let image = words.next().unwrap_or_default();
        let platform = words.next().map(str::to_string);
        if words.next().is_some() {
            return Err(format!(
                "line {}: {line:?} has more than an image and a platform",
                number + 1
            ));
        }
        let (name, reference) = split_reference(image).map_err(|e| format!("line {}: {e}", number + 1))?;
        items.push(PreloadItem {
            line: line.to_string(),
            name,
            reference,
            platform,
        });
    }
    Ok(items)
}

/// `name:tag`, `name@digest` or `name` (`latest`).
fn split_reference(image: &str) -> Result<(RepoName, Reference), String> {
    let (name, reference) = if let Some((name, digest)) = image.split_once('@') {
        let digest: Digest = digest.parse().map_err(|e| format!("{image:?}: {e}"))?;
        (name, Reference::Digest(digest))
    } else {
        let last_slash = image.rfind('/').map_or(0, |i| i + 1);
        match image[last_slash..].rfind(':') {
            Some(colon) => {
                let at = last_slash + colon;
                let tag = image[at + 1..].parse().map_err(|e| format!("{image:?}: {e}"))?;
                (&image[..at], Reference::Tag(tag))
            }
            None => (image, Reference::Tag("latest".parse().map_err(|e| format!("{e}"))?)),
        }
    };
    let name = name.parse().map_err(|e| format!("{image:?}: {e}"))?;
    Ok((name, reference))
}

/// What a preload did.
#[derive(Debug, Default)]
pub struct PreloadSummary {
    pub images: AtomicU64,
    pub failed: AtomicU64,
    pub manifests: AtomicU64,
    /// Blobs fetched from upstreams (each once, however many images share it).
    pub blobs_fetched: AtomicU64,
    pub blobs_cached: AtomicU64,
    pub bytes_fetched: AtomicU64,
}

impl Proxy {
    /// Pulls `items` into the cache, `concurrency` images at a time; calls
    /// `done` after each image with its line and the error, if any.
    pub async fn preload(
        &self,
        items: Vec<PreloadItem>,
        concurrency: usize,
        done: impl Fn(&str, Option<&ProxyError>),
    ) -> PreloadSummary {
        let summary = PreloadSummary::default();
        let fetches_before = self.counters.blob_fetches.get();
        let bytes_before = self.counters.bytes_fetched.get();
        {
            let summary = &summary;
            let mut runs = futures::stream::iter(items)
                .map(|item| async move {
                    let result = self.preload_one(&item, summary).await;
                    (item, result)
                })
                .buffer_unordered(concurrency.max(1));
            while let Some((item, result)) = runs.next().await {
                match &result {
                    Ok(()) => summary.images.fetch_add(1, Ordering::Relaxed),
                    Err(_) => summary.failed.fetch_add(1, Ordering::Relaxed),
                };
                done(&item.line, result.as_ref().err());
            }
        }
        // Images that share blobs wait for one fetch of each: the upstream's
        // count is what was fetched.
        let fetched = self.counters.blob_fetches.get() - fetches_before;
        summary.blobs_fetched.store(fetched, Ordering::Relaxed);
        summary
            .bytes_fetched
            .store(self.counters.bytes_fetched.get() - bytes_before, Ordering::Relaxed);
        summary
    }

    async fn preload_one(&self, item: &PreloadItem, summary: &PreloadSummary) -> Result<(), ProxyError> {
        let (remote, any_host) = match self.resolve(&item.name, None) {
            Route::Remote(r) => (r, false),
            Route::AnyHost(r) => (r, true),
            _ => return Err(ProxyError::NotRemote(item.name.to_string())),
        };
        self.fill_manifest_as(&remote, any_host, &item.reference, Provenance::Snapshot)
            .await?;
        let top = self
            .registry
            .find_manifest(&remote.repo, &item.reference)
            .await?
            .ok_or(RegistryError::ManifestUnknown)?;
        summary.manifests.fetch_add(1, Ordering::Relaxed);
        let mut images = vec![top];
        let parsed = parse(&images[0])?;
        if !parsed.manifests.is_empty() {
            images.clear();
            let wanted = parsed
                .manifests
                .iter()
                .filter(|child| match (&item.platform, &child.platform) {
                    (None, _) => true,
                    (Some(want), Some(p)) => platform_text(p).as_deref() == Some(want.as_str()),
                    (Some(_), None) => false,
                });
            for child in wanted {
                let reference = Reference::Digest(child.digest.clone());
                self.fill_manifest_as(&remote, any_host, &reference, Provenance::Snapshot)
                    .await?;
                let stored = self
                    .registry
                    .find_manifest(&remote.repo, &reference)
                    .await?
                    .ok_or(RegistryError::ManifestUnknown)?;
                summary.manifests.fetch_add(1, Ordering::Relaxed);
                images.push(stored);
            }
            if images.is_empty() {
                return Err(ProxyError::NoSuchPlatform {
                    image: item.line.clone(),
                    platform: item.platform.clone().unwrap_or_default(),
                });
            }
        }
        for image in &images {
            let parsed = parse(image)?;
            for blob in parsed.required_blobs() {
                if self.registry.has_blob(&remote.repo, &blob.digest).await? {
                    summary.blobs_cached.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match self.blob(&remote, any_host, &blob.digest, false, None).await? {
                    BlobAnswer::Streaming { mut body, fetch, .. } => {
                        while let Some(chunk) = body.next().await {
                            chunk.map_err(|e| RegistryError::Storage(e.into()))?;
                        }
                        // The body ends once the bytes are checked; the store
                        // may still be making them durable.
                        if !fetch.stored().await {
                            return Err(RegistryError::BlobUnknown.into());
                        }
                    }
                    BlobAnswer::Cached(_) | BlobAnswer::Size(_) => {
                        summary.blobs_cached.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }
}

fn parse(stored: &berth_meta::StoredManifest) -> Result<Manifest, ProxyError> {
    Manifest::parse(&stored.body, Some(&stored.media_type))
        .map_err(|e| ProxyError::Registry(RegistryError::ManifestInvalid(e.to_string())))
}

/// `os/architecture[/variant]` of an index entry's platform.
fn platform_text(p: &serde_json::Value) -> Option<String> {
    let os = p.get("os")?.as_str()?;
    let arch = p.get("architecture")?.as_str()?;
    Some(match p.get("variant").and_then(|v| v.as_str()) {
        Some(variant) => format!("{os}/{arch}/{variant}"),
        None => format!("{os}/{arch}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        let digest = Digest::sha256_of(b"x");
        let text = format!(
            "# images for the edge\n\nhub/library/alpine:3.20 linux/arm64\nregistry.k8s.io/pause@{digest}\n\
             hub/busybox   # latest\nlocalhost/a/b:v1\n"
        );
        let items = parse_list(&text).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].name.as_str(), "hub/library/alpine");
        assert_eq!(items[0].reference, Reference::Tag("3.20".parse().unwrap()));
        assert_eq!(items[0].platform.as_deref(), Some("linux/arm64"));
        assert_eq!(items[1].reference, Reference::Digest(digest));
        assert_eq!(items[2].reference, Reference::Tag("latest".parse().unwrap()));
        assert_eq!(items[3].name.as_str(), "localhost/a/b");
        assert!(parse_list("hub/Alpine:1\n").unwrap_err().starts_with("line 1:"));
        assert!(parse_list("a\nb:c d e\n").unwrap_err().starts_with("line 2:"));
        assert!(parse_list("a@sha256:zz\n").is_err());
    }
}
